#!/usr/bin/env bash
# TLS beside plaintext, interleaved in one run: the server (one reactor, pinned to core 0) and
# clarion-loadgen (core 1) over loopback, each test once plaintext and once over TLS (ECDSA
# P-256 certificate from scripts/make-cert.sh, TLS 1.3, aws-lc-rs), ROUNDS times in turn:
#
#   fanout     SUBSCRIBERS raw-topic subscribers, RATE msgs/s of SIZE bytes: server CPU per
#              delivery (the issue's target: TLS at most 1.2x plaintext)
#   echo       ECHO_CONNECTIONS connections, a window of 1: server CPU per echoed message
#   churn      connect, upgrade, one echo, close, CHURN_CONCURRENCY at a time: server CPU per
#              cycle, i.e. cycles per server CPU-second; over TLS once with full handshakes
#              (--no-resume) and once resumed (tickets)
#   idle       IDLE connections held: the server's RSS per connection
#
# Ramps are paced (1,500 a second, at most 500 opening) in both: a reactor closes connections at
# accept past max_handshakes (1,024) in the TLS handshake, and one loaded core falls behind that.
#
# Server CPU is user + system from /proc/PID/stat over the measurement window (`--server-pid`).
# Reports go to target/bench-tls/; the summary is a Markdown table on stdout.
#
# Usage: scripts/bench-tls.sh   (ROUNDS=2 SUBSCRIBERS=5000 RATE=10 SIZE=64 DURATION=10s
#                                ECHO_CONNECTIONS=100 CHURN_CONCURRENCY=32 IDLE=15000
#                                TESTS="fanout echo churn idle" to run some only)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
SUBSCRIBERS=${SUBSCRIBERS:-5000}
RATE=${RATE:-10}
SIZE=${SIZE:-64}
DURATION=${DURATION:-10s}
ECHO_CONNECTIONS=${ECHO_CONNECTIONS:-100}
CHURN_CONCURRENCY=${CHURN_CONCURRENCY:-32}
IDLE=${IDLE:-15000}
TESTS=${TESTS:-fanout echo churn idle}
source scripts/lib/bench.sh
bench_setup tls
bash scripts/make-cert.sh "$OUT/cert" >/dev/null
TLS=(--tls-cert "$OUT/cert/chain.pem" --tls-key "$OUT/cert/key.pem")
CA=(--ca "$OUT/cert/ca.pem")

# run KIND NAME MODE PATH [loadgen flags...]: one measurement, plaintext (KIND=plain) or TLS.
run() {
  local kind=$1 name=$2 mode=$3 path=$4; shift 4
  local port scheme flags=()
  port=$(free_port)
  if [ "$kind" = plain ]; then
    start_server "$port"
    scheme=ws
  else
    start_server "$port" "${TLS[@]}"
    scheme=wss
    flags=("${CA[@]}")
  fi
  taskset -c 1 "$LOADGEN" "$mode" "$scheme://localhost:$port$path" "${flags[@]}" "$@" \
    --threads 1 --server-pid "$server_pid" --json "$OUT/$name.$kind.json" >/dev/null || true
  stop_server
}

has() { [[ " $TESTS " == *" $1 "* ]]; }

for round in $(seq "$ROUNDS"); do
  for kind in plain tls; do
    has fanout && run "$kind" "fanout.$round" fanout /t/ -c "$SUBSCRIBERS" --rate "$RATE" \
      -s "$SIZE" -d "$DURATION" --warmup 2s --topics 1 --publishers 1 --ramp-rate 1500 \
      --max-pending 500
    has echo && run "$kind" "echo.$round" echo /echo -c "$ECHO_CONNECTIONS" -d "$DURATION" \
      --warmup 1s
    has churn && run "$kind" "churn.$round" churn /echo --concurrency "$CHURN_CONCURRENCY" \
      -d "$DURATION"
    has idle && run "$kind" "idle.$round" idle /echo -c "$IDLE" -d 2s --ramp-rate 1500 \
      --max-pending 500 --ramp-timeout 120s
  done
  if has churn; then
    run tls "churn-full.$round" churn /echo --concurrency "$CHURN_CONCURRENCY" -d "$DURATION" \
      --no-resume
  fi
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])

def load(name):
    path = os.path.join(out, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None

def server(j, key):
    return (j or {}).get("server", {}).get(key) if j else None

def fmt(v, unit=""):
    return "n/a" if v is None else f"{v:,.2f}{unit}" if v < 100 else f"{v:,.0f}{unit}"

rows = []
for r in range(1, rounds + 1):
    for test, key, what in [
        ("fanout", "cpu_per_message_us", "server CPU per delivery (us)"),
        ("echo", "cpu_per_message_us", "server CPU per echo (us)"),
        ("churn", "cpu_per_message_us", "server CPU per cycle (us)"),
        ("idle", "rss_per_connection_bytes", "server RSS per idle connection (bytes)"),
    ]:
        p = server(load(f"{test}.{r}.plain"), key)
        t = server(load(f"{test}.{r}.tls"), key)
        if p is None and t is None:
            continue  # not in TESTS
        ratio = f"{t / p:.2f}x" if p and t else "n/a"
        extra = ""
        if test == "churn":
            full = server(load(f"churn-full.{r}.tls"), key)
            extra = f"; full handshakes (--no-resume): {fmt(full)}"
            for name, v in [("plain", p), ("TLS resumed", t), ("TLS full", full)]:
                if v:
                    extra += f"; {name}: {1e6 / v:,.0f} cycles per server CPU-second"
        if test == "fanout":
            for kind in ("plain", "tls"):
                j = load(f"fanout.{r}.{kind}")
                if j:
                    extra += f"; {kind}: {j['delivered']:,} delivered, {j['missing']} missing, p99 {j['latency_us']['p99'] / 1000:.1f} ms"
        rows.append(f"| {r} | {what} | {fmt(p)} | {fmt(t)} | {ratio} | {extra.lstrip('; ')} |")
print("| round | measure | plaintext | TLS | TLS / plaintext | notes |")
print("| --- | --- | --- | --- | --- | --- |")
print("\n".join(rows))
PY
