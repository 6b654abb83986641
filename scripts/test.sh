#!/usr/bin/env bash
# Every check the project has, in order: formatting, lints, unit + end-to-end tests on both
# backends, and the Autobahn|Testsuite conformance run against a release build on both
# backends. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "interop test clients: Python websockets, headless Chromium (installed if missing)"
python3 -c 'import websockets.sync.client' 2>/dev/null \
  || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q 'websockets>=13'
if ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
fi

for io in epoll uring; do
  step "cargo test: unit, property and end-to-end tests, server on $io"
  CLARION_TEST_IO=$io cargo test --workspace
done

# 1.* to 10.* with compression offered by the server (the fuzzing client does not offer it in
# those), and 13.* (every negotiation variant, about 2.5 min per backend): one policy per
# backend. The full 12.* and 13.* sets on both backends and both policies take about 25 min:
# scripts/autobahn-deflate.sh.
step "autobahn conformance (cases 1.* to 10.*, 13.*) on both backends, compression on"
cargo build --release --bin clarion
for run in epoll:shared uring:per-connection; do
  io=${run%%:*} policy=${run#*:}
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  scripts/autobahn.sh --url "ws://127.0.0.1:$port/echo" --agent "clarion-$io" \
    --cases '1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*,13.*' --exclude '' \
    --report-dir "autobahn-reports/$io" \
    --server-cmd "target/release/clarion serve --io $io --listen 127.0.0.1:$port --threads 2 --no-pin --compression $policy"
done
