#!/usr/bin/env bash
# The reconnect storm of issue 17: N clients of the Rust client (clarion-client), in several
# processes, subscribed across T topics on one `clarion serve`, while one more client publishes
# to those topics. Then every connection is cut at once (`--mode cut`: `ss -K` destroys the
# sockets, the server keeps running and its history covers the outage) or the server is
# restarted (`--mode restart`: SIGTERM, then a new process on the same port as soon as the old
# one has exited: a new epoch, nothing recoverable). Measured: time until every client has
# resubscribed, the spread of reconnections (histogram), the peak accept rate, attempts per
# client, the server's CPU through the storm, and (cut) that no client lost or repeated a
# message: each client's last seq equals its topic's final seq and no delivery broke the
# sequence.
#
#   scripts/bench-reconnect.sh [--clients N] [--procs P] [--topics T] [--rate R] [--mode cut|restart] [--tls]
#
# --clients N   clients in all (default 20000), split over --procs P processes (default 2)
# --topics T    topics (default 100); --rate R publishes per second in all (default 200)
# --mode        cut (default) or restart
# --tls         over wss:// (the server's own TLS, a certificate from scripts/make-cert.sh); the
#               server's TLS handshakes and how many of them resumed a session are reported
#
# Server on core 0, clients and publisher on core 1 (taskset). The hard fd limit (20,000 here)
# is per process: each client process stays below it, and the server keeps its sockets in
# io_uring fixed-file tables (or per-reactor fd tables on epoll) over 3 reactors. `ss -K` needs
# root and a kernel with CONFIG_INET_DIAG_DESTROY. Bounded: ramp-up at most 120 s, the storm at
# most 180 s. Raw results go to target/bench-reconnect/.
set -euo pipefail
cd "$(dirname "$0")/.."

N=20000 PROCS=2 TOPICS=100 RATE=200 MODE=cut TLS=0
while [ $# -gt 0 ]; do
  case $1 in
    --clients) N=${2:?}; shift ;;
    --procs) PROCS=${2:?}; shift ;;
    --topics) TOPICS=${2:?}; shift ;;
    --rate) RATE=${2:?}; shift ;;
    --mode) MODE=${2:?}; shift ;;
    --tls) TLS=1 ;;
    -h | --help) sed -n 2,25p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-reconnect: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case $MODE in cut | restart) ;; *) echo "bench-reconnect: --mode cut|restart" >&2; exit 2 ;; esac
PER_PROC=$(((N + PROCS - 1) / PROCS))
if [ "$PER_PROC" -ge "$(ulimit -Hn)" ]; then
  echo "bench-reconnect: $PER_PROC clients per process reach the fd limit; use more --procs" >&2
  exit 2
fi
ulimit -Sn "$(ulimit -Hn)"

OUT=${CARGO_TARGET_DIR:-target}/bench-reconnect
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.out
cargo build --release -q -p clarion --bin clarion
cargo build --release -q -p clarion-client --example reconnect_storm
SERVER=${CARGO_TARGET_DIR:-target}/release/clarion
STORM=${CARGO_TARGET_DIR:-target}/release/examples/reconnect_storm
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
APORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="ws://127.0.0.1:$PORT/ws" TLS_SERVER=() TLS_CLIENT=()
if [ "$TLS" = 1 ]; then
  scripts/make-cert.sh "$OUT/cert" >/dev/null
  URL="wss://127.0.0.1:$PORT/ws"
  TLS_SERVER=(--tls-cert "$OUT/cert/chain.pem" --tls-key "$OUT/cert/key.pem")
  TLS_CLIENT=(--ca "$OUT/cert/ca.pem")
fi
if [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" = 0 ]; then
  IO=(--io uring)
else
  IO=(--io epoll --private-fd-table)
fi

server_pid="" publisher_pid="" client_pids=()
start_server() {
  # Beyond the production defaults: the publisher is a WebSocket client sending $RATE a second
  # (client publishing on, no per-client rates), and the storm's thousands of handshakes at
  # once are not refused at accept (the storm measures reconnection, not the handshake cap).
  taskset -c 0 "$SERVER" serve "${IO[@]}" --threads 3 --no-pin --listen "127.0.0.1:$PORT" \
    --client-publish all --message-rate 0 --byte-rate 0 --max-handshakes-per-reactor 65536 \
    --admin-listen "127.0.0.1:$APORT" "${TLS_SERVER[@]}" 2>>"$OUT/server.log" &
  server_pid=$!
  for _ in $(seq 200); do
    ss -Hltn "sport = :$PORT" | grep -q . && return
    kill -0 "$server_pid" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "bench-reconnect: the server did not listen" >&2
  exit 1
}
stop() { # PID: SIGTERM, then SIGKILL after 15 s
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
finish() {
  for pid in "${client_pids[@]}" $publisher_pid $server_pid; do stop "$pid"; done
}
trap finish EXIT
trap 'exit 130' INT TERM

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

start_server
echo "bench-reconnect: server pid $server_pid (${IO[*]}, 3 reactors) on $PORT; $N clients in $PROCS processes, $TOPICS topics, $RATE publishes/s, mode $MODE"
for p in $(seq 0 $((PROCS - 1))); do
  count=$((p == PROCS - 1 ? N - PER_PROC * (PROCS - 1) : PER_PROC))
  taskset -c 1 "$STORM" clients --url "$URL" "${TLS_CLIENT[@]}" --clients "$count" --topics "$TOPICS" \
    --offset $((p * PER_PROC)) --out "$OUT/clients-$p.json" --max-wait 240 \
    >"$OUT/clients-$p.out" 2>"$OUT/clients-$p.log" &
  client_pids+=($!)
done
taskset -c 1 "$STORM" publish --url "$URL" "${TLS_CLIENT[@]}" --topics "$TOPICS" --rate "$RATE" \
  --out "$OUT/publisher.json" 2>"$OUT/publisher.log" &
publisher_pid=$!

wait_lines() { # WORD SECONDS: until every client process printed WORD
  local deadline=$((SECONDS + $2)) p
  for p in $(seq 0 $((PROCS - 1))); do
    while ! grep -q "^$1" "$OUT/clients-$p.out"; do
      if [ $SECONDS -ge $deadline ]; then echo "bench-reconnect: no '$1' from process $p" >&2; return 1; fi
      kill -0 "${client_pids[$p]}" 2>/dev/null || { cat "$OUT/clients-$p.log" >&2; return 1; }
      sleep 0.1
    done
  done
}
wait_lines ready 120
# Connections count as stable after 10 s (backoff resetAfter): the cut is then everyone's
# first failure, whose delay is drawn from [0, 1 s].
echo "bench-reconnect: all $N subscribed; holding 12 s"
sleep 12

tls_stat() { # KEY: the server's counter in /stats totals (admin listener)
  curl -s "http://127.0.0.1:$APORT/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['totals'].get('$1', 0))"
}
[ "$TLS" = 1 ] && { hs0=$(tls_stat tls_handshakes); res0=$(tls_stat tls_resumed); }
cpu0=$(cpu_ticks "$server_pid")
cut_ns=$(date +%s%N)
if [ "$MODE" = cut ]; then
  # (ss prints "RTNETLINK answers: Invalid argument" for sockets it cannot destroy, such as
  # listeners; the connections are destroyed.)
  ss -K dst 127.0.0.1 dport = ":$PORT" >/dev/null 2>&1
else
  old=$server_pid
  stop "$old"
  cpu0=0
  hs0=0 res0=0
  start_server
fi
restarted_ns=$(date +%s%N)
# The server's CPU, sampled every 100 ms through the storm.
(
  prev=$(cpu_ticks "$server_pid")
  while kill -0 "$server_pid" 2>/dev/null; do
    sleep 0.1
    now=$(cpu_ticks "$server_pid")
    echo "$(date +%s%N) $((now - prev))"
    prev=$now
  done
) >"$OUT/server-cpu.log" &
sampler=$!
wait_lines recovered 180 || true
end_ns=$(date +%s%N)
cpu1=$(cpu_ticks "$server_pid")
if [ "$TLS" = 1 ]; then
  echo "bench-reconnect: TLS handshakes through the storm: $(($(tls_stat tls_handshakes) - hs0)), resumed: $(($(tls_stat tls_resumed) - res0))"
fi
kill "$sampler" 2>/dev/null || true
# Publishing stops with a final marker per topic; the clients get it, then report.
kill -INT "$publisher_pid"
wait "$publisher_pid" || true
publisher_pid=""
sleep 2
for pid in "${client_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
for pid in "${client_pids[@]}"; do wait "$pid" || true; done
client_pids=()

python3 scripts/lib/storm_report.py --dir "$OUT" --mode "$MODE" --cut-ns "$cut_ns" \
  --restarted-ns "$restarted_ns" --end-ns "$end_ns" --cpu-ticks $((cpu1 - cpu0)) \
  --hz "$(getconf CLK_TCK)" --clients "$N"
