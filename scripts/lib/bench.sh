# Helpers for the benchmark scripts (sourced): build, start a pinned server (clarion or any
# other), stop it, read or sample its CPU time, pick a free port.

# bench_setup NAME: release build of server and loadgen; sets SERVER, LOADGEN, TICK and an
# emptied OUT directory for this benchmark's reports.
bench_setup() {
  local target=${CARGO_TARGET_DIR:-target}
  OUT=$target/bench-$1
  mkdir -p "$OUT"
  rm -f "$OUT"/*.json "$OUT"/*.cpu
  cargo build --release -q -p clarion -p clarion-loadgen
  SERVER=$target/release/clarion
  LOADGEN=$target/release/clarion-loadgen
  TICK=$(getconf CLK_TCK)
}

server_pid=""

stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap 'cpu_sampler_stop; stop_server' EXIT

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

# start_server PORT [serve flags...]: clarion with one reactor on core 0, no keep-alive pings.
start_server() {
  local port=$1; shift
  start_pinned "$port" "$SERVER" serve --threads 1 --no-pin --listen "127.0.0.1:$port" \
    --ping-interval 0 "$@"
}

# User + system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

sampler_pid=""

# cpu_sampler_start PID FILE: on core 1, appends "wall-clock seconds, CPU ticks" of PID to FILE
# every 20 ms until PID exits or cpu_sampler_stop, so a report can take the CPU time of any
# window from the first sample on (scripts/lib/compare_report.py).
cpu_sampler_start() {
  taskset -c 1 python3 -c '
import sys, time
pid, path = sys.argv[1], sys.argv[2]
with open(path, "w") as out:
    while True:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            break
        out.write(f"{time.time():.6f} {int(fields[11]) + int(fields[12])}\n")
        out.flush()
        time.sleep(0.02)
' "$1" "$2" &
  sampler_pid=$!
  # Return once the first sample is in, so the samples cover whatever starts next.
  for _ in $(seq 500); do
    if [ -s "$2" ]; then return; fi
    sleep 0.01
  done
  echo "bench: the CPU sampler did not start" >&2
  exit 1
}

cpu_sampler_stop() {
  if [ -n "$sampler_pid" ]; then
    kill "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" 2>/dev/null || true
  fi
  sampler_pid=""
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
