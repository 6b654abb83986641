#!/usr/bin/env bash
# Every check the project has, in order: formatting, lints, unit + end-to-end tests, and the
# Autobahn|Testsuite conformance run against a release build. This is the README's test
# command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, property and end-to-end tests)"
cargo test --workspace

step "autobahn conformance (cases 1.* to 10.*)"
cargo build --release --bin clarion
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
scripts/autobahn.sh --url "ws://127.0.0.1:$port/echo" \
  --server-cmd "target/release/clarion serve --listen 127.0.0.1:$port --threads 2 --no-pin"
