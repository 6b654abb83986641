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
idle connection carries exactly the server's keep-alive traffic.
"""

import contextlib
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

# Long enough for any slow machine; a test that waits this long has failed anyway.
TIMEOUT = 60


def main():
    base, cafile = sys.argv[1], sys.argv[2]
    clients = Clients(base, ssl.create_default_context(cafile=cafile))
    # Every connection opened is closed on the way out.
    with contextlib.ExitStack() as clients.stack:
        for line in sys.stdin:
            words = line.split()
            if words:
                try:
                    answer = clients.run(words[0], words[1:])
                except Exception as error:  # the test shows it rather than "the script died"
                    answer = f"error {type(error).__name__}: {error}"
                print(answer, flush=True)


class Clients:
    """The named connections, and the commands on them."""

    def __init__(self, base, context):
        self.base, self.target, self.context = base, urlsplit(base), context
        self.conns = {}
        self.stack = None

    def run(self, command, args):
        """One command's answer."""
        if command == "open":
            return self.open(args[0], args[1], args[2], [tuple(h.split("=", 1)) for h in args[3:]])
        if command == "idle":
            time.sleep(float(args[0]))
            return "ok"
        conn = self.conns[args[0]]
        try:
            if command == "echo":
                conn.send(" ".join(args[1:]))
                return conn.recv(timeout=TIMEOUT)
            if command == "recv":
                return conn.recv(timeout=TIMEOUT)
            if command == "closed":
                while True:
                    conn.recv(timeout=TIMEOUT)
            if command == "close":
                conn.close()
                return "ok"
        except ConnectionClosed:
            return "closed"
        return f"unknown command {command}"

    def open(self, name, source, path, headers):
        sock = socket.create_connection(
            (self.target.hostname, self.target.port), timeout=TIMEOUT, source_address=(source, 0)
        )
        try:
            self.conns[name] = self.stack.enter_context(
                connect(
                    self.base + path,
                    sock=sock,
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
    main()
