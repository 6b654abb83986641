"""The report of the fanout load ramp (scripts/lib/ramp.sh): per server and rate, deliveries/s,
missing, latency percentiles (median over rounds, and the worst round's p99 against the median
round's), server CPU per delivery (user and system apart), messages and bytes per socket write
and the mean time a fanout frame waited in the server's queue until its write (Clarion's /stats:
`write_wait_us`, the reactor's own share of the latency, which a saturated loadgen's does not
separate), then each server's saturation point: the highest rate at which every delivery
arrived (in every round) with a median p99 under one second, and any lower rate that did not
(a sign of a noisy run). Last, each round's p99 with the host's CPU stolen by the hypervisor
during it (`.steal`, percent of the host's CPUs): on a shared virtual machine the rounds that
lose most to steal are the slow ones, which the spread of the rounds alone does not say."""

import json
import statistics
import sys

out, rounds, servers, rates = sys.argv[1:]
rounds, servers, rates = int(rounds), servers.split(), [int(r) for r in rates.split()]
notes = []


def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def step(server, rate, n):
    """One round's figures at one rate, or None when the loadgen wrote no report."""
    name = f"ramp-{server}-{rate}-{n}"
    report = load(f"{out}/{name}.json")
    if report is None:
        notes.append(f"{name}: no loadgen report (failed run), left out")
        return None
    server_report = report.get("server") or {}
    latency = report["latency_us"]
    figures = {
        "throughput": report["throughput"],
        "missing": report["missing"] + report["failed"] + report["dropped"],
        "p50": latency["p50"],
        "p99": latency["p99"],
        "p999": latency["p99_9"],
        "user": server_report.get("cpu_user_per_message_us"),
        "sys": server_report.get("cpu_system_per_message_us"),
        "saturated": report["loadgen_cpu"]["saturated"],
        "per_write": None,
        "bytes_per_write": None,
        "write_wait": None,
        "steal": None,
    }
    try:
        figures["steal"] = float(open(f"{out}/{name}.steal").read())
    except (OSError, ValueError):
        pass
    before, after = load(f"{out}/{name}.before"), load(f"{out}/{name}.after")
    if before and after:
        delta = lambda key: after["totals"].get(key, 0) - before["totals"].get(key, 0)
        writes = delta("socket_writes")
        if writes > 0:
            figures["per_write"] = delta("deliveries") / writes
            figures["bytes_per_write"] = delta("bytes_out") / writes
        waits = [(s.get("write_wait_us") or {}) for s in (before, after)]
        counted = waits[1].get("count", 0) - waits[0].get("count", 0)
        if counted > 0:
            figures["write_wait"] = (waits[1]["sum"] - waits[0]["sum"]) / counted
    return figures


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec, scale=1.0):
    return "-" if value is None else format(value / scale, spec)


print(
    "| server | msgs/s | deliveries/s | missing | p50 (ms) | p99 (ms) | p99.9 (ms) "
    "| worst/median p99 | server CPU user / sys per delivery (µs) | msgs per write "
    "| bytes per write | server write wait, mean (ms) | loadgen saturated |"
)
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
saturation, failed_below, per_round = {}, {}, []
for server in servers:
    saturation[server], failed = None, []
    for rate in rates:
        runs = [r for r in (step(server, rate, n) for n in range(1, rounds + 1)) if r]
        if not runs:
            failed.append(rate)
            continue
        m = {k: median([r[k] for r in runs]) for k in runs[0] if k not in ("missing", "saturated")}
        missing = sum(r["missing"] for r in runs)
        worst = max(r["p99"] for r in runs)
        spread = worst / m["p99"] if m["p99"] else None
        saturated = sum(1 for r in runs if r["saturated"])
        per_round.append(
            f"{server} {rate}: "
            + ", ".join(f"{fmt(r['p99'], '.1f', 1e3)} ({fmt(r['steal'], '.1f')}%)" for r in runs)
        )
        print(
            f"| {server} | {rate} | {m['throughput']:,.0f} | {missing} | {fmt(m['p50'], '.1f', 1e3)} "
            f"| {fmt(m['p99'], '.1f', 1e3)} | {fmt(m['p999'], '.1f', 1e3)} | {fmt(spread, '.2f')}x "
            f"| {fmt(m['user'], '.2f')} / {fmt(m['sys'], '.2f')} | {fmt(m['per_write'], '.1f')} "
            f"| {fmt(m['bytes_per_write'], ',.0f')} | {fmt(m['write_wait'], '.2f', 1e3)} "
            f"| {saturated}/{len(runs)} |"
        )
        if missing == 0 and m["p99"] < 1e6 and len(runs) == rounds:
            saturation[server] = rate
        else:
            failed.append(rate)
    failed_below[server] = [r for r in failed if saturation[server] and r < saturation[server]]
print()
print(f"Rounds: {rounds}; medians over the rounds; missing summed (lost, failed and dropped).")
for server in servers:
    point = saturation[server]
    said = f"{point} msgs/s" if point else f"below {rates[0]} msgs/s"
    if failed_below[server]:
        said += f" (but not at {', '.join(map(str, failed_below[server]))} msgs/s: a noisy run?)"
    print(f"Saturation point of {server} (every delivery, median p99 < 1 s): {said}")
print()
print("p99 of each round, ms (host CPU stolen by the hypervisor meanwhile, % of its CPUs):")
print()
for line in per_round:
    print(f"- {line}")
for note in notes:
    print(f"Note: {note}")
