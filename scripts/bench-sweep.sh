#!/usr/bin/env bash
# What the reactor's once-a-second sweep costs the push server when it has work per connection:
# N idle /ws connections held by Python `websockets` clients, the server's CPU measured over a
# window, in three cases:
#   none       auth = "none", no heartbeat: the sweep never visits connections (the baseline)
#   jwt        auth = "jwt": every connection is visited each second for its token's expiry
#   heartbeat  auth = "jwt" and every client asks for a heartbeat every HEARTBEAT seconds
#
# Usage: scripts/bench-sweep.sh [N] [WINDOW_S] [HEARTBEAT_S]    (defaults 10000 30 5)
# IO=epoll|uring|auto picks the server's backend (default auto; the output says which ran).
# The server runs on core 0 with one reactor, the clients on core 1 (taskset). Loopback only;
# every run is bounded. Needs a release build (cargo build --release) and Python websockets.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
WINDOW=${2:-30}
HEARTBEAT=${3:-5}
IO=${IO:-auto}
BIN=target/release/clarion
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"
SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
TOKEN=$(SECRET="$SECRET" python3 - <<'EOF'
import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"exp": int(time.time()) + 3600, "subscribe": ["**"]}).encode())
sig = b64(hmac.new(os.environ["SECRET"].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
EOF
)

CLIENT=$(mktemp /tmp/clarion-sweep-client.XXXXXX.py)
trap 'rm -f "$CLIENT"' EXIT
cat > "$CLIENT" <<'EOF'
import asyncio, json, sys
from websockets.asyncio.client import connect
url, n, heartbeat, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
received = 0
async def one(ready):
    global received
    async with connect(url, ping_interval=None, close_timeout=1, max_queue=None) as ws:
        if heartbeat:
            await ws.send(json.dumps({"type": "hello", "heartbeat": heartbeat, "id": 1}))
            await ws.recv()
        ready.release()
        try:
            async for _ in ws:
                received += 1
        except Exception:
            pass
async def main():
    ready = asyncio.Semaphore(0)
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(ready)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    for _ in range(n):
        await ready.acquire()
    print("open", flush=True)
    await asyncio.sleep(hold)
    print(f"received {received}", flush=True)
    for t in tasks:
        t.cancel()
asyncio.run(main())
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() {
    local name=$1; shift
    local args=("$@")
    local log
    log=$(mktemp /tmp/clarion-sweep-server.XXXXXX.log)
    # /echo on, client publishing, no per-client rates, room for the ramp (the production
    # defaults aside).
    taskset -c 0 "$BIN" serve --listen 127.0.0.1:0 --threads 1 --no-pin --io "$IO" \
        --echo --client-publish all --message-rate 0 --byte-rate 0 --max-handshakes-per-reactor 65536 "${args[@]}" 2>"$log" &
    local server=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(grep -o 'listening on [0-9.:]*' "$log" | awk '{print $3}' || true)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { kill "$server"; cat "$log" >&2; exit 1; }
    local url="ws://$addr/ws"
    local hb=0
    case $name in
        none) ;;
        jwt) url="$url?token=$TOKEN" ;;
        heartbeat) url="$url?token=$TOKEN"; hb=$HEARTBEAT ;;
    esac
    local out
    out=$(mktemp /tmp/clarion-sweep-out.XXXXXX)
    taskset -c 1 python3 "$CLIENT" "$url" "$N" "$hb" $((WINDOW + 10)) >"$out" 2>&1 &
    local client=$!
    for _ in $(seq 600); do
        grep -q open "$out" && break
        sleep 0.1
    done
    grep -q open "$out" || { kill "$client" "$server"; cat "$out" >&2; exit 1; }
    sleep 5
    local t0 c0 t1 c1
    t0=$(date +%s.%N); c0=$(cpu_ticks "$server")
    sleep "$WINDOW"
    t1=$(date +%s.%N); c1=$(cpu_ticks "$server")
    local rss
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
    wait "$client" || true
    kill -TERM "$server"; wait "$server" || true
    local hz backend
    hz=$(getconf CLK_TCK)
    backend=$(grep -o 'reactors ([A-Za-z]*' "$log" | sed 's/.*(//')
    printf '%-10s %6d conns  %-5s  server CPU %6.2f%% of a core  RSS %7d KiB  client %s\n' \
        "$name" "$N" "$backend" "$(echo "($c1 - $c0) * 100 / $hz / ($t1 - $t0)" | bc -l)" "$rss" \
        "$(grep received "$out")"
    rm -f "$log" "$out"
}

run none
run jwt --auth jwt --jwt-secret "$SECRET"
run heartbeat --auth jwt --jwt-secret "$SECRET" --heartbeat-min "${HEARTBEAT}s"
