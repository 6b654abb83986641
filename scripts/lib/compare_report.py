"""The report of scripts/compare.sh: markdown tables of each scenario with ratios to Clarion
(epoll), and issue 7's targets (plaintext runs only), from the loadgen's JSON reports (server CPU
and memory from its --server-pid). Medians over rounds; a run whose loadgen wrote no report is
left out and said so."""

import json
import statistics
import sys

(out, rounds, servers, echo_conns, subscribers, fanout_rates, idle, scenarios, tls) = sys.argv[1:]
scenarios, tls = scenarios.split(), tls == "true"
rounds = int(rounds)
servers, echo_conns = servers.split(), [int(c) for c in echo_conns.split()]
fanout_rates = fanout_rates.split()
BASE = "clarion-epoll"
PEERS = [s for s in servers if not s.startswith("clarion")]
notes = []


def run(name):
    """One run's figures, or None when its loadgen wrote no report."""
    try:
        report = json.load(open(f"{out}/{name}.json"))
    except (OSError, ValueError):
        notes.append(f"{name}: no loadgen report (failed run), left out")
        return None
    server = report.get("server") or {}
    figures = {
        "throughput": report["throughput"],
        "received": report["messages_received"],
        "p99": report["latency_us"]["p99"],
        "loadgen_cpu": report["loadgen_cpu"]["per_message_us"],
        "saturated": report["loadgen_cpu"]["saturated"],
        "failed": report["failed"] + report["dropped"],
        "missing": report["missing"],
        "duplicates": report["duplicates"],
        "out_of_order": report["out_of_order"],
        "rss": server.get("rss_per_connection_bytes"),
        "handshakes": report["handshakes_per_s"],
    }
    if report["mode"] != "idle":
        figures["server_cpu"] = server.get("cpu_per_message_us")
        if figures["server_cpu"] is None:
            notes.append(f"{name}: no server CPU ({server.get('error')})")
    return figures


def collect(scenario):
    """Per server: the median of each figure over the rounds (None when no round has it)."""
    table = {}
    for server in servers:
        runs = [r for r in (run(f"{scenario}-{server}-{n}") for n in range(1, rounds + 1)) if r]
        merged = {}
        for key in ("throughput", "p99", "loadgen_cpu", "server_cpu", "rss", "handshakes"):
            values = [r[key] for r in runs if r.get(key) is not None]
            merged[key] = statistics.median(values) if values else None
        for key in ("failed", "missing", "duplicates", "out_of_order", "saturated"):
            merged[key] = sum(r[key] for r in runs)
        merged["runs"] = len(runs)
        table[server] = merged
    return table


def fmt(value, digits=0):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(table, server, key):
    base, value = table.get(BASE, {}).get(key), table[server].get(key)
    return "n/a" if not base or value is None else f"{value / base:.2f}"


def print_table(title, table, columns, extra=None):
    print(f"\n### {title}\n")
    heads = ["server"] + [c[0] for c in columns] + [e[0] for e in extra or []]
    print("| " + " | ".join(heads) + " |")
    print("|" + " --- |" * len(heads))
    for server in servers:
        cells = [server]
        for _, key, digits, with_ratio in columns:
            cell = fmt(table[server][key], digits)
            if with_ratio and server != BASE and table[server][key] is not None:
                cell += f" ({ratio(table, server, key)}x)"
            cells.append(cell)
        cells += [fn(table[server]) for _, fn in extra or []]
        print("| " + " | ".join(cells) + " |")


ECHO_COLUMNS = [
    ("msgs/s", "throughput", 0, True),
    ("p99 (µs)", "p99", 0, True),
    ("server CPU/msg (µs)", "server_cpu", 2, True),
    ("loadgen CPU/msg (µs)", "loadgen_cpu", 2, False),
]
FANOUT_COLUMNS = [
    ("deliveries/s", "throughput", 0, True),
    ("p99 (µs)", "p99", 0, True),
    ("server CPU/delivery (µs)", "server_cpu", 2, True),
    ("loadgen CPU/msg (µs)", "loadgen_cpu", 2, False),
]


def saturated(t):
    return f"{t['saturated']}/{t['runs']}"


def failed(t):
    return str(t["failed"])


def delivery_faults(t):
    return f"{t['missing']:,} / {t['duplicates']:,} / {t['out_of_order']:,}"


echo = {c: collect(f"echo{c}") for c in echo_conns} if "echo" in scenarios else {}
fanouts = {r: collect(f"fanout{r}") for r in fanout_rates} if "fanout" in scenarios else {}
idles = collect("idle") if "idle" in scenarios else None
churns = {}
if "churn" in scenarios:
    churns["resumed handshakes" if tls else "plaintext"] = collect("churn")
    if tls:
        churns["full handshakes (--no-resume)"] = collect("churnfull")

over = " over TLS (wss://)" if tls else ""
print(f"Medians of {rounds} interleaved round(s){over}; (Nx) = the value divided by Clarion (epoll)'s.")
for conns, table in echo.items():
    print_table(f"echo, {conns:,} connections (32 B, one message in flight each)", table, ECHO_COLUMNS,
                [("loadgen saturated (runs)", saturated), ("failed", failed)])
for rate, fanout in fanouts.items():
    print_table(f"fanout, {int(subscribers):,} subscribers of one topic, {rate} msgs/s of 64 B", fanout,
                FANOUT_COLUMNS, [("missing / dup / out of order", delivery_faults), ("failed", failed)])
if fanouts:
    print("\nmissing: deliveries not in by the end of the loadgen's drain after the window, from a server "
          "that fell behind.")
if idles:
    print_table(f"idle, {int(idle):,} connections", idles, [("server RSS per connection (bytes)", "rss", 0, True)],
                [("failed", failed)])


def per_cpu_second(t):
    """Cycles (connect, upgrade, echo, close) per second of server CPU."""
    return "n/a" if not t["server_cpu"] else f"{1e6 / t['server_cpu']:,.0f}"


CHURN_COLUMNS = [
    ("cycles/s", "throughput", 0, True),
    ("server CPU/cycle (µs)", "server_cpu", 1, True),
]
for kind, table in churns.items():
    print_table(f"churn, {kind}: connect, upgrade, one echo, close", table, CHURN_COLUMNS,
                [("cycles per server CPU-second", per_cpu_second), ("loadgen saturated (runs)", saturated),
                 ("failed", failed)])
if churns:
    print("\ncycles/s depends on the loadgen too (one core doing the client's half of every handshake) "
          "and on other work on the machine; cycles per server CPU-second is the server's own rate.")
if tls:
    if notes:
        print("\nNotes:\n" + "\n".join(f"- {n}" for n in notes))
    sys.exit(0)

# The targets: each Clarion backend against the best peer (or a bound derived from it).
print("\n### Targets\n")
print("| target | Clarion epoll | Clarion io_uring | peer | met |")
print("| --- | --- | --- | --- | --- |")


def check(label, table, key, digits, peers, bound, higher_better=False):
    """A row: met when every Clarion backend beats `bound` times the best of `peers` (strictly
    for bound 1, where values within 0.1 %, such as deliveries when every server keeps up, tie)."""
    values = [(table[p][key], p) for p in peers if p in table and table[p][key] is not None]
    if not values:
        return
    value, peer = (max if higher_better else min)(values)
    limit = value * bound
    ours = [table.get(s, {}).get(key) for s in ("clarion-epoll", "clarion-uring")]
    if any(v is None for v in ours):
        met = "n/a"
    elif all((v > limit) if higher_better else (v < limit if bound == 1 else v <= limit) for v in ours):
        met = "yes"
    elif bound == 1 and all(abs(v - limit) <= 0.001 * limit or
                            ((v > limit) if higher_better else (v < limit)) for v in ours):
        met = "tie"
    else:
        met = "**no**"
    print(f"| {label} | {' | '.join(fmt(v, digits) for v in ours)} | {fmt(value, digits)} ({peer}) | {met} |")


rows = [(f"echo {c:,}", t, "msg") for c, t in echo.items()] + [
    (f"fanout {r}/s", t, "delivery") for r, t in fanouts.items()]
for label, table, unit in rows:
    check(f"{label}: {'deliveries' if unit == 'delivery' else 'msgs'}/s above both peers", table, "throughput", 0, PEERS, 1, True)
    check(f"{label}: p99 below both peers", table, "p99", 0, PEERS, 1)
    check(f"{label}: server CPU/{unit} below both peers", table, "server_cpu", 2, PEERS, 1)
if idles:
    check("idle: RSS/connection below both peers", idles, "rss", 0, PEERS, 1)
for label, table, unit in rows:
    check(f"{label}: server CPU/{unit} at most 0.7x fastwebsockets'", table, "server_cpu", 2, ["fastwebsockets"], 0.7)
if idles:
    check("idle: RSS/connection at most 1/40 of the best peer's", idles, "rss", 0, PEERS, 1 / 40)
if notes:
    print("\nNotes:\n" + "\n".join(f"- {n}" for n in notes))
