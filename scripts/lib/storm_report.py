#!/usr/bin/env python3
"""The reconnect storm's report (scripts/bench-reconnect.sh): merges the client processes'
records and the publisher's final seqs, and prints recovery times, the spread of reconnections
(a histogram from the cut), the peak accept rate, attempts, losses and the server's CPU."""

import argparse
import glob
import json
import os


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def main():
    ap = argparse.ArgumentParser()
    for name in ("--dir", "--mode"):
        ap.add_argument(name, required=True)
    for name in ("--cut-ns", "--restarted-ns", "--end-ns", "--cpu-ticks", "--hz", "--clients"):
        ap.add_argument(name, type=int, required=True)
    a = ap.parse_args()

    records = []
    for path in sorted(glob.glob(os.path.join(a.dir, "clients-*.json"))):
        with open(path) as f:
            records.extend(json.load(f))
    with open(os.path.join(a.dir, "publisher.json")) as f:
        publisher = json.load(f)
    finals = publisher["last_seq"]

    cut = a.cut_ns
    secs = lambda ns: (ns - cut) / 1e9
    down = [r for r in records if r[0]]
    resubscribed = [r for r in records if r[2]]
    stopped = [r for r in records if r[8] == 3]
    recovered = sum(1 for r in resubscribed if r[3] == 1)
    violations = sum(r[5] for r in records)
    behind = [r for r in records if r[6] != finals[r[7]]]
    connected = sorted(secs(r[1]) for r in records if r[1])
    resub = sorted(secs(r[2]) for r in resubscribed)
    attempts = {}
    for r in down:
        attempts[r[4]] = attempts.get(r[4], 0) + 1

    print(f"\n== reconnect storm: {a.clients} clients, mode {a.mode}")
    if a.mode == "restart":
        print(f"server restarted (old one gone, new one listening) {secs(a.restarted_ns):.2f} s after SIGTERM")
    print(f"records {len(records)}, disconnected {len(down)}, resubscribed {len(resubscribed)}, "
          f"stopped for good {len(stopped)}, never resubscribed {len(records) - len(resubscribed)}")
    print(f"resubscribe acks recovered:true {recovered}, recovered:false {len(resubscribed) - recovered}")
    print(f"sequence breaks seen by the application {violations}; clients whose last seq is not "
          f"their topic's final seq {len(behind)} (publisher: {publisher['published']} published, "
          f"{publisher['failed']} failed)")
    if resub:
        print(f"resubscribed after the cut (s): p50 {pct(resub, 50):.2f}  p90 {pct(resub, 90):.2f}  "
              f"p99 {pct(resub, 99):.2f}  all {resub[-1]:.2f}")
    print("attempts per client (failures counted by `disconnected` events, the cut included): "
          + ", ".join(f"{k}: {v}" for k, v in sorted(attempts.items())))

    # Peak accept rate, seen from the clients: connections completed per second.
    peak_window, j = 0, 0
    for i, t in enumerate(connected):
        while connected[j] < t - 1.0:
            j += 1
        peak_window = max(peak_window, i - j + 1)
    bins = {}
    width = 0.25
    for t in connected:
        b = int(t // width)
        bins[b] = bins.get(b, 0) + 1
    peak_bin = max(bins.values()) if bins else 0
    print(f"peak accept rate: {peak_window} connections in the busiest 1 s window; "
          f"{peak_bin / width:.0f}/s in the busiest {width * 1000:.0f} ms bin")
    draws = [r[9] / 1e9 for r in down]
    if draws:
        print(f"backoff draw for the first attempt after the cut (s): p10 {pct(draws, 10):.2f}  "
              f"p50 {pct(draws, 50):.2f}  p90 {pct(draws, 90):.2f}  max {max(draws):.2f}")
        dbins = {}
        for t in draws:
            dbins[int(t // width)] = dbins.get(int(t // width), 0) + 1
        print(f"draws by {width * 1000:.0f} ms bin: "
              + ", ".join(f"{b * width:.2f}s {n}" for b, n in sorted(dbins.items())))
    print(f"\nreconnections (hello acked) by time since the cut, {width * 1000:.0f} ms bins:")
    scale = max(1, peak_bin // 60)
    for b in range(min(bins) if bins else 0, (max(bins) if bins else -1) + 1):
        n = bins.get(b, 0)
        print(f"  {b * width:6.2f}-{(b + 1) * width:5.2f} s {n:6d} {'#' * (n // scale)}")

    window = max(1e-9, (a.end_ns - cut) / 1e9)
    busy = a.cpu_ticks / a.hz
    samples = []
    with open(os.path.join(a.dir, "server-cpu.log")) as f:
        for line in f:
            _, ticks = line.split()
            samples.append(int(ticks) / a.hz / 0.1 * 100)
    print(f"\nserver CPU from the cut until all resubscribed ({window:.2f} s): {busy:.2f} s "
          f"({busy / window * 100:.0f}% of a core); busiest 100 ms sample "
          f"{max(samples) if samples else 0:.0f}%")


if __name__ == "__main__":
    main()
