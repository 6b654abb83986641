#!/usr/bin/env bash
# Server-Sent Events against WebSocket subscribers, interleaved, on one reactor (server on core
# 0, clarion-loadgen on core 1), on each of BACKENDS: the server's RSS per idle subscriber (IDLE
# subscribers of one topic: `/t/news` WebSockets, then `/sse/news` streams), read when the ramp
# ends and again 2 s later (the streams' heartbeats going, the WebSockets' pings off as in every
# benchmark), and what each subscriber beyond the first IDLE/3 adds (the same run at IDLE/3:
# one-time costs such as code first paged in cancel out); and its CPU time per delivery in a
# fanout (SUBSCRIBERS subscribers of one topic, one HTTP publisher at RATE msgs/s with SIZE-byte
# payloads; `/t/` then `/sse/`, so both sides publish the same way). ROUNDS rounds.
#
# Usage: scripts/bench-sse.sh   (ROUNDS=2 BACKENDS="uring epoll" IDLE=15000 SUBSCRIBERS=5000
#                                RATE=50 SIZE=64 DURATION=5s)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
BACKENDS=${BACKENDS:-uring epoll}
IDLE=${IDLE:-15000}
SUBSCRIBERS=${SUBSCRIBERS:-5000}
RATE=${RATE:-50}
SIZE=${SIZE:-64}
DURATION=${DURATION:-5s}
source scripts/lib/bench.sh
bench_setup sse

for round in $(seq "$ROUNDS"); do
  for io in $BACKENDS; do
    for transport in ws sse; do
      if [ "$transport" = ws ]; then idle_path=/t/news; fan_path=/t/; scheme=ws; else
        idle_path=/sse/news; fan_path=/sse/; scheme=http; fi
      run=$io-$transport-$round
      for idle in "$IDLE" $((IDLE / 3)); do
        port=$(free_port); start_server "$port" --io "$io"
        taskset -c 1 "$LOADGEN" idle "$scheme://127.0.0.1:$port$idle_path" -c "$idle" -d 2s \
          --threads 1 --server-pid "$server_pid" --json "$OUT/idle-$idle-$run.json" >/dev/null
        stop_server
      done
      port=$(free_port); start_server "$port" --io "$io"
      taskset -c 1 "$LOADGEN" fanout "$scheme://127.0.0.1:$port$fan_path" -c "$SUBSCRIBERS" \
        --rate "$RATE" -s "$SIZE" -d "$DURATION" --warmup 1s --threads 1 --topics 1 \
        --publishers 1 --publish-via http --server-pid "$server_pid" \
        --json "$OUT/fanout-$run.json" >/dev/null
      stop_server
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$IDLE" "$SUBSCRIBERS" "$RATE" "$BACKENDS" <<'PY'
import json, sys
out, rounds, idle, subs, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
small = idle // 3
print(f"| round | backend | transport | RSS per idle subscriber at {idle:,}, ramp end / 2 s later (bytes) | each one beyond {small:,} (bytes) | deliveries/s ({subs:,} subscribers, {rate} msgs/s) | server CPU/delivery, user / sys (µs) | p99 (ms) | missing |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in range(1, rounds + 1):
    for io in sys.argv[6].split():
        for t in ["ws", "sse"]:
            run = f"{io}-{t}-{r}"
            server = json.load(open(f"{out}/idle-{idle}-{run}.json"))["server"]
            few = json.load(open(f"{out}/idle-{small}-{run}.json"))["server"]
            f = json.load(open(f"{out}/fanout-{run}.json"))
            rss = server["rss_per_connection_bytes"]
            idle_end = server.get("rss_per_connection_at_window_end_bytes")
            idle_end = "n/a" if idle_end is None else f"{idle_end:.0f}"
            # KiB the server grew by over its ramp, at the end of each window.
            grew = lambda s: s["rss_window_end_kib"] - s["rss_before_kib"]
            beyond = (grew(server) - grew(few)) * 1024 / (idle - small)
            cpu = f"{f['server']['cpu_user_per_message_us'] or 0:.2f} / {f['server']['cpu_system_per_message_us'] or 0:.2f}"
            print(f"| {r} | {io} | {t} | {rss:.0f} / {idle_end} | {beyond:.0f} | {f['throughput']:,.0f} | {cpu} | {f['latency_us']['p99']/1000:.1f} | {f['missing']} |")
PY
