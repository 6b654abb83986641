#!/usr/bin/env bash
# Clarion side by side with its peers (issue 7): Clarion on epoll and on io_uring, a
# tokio-tungstenite server and a fastwebsockets server (benches/peers/), each with one worker on
# core 0, driven by clarion-loadgen on core 1, interleaved in one run (each scenario runs every
# server in turn, the order rotating per round; other work on these machines moves absolute
# numbers between runs, so only one run's numbers are compared):
#
#   echo      32-byte messages, one in flight per connection, at 100 and 1,000 connections:
#             msgs/s, p99, server CPU per message, loadgen CPU per message
#   fanout    5,000 /t/<topic> subscribers of one topic, one WebSocket publisher of 64-byte
#             messages at 10 msgs/s (every server keeps up: latency and CPU per delivery) and at
#             50 msgs/s (250,000 deliveries/s offered, more than one core of some servers can
#             write: deliveries/s): deliveries/s, p99, server CPU per delivery; after a 2 s
#             warm-up (`--warmup`: sent, not counted) so fresh connections' first seconds do
#             not weigh on every server's steady state
#   idle      15,000 idle connections: server RSS growth per connection
#   churn     connect, upgrade, one echo, close, CHURN_CONCURRENCY (32) at a time and at most
#             CHURN_RATE (5,000) new a second (more than one loadgen core opens), for
#             CHURN_DURATION: cycles/s and server CPU per cycle (with --tls: resumed handshakes,
#             and again with `--no-resume`: full handshakes; not in the default plaintext set)
#   ramp      the fanout load ramp (issue 22, scripts/lib/ramp.sh): a fresh server per step,
#             the servers interleaved at each rate, 5,000 subscribers, 25/50/100/200/400
#             msgs/s: deliveries/s, missing, p50/p99/p99.9, server CPU per delivery (user and
#             system), each server's saturation point
#
# --tls runs the same scenarios over wss:// (TLS 1.3, ECDSA P-256 certificate from
# scripts/make-cert.sh, the loadgen trusting its CA; every server on rustls 0.23 with aws-lc-rs,
# the peers through tokio-rustls, benches/peers/common/src/tls.rs): echo at 100 connections,
# fanout at 10 msgs/s, idle, churn resumed and full, with ramps paced to 1,500 connections a
# second and at most 500 dialing (Clarion closes connections past 1,024 in the TLS handshake at
# accept). Reports go to target/bench-compare-tls/ and charts beside them, not into docs/.
#
# A peer whose binary is not there (benches/peers did not build, e.g. offline) is skipped, and
# the run says so.
#
# Server CPU is user + system time from /proc/PID/stat over the loadgen's measurement window
# (`clarion-loadgen --server-pid`), per message or delivery received in it. Prints markdown tables with ratios to Clarion (epoll) and the issue's targets, writes
# them to target/bench-compare/compare.md, and draws latency percentile charts (SVG) into docs/.
#
# Usage: scripts/compare.sh [--quick] [--tls] [--rounds N]
#   --quick      smoke run (about 2 minutes): 1 round, short windows, charts into the output
#                directory instead of docs/
#   --tls        the TLS scenario set above (about 4 minutes a round)
#   environment: ROUNDS=3 ECHO_DURATION=5s FANOUT_DURATION=8s FANOUT_WARMUP=2s FANOUT_RATES="10 50"
#                IDLE_DURATION=2s SCENARIOS="echo fanout idle ramp" (--tls: "echo fanout idle churn")
#                CHURN_DURATION=5s CHURN_CONCURRENCY=32 CHURN_RATE=5000 ECHO_CONNS="100 1000" (--tls: 100)
#                RAMP_RATES="25 50 100 200 400" RAMP_DURATION=5s RAMP_WARMUP=2s
#                SERVERS="clarion-epoll clarion-uring tokio-tungstenite fastwebsockets"
#                CHARTS=docs
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
tls=false
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=true ;;
    --tls) tls=true ;;
    --rounds) ROUNDS=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if $quick; then
  ROUNDS=${ROUNDS:-1} ECHO_DURATION=${ECHO_DURATION:-2s} FANOUT_DURATION=${FANOUT_DURATION:-2s}
  CHURN_DURATION=${CHURN_DURATION:-2s}
fi
if $tls; then
  SCENARIOS=${SCENARIOS:-"echo fanout idle churn"} ECHO_CONNS=${ECHO_CONNS:-100}
  FANOUT_RATES=${FANOUT_RATES:-10}
fi
ROUNDS=${ROUNDS:-3}
if $tls && [[ " $SCENARIOS " == *" ramp "* ]]; then
  echo "compare.sh: the ramp scenario is plaintext only (scripts/lib/ramp.sh); drop it with --tls" >&2
  exit 2
fi
ECHO_DURATION=${ECHO_DURATION:-5s}
FANOUT_DURATION=${FANOUT_DURATION:-8s}
FANOUT_WARMUP=${FANOUT_WARMUP:-2s}
FANOUT_RATES=${FANOUT_RATES:-"10 50"}
IDLE_DURATION=${IDLE_DURATION:-2s}
SERVERS=${SERVERS:-"clarion-epoll clarion-uring tokio-tungstenite fastwebsockets"}
SCENARIOS=${SCENARIOS:-"echo fanout idle ramp"}
ECHO_CONNS=${ECHO_CONNS:-"100 1000"}
CHURN_DURATION=${CHURN_DURATION:-5s}
CHURN_CONCURRENCY=${CHURN_CONCURRENCY:-32}
CHURN_RATE=${CHURN_RATE:-5000}
SUBSCRIBERS=5000
IDLE=15000
DRAIN=1s

source scripts/lib/bench.sh
source scripts/lib/ramp.sh
if $tls; then bench_setup compare-tls; else bench_setup compare; fi
rm -f "$OUT"/*.txt "$OUT"/*.svg "$OUT"/compare.md "$OUT"/ramp-*
TICK=$(getconf CLK_TCK)
if $quick || $tls; then CHARTS=${CHARTS:-$OUT}; else CHARTS=${CHARTS:-docs}; fi
# What differs over TLS: the scheme and host (the certificate names localhost), each server's
# certificate flags, the loadgen's CA, and paced ramps.
SCHEME=ws HOST=127.0.0.1 TLS_FLAGS=() CLIENT_TLS=() PACED=()
if $tls; then
  bash scripts/make-cert.sh "$OUT/cert" >/dev/null
  SCHEME=wss HOST=localhost
  TLS_FLAGS=(--tls-cert "$OUT/cert/chain.pem" --tls-key "$OUT/cert/key.pem")
  CLIENT_TLS=(--ca "$OUT/cert/ca.pem")
  PACED=(--ramp-rate 1500 --max-pending 500 --ramp-timeout 120s)
fi
PEERS=benches/peers/target/release
if ! cargo build --release -q --manifest-path benches/peers/Cargo.toml; then
  echo "compare.sh: benches/peers did not build; peers without a binary are skipped" >&2
fi
# peer_binary SERVER: a peer's binary ("" for Clarion).
peer_binary() {
  case $1 in
    tokio-tungstenite) echo "$PEERS/peer-tungstenite" ;;
    fastwebsockets) echo "$PEERS/peer-fastwebsockets" ;;
    *) echo "" ;;
  esac
}
present=()
for server in $SERVERS; do
  binary=$(peer_binary "$server")
  if [ -n "$binary" ] && [ ! -x "$binary" ]; then
    echo "compare.sh: skipping $server: $binary is not installed" >&2
    continue
  fi
  present+=("$server")
done
SERVERS="${present[*]}"
has() { [[ " $SCENARIOS " == *" $1 "* ]]; }
ulimit -n "$(ulimit -Hn)"

# start SERVER PORT: one of $SERVERS, one worker thread on core 0.
start() {
  case $1 in
    clarion-epoll) start_server "$2" --io epoll "${TLS_FLAGS[@]}" ;;
    clarion-uring) start_server "$2" --io uring "${TLS_FLAGS[@]}" ;;
    tokio-tungstenite | fastwebsockets)
      start_pinned "$2" "$(peer_binary "$1")" --threads 1 --listen "127.0.0.1:$2" \
        "${TLS_FLAGS[@]}" ;;
    *) echo "compare.sh: unknown server $1" >&2; exit 2 ;;
  esac
}

# measure SERVER NAME LOADGEN-ARGS...: a fresh server, the loadgen on core 1 against it
# (watching the server's memory and CPU); reports go to $OUT/NAME.{json,txt}.
measure() {
  local server=$1 name=$2; shift 2
  local port; port=$(free_port)
  start "$server" "$port"
  local args=("${@//PORT/$port}")
  if ! taskset -c 1 "$LOADGEN" "${args[@]//URL/$SCHEME://$HOST}" "${CLIENT_TLS[@]}" --threads 1 --drain "$DRAIN" \
      --server-pid "$server_pid" --json "$OUT/$name.json" >"$OUT/$name.txt" 2>&1; then
    echo "compare.sh: $name: the loadgen failed (see $OUT/$name.txt)" >&2
  fi
  stop_server
}

# CPU time all processes have spent busy since boot, in seconds (to tell how much other work
# shared the machine during the run).
busy_seconds() { awk -v tick="$TICK" '/^cpu /{print ($2 + $3 + $4 + $7 + $8) / tick}' /proc/stat; }
# own_seconds: CPU time of this script and its children (servers, loadgen) so far, in
# seconds, into own. (`times` must write to a file: in a pipe or $(...) it describes a subshell.)
own_seconds() {
  times >"$OUT/times"
  own=$(awk '{for (i = 1; i <= 2; i++) {split($i, t, /[ms]/); s += t[1] * 60 + t[2]}} END {print s}' \
    "$OUT/times")
}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
busy_before=$(busy_seconds)
own_seconds; own_before=$own
read -ra servers <<<"$SERVERS"
started=$(date +%s)
for round in $(seq "$ROUNDS"); do
  rotate_order "$round" "${servers[@]}"
  has echo && for conns in $ECHO_CONNS; do
    for server in "${order[@]}"; do
      echo "round $round/$ROUNDS: echo -c $conns, $server" >&2
      measure "$server" "echo$conns-$server-$round" echo "URL:PORT/echo" \
        -c "$conns" -s 32 -d "$ECHO_DURATION"
    done
  done
  has fanout && for rate in $FANOUT_RATES; do
    for server in "${order[@]}"; do
      echo "round $round/$ROUNDS: fanout -c $SUBSCRIBERS --rate $rate, $server" >&2
      measure "$server" "fanout$rate-$server-$round" fanout "URL:PORT/t/" \
        -c "$SUBSCRIBERS" --rate "$rate" -s 64 -d "$FANOUT_DURATION" --warmup "$FANOUT_WARMUP" --topics 1 --publishers 1 \
        "${PACED[@]}"
    done
  done
  has idle && for server in "${order[@]}"; do
    echo "round $round/$ROUNDS: idle -c $IDLE, $server" >&2
    measure "$server" "idle-$server-$round" idle "URL:PORT/echo" -c "$IDLE" \
      -d "$IDLE_DURATION" "${PACED[@]}"
  done
  has churn && for server in "${order[@]}"; do
    echo "round $round/$ROUNDS: churn --concurrency $CHURN_CONCURRENCY, $server" >&2
    measure "$server" "churn-$server-$round" churn "URL:PORT/echo" \
      --concurrency "$CHURN_CONCURRENCY" --rate "$CHURN_RATE" -d "$CHURN_DURATION"
    if $tls; then
      echo "round $round/$ROUNDS: churn --no-resume, $server" >&2
      measure "$server" "churnfull-$server-$round" churn "URL:PORT/echo" \
        --concurrency "$CHURN_CONCURRENCY" --rate "$CHURN_RATE" -d "$CHURN_DURATION" --no-resume
    fi
  done
  has ramp && ramp_round "$round" "${order[@]}"
done
elapsed=$(( $(date +%s) - started ))
own_seconds
other=$(awk -v busy="$(busy_seconds)" -v b0="$busy_before" -v own="$own" -v o0="$own_before" \
  -v t="$elapsed" 'BEGIN {printf "%.0f", 100 * ((busy - b0) - (own - o0)) / t}')
{
  echo "Measured in $elapsed s. Other work on the machine meanwhile: ${other} % of one core on" \
    "average (all CPU time less this run's); load average (1, 5, 15 min) $load_before before," \
    "$(cut -d' ' -f1-3 /proc/loadavg) after."
  echo
  if has echo || has fanout || has idle || has churn; then
    python3 scripts/lib/compare_report.py "$OUT" "$ROUNDS" "$SERVERS" "$ECHO_CONNS" \
      "$SUBSCRIBERS" "$FANOUT_RATES" "$IDLE" "$SCENARIOS" "$tls"
  fi
  if has ramp; then
    echo
    echo "### Fanout load ramp ($RAMP_SUBSCRIBERS subscribers, 64 B, $RAMP_DURATION per step)"
    echo
    python3 scripts/lib/ramp_report.py "$OUT" "$ROUNDS" "$SERVERS" "$RAMP_RATES"
  fi
} | tee "$OUT/compare.md"

# Latency charts: every round's report per server (the chart takes the median per percentile).
chart() { # NAME TITLE
  local series=()
  for server in "${servers[@]}"; do
    local files=()
    for round in $(seq "$ROUNDS"); do files+=("$OUT/$1-$server-$round.json"); done
    series+=("$server=$(IFS=,; echo "${files[*]}")")
  done
  "$PEERS/peers-charts" --title "$2" --out "$CHARTS/compare-$1.svg" "${series[@]}"
}
if [ ! -x "$PEERS/peers-charts" ]; then
  echo "compare.sh: no charts: $PEERS/peers-charts is not built" >&2
  exit 0
fi
mkdir -p "$CHARTS"
has echo && for conns in $ECHO_CONNS; do
  chart "echo$conns" "echo round trip, $conns connections, 32 B (median of $ROUNDS rounds)"
done
has fanout && for rate in $FANOUT_RATES; do
  chart "fanout$rate" "fanout publish to receipt, $SUBSCRIBERS subscribers x $rate msgs/s, 64 B (median of $ROUNDS rounds)"
done
echo "tables: $OUT/compare.md; charts: $CHARTS/compare-*.svg" >&2
