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
    target = urlsplit(base)
    context = ssl.create_default_context(cafile=cafile)
    conns = {}
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command, args = words[0], words[1:]
        if command == "open":
            name, source, path = args[:3]
            headers = [tuple(h.split("=", 1)) for h in args[3:]]
            sock = socket.create_connection(
                (target.hostname, target.port), timeout=TIMEOUT, source_address=(source, 0)
            )
            try:
                conns[name] = connect(
                    base + path,
                    sock=sock,
                    ssl=context,
                    server_hostname="localhost",
                    additional_headers=headers,
                    ping_interval=None,
                    open_timeout=TIMEOUT,
                    close_timeout=5,
                )
                answer = "101"
            except InvalidStatus as refused:
                answer = str(refused.response.status_code)
        elif command == "echo":
            name, text = args[0], " ".join(args[1:])
            try:
                conns[name].send(text)
                answer = conns[name].recv(timeout=TIMEOUT)
            except ConnectionClosed:
                answer = "closed"
        elif command == "recv":
            try:
                answer = conns[args[0]].recv(timeout=TIMEOUT)
            except ConnectionClosed:
                answer = "closed"
        elif command == "idle":
            time.sleep(float(args[0]))
            answer = "ok"
        elif command == "closed":
            try:
                while True:
                    conns[args[0]].recv(timeout=TIMEOUT)
            except ConnectionClosed:
                answer = "closed"
        elif command == "close":
            conns.pop(args[0]).close()
            answer = "ok"
        else:
            answer = f"unknown command {command}"
        print(answer, flush=True)


if __name__ == "__main__":
    main()
