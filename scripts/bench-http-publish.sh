#!/usr/bin/env bash
# HTTP publish throughput with and without keep-alive, interleaved in one run (these machines are
# noisy, so only numbers from the same run are compared): `POST /publish/bench` with a 32-byte
# body, answered 202, no subscriber, by wrk (Debian's `wrk`, installed if missing) at CONNS
# connections. "keep-alive" reuses each connection (HTTP/1.1's default); "close" sends
# `Connection: close`, so every publish pays a TCP handshake and teardown. Server (one reactor)
# pinned to core 0, wrk (one thread) to core 1; each run lasts DURATION and stops by itself.
#
# Usage: scripts/bench-http-publish.sh   (ROUNDS=3 DURATION=5s CONNS=50 IO=epoll to change)
# Prints a markdown table; wrk's output goes to target/bench-http-publish/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
IO=${IO:-epoll}
source scripts/lib/bench.sh

if ! command -v wrk >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
bench_setup http-publish

# wrk sends GET without a body unless a script says otherwise.
cat >"$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "0123456789abcdef0123456789abcdef"
wrk.headers["Content-Type"] = "text/plain"
LUA

for round in $(seq "$ROUNDS"); do
  for mode in keep-alive close; do
    header=()
    [ "$mode" = close ] && header=(-H "Connection: close")
    port=$(free_port)
    start_server "$port" --io "$IO" --admin-listen off
    taskset -c 1 wrk -t1 -c "$CONNS" -d "$DURATION" -s "$OUT/post.lua" "${header[@]}" \
      "http://127.0.0.1:$port/publish/bench" >"$OUT/$mode-$round.txt"
    stop_server
  done
done

python3 - "$OUT" "$ROUNDS" "$CONNS" "$IO" <<'PY'
import re, statistics, sys
out, rounds, conns, io = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def parse(path):
    text = open(path).read()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket = re.search(r"Socket errors: (.*)", text)
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    return rate, int(errors.group(1)) if errors else 0, socket.group(1) if socket else "", latency.group(1)
print(f"| mode ({io}, {conns} connections) | requests/s (median of {rounds}) | runs | mean latency | non-2xx | socket errors |")
print("| --- | --- | --- | --- | --- | --- |")
medians = {}
for mode in ("keep-alive", "close"):
    runs = [parse(f"{out}/{mode}-{r}.txt") for r in range(1, rounds + 1)]
    rates = [r[0] for r in runs]
    medians[mode] = statistics.median(rates)
    shown = ", ".join(f"{x:,.0f}" for x in rates)
    errors = sum(r[1] for r in runs)
    sockets = "; ".join(r[2] for r in runs if r[2]) or "none"
    print(f"| {mode} | {medians[mode]:,.0f} | {shown} | {runs[len(runs) // 2][3]} | {errors} | {sockets} |")
print(f"\nkeep-alive / close: {medians['keep-alive'] / medians['close']:.1f}x")
PY
