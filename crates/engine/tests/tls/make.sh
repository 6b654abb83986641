#!/usr/bin/env bash
# Makes the TLS fixtures of the engine's tests (run in this folder; committed, so tests need no
# openssl): a CA, a server certificate for localhost / 127.0.0.1 / ::1 it signed (ECDSA P-256,
# valid for 100 years so the tests never expire), the chain, a second certificate for the same
# names (cert2.pem, key2.pem: a reload), and an unrelated key.
set -euo pipefail
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
  -out ca.pem -days 36500 -subj "/CN=Clarion test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem \
  -out server.csr -subj "/CN=localhost" 2>/dev/null
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" >ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem \
  -days 36500 -sha256 -extfile ext.cnf 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key2.pem \
  -out server.csr -subj "/CN=localhost" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert2.pem \
  -days 36500 -sha256 -extfile ext.cnf 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out other-key.pem
cat cert.pem ca.pem >chain.pem
rm -f server.csr ext.cnf ca.srl ca.key
