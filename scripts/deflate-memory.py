"""Opens N WebSockets to a Clarion /echo, each negotiating permessage-deflate (or not, with
--plain) with Python `websockets`' default offer, sends one 1 KiB JSON message and reads the
echo, then holds them all open and waits for a line on stdin before closing. Prints "ready N"
once all are open and have exchanged their message. Used by scripts/deflate-memory.sh."""

import asyncio
import json
import sys

from websockets.asyncio.client import connect

ADDR, COUNT, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
MESSAGE = json.dumps({"feed": [{"id": i, "price": 100 + i, "side": "buy"} for i in range(25)]})


async def one(gate, sockets):
    async with gate:
        ws = await connect(
            f"ws://{ADDR}/echo",
            compression=None if MODE == "plain" else "deflate",
            open_timeout=60,
            ping_interval=None,
            max_queue=1,
        )
        await ws.send(MESSAGE)
        if await ws.recv() != MESSAGE:
            raise SystemExit("bad echo")
        deflate = ws.response.headers.get("Sec-WebSocket-Extensions")
        if (MODE == "plain") != (deflate is None):
            raise SystemExit(f"negotiated {deflate!r} in mode {MODE}")
        sockets.append(ws)


async def main():
    gate, sockets = asyncio.Semaphore(200), []
    await asyncio.gather(*(one(gate, sockets) for _ in range(COUNT)))
    print(f"ready {len(sockets)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


asyncio.run(main())
