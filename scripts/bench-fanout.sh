#!/usr/bin/env bash
# Fanout on one reactor: N raw-topic subscribers (/t/<topic>) on one topic, one WebSocket
# publisher at R msgs/s with S-byte payloads (each carrying its send time and sequence
# number), server pinned to core 0 and clarion-loadgen to core 1. Reports deliveries/s,
# server CPU time per delivery (user + system from /proc/PID/stat over the measurement window,
# read by `clarion-loadgen --server-pid`), publish-to-receive percentiles, missing/duplicates/out-of-order, and the
# server's RSS per idle subscriber.
#
# WARMUP (default 2s) runs the traffic before the measurement without counting it (see
# `--warmup` in docs/loadgen.md); WARMUP=0s measures from the first message.
#
# Usage: scripts/bench-fanout.sh   (SUBSCRIBERS="5000 10000" RATES="10 50" SIZE=64 DURATION=10s WARMUP=2s)
#
# --ramp: the load ramp of issue 22 instead (scripts/lib/ramp.sh): a fresh server per backend
# and step, 5,000 subscribers, 25/50/100/200/400 msgs/s, both backends interleaved at each rate
# (the order rotating per round); prints deliveries/s, missing, p50/p99/p99.9, the worst round's p99
# against the median's, server CPU per delivery (user and system), messages and bytes per
# socket write, and each backend's saturation point (highest rate with every delivery and a
# p99 under 1 s). Environment: ROUNDS=1 RAMP_RATES RAMP_DURATION=5s RAMP_WARMUP=2s
# RAMP_SUBSCRIBERS=5000 RAMP_LOADGEN_IO=uring BACKENDS="epoll uring".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --ramp ]; then
  ROUNDS=${ROUNDS:-1}
  read -ra servers <<<"${BACKENDS:-epoll uring}"
  servers=("${servers[@]/#/clarion-}")
  source scripts/lib/bench.sh
  source scripts/lib/ramp.sh
  bench_setup fanout-ramp
  rm -f "$OUT"/ramp-*
  ulimit -n "$(ulimit -Hn)"
  start() { start_server "$2" --io "${1#clarion-}"; }
  for round in $(seq "$ROUNDS"); do
    rotate_order "$round" "${servers[@]}"
    ramp_round "$round" "${order[@]}"
  done
  python3 scripts/lib/ramp_report.py "$OUT" "$ROUNDS" "${servers[*]}" "$RAMP_RATES" \
    | tee "$OUT/ramp.md"
  exit 0
fi
SUBSCRIBERS=${SUBSCRIBERS:-"5000 10000"}
RATES=${RATES:-"10 50"}
SIZE=${SIZE:-64}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
IDLE=${IDLE:-15000}
source scripts/lib/bench.sh
bench_setup fanout

for subs in $SUBSCRIBERS; do
  for rate in $RATES; do
    port=$(free_port); start_server "$port"
    taskset -c 1 "$LOADGEN" fanout "ws://127.0.0.1:$port/t/" -c "$subs" --rate "$rate" -s "$SIZE" \
      -d "$DURATION" --warmup "$WARMUP" --threads 1 --topics 1 --publishers 1 \
      --server-pid "$server_pid" --json "$OUT/fanout-$subs-$rate.json" >/dev/null
    stop_server
  done
done
port=$(free_port); start_server "$port"
taskset -c 1 "$LOADGEN" fanout "ws://127.0.0.1:$port/t/" -c "$IDLE" --rate 1 -d 2s --threads 1 \
  --topics 1 --publishers 1 --server-pid "$server_pid" --json "$OUT/idle.json" >/dev/null
stop_server

python3 - "$OUT" "$SUBSCRIBERS" "$RATES" "$IDLE" <<'PY'
import json, sys
out, subs, rates, idle = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4])
print("| subscribers | msgs/s | deliveries/s | server CPU/delivery (µs) | p50 (ms) | p99 (ms) | p99.9 (ms) | missing | dup | ooo | loadgen saturated |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for s in subs:
    for r in rates:
        j = json.load(open(f"{out}/fanout-{s}-{r}.json"))
        cpu = j["server"]["cpu_per_message_us"] or 0
        l = j["latency_us"]
        print(f"| {int(s):,} | {r} | {j['throughput']:,.0f} | {cpu:.2f} | {l['p50']/1000:.1f} | {l['p99']/1000:.1f} | {l['p99_9']/1000:.1f} | {j['missing']} | {j['duplicates']} | {j['out_of_order']} | {j['loadgen_cpu']['saturated']} |")
j = json.load(open(f"{out}/idle.json"))
print(f"\nRSS per idle subscriber (one topic, {idle:,} subscribers): {j['server']['rss_per_connection_bytes']:.0f} bytes")
PY
