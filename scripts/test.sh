#!/usr/bin/env bash
# Every check the project has, in order: formatting, lints, unit + end-to-end tests on both
# backends, the TypeScript client's tests, and the Autobahn|Testsuite conformance run against a
# release build on both backends. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# What the end-to-end tests run against, installed when missing: redis-server and redis-cli (the
# cluster tests start their own servers, sentinels with `redis-server --sentinel`, and a Redis
# Cluster made with `redis-cli --cluster create`, on free loopback ports), headless Chromium and
# Python websockets (compression interop), nginx (with its stream module) and HAProxy in front of
# the server with TLS (tests/proxy.rs, certificates by scripts/make-cert.sh with openssl;
# publishes with curl; the TLS runs below), and nginx as a plain proxy that breaks WebSockets in
# front of the streams (tests/streams.rs).
step "test peers: redis-server, redis-cli, chromium, nginx, haproxy, Python websockets (installed if missing)"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v chromium >/dev/null || missing+=(chromium)
command -v nginx >/dev/null || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import websockets.asyncio.client' 2>/dev/null \
  || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q 'websockets>=13'
redis-server --version
chromium --version
nginx -v
haproxy -v | sed -n 1p  # sed reads it all: head would end haproxy with SIGPIPE (pipefail)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors; incompatible_msrv holds std to rust-version)"
cargo clippy --workspace --all-targets -- -D warnings

step "rust-version: every locked dependency declares it or older"
scripts/check-msrv.sh

# The workspace includes the Rust client (clients/rust): its unit tests, its scenarios against the
# real server (and redis-server) and its README example run here, on both backends.
for io in epoll uring; do
  step "cargo test: unit, property and end-to-end tests, server on $io"
  CLARION_TEST_IO=$io cargo test --workspace
done

# The TypeScript client (clients/js): its build tools (typescript, ws, types) from its committed
# lockfile into clients/js/node_modules (nothing global), tsc, then node --test against the debug
# server and the ticker example just built, a redis-server and Chromium. About a minute.
step "TypeScript client (clients/js): npm ci, tsc, node --test"
node -e 'const [major, minor] = process.versions.node.split(".").map(Number);
  if (major < 20 || (major === 20 && minor < 10)) { console.error(`Node ${process.version}: the client needs 20.10 or later`); process.exit(1); }'
cargo build --bin clarion --example ticker
(cd clients/js && npm ci --no-audit --no-fund && npm test)

# 1.* to 10.* with compression offered by the server (the fuzzing client does not offer it in
# those), 12.* (compressed messages of every size) and 13.* (every negotiation variant): one
# policy per backend. 12.* and 13.* are bound by wstest's own CPU, so their length follows the
# machine: 5.5 minutes a backend on 2026-11-26, 13 on the slower machine of 2026-12-06
# (docs/benchmarks.md, "Autobahn's compression sets"). The other two backend x policy
# pairs: scripts/autobahn-deflate.sh.
step "autobahn conformance (cases 1.* to 10.*, 12.*, 13.*) on both backends, compression on"
cargo build --release --bin clarion
# The server for Autobahn|Testsuite (scripts/lib/conformance.sh: /echo on, no per-client rates,
# the 16 MiB messages of cases 9.*). Every case on epoll; on io_uring 1.* to 10.* and the first
# set of 12.* and 13.* (the compression code is shared; every case on both backends:
# scripts/autobahn-deflate.sh), which keeps the run near 30 minutes.
source scripts/lib/conformance.sh
for run in "epoll:shared:1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*,12.*,13.*" \
  "uring:per-connection:1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*,12.1.*,13.1.*"; do
  io=${run%%:*} rest=${run#*:}
  policy=${rest%%:*} cases=${rest#*:}
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  scripts/autobahn.sh --url "ws://127.0.0.1:$port/echo" --agent "clarion-$io" \
    --cases "$cases" --exclude '' \
    --report-dir "autobahn-reports/$io" \
    --server-cmd "target/release/clarion serve --io $io --listen 127.0.0.1:$port --threads 2 --no-pin --compression $policy $conformance"
done

# The same over TLS (wss://, a certificate from scripts/make-cert.sh) on one backend, compression
# `shared`: 1.* to 10.* and the first set of 12.* and 13.* (TLS changes the transport only; the
# rest of 12.* and 13.* run above in plaintext). Every case on both backends:
# scripts/autobahn-tls.sh.
step "autobahn conformance over TLS (cases 1.* to 10.*, 12.1.*, 13.1.*) on epoll"
scripts/autobahn-tls.sh --io epoll --cases '1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*,12.1.*,13.1.*'

# The C1M script end to end at CI size, every phase (the full million takes about 8 minutes and
# 9 GiB of kernel memory: run it by hand, see docs/benchmarks.md). In a network namespace of its
# own where it may create one (root), else in the host's; it changes nothing on the host without
# --apply.
step "scripts/bench-c1m.sh at 2,000 connections"
c1m_ns=()
[ "$(id -u)" = 0 ] || c1m_ns=(--no-netns)
scripts/bench-c1m.sh --connections 2000 --hold 1s --rounds 2 --round-every 1s "${c1m_ns[@]}"
step "scripts/bench-c1m.sh at 2,000 connections over TLS"
scripts/bench-c1m.sh --connections 2000 --hold 1s --rounds 2 --round-every 1s --tls "${c1m_ns[@]}"
