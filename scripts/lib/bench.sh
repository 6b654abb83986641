# Helpers for the benchmark scripts (sourced): build, start a pinned server (clarion or any
# other), stop it, pick a free port. The server's CPU time comes from `clarion-loadgen
# --server-pid`, which reads it at the edges of the measurement window.

# bench_setup NAME: release build of server and loadgen; sets SERVER, LOADGEN and an
# emptied OUT directory for this benchmark's reports.
bench_setup() {
  local target=${CARGO_TARGET_DIR:-target}
  OUT=$target/bench-$1
  mkdir -p "$OUT"
  rm -f "$OUT"/*.json
  cargo build --release -q -p clarion -p clarion-loadgen
  SERVER=$target/release/clarion
  LOADGEN=$target/release/clarion-loadgen
}

server_pid=""

stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap stop_server EXIT

# start_pinned PORT COMMAND...: runs any server on core 0 (its PID in server_pid) and waits
# until PORT accepts connections.
start_pinned() {
  local port=$1; shift
  taskset -c 0 "$@" 2>/dev/null &
  server_pid=$!
  for _ in $(seq 100); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
      return
    fi
    sleep 0.05
  done
  echo "bench: $1 did not start" >&2
  exit 1
}

# What the benchmarks need beyond the production defaults: /echo on, client publishing (the
# loadgen publishes over WebSocket by default), no per-client rates (a load
# generator's connection sends as fast as it can, which is the point), and room for its ramp of
# thousands of connections handshaking at once.
BENCH_FLAGS=(--echo --client-publish all --message-rate 0 --byte-rate 0 --max-handshakes-per-reactor 65536)

# start_server PORT [serve flags...]: clarion with one reactor on core 0, no keep-alive pings,
# /stats and /metrics on its port (the ramp reads them) and no admin listener (scripts that run
# several servers at once would share its port).
start_server() {
  local port=$1; shift
  start_pinned "$port" "$SERVER" serve --threads 1 --no-pin --listen "127.0.0.1:$port" \
    --ping-interval 0 --admin-listen off --public-metrics "${BENCH_FLAGS[@]}" "$@"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# rotate_order ROUND NAME...: sets the array `order` to the names rotated left by ROUND - 1
# places, so over an interleaved run's rounds no server always runs first or last.
rotate_order() {
  local k=$(( ($1 - 1) % ($# - 1) ))
  shift
  order=("${@:k+1}" "${@:1:k}")
}
