"""Closed-loop batch publisher for scripts/bench-cluster.sh: CONNS keep-alive connections each
POST /publish a JSON array of BATCH messages (SIZE bytes of data) over TOPICS topics
(PREFIX0 .. PREFIX<TOPICS-1>), round-robin, as fast as the node answers, for SECONDS. A 503
(the node's cluster buffer full) is counted and followed by a 10 ms pause. Prints a JSON line:
messages accepted and refused, requests.

Usage: publish_batches.py HOST PORT TOPICS BATCH SIZE SECONDS CONNS PREFIX
"""

import http.client
import json
import sys
import threading
import time


def main():
    host, port, topics, batch, size, seconds, conns, prefix = sys.argv[1:9]
    port, topics, batch, size, conns = map(int, (port, topics, batch, size, conns))
    seconds = float(seconds)
    data = "x" * size
    counts = {"accepted": 0, "refused": 0, "requests": 0}
    lock = threading.Lock()

    def worker(first):
        connection = http.client.HTTPConnection(host, port, timeout=10)
        n = first
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            items = [{"topic": f"{prefix}{(n + i) % topics}", "data": data} for i in range(batch)]
            n += batch
            connection.request(
                "POST", "/publish", json.dumps(items), {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            with lock:
                counts["requests"] += 1
                counts["accepted" if response.status == 202 else "refused"] += batch
            if response.status != 202:
                time.sleep(0.01)

    threads = [threading.Thread(target=worker, args=(k * 7919,)) for k in range(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
