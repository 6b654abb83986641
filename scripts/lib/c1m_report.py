"""The figures of a bench-c1m.sh run: reads the loadgen's JSON report, the kernel samples and
the TCP counters the script kept in OUT, prints a table and writes OUT/c1m.json. Exit status 1
when the run did not hold every connection, or lost, repeated or reordered a delivery, or failed
in the storm or the close; the message then names the limit that stopped it.

    c1m_report.py OUT N SLAB0_KIB LOADGEN_STATUS STARTED ENDED key=value...
"""

import json
import os
import sys

# TCP counters worth a look when connections go missing (TcpExt unless prefixed).
COUNTERS = [
    ("TcpExt.ListenOverflows", "accept queue full: SYNs dropped (listen backlog, somaxconn)"),
    ("TcpExt.ListenDrops", "SYNs dropped at a listener"),
    ("TcpExt.TCPBacklogDrop", "packets dropped: a socket's backlog was full"),
    ("TcpExt.TCPRcvQDrop", "packets dropped: receive queue over its memory"),
    ("TcpExt.TCPAbortOnMemory", "connections reset: out of TCP memory or too many orphans (tcp_mem, tcp_max_orphans)"),
    ("TcpExt.TCPMemoryPressures", "times TCP memory went under pressure (tcp_mem)"),
    ("TcpExt.TCPTimeWaitOverflow", "TIME_WAIT buckets full (tcp_max_tw_buckets)"),
    ("TcpExt.TCPSynRetrans", "SYNs retransmitted (a dropped SYN costs a second)"),
    ("TcpExt.TCPTimeouts", "retransmission timeouts"),
    ("Tcp.RetransSegs", "segments retransmitted"),
    ("Tcp.AttemptFails", "connects that failed"),
    ("Tcp.EstabResets", "established connections reset"),
    ("softnet.dropped", "loopback packets dropped: per-CPU backlog full (netdev_max_backlog; host-wide)"),
]


def read_counters(path):
    """TcpExt/Tcp/IpExt name-value line pairs and the softnet line, as {"Section.Name": n}."""
    counters, names = {}, None
    for line in open(path):
        section, _, rest = line.partition(":")
        fields = rest.split()
        if section == "softnet":
            counters["softnet.dropped"] = sum(int(f, 16) for f in fields)
        elif names and names[0] == section and fields and fields[0].lstrip("-").isdigit():
            counters.update({f"{section}.{n}": int(v) for n, v in zip(names[1], fields)})
            names = None
        else:
            names = (section, fields)
    return counters


def main():
    out, n, slab0, status, started, ended = sys.argv[1:7]
    n, slab0, status, started, ended = int(n), int(slab0), int(status), float(started), float(ended)
    host = dict(arg.split("=", 1) for arg in sys.argv[7:])
    j = json.load(open(os.path.join(out, "loadgen.json")))
    samples = []
    for line in open(os.path.join(out, "kernel.log")):
        fields = line.split()
        if len(fields) == 21:
            samples.append([float(fields[0])] + [int(f) for f in fields[1:]])
    before = read_counters(os.path.join(out, "counters-before.txt"))
    after = read_counters(os.path.join(out, "counters-after.txt"))
    stopped = None
    if os.path.exists(os.path.join(out, "stopped.txt")):
        stopped = open(os.path.join(out, "stopped.txt")).read().split()

    # Kernel: the sample with the most sockets gives slab per socket; TCP buffers at their peak.
    t0, inuse0 = (samples[0][0], samples[0][1]) if samples else (started, 0)
    peak = max(samples, key=lambda s: s[1], default=None)
    sockets = peak[1] - inuse0 if peak else 0
    slab_growth_kib = peak[5] - slab0 if peak else 0
    buffers = max(samples, key=lambda s: s[4], default=None)
    server = j.get("server") or {}
    memory = j["loadgen_memory"]
    lat = j["latency_us"]
    rounds = j["rounds"]
    measured = [r for r in rounds if 0 <= r["at_s"] < j["duration_s"]]
    storm_rounds = [r for r in rounds if r["at_s"] >= j["duration_s"]]
    per_delivery = server.get("cpu_per_message_us")
    cores = int(host.get("cores", "1"))
    floor_s = n * per_delivery / 1e6 / cores if per_delivery else None
    storm, close = j["storm"], j["close"]
    # CPU by phase, from the samples nearest its edges: the server's and the loadgen's (user,
    # kernel seconds) and the host's split (all processes).
    tick = os.sysconf("SC_CLK_TCK")
    go = started + j["ramp_s"] + j["hold_s"]
    edges = [("ramp", started, started + j["ramp_s"]), ("hold", started + j["ramp_s"], go),
             ("fanout", go, go + j["duration_s"]), ("storm and close", go + j["duration_s"], ended)]
    phases = {}
    for name, t_from, t_to in edges:
        inside = [x for x in samples if t_from - 0.5 <= x[0] <= t_to + 0.5]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1:
            continue
        d = [b - a for a, b in zip(inside[0], inside[-1])]
        host_ticks = d[13:21]
        total = sum(host_ticks) or 1
        phases[name] = {
            "seconds": d[0],
            "server_cpu_s": {"user": d[9] / tick, "system": d[10] / tick},
            "loadgen_cpu_s": {"user": d[11] / tick, "system": d[12] / tick},
            "host_cpu_share": {k: t / total for k, t in zip(
                ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), host_ticks)},
        }
    cpu_split = phases.get("fanout", {}).get("host_cpu_share")
    # The window's server CPU includes the keep-alive pings, which go on through the rounds:
    # the hold, with no deliveries, gives their rate. Subtracting it is rough (a busy server
    # pings late), so both figures are reported.
    net_per_delivery = None
    if "hold" in phases and "fanout" in phases and j["delivered"]:
        hold, fan = phases["hold"], phases["fanout"]
        scale = fan["seconds"] / hold["seconds"]
        net = {k: max(0.0, fan["server_cpu_s"][k] - hold["server_cpu_s"][k] * scale)
               for k in ("user", "system")}
        deliveries = j["subscribers"] * sum(1 for r in rounds if 0 <= r["at_s"] < j["duration_s"])
        if deliveries:
            net_per_delivery = {k: v * 1e6 / deliveries for k, v in net.items()}
            net_per_delivery["keepalive_cores"] = sum(hold["server_cpu_s"].values()) / hold["seconds"]
    deltas = {key: after.get(key, 0) - before.get(key, 0) for key, _ in COUNTERS}

    report = {
        "connections": n,
        "held": j["subscribers"],
        "established": j["established"],
        "failed": j["failed"],
        "failures": {k: v for k, v in j["failures"].items() if v},
        "dropped": j["dropped"],
        "drops": {k: v for k, v in j["drops"].items() if v},
        "ramp": {
            "asked_per_s": int(host["ramp_rate"]),
            "seconds": j["ramp_s"],
            "per_s": j["ramp_rate"],
            "connect_us": j["connect_us"],
            "handshake_us": j["handshake_us"],
            "retries": j["retries"],
            "retry_reasons": {k: v for k, v in j["retry_reasons"].items() if v},
        },
        "hold_s": j["hold_s"],
        "memory": {
            "server_user_bytes_per_connection": server.get("rss_per_connection_bytes"),
            "server_rss_kib": [server.get("rss_before_kib"), server.get("rss_after_kib")],
            "loadgen_user_bytes_per_connection": memory["per_connection_bytes"],
            "loadgen_peak_bytes_per_connection": memory["peak_per_connection_bytes"],
            "loadgen_rss_kib": [memory["before_kib"], memory["ramped_kib"], memory["peak_kib"]],
            "kernel_sockets": sockets,
            "kernel_slab_growth_kib": slab_growth_kib,
            "kernel_bytes_per_socket": slab_growth_kib * 1024 / sockets if sockets > 0 else None,
            "tcp_buffers_peak_kib": buffers[4] * 4 if buffers else None,
            "tcp_buffers_peak_at_s": buffers[0] - t0 if buffers else None,
            "memavailable_min_kib": min((s[6] for s in samples), default=None),
        },
        "fanout": {
            "messages": j["published"],
            "subscribers": j["subscribers"],
            "delivered": j["delivered"],
            "missing": j["missing"],
            "duplicates": j["duplicates"],
            "out_of_order": j["out_of_order"],
            "latency_ms": {k: lat[k] / 1e3 for k in ("p50", "p90", "p99", "p99_9", "max")},
            "rounds": rounds,
            "first_subscriber_ms": [r["first_us"] / 1e3 for r in measured],
            "last_subscriber_ms": [r["last_us"] / 1e3 for r in measured],
            "server_cpu_per_delivery_us": {
                "total": per_delivery,
                "user": server.get("cpu_user_per_message_us"),
                "system": server.get("cpu_system_per_message_us"),
            },
            "last_subscriber_floor_s": floor_s,
            "server_cpu_per_delivery_net_of_keepalive_us": net_per_delivery,
            "loadgen_cpu": j["loadgen_cpu"],
            "host_cpu_share": cpu_split,
        },
        "cpu_by_phase": phases,
        "storm": storm,
        "storm_message": storm_rounds,
        "close": close,
        "kernel_counters": deltas,
        "host": host,
        "wall_s": ended - started,
        "loadgen_status": status,
        "stopped": stopped,
    }
    json.dump(report, open(os.path.join(out, "c1m.json"), "w"), indent=2)

    mib = lambda kib: f"{kib / 1024:,.0f} MiB"
    print(f"\n## C1M run: {n:,} connections ({host['io']}{', TLS' if host.get('tls') == '1' else ''}, {host['reactors']} reactors, "
          f"{host['threads']} loadgen threads, {host['cores']} cores, Linux {host['kernel']})\n")
    print(f"- held: {j['subscribers']:,} of {n:,} subscribed through the fanout "
          f"({j['established']:,} established, {j['failed']:,} failed, {j['dropped']:,} dropped)")
    if report["failures"] or report["drops"]:
        print(f"  failures {report['failures']}, drops {report['drops']}")
    print(f"- ramp: {j['ramp_s']:.1f} s, {j['ramp_rate']:,.0f} connections/s (asked {int(host['ramp_rate']):,}/s); "
          f"connect p50 {j['connect_us']['p50']:,.0f} µs p99 {j['connect_us']['p99']:,.0f} µs, "
          f"upgrade p50 {j['handshake_us']['p50']:,.0f} µs p99 {j['handshake_us']['p99']:,.0f} µs, "
          f"{j['retries']:,} dials retried over the run"
          + (f" ({report['ramp']['retry_reasons']})" if j["retries"] else ""))
    print(f"- held {j['hold_s']:.0f} s with the server's keep-alive pings (every 30 s of silence) answered")
    print("- memory:")
    if server.get("rss_per_connection_bytes") is not None:
        print(f"  - server user space: {server['rss_before_kib']:,} -> {server['rss_after_kib']:,} KiB, "
              f"{server['rss_per_connection_bytes']:.0f} bytes per connection")
    print(f"  - loadgen user space: {memory['before_kib']:,} -> {memory['ramped_kib']:,} KiB "
          f"({memory['per_connection_bytes'] or 0:.0f} bytes per connection), peak {memory['peak_kib']:,} KiB "
          f"({memory['peak_per_connection_bytes'] or 0:.0f} bytes per connection, everything)")
    if sockets > 0:
        print(f"  - kernel sockets: {sockets:,} TCP sockets at the peak, slab +{mib(slab_growth_kib)}: "
              f"{slab_growth_kib * 1024 / sockets:,.0f} bytes per socket")
    if buffers:
        print(f"  - TCP buffers: at most {mib(buffers[4] * 4)} ({buffers[0] - t0:.0f} s into the run); "
              f"lowest MemAvailable {mib(report['memory']['memavailable_min_kib'])}")
    print(f"- fanout: {j['published']} messages x {j['subscribers']:,} = {j['delivered']:,} deliveries, "
          f"{j['missing']} missing, {j['duplicates']} duplicates, {j['out_of_order']} out of order")
    for r in measured:
        print(f"  - message {r['count']} at {r['at_s']:.1f} s: first subscriber {r['first_us'] / 1e3:,.1f} ms, "
              f"last {r['last_us'] / 1e3:,.1f} ms ({r['deliveries']:,} deliveries)")
    print("  - publish to receive (ms): " + ", ".join(
        f"{k} {lat[k] / 1e3:,.1f}" for k in ("p50", "p90", "p99", "p99_9", "max")))
    if per_delivery:
        print(f"  - server CPU per delivery {per_delivery:.2f} µs ({server['cpu_user_per_message_us']:.3f} user, "
              f"{server['cpu_system_per_message_us']:.3f} kernel); floor for the last subscriber "
              f"{n:,} x {per_delivery:.2f} µs / {cores} cores = {floor_s:.2f} s")
    if net_per_delivery:
        net_total = net_per_delivery["user"] + net_per_delivery["system"]
        print(f"  - less the keep-alive pings (the hold's rate, {net_per_delivery['keepalive_cores']:.2f} cores of "
              f"server CPU; rough): {net_total:.2f} µs per delivery ({net_per_delivery['user']:.3f} user, "
              f"{net_per_delivery['system']:.2f} kernel); floor {n * net_total / 1e6 / cores:.2f} s")
    lg = j["loadgen_cpu"]
    print(f"  - loadgen CPU in the window {lg['user_s']:.1f} s user, {lg['system_s']:.1f} s kernel")
    if cpu_split:
        print("  - the host's CPU in the window (all processes): " + ", ".join(
            f"{name} {share:.0%}" for name, share in cpu_split.items() if share >= 0.005))
    if storm["dropped"]:
        print(f"- storm: {storm['dropped']:,} dropped at once, away {storm['blip_s']:.1f} s, "
              f"{storm['rejoined']:,} back and resumed in {storm['seconds']:.2f} s "
              f"(p50 {storm['rejoin_us']['p50'] / 1e3:,.0f} ms, p99 {storm['rejoin_us']['p99'] / 1e3:,.0f} ms), "
              f"{storm['replayed']:,} messages replayed; {storm['not_recovered']} not resumed, "
              f"{storm['failed']} failed"
              + (f" ({ {k: v for k, v in storm['failures'].items() if v} })" if storm["failed"] else ""))
        for r in storm_rounds:
            print(f"  - the message published while they were away: last subscriber {r['last_us'] / 1e3:,.0f} ms "
                  f"({r['deliveries']:,} deliveries)")
    print(f"- close: {close['open']:,} open, {close['clean']:,} closed cleanly, {close['failed']:,} not, "
          f"in {close['seconds']:.1f} s")
    if phases:
        print("- CPU by phase (seconds; the host's split is every process's, other work included):")
        for name, p in phases.items():
            host_split = ", ".join(f"{k} {v:.0%}" for k, v in p["host_cpu_share"].items() if v >= 0.005)
            print(f"  - {name} ({p['seconds']:.0f} s): server {p['server_cpu_s']['user']:.1f} user + "
                  f"{p['server_cpu_s']['system']:.1f} kernel, loadgen {p['loadgen_cpu_s']['user']:.1f} + "
                  f"{p['loadgen_cpu_s']['system']:.1f}; host {host_split}")
        if "ramp" in phases and j["established"]:
            ramp_cpu = phases["ramp"]["server_cpu_s"]
            print(f"    server CPU per connection opened: "
                  f"{(ramp_cpu['user'] + ramp_cpu['system']) * 1e6 / j['established']:.0f} µs")
    nonzero = [(key, deltas[key], why) for key, why in COUNTERS if deltas[key]]
    if nonzero:
        print("- kernel counters during the run: " + "; ".join(f"{k} {v:,}" for k, v, _ in nonzero))
    print(f"- wall time {ended - started:.0f} s; report {os.path.join(out, 'c1m.json')}")

    problems = []
    if j["subscribers"] < n:
        reasons = sorted({**report["failures"], **report["drops"]}.items(), key=lambda kv: -kv[1])
        problems.append(f"held {j['subscribers']:,} of {n:,}; by reason: "
                        + (", ".join(f"{k} {v:,}" for k, v in reasons) or "none counted"))
    for key in ("missing", "duplicates", "out_of_order"):
        if j[key]:
            problems.append(f"{j[key]:,} deliveries {key.replace('_', ' ')}")
    if storm["failed"] or storm["not_recovered"]:
        problems.append(f"storm: {storm['failed']:,} not back, {storm['not_recovered']:,} not resumed")
    if close["failed"]:
        problems.append(f"close: {close['failed']:,} not closed cleanly")
    if stopped:
        problems.append(f"stopped at {int(stopped[1]) >> 10} MiB of available memory (4 GiB are kept for the host)")
    if problems:
        print(f"\nbench-c1m: NOT a clean run: {'; '.join(problems)}")
        for key, value, why in nonzero:
            print(f"  - {key} {value:,}: {why}")
        print("  (refused/timeout/ramp_timeout: the listen backlog or the server; addr_unavailable: "
              "ports per source address; fd_limit: the fd tables; see docs/tuning.md)")
        sys.exit(1)
    sys.exit(1 if status else 0)


main()
