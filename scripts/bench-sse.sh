#!/usr/bin/env bash
# Server-Sent Events against WebSocket subscribers, interleaved, on one reactor (server on core
# 0, clarion-loadgen on core 1): the server's RSS per idle subscriber (IDLE subscribers of one
# topic: `/t/news` WebSockets, then `/sse/news` streams), read when the ramp ends and again 2 s
# later (the streams' heartbeats going, the WebSockets' pings off as in every benchmark), and
# its CPU time per delivery in a fanout (SUBSCRIBERS subscribers of one topic, one HTTP
# publisher at RATE msgs/s with SIZE-byte payloads; `/t/` then `/sse/`, so both sides publish
# the same way). ROUNDS rounds.
#
# Usage: scripts/bench-sse.sh   (ROUNDS=2 IDLE=15000 SUBSCRIBERS=5000 RATE=50 SIZE=64 DURATION=5s)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
IDLE=${IDLE:-15000}
SUBSCRIBERS=${SUBSCRIBERS:-5000}
RATE=${RATE:-50}
SIZE=${SIZE:-64}
DURATION=${DURATION:-5s}
source scripts/lib/bench.sh
bench_setup sse

for round in $(seq "$ROUNDS"); do
  for transport in ws sse; do
    if [ "$transport" = ws ]; then idle_path=/t/news; fan_path=/t/; scheme=ws; else
      idle_path=/sse/news; fan_path=/sse/; scheme=http; fi
    port=$(free_port); start_server "$port"
    taskset -c 1 "$LOADGEN" idle "$scheme://127.0.0.1:$port$idle_path" -c "$IDLE" -d 2s \
      --threads 1 --server-pid "$server_pid" --json "$OUT/idle-$transport-$round.json" >/dev/null
    stop_server
    port=$(free_port); start_server "$port"
    taskset -c 1 "$LOADGEN" fanout "$scheme://127.0.0.1:$port$fan_path" -c "$SUBSCRIBERS" \
      --rate "$RATE" -s "$SIZE" -d "$DURATION" --warmup 1s --threads 1 --topics 1 \
      --publishers 1 --publish-via http --server-pid "$server_pid" \
      --json "$OUT/fanout-$transport-$round.json" >/dev/null
    stop_server
  done
done

python3 - "$OUT" "$ROUNDS" "$IDLE" "$SUBSCRIBERS" "$RATE" <<'PY'
import json, sys
out, rounds, idle, subs, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
print(f"| round | transport | RSS per idle subscriber at {idle:,}, ramp end / 2 s later (bytes) | deliveries/s ({subs:,} subscribers, {rate} msgs/s) | server CPU/delivery (µs) | p99 (ms) | missing |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in range(1, rounds + 1):
    for t in ["ws", "sse"]:
        i = json.load(open(f"{out}/idle-{t}-{r}.json"))
        f = json.load(open(f"{out}/fanout-{t}-{r}.json"))
        rss = i["server"]["rss_per_connection_bytes"]
        idle_end = i["server"].get("rss_per_connection_at_window_end_bytes")
        idle_end = "n/a" if idle_end is None else f"{idle_end:.0f}"
        cpu = f["server"]["cpu_per_message_us"] or 0
        print(f"| {r} | {t} | {rss:.0f} / {idle_end} | {f['throughput']:,.0f} | {cpu:.2f} | {f['latency_us']['p99']/1000:.1f} | {f['missing']} |")
PY
