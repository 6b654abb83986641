#!/usr/bin/env bash
# Autobahn|Testsuite over TLS: cases 1.* to 10.* and the compression sets 12.* and 13.*
# against `wss://` (a certificate from scripts/make-cert.sh; the fuzzing client does not check
# it), compression `shared`, on both backends (about 7 minutes each). scripts/test.sh runs it
# on one backend with the first set of each compression group (`--io epoll --cases ...`, about
# 90 s), since plaintext runs every case on both backends and TLS changes only the transport.
#
# Usage: scripts/autobahn-tls.sh [--io epoll|uring] [--cases LIST]
#        (reports in autobahn-reports/tls-<io>/)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/conformance.sh

backends=(epoll uring)
cases='1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*,12.*,13.*'
while [ $# -gt 0 ]; do
  case $1 in
    --io) backends=("${2:?--io needs epoll or uring}"); shift 2 ;;
    --cases) cases=${2:?--cases needs a list}; shift 2 ;;
    *) echo "usage: scripts/autobahn-tls.sh [--io epoll|uring] [--cases LIST]" >&2; exit 2 ;;
  esac
done

cargo build --release --bin clarion
cert=target/autobahn-tls-cert
bash scripts/make-cert.sh "$cert" >/dev/null
failed=0
for io in "${backends[@]}"; do
  printf '\n== autobahn over TLS: %s\n' "$io"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  scripts/autobahn.sh --url "wss://127.0.0.1:$port/echo" --agent "clarion-tls-$io" \
    --cases "$cases" --exclude '' --timeout 1800 \
    --report-dir "autobahn-reports/tls-$io" \
    --server-cmd "target/release/clarion serve --io $io --listen 127.0.0.1:$port --threads 2 --no-pin --compression shared $conformance --tls-cert $cert/chain.pem --tls-key $cert/key.pem" \
    || failed=1
done
exit "$failed"
