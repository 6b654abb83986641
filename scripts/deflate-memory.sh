#!/usr/bin/env bash
# Server memory per connection that negotiated permessage-deflate, under each policy.
#
# For each mode (plain: no compression offered; shared; per-connection), a fresh release server
# (one reactor, epoll, no pings) takes N connections from Python `websockets` (default offer),
# each of which sends one 1 KiB JSON message and reads its echo, then stays open. The server's
# RSS growth over its idle RSS, divided by N, is the cost of one such connection; the
# difference to `plain` is what compression adds.
#
# Usage: scripts/deflate-memory.sh [N]   (default 10000; needs python3 with websockets)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/bench.sh

N=${1:-10000}
bench_setup deflate-memory
ulimit -n "$(ulimit -Hn)"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

printf '%-15s %8s %14s %16s\n' mode connections "RSS growth" "bytes/connection"
for mode in plain shared per-connection; do
  port=$(free_port)
  policy=$mode
  [ "$mode" = plain ] && policy=off
  start_server "$port" --io epoll --compression "$policy" --compression-max-windows 1000000
  sleep 0.5
  before=$(rss_kib "$server_pid")
  fifo=$(mktemp -u)
  mkfifo "$fifo"
  python3 scripts/deflate-memory.py "127.0.0.1:$port" "$N" "$mode" <"$fifo" >"$OUT/$mode.out" &
  client=$!
  exec 7>"$fifo"
  for _ in $(seq 1200); do
    grep -q ready "$OUT/$mode.out" 2>/dev/null && break
    kill -0 "$client" 2>/dev/null || { echo "client failed" >&2; exit 1; }
    sleep 0.1
  done
  grep -q ready "$OUT/$mode.out" || { echo "client not ready in 120 s" >&2; exit 1; }
  sleep 1
  after=$(rss_kib "$server_pid")
  echo >&7
  exec 7>&-
  wait "$client" || true
  rm -f "$fifo"
  stop_server
  printf '%-15s %8d %11d KiB %16d\n' "$mode" "$N" $((after - before)) $(((after - before) * 1024 / N))
done
