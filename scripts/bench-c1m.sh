#!/usr/bin/env bash
# C1M end to end through the load generator: one `clarion serve` process and one
# `clarion-loadgen` process over loopback, inside a network namespace this script creates (so the
# host's own network settings stay as they are), run through every phase of a push server's day:
#
#   ramp     N envelope subscribers (`/ws`, one topic) at --ramp-rate connections a second,
#            at most half a second's worth being opened at once, connect errors retried 10
#            times with backoff (0.5 s doubling to 5 s) as clients do
#   hold     --hold with every connection open; the server's keep-alive pings (every 30 s of
#            silence) are on and answered
#   fanout   --rounds messages to all N, one every --round-every
#   storm    --storm of the subscribers dropped at once (a reset), away 0.2 s while one more
#            message is published, then all dial again and resume from their last seq
#   close    every connection closed with a close handshake
#
# It prints and writes as JSON (target/bench-c1m/c1m.json): connections held, the ramp's rate,
# server and loadgen user space per connection, kernel memory per socket (slab) and TCP buffer
# memory (sockstat), each message's time to its first and last subscriber, the delivery
# percentiles, missing/duplicate/out-of-order deliveries, the server's CPU per delivery (user and
# kernel), the storm's time and failures, the close's time and failures, and the kernel's drop
# counters. Where it does not reach N it says which limit stopped it.
#
#   scripts/bench-c1m.sh [--apply] [--connections N] [--io uring|epoll] [--ramp-rate R]
#                        [--hold D] [--rounds K] [--round-every D] [--storm F]
#                        [--pong-timeout D] [--no-netns] [--tls]
#
# --connections N   subscribers (default 1000000)
# --io IO           the server's backend (default: io_uring where the kernel allows it)
# --ramp-rate R     new connections a second during the ramp (default 10000)
# --hold D          how long all are held before the fanout (default 60s)
# --rounds K        fanout messages (default 5), --round-every D apart (default 20s)
# --storm F         share dropped by the reconnect storm (default 0.1; 0: none)
# --pong-timeout D  the server's (default: its own, 15s); a subscriber whose answer to a ping
#                   waits behind a fanout longer than this is dropped
# --apply           set the host-wide settings the run needs, and restore them at the end
# --no-netns        run in the host's network namespace (its settings are then needed too)
# --tls             every connection over TLS (wss://): a certificate from scripts/make-cert.sh,
#                   the loadgen trusting its CA; the ramp defaults to 2,000 a second (a full
#                   handshake costs the server about half a millisecond of CPU)
#
# Host-wide settings (checked; with --apply set and restored at the end, even on failure):
# fs.file-max, net.ipv4.tcp_mem, net.core.netdev_max_backlog, and
# net.ipv4.tcp_child_ehash_entries (Linux 6.1+), set only for the instant the namespace is
# created: it gives the namespace a TCP established hash table of its own, sized for the run
# (the host's is sized at boot, 262,144 buckets here, eight sockets a bucket at C1M). Inside
# the namespace, which vanishes with its settings: the listen backlog, the ephemeral ports
# (1024-65535, the server port reserved), TIME_WAIT buckets. The fd limit is not raised: the
# server keeps its sockets in io_uring fixed-file tables (or per-reactor fd tables with epoll),
# the loadgen in per-thread fd tables, so reactors and threads are sized from the hard
# RLIMIT_NOFILE. Each (source address, server) pair holds at most 20,000 connections: the
# loadgen connects from 127.0.0.2 up. Keeps 4 GiB of memory free for the rest of the host: the
# loadgen is stopped (and closes cleanly) if less is left. Raw reports: target/bench-c1m/.
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=bench-c1m
# shellcheck source=lib/sysctl.sh
. scripts/lib/sysctl.sh

N=1000000 IO="" RAMP_RATE=10000 HOLD=60s ROUNDS=5 ROUND_EVERY=20s STORM=0.1 APPLY=0 NETNS=1
PONG_TIMEOUT="" TLS=0 RAMP_GIVEN=0
usage() {
  sed -n 2,52p "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case $1 in
    --apply) APPLY=1 ;;
    --no-netns) NETNS=0 ;;
    --tls) TLS=1 ;;
    --connections) N=${2:?}; shift ;;
    --io) IO=${2:?}; shift ;;
    --ramp-rate) RAMP_RATE=${2:?} RAMP_GIVEN=1; shift ;;
    --hold) HOLD=${2:?}; shift ;;
    --rounds) ROUNDS=${2:?}; shift ;;
    --round-every) ROUND_EVERY=${2:?}; shift ;;
    --storm) STORM=${2:?}; shift ;;
    --pong-timeout) PONG_TIMEOUT=${2:?}; shift ;;
    -h | --help) usage ;;
    *) echo "$PROG: unknown argument $1" >&2; usage ;;
  esac
  shift
done
[ "$TLS" = 0 ] || [ "$RAMP_GIVEN" = 1 ] || RAMP_RATE=2000
number() { case $2 in '' | *[!0-9]*) echo "$PROG: $1 wants a whole number, not '$2'" >&2; exit 2 ;; esac; }
number --connections "$N"
number --ramp-rate "$RAMP_RATE"
number --rounds "$ROUNDS"
[ "$N" -ge 1 ] && [ "$RAMP_RATE" -ge 1 ] && [ "$ROUNDS" -ge 1 ] ||
  { echo "$PROG: --connections, --ramp-rate and --rounds must be at least 1" >&2; exit 2; }
case $IO in '' | uring | epoll) ;; *) echo "$PROG: --io is uring or epoll" >&2; exit 2 ;; esac
seconds() { # DURATION -> whole seconds (s, m, or ms rounded up)
  case $1 in
    *ms) echo $(((${1%ms} + 999) / 1000)) ;;
    *s) echo "${1%s}" ;;
    *m) echo $((${1%m} * 60)) ;;
    *) echo "$1" ;;
  esac
}
HOLD_S=$(seconds "$HOLD") ROUND_S=$(seconds "$ROUND_EVERY")
number --hold "$HOLD_S"
number --round-every "$ROUND_S"
[ "$ROUND_S" -ge 1 ] || { echo "$PROG: --round-every must be at least 1s" >&2; exit 2; }
python3 -c "import sys; f = float(sys.argv[1]); sys.exit(0 if 0 <= f <= 1 else 1)" "$STORM" 2>/dev/null ||
  { echo "$PROG: --storm is a share from 0 to 1" >&2; exit 2; }
if [ "$NETNS" = 1 ] && { [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; }; then
  echo "$PROG: the network namespace needs root and iproute2; use --no-netns to run in the host's" >&2
  exit 1
fi

# --- what the run needs: host-wide settings ---

PER_PAIR=20000   # connections per (source address, server) pair
RESERVE_KIB=$((4 << 20)) # memory left for the rest of the host
NOT_READY=()
need() { # KEY OK(yes/"") VALUE WHY: record a need, or with --apply meet it
  local key=$1 ok=$2 value=$3 why=$4
  [ "$ok" = yes ] && return 0
  if [ "$APPLY" = 1 ] && set_sysctl "$key" "$value"; then
    return 0
  fi
  NOT_READY+=("$key is $(read_sysctl "$key"), wants $value: $why (--apply, or sysctl -w $key='$value')")
}
at_least() { [ "$1" -ge "$2" ] && echo yes || true; }

read -r _ _ files_max <<<"$(cat /proc/sys/fs/file-nr)"
files_used=$(awk '{print $1}' /proc/sys/fs/file-nr)
files_want=$((files_used + N * 21 / 10 + 65536))
need fs.file-max "$(at_least "$files_max" "$files_want")" "$files_want" \
  "two sockets per connection (server and loadgen), each a file"
read -r mem_lo mem_press mem_hi <<<"$(read_sysctl net.ipv4.tcp_mem)"
need net.ipv4.tcp_mem "$(at_least "$mem_hi" $((2 * N)))" "$N $((3 * N / 2)) $((2 * N))" \
  "pages all TCP buffers may take; a socket holding any byte is charged a page, and a fanout or a close queues bytes on all N at once"
backlog=$(read_sysctl net.core.netdev_max_backlog)
backlog_want=$((N / 16 < 1000 ? 1000 : N / 16 > 65536 ? 65536 : N / 16))
need net.core.netdev_max_backlog "$(at_least "$backlog" "$backlog_want")" "$backlog_want" \
  "loopback packets wait in this per-CPU queue; bursts past it are dropped and retransmitted later"
EHASH=0 # a power of two for the run's sockets and TIME_WAIT entries; only with --apply
if [ "$NETNS" = 1 ] && [ -e "$(proc_path net.ipv4.tcp_child_ehash_entries)" ]; then
  if [ "$APPLY" = 1 ]; then
    EHASH=65536
    while [ "$EHASH" -lt $((3 * N)) ] && [ "$EHASH" -lt $((1 << 24)) ]; do EHASH=$((EHASH * 2)); done
  elif [ "$N" -gt 100000 ]; then
    echo "$PROG: without --apply the namespace shares the host's TCP established hash table ($(read_sysctl net.ipv4.tcp_ehash_entries) buckets)" >&2
  fi
fi

# Per-namespace settings: set inside the namespace (they vanish with it); with --no-netns the
# host's must do, checked (and with --apply set) like the above.
NS_SETTINGS=(
  "net.core.somaxconn=65535"
  "net.ipv4.tcp_max_syn_backlog=65535"
  "net.ipv4.ip_local_port_range=1024 65535"
  "net.ipv4.ip_local_reserved_ports=9001"
  "net.ipv4.tcp_max_tw_buckets=$((2 * N + 10000))"
)
PORT=9001
if [ "$NETNS" = 0 ]; then
  in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
  read -r port_lo port_hi <<<"$(read_sysctl net.ipv4.ip_local_port_range)"
  per_source=$((N < PER_PAIR ? N : PER_PAIR))
  need net.ipv4.ip_local_port_range "$([ $((port_hi - port_lo)) -gt $((per_source + 1000)) ] && echo yes)" \
    "10240 65535" "$PER_PAIR connections per source address need as many ephemeral ports"
  read -r port_lo port_hi <<<"$(read_sysctl net.ipv4.ip_local_port_range)"
  while in_use "$PORT"; do PORT=$((PORT + 1)); done
  reserved=$(read_sysctl net.ipv4.ip_local_reserved_ports)
  need net.ipv4.ip_local_reserved_ports \
    "$({ [ "$PORT" -lt "$port_lo" ] || [ "$PORT" -gt "$port_hi" ] || printf ',%s,' "$reserved" | grep -q ",$PORT,"; } && echo yes)" \
    "${reserved:+$reserved,}$PORT" "port $PORT is inside the ephemeral range $port_lo-$port_hi"
  somaxconn=$(read_sysctl net.core.somaxconn)
  need net.core.somaxconn "$(at_least "$somaxconn" $((N < 4096 ? N : 4096)))" 65535 \
    "the listen backlog absorbs the ramp"
  tw=$(read_sysctl net.ipv4.tcp_max_tw_buckets)
  need net.ipv4.tcp_max_tw_buckets "$(at_least "$tw" $((N + 10000)))" $((2 * N + 10000)) \
    "closed connections wait in TIME_WAIT for a minute"
fi

# Memory: about 5 KiB of kernel memory per socket (two per connection), TCP buffers in a fanout,
# and both processes' user space, with RESERVE_KIB left for the rest of the host.
avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
want_kib=$((N * 12 + RESERVE_KIB))
[ "$avail_kib" -ge "$want_kib" ] ||
  NOT_READY+=("memory: $((avail_kib >> 10)) MiB available, $((want_kib >> 10)) MiB wanted (about 12 KiB per connection, 4 GiB left for the rest of the host)")

# Reactors and loadgen threads from the hard fd limit: each reactor's fixed-file table (or fd
# table) and each loadgen thread's fd table holds up to the limit, less a few of the process's.
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
per_table=$((hard - 200))
[ "$per_table" -ge 100 ] || NOT_READY+=("the hard RLIMIT_NOFILE ($hard) is too low to hold connections")
per_table=$((per_table < 100 ? 100 : per_table))
# SO_REUSEPORT spreads connections by hash, not evenly: a tenth of headroom, and one more.
REACTORS=$(((N * 11 / 10 + per_table - 1) / per_table + 1))
THREADS=$(((N + per_table - 1) / per_table))
SOURCES=$(((N + PER_PAIR - 1) / PER_PAIR))
[ "$REACTORS" -le 64 ] ||
  NOT_READY+=("$N connections at a hard fd limit of $hard need $REACTORS reactors; the server runs at most 64")
[ "$SOURCES" -le 250 ] || NOT_READY+=("$N connections need $SOURCES source addresses (127.0.0.2-127.0.0.251 at most)")
if [ -z "$IO" ]; then
  if [ "$(read_sysctl kernel.io_uring_disabled)" = 0 ] || [ -z "$(read_sysctl kernel.io_uring_disabled)" ]; then
    IO=uring
  else
    IO=epoll
  fi
fi
if [ "$IO" = uring ]; then
  IO_FLAGS=(--io uring --uring-buffers 64)
else
  IO_FLAGS=(--io epoll --private-fd-table)
fi

if [ ${#NOT_READY[@]} -gt 0 ]; then
  restore_sysctls
  echo "$PROG: this host is not ready for $N connections:" >&2
  printf '  - %s\n' "${NOT_READY[@]}" >&2
  exit 1
fi

# --- the run ---

OUT=${CARGO_TARGET_DIR:-target}/bench-c1m
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.txt
cargo build --release -q -p clarion -p clarion-loadgen
SERVER=$(realpath "${CARGO_TARGET_DIR:-target}/release/clarion")
LOADGEN=$(realpath "${CARGO_TARGET_DIR:-target}/release/clarion-loadgen")

NS="" server_pid="" loadgen_pid="" sampler_pid=""
in_ns() { if [ -n "$NS" ]; then ip netns exec "$NS" "$@"; else "$@"; fi; }
# in_ns in the background in a session of its own, as separately started programs run (the
# scheduler's autogroups then share the CPU between them and the host's other work), with the
# command's own pid in $! (`ip netns exec` and `setsid` exec it).
in_ns_bg() {
  if [ -n "$NS" ]; then setsid ip netns exec "$NS" "$@" & else setsid "$@" & fi
}
finish() {
  local pid
  for pid in "$sampler_pid" "$loadgen_pid"; do
    [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  [ -n "$NS" ] && ip netns delete "$NS" 2>/dev/null
  NS="" server_pid="" loadgen_pid="" sampler_pid=""
  restore_sysctls
}
trap finish EXIT
trap 'exit 130' INT TERM

if [ "$NETNS" = 1 ]; then
  NS=clarion-c1m-$$
  if [ "$EHASH" -gt 0 ]; then
    # Only for this instant: a namespace takes its table size when it is created.
    set_sysctl net.ipv4.tcp_child_ehash_entries "$EHASH" >/dev/null
  fi
  ip netns add "$NS"
  for entry in "${SYSCTL_SAVED[@]}"; do
    if [ "${entry%%$'\t'*}" = net.ipv4.tcp_child_ehash_entries ]; then
      write_sysctl net.ipv4.tcp_child_ehash_entries "${entry#*$'\t'}"
    fi
  done
  in_ns ip link set lo up
  for setting in "${NS_SETTINGS[@]}"; do
    in_ns sysctl -qw "$setting" >/dev/null
  done
  echo "$PROG: network namespace $NS (TCP established hash: $(in_ns cat /proc/sys/net/ipv4/tcp_ehash_entries | tr -d -) buckets)"
fi

# Kernel and process figures, sampled every second all through the run (from the server's view
# of the namespace: /proc/PID/net): time, TCP sockets in use, orphans, TIME_WAIT, TCP buffer
# pages, slab KiB, MemAvailable KiB, server and loadgen RSS KiB, server and loadgen CPU (user,
# kernel ticks), then the host's CPU (/proc/stat: user nice system idle iowait irq softirq
# steal, ticks).
sample() {
  local pid=$1 lg=$2 rss cpu
  printf '%s ' "$(date +%s.%N)"
  awk '/^TCP:/ {printf "%s %s %s %s ", $3, $5, $7, $11}' "/proc/$pid/net/sockstat"
  awk '/^Slab:/ {s=$2} /^MemAvailable:/ {a=$2} END {printf "%s %s ", s, a}' /proc/meminfo
  awk '/^VmRSS:/ {printf "%s ", $2}' "/proc/$pid/status"
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$lg/status" 2>/dev/null) || true
  printf '%s ' "${rss:-0}"
  for p in "$pid" "$lg"; do # utime and stime follow the command name, which may hold spaces
    cpu=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}') || true
    printf '%s ' "${cpu:-0 0}"
  done
  awk '/^cpu / {print $2, $3, $4, $5, $6, $7, $8, $9}' /proc/stat
}
counters() { # the namespace's TCP counters and the host's softnet drops, raw (parsed by the report)
  cat "/proc/$1/net/netstat" "/proc/$1/net/snmp"
  echo "softnet: $(awk '{printf "%s ", $2}' /proc/net/softnet_stat)"
}

read -r slab0 <<<"$(awk '/^Slab:/ {print $2}' /proc/meminfo)"
# The loadgen's publisher is one of its WebSocket clients (client publishing is off by default),
# no per-client rates, and room for the ramp's handshakes in flight (production defaults aside:
# they cap a reactor at 1,024 connections mid-handshake).
server_flags=(--threads "$REACTORS" --no-pin --listen "127.0.0.1:$PORT" --backlog 65535
  --client-publish all --message-rate 0 --byte-rate 0 --max-handshakes-per-reactor 65536)
scheme=ws tls_loadgen=()
if [ "$TLS" = 1 ]; then
  bash scripts/make-cert.sh "$OUT/cert" >/dev/null
  server_flags+=(--tls-cert "$OUT/cert/chain.pem" --tls-key "$OUT/cert/key.pem")
  scheme=wss tls_loadgen=(--ca "$OUT/cert/ca.pem")
fi
[ -z "$PONG_TIMEOUT" ] || server_flags+=(--pong-timeout "$PONG_TIMEOUT")
in_ns_bg "$SERVER" serve "${IO_FLAGS[@]}" "${server_flags[@]}" 2>"$OUT/server.log"
server_pid=$!
for _ in $(seq 100); do
  if in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then break; fi
  kill -0 "$server_pid" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
  sleep 0.1
done
sleep 1 # every reactor's fixed memory in the "before" reading
counters "$server_pid" >"$OUT/counters-before.txt"
window=$((ROUNDS * ROUND_S))
ramp_timeout=$((N * 2 / RAMP_RATE + 60))
close_timeout=$((N / 2000 + 30))
storm_flags=()
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)" "$STORM" &&
  storm_flags=(--storm "$STORM" --storm-timeout 120s)
LOADGEN_ARGS=(fanout "$scheme://127.0.0.1:$PORT/ws" "${tls_loadgen[@]}" --protocol envelope -c "$N" --topics 1 --publishers 1
  --rate "$(python3 -c "print(1 / $ROUND_S)")" -s 64 -d "${window}s" --hold "$HOLD" "${storm_flags[@]}"
  --threads "$THREADS" --private-fd-table --source-ips "127.0.0.2-127.0.0.$((SOURCES + 1))"
  --ramp-rate "$RAMP_RATE" --max-pending $((RAMP_RATE / 2)) --retries 10 --backoff 500ms
  --ramp-timeout "${ramp_timeout}s" --connect-timeout 30s
  --close-timeout "${close_timeout}s" --drain 2s --server-pid "$server_pid" --progress
  --json "$OUT/loadgen.json")
echo "$PROG: $N connections${tls_loadgen:+ over TLS}: server pid $server_pid (${IO_FLAGS[*]}, $REACTORS reactors${PONG_TIMEOUT:+, pong timeout $PONG_TIMEOUT}), loadgen $THREADS threads from 127.0.0.2-127.0.0.$((SOURCES + 1)), ramp $RAMP_RATE/s, hold $HOLD, $ROUNDS rounds ${ROUND_EVERY} apart, storm $STORM"
echo "$PROG: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r), RLIMIT_NOFILE hard $hard; $(uptime | sed 's/.*load average/load average/')"
started=$(date +%s.%N)
status=0
in_ns_bg timeout $((ramp_timeout + HOLD_S + window + 240 + close_timeout)) "$LOADGEN" "${LOADGEN_ARGS[@]}" \
  >"$OUT/loadgen.txt" 2>"$OUT/loadgen-progress.log"
loadgen_pid=$!
(
  stopped=0
  lg=0
  while kill -0 "$loadgen_pid" 2>/dev/null; do
    # `timeout` runs the loadgen as its child.
    [ "$lg" != 0 ] || lg=$(pgrep -P "$loadgen_pid" -f "$LOADGEN" || echo 0)
    line=$(sample "$server_pid" "$lg" 2>/dev/null) && echo "$line"
    avail=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    if [ "$stopped" = 0 ] && [ "$avail" -lt "$RESERVE_KIB" ]; then
      echo "$PROG: only $((avail >> 10)) MiB of memory left: stopping the loadgen (it closes cleanly)" >&2
      echo "memory $avail" >"$OUT/stopped.txt"
      [ "$lg" != 0 ] && kill -INT "$lg"
      stopped=1
    fi
    sleep 1
  done
) >"$OUT/kernel.log" &
sampler_pid=$!
wait "$loadgen_pid" || status=$?
loadgen_pid=""
ended=$(date +%s.%N)
kill "$sampler_pid" 2>/dev/null; wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
counters "$server_pid" >"$OUT/counters-after.txt"
ehash=$(in_ns cat /proc/sys/net/ipv4/tcp_ehash_entries | tr -d -)
conntrack=$(in_ns cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0)
finish
trap - EXIT
cat "$OUT/loadgen.txt"
if [ ! -s "$OUT/loadgen.json" ]; then
  echo "$PROG: the load generator wrote no report (exit status $status); see $OUT/loadgen-progress.log" >&2
  exit 1
fi

python3 scripts/lib/c1m_report.py "$OUT" "$N" "$slab0" "$status" "$started" "$ended" \
  "io=$IO" "tls=$TLS" "reactors=$REACTORS" "threads=$THREADS" "sources=$SOURCES" "ramp_rate=$RAMP_RATE" \
  "hold_s=$HOLD_S" "rounds=$ROUNDS" "round_every_s=$ROUND_S" "storm=$STORM" "ehash=$ehash" \
  "conntrack=$conntrack" "netns=$NETNS" "fd_hard=$hard" "cores=$(nproc)" "kernel=$(uname -r)"
