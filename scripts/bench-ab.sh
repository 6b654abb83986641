#!/usr/bin/env bash
# Two builds of the server side by side, interleaved in one run (A, B, A, B, ...), on both
# backends: server CPU time per echoed message (user and system apart) at 100 and 1,000
# connections, per fanout delivery (5,000 subscribers of one topic, 50 msgs/s), and server RSS
# per idle and per subscribed connection at 15,000. One loadgen (this tree's) drives both, so
# only the server differs. Server pinned to core 0, loadgen to core 1.
#
# A is a git revision, built in a worktree under target/bench-ab/ (kept for the next run), or
# the path of a clarion binary built before; B is this working tree.
#
# Usage: scripts/bench-ab.sh REV|BINARY   (ROUNDS=3 DURATION=5s IDLE=15000 FLAGS_A= FLAGS_B= to change;
#        FLAGS_* are extra `serve` flags for one side; FLAGS_B defaults to this tree's BENCH_FLAGS
#        (scripts/lib/bench.sh: --echo, no per-client rates), and an A with /echo opt-in wants
#        the same: FLAGS_A="--echo --client-publish all --message-rate 0 --byte-rate 0 --max-handshakes-per-reactor 65536")
# Prints a markdown table of medians with B/A ratios; raw JSON reports go to target/bench-ab/.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: scripts/bench-ab.sh REV}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
IDLE=${IDLE:-15000}
FLAGS_A=${FLAGS_A:-}
source scripts/lib/bench.sh
FLAGS_B=${FLAGS_B:-${BENCH_FLAGS[*]}}
bench_setup ab

if [ -f "$REV" ] && [ -x "$REV" ]; then
  bin_a=$REV label_a=$REV
else
  commit=$(git rev-parse --verify "$REV^{commit}")
  tree_a=${CARGO_TARGET_DIR:-target}/bench-ab/tree-$commit
  bin_a=$tree_a/target/release/clarion label_a=${commit:0:10}
  if [ ! -x "$bin_a" ]; then
    [ -d "$tree_a" ] || git worktree add --detach "$tree_a" "$commit" >/dev/null
    (cd "$tree_a" && CARGO_TARGET_DIR=target cargo build --release -q --bin clarion)
  fi
fi
declare -A BIN=([A]="$bin_a" [B]="$SERVER")
declare -A FLAGS=([A]="$FLAGS_A" [B]="$FLAGS_B")

# run SIDE IO NAME MODE URL LOADGEN-ARGS...: one measurement against a fresh server of SIDE on IO.
run() {
  local side=$1 io=$2 name=$3; shift 3
  local port; port=$(free_port)
  # shellcheck disable=SC2086 # FLAGS_* are word lists on purpose
  start_pinned "$port" "${BIN[$side]}" serve --threads 1 --no-pin --listen "127.0.0.1:$port" \
    --ping-interval 0 --io "$io" ${FLAGS[$side]}
  local mode=$1 url=${2//PORT/$port}; shift 2
  taskset -c 1 "$LOADGEN" "$mode" "$url" "$@" --threads 1 --server-pid "$server_pid" \
    --json "$OUT/$name-$side-$io-$round.json" >/dev/null
  stop_server
}

for round in $(seq "$ROUNDS"); do
  for io in epoll uring; do
    for side in A B; do
      for conns in 100 1000; do
        run "$side" "$io" "echo$conns" echo ws://127.0.0.1:PORT/echo -c "$conns" -s 32 -d "$DURATION"
      done
      run "$side" "$io" fanout fanout ws://127.0.0.1:PORT/t/ -c 5000 --rate 50 -s 64 \
        -d "$DURATION" --warmup 2s --topics 1 --publishers 1
      run "$side" "$io" idle idle ws://127.0.0.1:PORT/echo -c "$IDLE" -d 2s
      run "$side" "$io" subscribed fanout ws://127.0.0.1:PORT/t/ -c "$IDLE" --rate 1 -d 2s \
        --topics 1 --publishers 1
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$IDLE" "$label_a" <<'PY'
import json, statistics, sys
out, rounds, idle, label_a = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def load(name, side, io, r): return json.load(open(f"{out}/{name}-{side}-{io}-{r}.json"))["server"]
def med(name, side, io, key):
    return statistics.median(load(name, side, io, r)[key] or 0 for r in range(1, rounds + 1))
print(f"A = {label_a}, B = this tree; medians of {rounds} interleaved rounds\n")
print("| measure | backend | A | B | B/A |")
print("| --- | --- | --- | --- | --- |")
rows = [(f"echo at {c}: server user µs/msg", f"echo{c}", "cpu_user_per_message_us") for c in (100, 1000)]
rows += [(f"echo at {c}: server system µs/msg", f"echo{c}", "cpu_system_per_message_us") for c in (100, 1000)]
rows += [("fanout 5,000 x 50/s: server user µs/delivery", "fanout", "cpu_user_per_message_us"),
         ("fanout 5,000 x 50/s: server system µs/delivery", "fanout", "cpu_system_per_message_us"),
         (f"RSS per idle connection at {idle:,} (bytes)", "idle", "rss_per_connection_bytes"),
         (f"RSS per subscribed connection at {idle:,} (bytes)", "subscribed", "rss_per_connection_bytes")]
for label, name, key in rows:
    for io in ("epoll", "uring"):
        a, b = med(name, "A", io, key), med(name, "B", io, key)
        ratio = f"{b / a:.2f}" if a else "-"
        print(f"| {label} | {io} | {a:.3f} | {b:.3f} | {ratio} |")
PY
