#!/usr/bin/env bash
# epoll and io_uring side by side, interleaved in one run (these machines are noisy, so only
# numbers from the same run are compared): echo throughput, p99 and server CPU time per
# message at 100 and 1,000 connections (over the measurement window, from `--server-pid`) (32-byte messages, one in flight per connection), and
# server RSS per idle connection at 15,000. Server pinned to core 0, loadgen to core 1.
#
# Usage: scripts/bench-backends.sh   (ROUNDS=3 DURATION=5s IDLE=15000 to change)
# Prints a markdown table; raw JSON reports go to target/bench-backends/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
IDLE=${IDLE:-15000}
source scripts/lib/bench.sh
bench_setup backends

for round in $(seq "$ROUNDS"); do
  for io in epoll uring; do
    for conns in 100 1000; do
      port=$(free_port); start_server "$port" --io "$io"
      taskset -c 1 "$LOADGEN" echo "ws://127.0.0.1:$port/echo" -c "$conns" -s 32 -d "$DURATION" \
        --threads 1 --server-pid "$server_pid" --json "$OUT/echo-$io-$conns-$round.json" >/dev/null
      stop_server
    done
    port=$(free_port); start_server "$port" --io "$io"
    taskset -c 1 "$LOADGEN" idle "ws://127.0.0.1:$port/echo" -c "$IDLE" -d 2s --threads 1 \
      --server-pid "$server_pid" --json "$OUT/idle-$io-$round.json" >/dev/null
    stop_server
  done
done

python3 - "$OUT" "$ROUNDS" "$IDLE" <<'PY'
import json, statistics, sys
out, rounds, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def med(xs): return statistics.median(xs)
rows = {}
for io in ("epoll", "uring"):
    for conns in (100, 1000):
        runs = []
        for r in range(1, rounds + 1):
            j = json.load(open(f"{out}/echo-{io}-{conns}-{r}.json"))
            runs.append((j["throughput"], j["latency_us"]["p99"], j["server"]["cpu_per_message_us"] or 0,
                         j["loadgen_cpu"]["per_message_us"]))
        rows[(io, conns)] = [med([x[i] for x in runs]) for i in range(4)]
    rss = [json.load(open(f"{out}/idle-{io}-{r}.json"))["server"]["rss_per_connection_bytes"] for r in range(1, rounds + 1)]
    rows[(io, "idle")] = med(rss)
print(f"| backend | conns | echo msgs/s | p99 (µs) | server CPU/msg (µs) | loadgen CPU/msg (µs) |")
print("| --- | --- | --- | --- | --- | --- |")
for conns in (100, 1000):
    for io in ("epoll", "uring"):
        t, p99, cpu, lg = rows[(io, conns)]
        print(f"| {io} | {conns} | {t:,.0f} | {p99:,.0f} | {cpu:.2f} | {lg:.2f} |")
for conns in (100, 1000):
    print(f"\nio_uring / epoll server CPU per message at {conns}: {rows[('uring', conns)][2] / rows[('epoll', conns)][2]:.2f}")
print(f"\n| backend | RSS per idle connection at {idle:,} (bytes) |\n| --- | --- |")
for io in ("epoll", "uring"):
    print(f"| {io} | {rows[(io, 'idle')]:.0f} |")
print(f"\n(medians of {rounds} interleaved rounds)")
PY
