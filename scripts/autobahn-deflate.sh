#!/usr/bin/env bash
# The full Autobahn|Testsuite compression sets (12.* and 13.*: permessage-deflate with every
# offer variant, 216 cases) against a release build, on both backends and under both
# compression policies: four runs of 6 to 13 minutes each (wstest's CPU bounds them, so the
# machine's speed decides; docs/benchmarks.md, "Autobahn's compression sets"). scripts/test.sh
# runs both sets once per backend (epoll with `shared`, io_uring with `per-connection`); this
# script runs all four pairs.
#
# Usage: scripts/autobahn-deflate.sh     (reports in autobahn-reports/deflate-<io>-<policy>/)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/conformance.sh

cargo build --release --bin clarion
failed=0
for io in epoll uring; do
  for policy in shared per-connection; do
    printf '\n== autobahn 12.* 13.*: %s, compression = %s\n' "$io" "$policy"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    scripts/autobahn.sh --url "ws://127.0.0.1:$port/echo" --agent "clarion-$io-$policy" \
      --cases '12.*,13.*' --exclude '' --timeout 1800 \
      --report-dir "autobahn-reports/deflate-$io-$policy" \
      --server-cmd "target/release/clarion serve --io $io --listen 127.0.0.1:$port --threads 2 --no-pin --compression $policy $conformance" \
      || failed=1
  done
done
exit "$failed"
