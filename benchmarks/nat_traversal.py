"""NAT traversal benchmark on the NAT lab (needs root; see docs/benchmarks.md).

1. Time to first message, and time until the connection is on the direct path, through two
   port-restricted cone NATs with 25 ms one-way delay on each NAT's link to the emulated internet:
   median and p95 over ``--tries`` fresh connections (fresh node processes and ports each try).
2. Punch success rate per cell of the NAT-type matrix over ``--matrix-runs`` runs: how often a cell
   whose theory allows a direct path got one.

    sudo .venv/bin/python benchmarks/nat_traversal.py [--tries 20] [--matrix-runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coremesh_natlab import Lab, LinkSpec, pair

from tests.integration.nat_matrix import (
    DIAL,
    INBOX,
    NODE_PORT,
    READY,
    TYPES,
    expected_path,
    format_matrix,
    run_matrix,
    run_script,
    start_node,
    start_relay,
    topology,
)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def port_restricted_tries(tries: int, latency_ms: float, connect_timeout: float) -> dict[str, object]:
    first: list[float] = []
    direct: list[float] = []
    failures = 0
    topo = pair("port-restricted-cone", "port-restricted-cone", wan_link=LinkSpec(latency_ms=latency_ms))
    with tempfile.TemporaryDirectory() as tmp, Lab(topo) as lab:
        start_relay(lab, tmp)
        a, b = lab.host("a"), lab.host("b")
        for i in range(tries):
            port, admin = NODE_PORT + 10 + i, f"127.0.0.1:{8000 + i}"
            procs = [(h, start_node(h, tmp, port=port, admin=admin)) for h in (a, b)]
            try:
                a_id = run_script(a, READY, "--no-netcheck", admin=admin)["peer_id"]
                b_id = run_script(b, READY, "--no-netcheck", admin=admin)["peer_id"]
                target = {
                    "cell": "try",
                    "peer": b_id,
                    "addr": f"{lab.public_ipv4('b')}:{port}",
                    "expect": "direct",
                    "timeout": connect_timeout,
                }
                r = run_script(a, DIAL, json.dumps([target]), "15", admin=admin)["try"]
                inbox = run_script(b, INBOX, "2", admin=admin)
                got = [m for m in inbox["messages"] if m["from"] == a_id]
                if not got or "t_direct" not in r:
                    failures += 1
                    continue
                first.append(got[0]["ts"] - r["t0"])
                direct.append(r["t_direct"] - r["t0"])
            finally:
                for host, proc in procs:
                    host.stop(proc)
    return {
        "tries": tries,
        "one_way_delay_ms": latency_ms,
        "connect_timeout_s": connect_timeout,
        "failures": failures,
        "first_message_s": {"median": statistics.median(first), "p95": p95(first)} if first else None,
        "direct_path_s": {"median": statistics.median(direct), "p95": p95(direct)} if direct else None,
    }


def punch_rates(runs: int) -> dict[str, object]:
    types = list(TYPES)
    hits: dict[str, int] = {}
    last = ""
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp, Lab(topology(types)) as lab:
            cells = run_matrix(lab, types, tmp)
        last = format_matrix(cells, types)
        for (x, y), cell in cells.items():
            key = f"{x}>{y}"
            hits[key] = hits.get(key, 0) + (1 if cell.via == "direct" else 0)
    rates = {k: v / runs for k, v in hits.items()}
    return {
        "runs": runs,
        "direct_rate": rates,
        "expected_direct": {f"{x}>{y}": expected_path(x, y) == "direct" for x in types for y in types},
        "last_matrix": last,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--connect-timeout", type=float, default=3.0)
    parser.add_argument("--matrix-runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.time()
    result: dict[str, object] = {
        "port_restricted": port_restricted_tries(args.tries, args.latency_ms, args.connect_timeout)
    }
    if args.matrix_runs:
        result["matrix"] = punch_rates(args.matrix_runs)
    result["duration_s"] = round(time.time() - started, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    pr = result["port_restricted"]
    assert isinstance(pr, dict)
    print(f"port-restricted <-> port-restricted, {pr['one_way_delay_ms']} ms one way, {pr['tries']} tries:")
    print(f"  time to first message: {pr['first_message_s']}")
    print(f"  time to direct path:   {pr['direct_path_s']}  (failures: {pr['failures']})")
    matrix = result.get("matrix")
    if isinstance(matrix, dict):
        print(f"\npunch success rate per cell over {matrix['runs']} runs (expected-direct cells):")
        for cell, rate in matrix["direct_rate"].items():  # type: ignore[union-attr]
            if matrix["expected_direct"][cell]:  # type: ignore[index]
                print(f"  {cell:10s} {rate:.0%}")
        print("\nlast run:\n" + str(matrix["last_matrix"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
