#!/usr/bin/env bash
# Every check the project has, in order: formatting, lints, unit + end-to-end tests on both
# backends, and the Autobahn|Testsuite conformance run against a release build on both
# backends. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "redis-server (the cluster tests start their own, on free loopback ports)"
if ! command -v redis-server >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

for io in epoll uring; do
  step "cargo test: unit, property and end-to-end tests, server on $io"
  CLARION_TEST_IO=$io cargo test --workspace
done

step "autobahn conformance (cases 1.* to 10.*) on both backends"
cargo build --release --bin clarion
for io in epoll uring; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  scripts/autobahn.sh --url "ws://127.0.0.1:$port/echo" --agent "clarion-$io" \
    --report-dir "autobahn-reports/$io" \
    --server-cmd "target/release/clarion serve --io $io --listen 127.0.0.1:$port --threads 2 --no-pin"
done
