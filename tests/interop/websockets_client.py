"""A real library client for tests/compression.rs and tests/tls.rs: Python `websockets`,
negotiating permessage-deflate with Clarion, exchanging compressible messages on /echo, a raw
topic and the envelope protocol. Prints one JSON line per connection with the negotiated answer;
exits non-zero on any mismatch.

    websockets_client.py ADDR [CA_FILE]

With CA_FILE it speaks wss:// through an `ssl` context that trusts that CA.

The asyncio client, not the threading one: `websockets.sync` reads in a thread of its own while
the caller writes, and Python's `ssl` sockets are not safe for a read and a write at once (one
OpenSSL session): over TLS, about one connection in 1,500 hung or died right after its
handshake, on the client's side (the server saw the request never sent, or a clean FIN)."""

import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

ADDR = sys.argv[1]
SSL = ssl.create_default_context(cafile=sys.argv[2]) if len(sys.argv) > 2 else None
SCHEME = "wss" if SSL else "ws"
TEXT = json.dumps({"text": "compressible " * 200, "n": list(range(50))})
BINARY = bytes(range(256)) * 64

OFFERS = {
    # What websockets offers by default.
    "default": None,
    # Every parameter, with small windows: exercises 9-bit windows through a real zlib.
    "small-windows": [
        ClientPerMessageDeflateFactory(
            server_no_context_takeover=False,
            client_no_context_takeover=False,
            server_max_window_bits=10,
            client_max_window_bits=9,
        )
    ],
}


def dial(path, offer):
    """A connection to PATH with OFFER's extensions. The 60 s bounds are for a broken server,
    not timings."""
    extensions = OFFERS[offer]
    if extensions is None:
        return connect(f"{SCHEME}://{ADDR}{path}", ssl=SSL, open_timeout=60, close_timeout=5)
    return connect(
        f"{SCHEME}://{ADDR}{path}",
        ssl=SSL,
        extensions=extensions,
        compression=None,
        open_timeout=60,
        close_timeout=5,
    )


async def recv(ws):
    """The next message, within the same 60 s bound."""
    return await asyncio.wait_for(ws.recv(), 60)


def check(got, want, what):
    if got != want:
        print(f"{what}: got {str(got)[:80]!r}", file=sys.stderr)
        sys.exit(1)


async def main():
    for offer in OFFERS:
        async with dial("/echo", offer) as ws:
            answer = ws.response.headers.get("Sec-WebSocket-Extensions")
            print(json.dumps({"offer": offer, "path": "/echo", "answer": answer}))
            for _ in range(3):
                await ws.send(TEXT)
                check(await recv(ws), TEXT, "echo text")
                await ws.send(BINARY)
                check(await recv(ws), BINARY, "echo binary")

        topic = f"interop.{offer}"
        async with dial(f"/t/{topic}", offer) as raw, dial("/ws", offer) as env:
            await env.send(json.dumps({"type": "subscribe", "topic": topic, "id": 1}))
            check(json.loads(await recv(env))["type"], "ack", "subscribe ack")
            # Published by the raw socket, delivered back to it and to the envelope subscriber.
            await raw.send(TEXT)
            check(await recv(raw), TEXT, "raw delivery")
            delivery = json.loads(await recv(env))
            check(delivery["data"], json.loads(TEXT), "envelope delivery")
            print(json.dumps({"offer": offer, "path": "/t/ and /ws", "ok": True}))


asyncio.run(main())
