#!/usr/bin/env bash
# The C100K run through the load generator: one `clarion serve` process (io_uring where the
# kernel allows it, else epoll with a private fd table per reactor) and one `clarion-loadgen`
# process over loopback. The loadgen ramps N subscribers of one topic (raw `/t/` sockets),
# holds them while a fanout round publishes one 64-byte message a second to all of them, then
# closes them all. Prints connections held, the server's user-space bytes per connection, the
# kernel's memory per socket, and the fanout's publish-to-receive percentiles.
#
#   scripts/bench-c100k.sh [--apply] [--tls] [--connections N] [--duration D] [--port P]
#
# --connections N   subscribers (default 100000)
# --duration D      fanout round after the ramp-up (default 10s)
# --port P          the server's port (default: the first free one from 9001 up, below the
#                   ephemeral port range)
# --apply           set the kernel parameters the run needs (root), and restore them at the end
# --tls             the same over TLS (wss://): a certificate from scripts/make-cert.sh, the
#                   loadgen trusting its CA; the ramp is paced at 2,000 handshakes a second
#
# Without --apply a host that is not ready is reported (what, why, the fix) and nothing runs
# (exit 1). The fd limit is not one of them: the server keeps its sockets in io_uring fixed-file
# tables (or per-reactor fd tables), the loadgen in per-thread fd tables, so both pass a hard
# RLIMIT_NOFILE far below N by using more reactors and threads (computed below). Each
# (source address, server) pair keeps under 20,000 connections: the loadgen connects from
# 127.0.0.2 up. Bounded: the ramp gives up after 120 s, the whole loadgen run after 10 minutes.
# Raw reports go to target/bench-c100k/.
set -euo pipefail
cd "$(dirname "$0")/.."

N=100000
DURATION=10s
PORT=""
APPLY=0
TLS=0
usage() {
  sed -n 2,24p "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case $1 in
    --apply) APPLY=1 ;;
    --tls) TLS=1 ;;
    --connections) N=${2:?}; shift ;;
    --duration) DURATION=${2:?}; shift ;;
    --port) PORT=${2:?}; shift ;;
    -h | --help) usage ;;
    *) echo "bench-c100k: unknown argument $1" >&2; usage ;;
  esac
  shift
done
case $N in '' | *[!0-9]*) echo "bench-c100k: --connections wants a number" >&2; exit 2 ;; esac
case $PORT in *[!0-9]*) echo "bench-c100k: --port wants a number" >&2; exit 2 ;; esac
[ "$N" -ge 1 ] || { echo "bench-c100k: --connections must be at least 1" >&2; exit 2; }

# --- what the run needs, and what --apply changed (restored on exit) ---

SAVED=()     # "key<TAB>old value" for every sysctl --apply changed
NOT_READY=() # one line per unmet need
PER_PAIR=20000

sysctl_path() { printf '/proc/sys/%s\n' "${1//.//}"; }
read_sysctl() { tr -s '\t ' ' ' <"$(sysctl_path "$1")"; }

set_sysctl() { # KEY VALUE: saves the old value once
  local key=$1 value=$2 old
  old=$(read_sysctl "$key")
  if ! printf '%s\n' "$value" >"$(sysctl_path "$key")" 2>/dev/null; then
    NOT_READY+=("$key: cannot set it to '$value' (root and a writable /proc/sys needed)")
    return 1
  fi
  SAVED+=("$key"$'\t'"$old")
  echo "bench-c100k: set $key = $value (was $old)"
}

restore_sysctls() {
  local entry
  for entry in "${SAVED[@]+"${SAVED[@]}"}"; do
    printf '%s\n' "${entry#*$'\t'}" >"$(sysctl_path "${entry%%$'\t'*}")" 2>/dev/null &&
      echo "bench-c100k: restored ${entry%%$'\t'*} = ${entry#*$'\t'}"
  done
  SAVED=()
}

need() { # KEY CURRENT_OK VALUE WHY: record (or with --apply fix) one need
  local key=$1 ok=$2 value=$3 why=$4
  [ "$ok" = yes ] && return 0
  if [ "$APPLY" = 1 ]; then
    set_sysctl "$key" "$value" || true # a failure is in NOT_READY
    return 0
  fi
  local current
  current=$(read_sysctl "$key")
  NOT_READY+=("$key is ${current:-(empty)}, wants $value: $why (fix: --apply, or sysctl -w $key='$value')")
}

# Listen backlog: the ramp arrives at 10,000 connections a second.
somaxconn=$(read_sysctl net.core.somaxconn)
backlog=$((N < 4096 ? N : 4096))
need net.core.somaxconn "$([ "$somaxconn" -ge "$backlog" ] && echo yes)" "$backlog" \
  "the listen backlog absorbs the ramp"

# Ports: each source address takes up to PER_PAIR connections to the one server port.
read -r port_lo port_hi <<<"$(read_sysctl net.ipv4.ip_local_port_range)"
per_source=$((N < PER_PAIR ? N : PER_PAIR))
if [ $((port_hi - port_lo + 1)) -lt $((per_source + 1000)) ]; then
  need net.ipv4.ip_local_port_range no "10240 65535" \
    "$PER_PAIR connections per source address need as many ephemeral ports"
  read -r port_lo port_hi <<<"$(read_sysctl net.ipv4.ip_local_port_range)"
fi
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "$PORT" ]; then
  PORT=9001
  while in_use "$PORT" && [ "$PORT" -lt $((port_lo - 1)) ]; do PORT=$((PORT + 1)); done
fi
if in_use "$PORT"; then
  echo "bench-c100k: port $PORT is in use; pick another with --port" >&2
  exit 1
fi
# A server port inside the ephemeral range can be taken by an outgoing connection first.
if [ "$PORT" -ge "$port_lo" ] && [ "$PORT" -le "$port_hi" ]; then
  reserved=$(read_sysctl net.ipv4.ip_local_reserved_ports)
  if ! printf ',%s,' "$reserved" | grep -q ",$PORT,"; then
    need net.ipv4.ip_local_reserved_ports no "${reserved:+$reserved,}$PORT" \
      "port $PORT is inside the ephemeral range $port_lo-$port_hi"
  fi
fi

# Connection tracking (when loaded) holds one entry per loopback connection.
if [ -e "$(sysctl_path net.netfilter.nf_conntrack_max)" ]; then
  ct_max=$(read_sysctl net.netfilter.nf_conntrack_max)
  ct_now=$(read_sysctl net.netfilter.nf_conntrack_count)
  ct_want=$((ct_now + N + 10000))
  need net.netfilter.nf_conntrack_max "$([ "$ct_max" -ge "$ct_want" ] && echo yes)" "$ct_want" \
    "when the table is full new connections are dropped"
fi

# Closing N connections leaves N sockets in TIME_WAIT; past the cap the kernel logs overflows.
tw=$(read_sysctl net.ipv4.tcp_max_tw_buckets)
need net.ipv4.tcp_max_tw_buckets "$([ "$tw" -ge $((N + 10000)) ] && echo yes)" $((N + 10000)) \
  "closed connections wait in TIME_WAIT for a minute"

# Kernel memory: about 4.4 KiB per idle loopback socket, two sockets per connection.
avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
want_kib=$((N * 2 * 6 + 262144))
if [ "$avail_kib" -lt "$want_kib" ]; then
  NOT_READY+=("memory: $((avail_kib / 1024)) MiB available, about $((want_kib / 1024)) MiB wanted (both ends of $N loopback connections)")
fi

if [ ${#NOT_READY[@]} -gt 0 ]; then
  restore_sysctls
  echo "bench-c100k: this host is not ready for $N connections:" >&2
  printf '  - %s\n' "${NOT_READY[@]}" >&2
  exit 1
fi

# --- sizes: reactors, loadgen threads and source addresses for this fd limit ---

hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
per_table=$((hard - 200)) # fds each reactor or loadgen thread may hold (a few are the process's)
if [ "$per_table" -lt 100 ]; then
  echo "bench-c100k: the hard RLIMIT_NOFILE ($hard) is too low to hold connections" >&2
  exit 1
fi
# SO_REUSEPORT spreads connections by hash, not evenly: a tenth of headroom, and one more.
reactors=$(((N * 11 / 10 + per_table - 1) / per_table + 1))
threads=$(((N + per_table - 1) / per_table))
sources=$(((N + PER_PAIR - 1) / PER_PAIR))
if [ "$reactors" -gt 64 ] || [ "$sources" -gt 250 ]; then
  echo "bench-c100k: $N connections at a hard fd limit of $hard need $reactors reactors (at most 64)" >&2
  exit 1
fi
if [ "$(read_sysctl kernel.io_uring_disabled 2>/dev/null || echo 0)" = 0 ]; then
  io=(--io uring --uring-buffers 64)
else
  io=(--io epoll --private-fd-table)
fi

# --- the run ---

OUT=${CARGO_TARGET_DIR:-target}/bench-c100k
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/kernel.log
cargo build --release -q -p clarion -p clarion-loadgen
SERVER=${CARGO_TARGET_DIR:-target}/release/clarion
LOADGEN=${CARGO_TARGET_DIR:-target}/release/clarion-loadgen

server_pid="" sampler_pid=""
finish() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null && wait "$sampler_pid" 2>/dev/null
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid="" sampler_pid=""
  restore_sysctls
}
trap finish EXIT
trap 'exit 130' INT TERM

# Kernel memory, sampled before and all through the run: sockets in use, slab, TCP buffers.
kernel_sample() {
  awk '/^TCP:/ {inuse=$3; mem=$11} END {printf "%s %s ", inuse, mem}' /proc/net/sockstat
  awk '/^Slab:/ {print $2}' /proc/meminfo
}
read -r inuse0 tcpmem0 slab0 <<<"$(kernel_sample)"
(while true; do kernel_sample; sleep 0.5; done) >"$OUT/kernel.log" &
sampler_pid=$!

# TLS: a local CA and certificate; the loadgen trusts the CA; handshakes cost the server about
# half a millisecond each, so the ramp is paced.
scheme=ws tls_server=() tls_loadgen=() ramp_rate=10000 ramp_timeout=120s
if [ "$TLS" = 1 ]; then
  bash scripts/make-cert.sh "$OUT/cert" >/dev/null
  scheme=wss ramp_rate=2000 ramp_timeout=300s
  tls_server=(--tls-cert "$OUT/cert/chain.pem" --tls-key "$OUT/cert/key.pem")
  tls_loadgen=(--ca "$OUT/cert/ca.pem")
fi
"$SERVER" serve "${io[@]}" --threads "$reactors" --no-pin --listen "127.0.0.1:$PORT" \
  --ping-interval 0 "${tls_server[@]}" 2>"$OUT/server.log" &
server_pid=$!
for _ in $(seq 100); do
  if in_use "$PORT"; then break; fi
  kill -0 "$server_pid" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
  sleep 0.1
done
echo "bench-c100k: server pid $server_pid (${io[*]}, $reactors reactors); loadgen: $threads thread(s), sources 127.0.0.2-127.0.0.$((sources + 1))"

status=0
timeout 600 "$LOADGEN" fanout "$scheme://localhost:$PORT/t/" -c "$N" --rate 1 -s 64 -d "$DURATION" \
  --topics 1 --publishers 1 --threads "$threads" --private-fd-table "${tls_loadgen[@]}" \
  --source-ips "127.0.0.2-127.0.0.$((sources + 1))" --ramp-rate "$ramp_rate" --ramp-timeout "$ramp_timeout" \
  --server-pid "$server_pid" --json "$OUT/fanout.json" || status=$?
kill "$sampler_pid" 2>/dev/null; wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
finish
trap - EXIT

if [ ! -s "$OUT/fanout.json" ]; then
  echo "bench-c100k: the load generator wrote no report (exit status $status)" >&2
  exit 1
fi

python3 - "$OUT/fanout.json" "$OUT/kernel.log" "$N" "$inuse0" "$tcpmem0" "$slab0" "$status" <<'PY'
import json, sys
report, log, n, inuse0, tcpmem0, slab0, status = sys.argv[1:8]
n, inuse0, tcpmem0, slab0, status = int(n), int(inuse0), int(tcpmem0), int(slab0), int(status)
j = json.load(open(report))
samples = [tuple(map(int, line.split())) for line in open(log) if len(line.split()) == 3]
peak = max(samples, default=(inuse0, tcpmem0, slab0))
buffers = max((s[1] for s in samples), default=tcpmem0)
sockets = peak[0] - inuse0
print(f"\n## C100K run: {n:,} connections{' over TLS' if j.get('tls_us', {}).get('count') else ''}\n")
print(f"- held: {j['established']:,} of {n:,} established, {j['failed']:,} failed, "
      f"{j['closed_clean']:,} closed cleanly at the end")
failures = {k: v for k, v in j["failures"].items() if v}
if failures:
    print(f"- failures by reason: {failures}")
server = j.get("server") or {}
if server.get("rss_per_connection_bytes") is not None:
    print(f"- server user space: {server['rss_before_kib']:,} KiB before, {server['rss_after_kib']:,} KiB "
          f"with all open and subscribed: {server['rss_per_connection_bytes']:.0f} bytes per connection")
if sockets > 0:
    slab = (peak[2] - slab0) * 1024
    print(f"- kernel (/proc/net/sockstat, /proc/meminfo): {sockets:,} more TCP sockets in use at the peak "
          f"(both ends), slab +{(peak[2] - slab0) / 1024:,.0f} MiB: about {slab / sockets / 1024:.1f} KiB per socket; "
          f"TCP buffer memory {tcpmem0 * 4:,} KiB before, at most {buffers * 4:,} KiB during the run "
          "(idle sockets hold none; the fanout's bursts do)")
lat = j["latency_us"]
print(f"- fanout: {j['published']} messages x {j['subscribers']:,} subscribers = {j['delivered']:,} deliveries, "
      f"{j['missing']} missing, {j['duplicates']} duplicates, {j['out_of_order']} out of order")
print("- publish-to-receive (ms): " + ", ".join(
    f"{k} {lat[k] / 1000:,.1f}" for k in ("p50", "p90", "p99", "p99_9", "max")))
lg = j["loadgen_cpu"]
print(f"- loadgen CPU {lg['total_s']:.1f} s ({lg['cores']:.2f} cores over the window)"
      + (", saturated" if lg["saturated"] else ""))
if j["established"] < n:
    reasons = ", ".join(f"{k} ({v:,})" for k, v in sorted(failures.items(), key=lambda kv: -kv[1]))
    print(f"\nbench-c100k: reached {j['established']:,} of {n:,}; stopped by: {reasons or 'unknown'} "
          "(fd_limit: the fd tables; addr_unavailable: ports per source address; refused/timeout: "
          "the listen backlog or the server; see docs/tuning.md)")
    sys.exit(1)
sys.exit(1 if status else 0)
PY
