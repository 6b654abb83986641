# The fanout load ramp (issue 22), sourced by scripts/bench-fanout.sh --ramp and
# scripts/compare.sh: one server, RAMP_SUBSCRIBERS subscribers of one topic, one publisher of
# 64-byte messages stepping through RAMP_RATES msgs/s, each step a fresh server and a fresh
# loadgen run of RAMP_DURATION after RAMP_WARMUP. Within a round every server runs a rate before
# any runs the next, so the servers compared at one rate ran within seconds of each other: the
# machine's drift over a round (minutes) falls between rates, not between servers. The caller
# defines `start SERVER PORT` (a server pinned to core 0, its PID in server_pid) and has run
# bench_setup (LOADGEN, OUT). A Clarion server's
# `/stats` is read before and after each step (socket writes and deliveries: messages per
# write); other servers have none and show "-" there. Every step is bounded by its duration and
# by `timeout` (RAMP_STEP_LIMIT seconds), so a wedged server cannot hold the run. The loadgen
# reads through io_uring (RAMP_LOADGEN_IO=uring, its `--io`): its one core is then less busy
# per segment the server sends, so less of its own queueing is in the latencies it reports.
RAMP_RATES=${RAMP_RATES:-"25 50 100 200 400"}
RAMP_SUBSCRIBERS=${RAMP_SUBSCRIBERS:-5000}
RAMP_DURATION=${RAMP_DURATION:-5s}
RAMP_WARMUP=${RAMP_WARMUP:-2s}
RAMP_STEP_LIMIT=${RAMP_STEP_LIMIT:-180}
RAMP_LOADGEN_IO=${RAMP_LOADGEN_IO:-uring}

# scrape_stats PORT FILE: the server's /stats JSON into FILE (nothing when it has none).
scrape_stats() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null || true
import sys, urllib.request
port, path = sys.argv[1], sys.argv[2]
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2).read()
open(path, "wb").write(body)
PY
}

# steal_mark: the host's CPU time stolen by the hypervisor so far (USER_HZ ticks, all CPUs)
# and the wall clock, for `steal_since`.
steal_mark() {
  echo "$(awk '/^cpu /{print $9}' /proc/stat) $(date +%s.%N)"
}

# steal_since MARK: the share of the host's CPUs stolen since MARK, in percent: time this
# virtual machine was ready to run and the hypervisor ran something else, which no process
# here sees as CPU time but every latency does.
steal_since() {
  local ticks0 t0
  read -r ticks0 t0 <<<"$1"
  awk -v d="$(( $(awk '/^cpu /{print $9}' /proc/stat) - ticks0 ))" -v hz="$(getconf CLK_TCK)" \
    -v t0="$t0" -v t1="$(date +%s.%N)" -v n="$(nproc)" \
    'BEGIN {printf "%.1f\n", 100 * d / hz / ((t1 - t0) * n)}'
}

# ramp_round ROUND SERVER...: every rate, each server in the order given at it; reports go to
# $OUT/ramp-SERVER-RATE-ROUND.{json,txt} (and .before/.after for /stats, .steal for the host's
# stolen CPU during the step).
ramp_round() {
  local round=$1 rate server
  shift
  for rate in $RAMP_RATES; do
    for server in "$@"; do
      ramp_step "$server" "$rate" "$round"
    done
  done
}

# ramp_step SERVER RATE ROUND: one step on a server of its own.
ramp_step() {
  local server=$1 rate=$2 round=$3 port mark
  local name="ramp-$server-$rate-$round"
  port=$(free_port)
  start "$server" "$port"
  echo "ramp round $round: $server at $rate msgs/s" >&2
  rm -f "$OUT/$name".*
  scrape_stats "$port" "$OUT/$name.before"
  mark=$(steal_mark)
  if ! timeout "$RAMP_STEP_LIMIT" taskset -c 1 "$LOADGEN" fanout "ws://127.0.0.1:$port/t/" \
      -c "$RAMP_SUBSCRIBERS" --rate "$rate" -s 64 -d "$RAMP_DURATION" --warmup "$RAMP_WARMUP" \
      --threads 1 --topics 1 --publishers 1 --server-pid "$server_pid" --io "$RAMP_LOADGEN_IO" \
      --json "$OUT/$name.json" >"$OUT/$name.txt" 2>&1; then
    echo "ramp: $name: the loadgen failed or timed out (see $OUT/$name.txt)" >&2
  fi
  steal_since "$mark" >"$OUT/$name.steal"
  scrape_stats "$port" "$OUT/$name.after"
  stop_server
}
