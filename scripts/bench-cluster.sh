#!/usr/bin/env bash
# Cross-node traffic through Redis. MODE picks the measurements (default: all three), each set-up
# interleaved ROUNDS times with the others of its measurement (the machine is shared, so
# conditions drift):
#
# latency: SUBSCRIBERS raw subscribers (/t/<topic>) on node A, one publisher at RATE msgs/s
#   publishing over HTTP, beside the same run on a single self-contained node:
#     single  one node, no Redis; subscribers and publishes on it
#     local   two nodes on a Redis; subscribers and publishes on node A (through Redis)
#     cross   two nodes on a Redis; subscribers on node A, publishes on node B
#   Node A runs on core 0 (one reactor), clarion-loadgen, node B and redis-server on core 1.
#   Reports deliveries/s, publish-to-receive p50/p99/p99.9 and missing/duplicates/out-of-order.
#
# throughput: the cross-node publish rate at saturation, one Redis against a three-master Redis
#   Cluster (made with redis-cli --cluster create). Node A holds TOPICS raw subscribers, one per
#   topic (clarion-loadgen idle, which counts what it receives); a closed-loop publisher
#   (scripts/lib/publish_batches.py, two connections, batches of 100 messages of SIZE bytes over
#   the same topics) publishes to node B as fast as B takes them; deliveries per second at A over
#   DURATION are the rate. Redis's and the nodes' CPU time over the window (/proc) give their
#   costs per message.
#   Nodes, loadgen and publisher run on core 0, the Redis servers on core 1: the single Redis has
#   a core to itself and the three masters share one (this machine has two), so the run shows
#   the cluster's cost per message and its overhead, not the gain of masters on cores of their
#   own. REDIS_CORE_SHARE (e.g. 0.2) gives every redis-server a CPU budget of that fraction of a
#   core (a cgroup's CFS quota, each server its own cgroup): Redis becomes the bottleneck, and
#   three masters get three budgets as three slow cores would, which is how a 2-core host shows
#   whether publishing scales with masters.
#
# replicas: the cost of min_replicas_ack. A Redis master and its replica (core 1), nodes A and B
#   with min_replicas_ack 0 and 1: the throughput run above, and the latency run's cross set-up.
#
# Usage: scripts/bench-cluster.sh   (MODE=all SUBSCRIBERS=5000 RATE=10 SIZE=64 DURATION=10s
#                                    ROUNDS=3 TOPICS=256 REDIS_CORE_SHARE=; DURATION in whole
#                                    seconds; REDIS_CORE_SHARE needs root and a cgroup cpu
#                                    controller, v1 or v2)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-all}
SUBSCRIBERS=${SUBSCRIBERS:-5000}
RATE=${RATE:-10}
SIZE=${SIZE:-64}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
TOPICS=${TOPICS:-256}
REDIS_CORE_SHARE=${REDIS_CORE_SHARE:-}
case $MODE in all | latency | throughput | replicas) ;; *) echo "bench: MODE=$MODE?" >&2; exit 2 ;; esac
[[ $DURATION =~ ^[0-9]+s$ ]] || { echo "bench: DURATION in whole seconds, e.g. 10s" >&2; exit 2; }
source scripts/lib/bench.sh
bench_setup cluster
command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
  || { echo "bench: needs redis-server and redis-cli" >&2; exit 1; }
TICK=$(getconf CLK_TCK)

others=()
stop_others() {
  for pid in "${others[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  others=()
  drop_budgets
}
trap 'stop_server; stop_others' EXIT

# The cgroup that CPU budgets go under: v2's root when it delegates cpu, else v1's cpu hierarchy.
budget_root=""
budgets=()
if [ -n "$REDIS_CORE_SHARE" ]; then
  if grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    budget_root=/sys/fs/cgroup
  elif [ -w /sys/fs/cgroup/cpu/cgroup.procs ]; then
    budget_root=/sys/fs/cgroup/cpu
  else
    echo "bench: REDIS_CORE_SHARE needs a writable cgroup cpu controller (v1 or v2)" >&2; exit 1
  fi
fi

# budget PID: PID into a cgroup of its own whose CPU quota is REDIS_CORE_SHARE of a core
# (quota over a 100 ms period).
budget() {
  [ -n "$budget_root" ] || return 0
  local group=$budget_root/clarion-bench-$1 quota
  quota=$(python3 -c "print(int(float('$REDIS_CORE_SHARE') * 100000))")
  mkdir "$group"
  if [ -f "$group/cpu.max" ]; then
    echo "$quota 100000" >"$group/cpu.max"
  else
    echo 100000 >"$group/cpu.cfs_period_us"
    echo "$quota" >"$group/cpu.cfs_quota_us"
  fi
  echo "$1" >"$group/cgroup.procs"
  budgets+=("$group")
}

# drop_budgets: removes the cgroups of stopped servers (a cgroup goes once it is empty).
drop_budgets() {
  local kept=()
  for group in "${budgets[@]}"; do
    rmdir "$group" 2>/dev/null || kept+=("$group")
  done
  budgets=("${kept[@]}")
}

# stop_from N: stops what was started after the first N PIDs of others.
stop_from() {
  for pid in "${others[@]:$1}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  others=("${others[@]:0:$1}")
}

wants() { [ "$MODE" = all ] || [ "$MODE" = "$1" ]; }

wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return
    sleep 0.05
  done
  echo "bench: nothing listens on $1" >&2; exit 1
}

# wait_linked PORT: until the node there says its link to Redis is up.
wait_linked() {
  for _ in $(seq 200); do
    python3 -c "import urllib.request,sys; sys.exit('cluster: up' not in urllib.request.urlopen('http://127.0.0.1:$1/healthz').read().decode())" \
      2>/dev/null && return
    sleep 0.05
  done
  echo "bench: the node on $1 did not reach Redis" >&2; exit 1
}

# redis PORT [args...]: a throwaway redis-server on core 1 (its PID appended to others), its
# files (a replica's copy, a cluster node's nodes.conf) under $OUT.
redis() {
  local port=$1 dir=$OUT/redis-$1; shift
  mkdir -p "$dir"; rm -f "$dir"/*
  taskset -c 1 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" "$@" >/dev/null &
  others+=($!)
  budget $!
  wait_port "$port"
}

# redis_cluster N: N masters on core 1, joined; their ports in cluster_ports.
redis_cluster() {
  cluster_ports=()
  for _ in $(seq "$1"); do
    local port
    port=$(python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    if port + 10000 <= 65535:
        bus = socket.socket()
        try:
            bus.bind(("127.0.0.1", port + 10000)); print(port); break
        except OSError:
            pass
')  # its cluster bus listens on port + 10000
    redis "$port" --cluster-enabled yes --cluster-config-file nodes.conf
    cluster_ports+=("$port")
  done
  redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-yes >/dev/null
  for port in "${cluster_ports[@]}"; do
    until redis-cli -p "$port" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
  done
}

# node PORT CORE CONFIG_FILE: a one-reactor clarion on CORE (its PID appended to others).
node() {
  taskset -c "$2" "$SERVER" serve --threads 1 --no-pin --admin-listen off --listen "127.0.0.1:$1" \
    --ping-interval 0 "${BENCH_FLAGS[@]}" --config "$3" 2>/dev/null &
  others+=($!)
  wait_port "$1"
  wait_linked "$1"
}

# cluster_file NAME LINES: a config file with the [cluster] table LINES.
cluster_file() {
  printf '[cluster]\n%s\n' "$2" >"$OUT/$1.toml"
  echo "$OUT/$1.toml"
}

# fanout NAME SUBSCRIBE_PORT PUBLISH_PORT
fanout() {
  taskset -c 1 "$LOADGEN" fanout "ws://127.0.0.1:$2/t/" -c "$SUBSCRIBERS" --rate "$RATE" \
    -s "$SIZE" -d "$DURATION" --threads 1 --topics 1 --publishers 1 --publish-via http \
    --publish-url "http://127.0.0.1:$3/publish" --json "$OUT/$1.json" >/dev/null
}

# cpu_ticks PID...: each one's CPU time so far (user + system, clock ticks).
cpu_ticks() {
  for pid in "$@"; do awk '{printf "%d ", $14 + $15}' "/proc/$pid/stat"; done
}

# saturate NAME CONFIG_FILE REDIS_PID...: the throughput run on two fresh nodes.
saturate() {
  local name=$1 file=$2; shift 2
  local port_a port_b seconds=${DURATION%s} urls=() before after nodes_before nodes_after
  local publisher keep=${#others[@]}
  port_a=$(free_port); port_b=$(free_port)
  node "$port_a" 0 "$file"
  node "$port_b" 0 "$file"
  local nodes=("${others[@]: -2}")
  for i in $(seq 0 $((TOPICS - 1))); do urls+=("ws://127.0.0.1:$port_a/t/bench-$i"); done
  taskset -c 0 python3 scripts/lib/publish_batches.py 127.0.0.1 "$port_b" "$TOPICS" 100 "$SIZE" \
    $((seconds + 4)) 2 bench- >"$OUT/$name.publisher" &
  publisher=$!
  sleep 1
  before=$(cpu_ticks "$@")
  nodes_before=$(cpu_ticks "${nodes[@]}")
  taskset -c 0 "$LOADGEN" idle -c "$TOPICS" -d "$DURATION" --threads 1 "${urls[@]}" \
    --json "$OUT/$name.json" >/dev/null
  after=$(cpu_ticks "$@")
  nodes_after=$(cpu_ticks "${nodes[@]}")
  echo "$TICK $before / $after" >"$OUT/$name.redis-cpu"
  echo "$TICK $nodes_before / $nodes_after" >"$OUT/$name.nodes-cpu"
  wait "$publisher"
  stop_from "$keep"
}

for round in $(seq "$ROUNDS"); do
  if wants latency; then
    port=$(free_port); start_server "$port"
    fanout "single-$round" "$port" "$port"
    stop_server

    redis_port=$(free_port); redis "$redis_port"
    redis_url="redis://127.0.0.1:$redis_port"
    port_a=$(free_port); start_server "$port_a" --redis "$redis_url"
    wait_linked "$port_a"
    port_b=$(free_port)
    node "$port_b" 1 "$(cluster_file latency "redis = \"$redis_url\"")"
    fanout "local-$round" "$port_a" "$port_a"
    fanout "cross-$round" "$port_a" "$port_b"
    stop_server
    stop_others
  fi

  if wants throughput; then
    redis_port=$(free_port); redis "$redis_port"
    saturate "one-redis-$round" "$(cluster_file one "redis = \"redis://127.0.0.1:$redis_port\"")" \
      "${others[@]}"
    stop_others
    redis_cluster 3
    saturate "three-masters-$round" \
      "$(cluster_file three "redis_cluster = [\"127.0.0.1:${cluster_ports[0]}\"]")" "${others[@]}"
    stop_others
  fi

  if wants replicas; then
    master=$(free_port); redis "$master"
    replica=$(free_port); redis "$replica" --replicaof 127.0.0.1 "$master"
    until redis-cli -p "$replica" info replication | grep -q master_link_status:up; do sleep 0.1; done
    for acks in 0 1; do
      file=$(cluster_file "acks-$acks" "redis = \"redis://127.0.0.1:$master\"
min_replicas_ack = $acks")
      saturate "acks-$acks-$round" "$file" "${others[0]}"
      port_a=$(free_port); port_b=$(free_port)
      node "$port_a" 0 "$file"
      node "$port_b" 1 "$file"
      fanout "acks-$acks-latency-$round" "$port_a" "$port_b"
      stop_from 2  # the nodes; the Redis pair stays
    done
    stop_others
  fi
done

python3 - "$OUT" "$ROUNDS" "$MODE" <<'PY'
import json, os, sys
out, rounds, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(name):
    return json.load(open(f"{out}/{name}.json"))
def latency_row(name, label, r):
    j = load(name); l = j["latency_us"]
    print(f"| {label} | {r} | {j['throughput']:,.0f} | {l['p50']/1000:.2f} | {l['p99']/1000:.2f} | {l['p99_9']/1000:.2f} | {j['missing']} | {j['duplicates']} | {j['out_of_order']} |")
def cpu_us(path):
    """Each process's CPU time (µs) over the window, from a `TICK before / after` file."""
    tick, rest = open(path).read().split(" ", 1)
    before, after = (list(map(int, side.split())) for side in rest.split("/"))
    return [(b - a) * 1e6 / int(tick) for a, b in zip(before, after)]
def saturate_row(name, label, r):
    j = load(name)
    received = max(j["messages_received"], 1)
    redis = cpu_us(f"{out}/{name}.redis-cpu")
    node_a, node_b = cpu_us(f"{out}/{name}.nodes-cpu")
    shares = "/".join(f"{u / sum(redis):.0%}" for u in redis) if sum(redis) else "-"
    publisher = json.loads(open(f"{out}/{name}.publisher").read())
    print(f"| {label} | {r} | {j['throughput']:,.0f} | {sum(redis) / received:.1f} | {shares} | {node_b / received:.1f} | {node_a / received:.1f} | {publisher['accepted']:,} | {publisher['refused']:,} |")
if mode in ("all", "latency"):
    print("latency")
    print("| set-up | round | deliveries/s | p50 (ms) | p99 (ms) | p99.9 (ms) | missing | dup | ooo |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in range(1, rounds + 1):
        for name in ["single", "local", "cross"]:
            latency_row(f"{name}-{r}", name, r)
saturate_head = "| set-up | round | deliveries/s | Redis CPU per message (µs, all masters) | share per master | node B (publishes) CPU per message (µs) | node A (delivers) CPU per message (µs) | accepted | refused (503) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
if mode in ("all", "throughput"):
    print("\nthroughput")
    print(saturate_head)
    for r in range(1, rounds + 1):
        for name in ["one-redis", "three-masters"]:
            saturate_row(f"{name}-{r}", name, r)
if mode in ("all", "replicas"):
    print("\nmin_replicas_ack: throughput")
    print(saturate_head)
    for r in range(1, rounds + 1):
        for acks in (0, 1):
            saturate_row(f"acks-{acks}-{r}", f"min_replicas_ack = {acks}", r)
    print("\nmin_replicas_ack: latency (cross)")
    print("| set-up | round | deliveries/s | p50 (ms) | p99 (ms) | p99.9 (ms) | missing | dup | ooo |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in range(1, rounds + 1):
        for acks in (0, 1):
            latency_row(f"acks-{acks}-latency-{r}", f"min_replicas_ack = {acks}", r)
PY
