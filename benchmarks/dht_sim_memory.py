"""Does a DHT node's memory stay flat over a long run? The churn simulator of ``dht_sim.py``, watched.

    .venv/bin/python benchmarks/dht_sim_memory.py --nodes 300 --hours 3 [--tracemalloc]

Runs ``--nodes`` DhtNode cores on the virtual-time network with churn and lookups (the same driver
as ``dht_sim.py``) for ``--hours`` simulated hours and prints, every ``--every`` simulated seconds,
the sizes of each live node's tables (mean and max over the live nodes): the routing table and its
replacement caches, the record store, the rate-limit table, the verification backoff table, the
demotion table, pending requests, the deadline heap, queued events. With ``--tracemalloc`` it also
prints the traced Python heap at each report and, at the end, the source lines whose allocations
grew most between the end of the first simulated hour (the network is settled) and the end of the
run. Departed nodes are dropped by the driver (only their traffic counters are kept), so what grows
is what live nodes hold.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_sim import Sim

from coremesh.dht import DhtNode


def table_sizes(node: DhtNode) -> dict[str, int]:
    """The sizes of every per-node structure that could grow with time."""
    return node.memory_stats()


def summarize(nodes: list[DhtNode]) -> dict[str, list[float]]:
    """``{table: [mean, max]}`` over ``nodes``."""
    per_node = [table_sizes(n) for n in nodes]
    out: dict[str, list[float]] = {}
    for key in per_node[0]:
        values = [p[key] for p in per_node]
        out[key] = [round(statistics.fmean(values), 1), max(values)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--hours", type=float, default=3.0, help="simulated hours of churn")
    ap.add_argument("--every", type=float, default=1800.0, help="simulated seconds between reports")
    ap.add_argument("--join-rate", type=float, default=50.0)
    ap.add_argument("--churn", type=float, default=0.10, help="fraction of nodes replaced per hour")
    ap.add_argument("--lookup-rate", type=float, default=1.0, help="lookups per virtual second")
    ap.add_argument("--latency", type=float, default=0.04)
    ap.add_argument("--jitter", type=float, default=0.02)
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--slice", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tracemalloc", action="store_true", help="trace the heap (slower)")
    ap.add_argument("--top", type=int, default=12, help="lines of tracemalloc growth to print")
    args = ap.parse_args()
    args.settle = 60.0
    args.duration = args.hours * 3600.0

    if args.tracemalloc:
        tracemalloc.start(1)
    started = time.perf_counter()
    sim = Sim(args)
    net = sim.net
    sim.join_all(args.nodes, args.join_rate)
    net.run_for(args.settle)
    results: list[dict[str, Any]] = []
    sim.drain(results)
    t0 = net.clock.now
    sim.start_churn(t0)
    next_report = t0
    first_hour: tracemalloc.Snapshot | None = None
    reports: list[dict[str, Any]] = []
    while True:
        now = net.clock.now
        if now >= next_report:
            gc.collect()
            report: dict[str, Any] = {
                "sim_hours": round((now - t0) / 3600.0, 2),
                "live_nodes": len(sim.live),
                "departed": sim.departed,
                "real_s": round(time.perf_counter() - started),
                "per_node": summarize(list(sim.live.values())),
            }
            if args.tracemalloc:
                report["traced_heap_mib"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
                if first_hour is None and now - t0 >= 3600.0:
                    first_hour = tracemalloc.take_snapshot()
            reports.append(report)
            print(json.dumps(report), file=sys.stderr, flush=True)
            next_report += args.every
        if now >= t0 + args.duration:
            break
        end = min(now + args.slice, t0 + args.duration, next_report)
        sim.advance(end)
        sim.drain(results)
        results.clear()
    growth: list[str] = []
    if args.tracemalloc and first_hour is not None:
        gc.collect()
        last = tracemalloc.take_snapshot()
        filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
        diff = last.filter_traces(filters).compare_to(first_hour.filter_traces(filters), "lineno")
        for stat in diff[: args.top]:
            frame = stat.traceback[0]
            growth.append(
                f"{stat.size_diff / 1024:+.0f} KiB ({stat.count_diff:+d} blocks) "
                f"{Path(frame.filename).name}:{frame.lineno}"
            )
    out = {
        "nodes": args.nodes,
        "hours": args.hours,
        "churn_per_hour": args.churn,
        "lookup_rate": args.lookup_rate,
        "first": reports[0],
        "last": reports[-1],
        "heap_mib": [r.get("traced_heap_mib") for r in reports],
        "tracemalloc_growth_after_hour_1": growth,
        "real_seconds": round(time.perf_counter() - started),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
