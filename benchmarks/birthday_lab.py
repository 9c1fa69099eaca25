"""The birthday approach on the NAT lab (needs root): how often a cone NAT and a random-port
symmetric NAT end up direct, and how long it takes, over ``--runs`` fresh labs.

Each run starts one lab with port-restricted cone, symmetric (random) and CGNAT hosts, real
`coremesh-node` processes and a real `coremesh-relay`, and dials every pair both ways; the cells
that need the birthday approach are prc<->sym and cgn<->sym.

    sudo .venv/bin/python benchmarks/birthday_lab.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coremesh_natlab import Lab

from tests.integration.nat_matrix import run_matrix, topology

TYPES = ["prc", "sym", "cgn"]
CELLS = [("prc", "sym"), ("sym", "prc"), ("cgn", "sym"), ("sym", "cgn")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    direct = 0
    times: list[float] = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp, Lab(topology(TYPES)) as lab:
            cells = run_matrix(lab, TYPES, tmp)
        for key in CELLS:
            cell = cells[key]
            if cell.path == "direct" and cell.direct_after_s is not None:
                direct += 1
                times.append(cell.direct_after_s)
            print(f"run {run}: {key[0]}>{key[1]}: {cell.via} after {cell.direct_after_s}", file=sys.stderr)
    total = args.runs * len(CELLS)
    result = {
        "cells": total,
        "direct": direct,
        "success_rate": direct / total,
        "direct_after_s_median": statistics.median(times) if times else None,
        "direct_after_s_max": max(times) if times else None,
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
