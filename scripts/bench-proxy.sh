#!/usr/bin/env bash
# What a proxy in front of Clarion costs: memory per idle WebSocket and CPU per connection and
# per message, for nginx and HAProxy terminating TLS with the tested configs of deploy/ (HTTP
# mode with X-Forwarded-For, and TCP mode with the PROXY protocol), beside Clarion alone.
# Loopback only; every run is bounded. Results: docs/deploy.md.
#
#   scripts/bench-proxy.sh [--connections N] [--hold 20s] [--echo 10s]
#
# For each of direct, nginx, haproxy, nginx-stream and haproxy-tcp:
#   1. `clarion-loadgen idle -c N` opens N WebSockets and holds them; once Clarion counts N open,
#      the RSS of every process of the proxy (nginx: master and workers) is read and compared
#      with before the ramp: bytes per idle connection. Clarion's own RSS per connection is the
#      loadgen's `--server-pid` figure. The proxy's CPU time over the ramp, divided by N, is its
#      cost of accepting a connection (TCP, the TLS handshake, the upgrade, the connection to
#      Clarion).
#   2. `clarion-loadgen echo -c 50` for --echo: the proxy's CPU time per echoed message (one
#      message each way), beside Clarion's.
#
# The loadgen speaks plain ws://, so for the TLS runs a second nginx (stream module, one worker)
# takes its connections and opens TLS to the proxy under test, as a browser would; its cost is
# not counted. Clarion runs on core 0, everything else on core 1 (a 2-core machine); say in the
# results whether other work shared the machine. Needs nginx (libnginx-mod-stream), haproxy,
# openssl, python3, and an fd limit of at least 2 N + 100 per process.
set -euo pipefail
cd "$(dirname "$0")/.."

connections=5000
hold=20s
echo_for=10s
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) connections=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --echo) echo_for=$2; shift 2 ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((2 * connections + 100)) ]; then
  echo "the fd limit $(ulimit -n) is below 2 x $connections + 100" >&2
  exit 2
fi

cargo build --release --quiet -p clarion --bin clarion
cargo build --release --quiet -p clarion-loadgen
clarion=target/release/clarion
loadgen=target/release/clarion-loadgen
work=$(mktemp -d /tmp/clarion-bench-proxy.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/make-cert.sh "$work/cert" >/dev/null

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The RSS (KiB) and CPU time (clock ticks) of a process and its children.
rss_kib() {
  local total=0 pid
  for pid in "$@" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")))
  done
  echo "$total"
}
cpu_ticks() {
  local total=0 pid
  for pid in "$@" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
  done
  echo "$total"
}
ticks=$(getconf CLK_TCK)

# Clarion's open connections, from /metrics. Requests straight to Clarion come from 127.0.0.9:
# 127.0.0.1 is the trusted proxy, which must send a PROXY header when that is on.
open_connections() {
  curl -s --interface 127.0.0.9 "http://$upstream/metrics" |
    awk '/^clarion_connections\{/ { n += $2 } END { print n + 0 }'
}

fill() { # template port -> config on stdout
  sed -e "s#@PREFIX@#$2#g; s#@LISTEN@#127.0.0.1:$3#g; s#@UPSTREAM@#$upstream#g" \
    -e "s#@READ_TIMEOUT@#60s#g; s#@KEY@#$work/cert/key.pem#g" \
    -e "s#@CERT@#$4#g; s#@STREAM_MODULE@#/usr/lib/nginx/modules/ngx_stream_module.so#g" "$1"
}

start_proxy() { # kind -> sets proxy_pid, front_port
  local kind=$1 dir="$work/$1" port
  mkdir -p "$dir"
  port=$(free_port)
  case "$kind" in
    nginx | nginx-stream)
      local template=deploy/nginx.conf
      [ "$kind" = nginx-stream ] && template=deploy/nginx-stream.conf
      fill "$template" "$dir" "$port" "$work/cert/chain.pem" >"$dir/nginx.conf"
      taskset -c 1 nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' &
      ;;
    haproxy | haproxy-tcp)
      local template=deploy/haproxy.cfg
      [ "$kind" = haproxy-tcp ] && template=deploy/haproxy-tcp.cfg
      fill "$template" "$dir" "$port" "$work/cert/combined.pem" >"$dir/haproxy.cfg"
      taskset -c 1 haproxy -f "$dir/haproxy.cfg" -db 2>"$dir/haproxy.log" &
      ;;
  esac
  proxy_pid=$!
  pids+=("$proxy_pid")
  # The TLS client: plain ws:// in from the loadgen, TLS out to the proxy.
  local tls="$work/tls-$kind"
  mkdir -p "$tls"
  front_port=$(free_port)
  cat >"$tls/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
pid $tls/nginx.pid;
error_log $tls/error.log warn;
events { worker_connections $((2 * connections + 100)); }
stream {
    server {
        listen 127.0.0.1:$front_port backlog=4096;
        proxy_pass 127.0.0.1:$port;
        proxy_ssl on;
        proxy_ssl_session_reuse on;
        proxy_timeout 10m;
    }
}
EOF
  taskset -c 1 nginx -p "$tls" -c "$tls/nginx.conf" -e "$tls/error.log" -g 'daemon off;' &
  pids+=("$!")
  for _ in $(seq 200); do
    if curl -s -o /dev/null "http://127.0.0.1:$front_port/healthz"; then return; fi
    sleep 0.05
  done
  echo "$kind did not start" >&2
  exit 1
}

start_clarion() { # [PROXY protocol version] -> sets upstream, clarion_pid
  upstream=127.0.0.1:$(free_port)
  taskset -c 0 "$clarion" serve --listen "$upstream" --threads 1 --admin-listen off --public-metrics --trusted-proxies 127.0.0.1 \
    --echo --message-rate 0 --byte-rate 0 --max-handshakes-per-reactor 65536 \
    --proxy-protocol "${1:-off}" 2>"$work/clarion.log" &
  clarion_pid=$!
  pids+=("$clarion_pid")
  for _ in $(seq 200); do
    curl -s -o /dev/null --interface 127.0.0.9 "http://$upstream/healthz" && return
    sleep 0.05
  done
  echo "clarion did not start" >&2
  exit 1
}

printf '%s connections, held %s; echo for %s with 50 connections\n' "$connections" "$hold" "$echo_for"
printf '| path | proxy RSS per idle connection | Clarion RSS per idle connection | proxy CPU per connection | proxy CPU per echoed message | Clarion CPU per echoed message |\n'
printf '| --- | --- | --- | --- | --- | --- |\n'
for kind in direct nginx haproxy nginx-stream haproxy-tcp; do
  # A fresh Clarion for each path: its RSS growth per connection is measured from its start.
  case "$kind" in
    nginx-stream) start_clarion v1 ;;
    haproxy-tcp) start_clarion v2 ;;
    *) start_clarion ;;
  esac
  if [ "$kind" = direct ]; then
    url="ws://$upstream/echo"
    watched=()
  else
    start_proxy "$kind"
    url="ws://127.0.0.1:$front_port/echo"
    watched=("$proxy_pid")
  fi
  before_rss=0 before_cpu=0
  if [ ${#watched[@]} -gt 0 ]; then
    before_rss=$(rss_kib "${watched[@]}")
    before_cpu=$(cpu_ticks "${watched[@]}")
  fi
  taskset -c 1 "$loadgen" idle "$url" -c "$connections" -d "$hold" --ramp-rate 2000 \
    --server-pid "$clarion_pid" --json "$work/idle-$kind.json" >/dev/null &
  idle_pid=$!
  for _ in $(seq 1200); do
    [ "$(open_connections)" -ge "$connections" ] && break
    sleep 0.1
  done
  proxy_rss="-" proxy_cpu="-"
  if [ ${#watched[@]} -gt 0 ]; then
    after_rss=$(rss_kib "${watched[@]}")
    after_cpu=$(cpu_ticks "${watched[@]}")
    proxy_rss="$(((after_rss - before_rss) * 1024 / connections)) B"
    proxy_cpu="$(python3 -c "print(f'{($after_cpu - $before_cpu) / $ticks / $connections * 1e6:.0f} µs')")"
  fi
  wait "$idle_pid"
  clarion_rss=$(python3 -c "import json; print(round(json.load(open('$work/idle-$kind.json'))['server']['rss_per_connection_bytes']))")
  # Echo: the proxy's CPU over the whole run, per message echoed.
  echo_before=0
  [ ${#watched[@]} -gt 0 ] && echo_before=$(cpu_ticks "${watched[@]}")
  taskset -c 1 "$loadgen" echo "$url" -c 50 -d "$echo_for" --server-pid "$clarion_pid" --json "$work/echo-$kind.json" \
    >/dev/null
  proxy_msg="-"
  read -r messages clarion_msg < <(python3 -c "
import json
r = json.load(open('$work/echo-$kind.json'))
print(r['messages_received'], round(r['server']['cpu_per_message_us'], 1))")
  if [ ${#watched[@]} -gt 0 ]; then
    echo_after=$(cpu_ticks "${watched[@]}")
    proxy_msg="$(python3 -c "print(f'{($echo_after - $echo_before) / $ticks / $messages * 1e6:.1f} µs')")"
  fi
  printf '| %s | %s | %s B | %s | %s | %s µs |\n' "$kind" "$proxy_rss" "$clarion_rss" \
    "$proxy_cpu" "$proxy_msg" "$clarion_msg"
  if [ ${#watched[@]} -gt 0 ]; then
    kill "$proxy_pid" "${pids[-1]}"
    wait "$proxy_pid" "${pids[-1]}" 2>/dev/null || true
  fi
  kill "$clarion_pid"
  wait "$clarion_pid" 2>/dev/null || true
done
