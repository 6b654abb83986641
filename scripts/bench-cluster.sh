#!/usr/bin/env bash
# Cross-node fanout: SUBSCRIBERS raw subscribers (/t/<topic>) on node A, one publisher at RATE
# msgs/s publishing over HTTP, beside the same run on a single self-contained node. Three
# set-ups, interleaved ROUNDS times (the machine is shared, so conditions drift):
#   single  one node, no Redis; subscribers and publishes on it
#   local   two nodes on a Redis; subscribers and publishes on node A (through Redis)
#   cross   two nodes on a Redis; subscribers on node A, publishes on node B
# Node A runs on core 0 (one reactor), clarion-loadgen, node B and redis-server on core 1.
# Reports deliveries/s, publish-to-receive p50/p99/p99.9 and missing/duplicates/out-of-order.
#
# Usage: scripts/bench-cluster.sh   (SUBSCRIBERS=5000 RATE=10 SIZE=64 DURATION=10s ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSCRIBERS=${SUBSCRIBERS:-5000}
RATE=${RATE:-10}
SIZE=${SIZE:-64}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
source scripts/lib/bench.sh
bench_setup cluster
command -v redis-server >/dev/null || { echo "bench: needs redis-server" >&2; exit 1; }

others=()
stop_others() {
  for pid in "${others[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  others=()
}
trap 'stop_server; stop_others' EXIT

wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return
    sleep 0.05
  done
  echo "bench: nothing listens on $1" >&2; exit 1
}

# run NAME SUBSCRIBE_PORT PUBLISH_PORT
run() {
  taskset -c 1 "$LOADGEN" fanout "ws://127.0.0.1:$2/t/" -c "$SUBSCRIBERS" --rate "$RATE" \
    -s "$SIZE" -d "$DURATION" --threads 1 --topics 1 --publishers 1 --publish-via http \
    --publish-url "http://127.0.0.1:$3/publish" --json "$OUT/$1.json" >/dev/null
}

for round in $(seq "$ROUNDS"); do
  port=$(free_port); start_server "$port"
  run "single-$round" "$port" "$port"
  stop_server

  redis_port=$(free_port)
  taskset -c 1 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    >/dev/null &
  others+=($!)
  wait_port "$redis_port"
  redis="redis://127.0.0.1:$redis_port"
  port_a=$(free_port); start_server "$port_a" --redis "$redis"
  port_b=$(free_port)
  taskset -c 1 "$SERVER" serve --threads 1 --no-pin --listen "127.0.0.1:$port_b" \
    --ping-interval 0 "${BENCH_FLAGS[@]}" --redis "$redis" 2>/dev/null &
  others+=($!)
  wait_port "$port_b"
  sleep 0.5  # both nodes reach Redis
  run "local-$round" "$port_a" "$port_a"
  run "cross-$round" "$port_a" "$port_b"
  stop_server
  stop_others
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("| set-up | round | deliveries/s | p50 (ms) | p99 (ms) | p99.9 (ms) | missing | dup | ooo |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in range(1, rounds + 1):
    for name in ["single", "local", "cross"]:
        j = json.load(open(f"{out}/{name}-{r}.json")); l = j["latency_us"]
        print(f"| {name} | {r} | {j['throughput']:,.0f} | {l['p50']/1000:.2f} | {l['p99']/1000:.2f} | {l['p99_9']/1000:.2f} | {j['missing']} | {j['duplicates']} | {j['out_of_order']} |")
PY
