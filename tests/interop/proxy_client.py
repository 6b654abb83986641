"""WebSocket clients over TLS for tests/proxy.rs, driven one command per line on stdin.

    python3 proxy_client.py wss://127.0.0.1:PORT CA_FILE

Each command answers one line on stdout:

    open NAME SOURCE PATH [HEADER=VALUE]  connect from the address SOURCE; "101", or the HTTP
                                          status of the refusal
    echo NAME TEXT                        send TEXT, answer what comes back ("closed" if the
                                          connection is gone)
    recv NAME                             the next message ("closed" if the connection is gone)
    idle SECONDS                          send nothing for SECONDS; "ok"
    closed NAME                           wait for the connection to end; "closed"
    close NAME                            close it; "ok"

The client never pings on its own (ping_interval=None) and answers the server's pings, so an
idle connection carries exactly the server's keep-alive traffic. The event loop runs while the
next command is awaited (stdin is read in a worker thread), so pings are answered then too.

The asyncio client, not the threading one: `websockets.sync` reads in a thread of its own while
the caller writes, and Python's `ssl` sockets are not safe for a read and a write at once (one
OpenSSL session): now and then a connection hung or died right after its handshake, on the
client's side.
"""

import asyncio
import contextlib
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

# Long enough for any slow machine; a test that waits this long has failed anyway.
TIMEOUT = 60


async def main():
    base, cafile = sys.argv[1], sys.argv[2]
    clients = Clients(base, ssl.create_default_context(cafile=cafile))
    loop = asyncio.get_running_loop()
    # Every connection opened is closed on the way out.
    async with contextlib.AsyncExitStack() as clients.stack:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            words = line.split()
            if words:
                try:
                    answer = await clients.run(words[0], words[1:])
                except Exception as error:  # the test shows it rather than "the script died"
                    answer = f"error {type(error).__name__}: {error}"
                print(answer, flush=True)


class Clients:
    """The named connections, and the commands on them."""

    def __init__(self, base, context):
        self.base, self.context = base, context
        self.conns = {}
        self.stack = None

    async def run(self, command, args):
        """One command's answer."""
        if command == "open":
            headers = [tuple(h.split("=", 1)) for h in args[3:]]
            return await self.open(args[0], args[1], args[2], headers)
        if command == "idle":
            await asyncio.sleep(float(args[0]))
            return "ok"
        conn = self.conns[args[0]]
        try:
            if command == "echo":
                await conn.send(" ".join(args[1:]))
                return await asyncio.wait_for(conn.recv(), TIMEOUT)
            if command == "recv":
                return await asyncio.wait_for(conn.recv(), TIMEOUT)
            if command == "closed":
                while True:
                    await asyncio.wait_for(conn.recv(), TIMEOUT)
            if command == "close":
                await conn.close()
                return "ok"
        except ConnectionClosed:
            return "closed"
        return f"unknown command {command}"

    async def open(self, name, source, path, headers):
        try:
            self.conns[name] = await self.stack.enter_async_context(
                connect(
                    self.base + path,
                    # Dialed by the event loop (no blocking connect inside it), from `source`.
                    local_addr=(source, 0),
                    ssl=self.context,
                    server_hostname="localhost",
                    additional_headers=headers,
                    ping_interval=None,
                    open_timeout=TIMEOUT,
                    close_timeout=5,
                )
            )
            return "101"
        except InvalidStatus as refused:
            return str(refused.response.status_code)


if __name__ == "__main__":
    asyncio.run(main())
