#!/usr/bin/env bash
# A local certificate authority and a server certificate it signed, for TLS on this machine
# (Clarion's own TLS, or nginx / HAProxy in front of it) and for the tests. Never for production.
#
#   scripts/make-cert.sh DIR [NAME...]
#
# Writes into DIR (created if missing):
#   ca.pem, ca.key        the CA (kept if already there, so clients that trust it keep working;
#                         ca.srl is its serial counter)
#   cert.pem, key.pem     the server certificate and its key, for localhost, 127.0.0.1, ::1 and
#                         each NAME (a DNS name or an IP address); made anew on every run
#   chain.pem             cert.pem followed by ca.pem: a two-certificate chain, to exercise
#                         chain loading (clients that trust ca.pem need only cert.pem)
#   combined.pem          chain.pem followed by key.pem (HAProxy's `crt` wants one file)
#
# Keys are ECDSA P-256 (fast handshakes; every TLS 1.2 and 1.3 client takes them); the server
# certificate is valid for 30 days, the CA for 10 years. Trust the CA with `--cacert DIR/ca.pem`
# (curl), `ssl.create_default_context(cafile=...)` (Python), or `--ignore-certificate-errors`
# (Chromium). Needs only `openssl`.
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
dir=$1
shift
mkdir -p "$dir"
cd "$dir"
umask 077

if [ ! -s ca.pem ] || [ ! -s ca.key ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.pem -days 3650 -subj "/CN=Clarion local CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

names=(DNS:localhost IP:127.0.0.1 IP:::1)
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then
    names+=("IP:$name")
  else
    names+=("DNS:$name")
  fi
done
san=$(IFS=,; echo "${names[*]}")

openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout key.pem -out server.csr -subj "/CN=localhost" 2>/dev/null
extensions=$(mktemp)
trap 'rm -f "$extensions" server.csr' EXIT
cat >"$extensions" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san
EOF
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem \
  -days 30 -sha256 -extfile "$extensions" 2>/dev/null
cat cert.pem ca.pem >chain.pem
cat chain.pem key.pem >combined.pem
chmod 644 ca.pem cert.pem chain.pem
echo "$PWD: ca.pem, cert.pem, chain.pem, key.pem, combined.pem for $san"
