"""NAT lab bring-up and tear-down time, and what a delayed link measures.

    python benchmarks/natlab_setup.py --runs 10

Builds the NAT-type matrix shape (``pair``: 2 routers, 3 hosts, 3 switches = 8 namespaces) and the
13-router test zoo's size class (``--routers N``: N routers with one host each) ``--runs`` times,
timing ``Lab.up()`` and ``Lab.down()``; then, once, the round-trip time through a 25 ms link (one way)
to the project's STUN server, and again once that delay is removed from the running lab (milliseconds).
Needs root. Prints one JSON object (median, p95 and max, seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from coremesh_natlab import Lab, LinkSpec, NatSpec, pair
from coremesh_natlab.testing import start_stun
from coremesh_natlab.topology import Host, Network, Router, Topology


def many(routers: int) -> Topology:
    import ipaddress

    networks = [Network("internet", (ipaddress.IPv4Network("192.0.2.0/24"),))]
    nodes, hosts = [], [Host("stun", "internet", ipv4=("192.0.2.10", "192.0.2.11"))]
    for i in range(1, routers + 1):
        networks.append(Network(f"l{i}", (ipaddress.IPv4Network(f"10.{i}.0.0/24"),)))
        nodes.append(Router(f"r{i}", "internet", f"l{i}", nat=NatSpec()))
        hosts.append(Host(f"h{i}", f"l{i}"))
    return Topology(f"many{routers}", tuple(networks), tuple(nodes), tuple(hosts))


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 4),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4),
        "max": round(ordered[-1], 4),
    }


def time_lab(topology: Topology, runs: int) -> dict[str, Any]:
    ups, downs = [], []
    for _ in range(runs):
        lab = Lab(topology)
        start = time.perf_counter()
        lab.up()
        ups.append(time.perf_counter() - start)
        start = time.perf_counter()
        lab.down()
        downs.append(time.perf_counter() - start)
    return {"namespaces": len(Lab(topology).plan.namespaces), "up_s": summary(ups), "down_s": summary(downs)}


def delayed_rtt() -> dict[str, Any]:
    with Lab(pair("port-restricted-cone", "port-restricted-cone", wan_link=LinkSpec(latency_ms=25))) as lab:
        start_stun(lab.host("stun"))
        argv = [sys.executable, "-m", "coremesh_natlab.rtt", "192.0.2.10:3478", "--count", "20"]
        result = json.loads(lab.host("a").run(argv).stdout)
        lab.link("nat_a").set(latency_ms=0)  # the delay removed while the lab runs
        removed = json.loads(lab.host("a").run(argv).stdout)
    return {
        "configured_one_way_ms": 25,
        "rtt_ms": summary(result["rtt_ms"]),
        "lost": result["lost"],
        "after_removal": {"rtt_ms": summary(removed["rtt_ms"]), "lost": removed["lost"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--routers", type=int, default=13)
    args = parser.parse_args()
    report = {
        "pair": time_lab(pair("port-restricted-cone", "symmetric"), args.runs),
        f"routers_{args.routers}": time_lab(many(args.routers), max(1, args.runs // 2)),
        "wan_link_25ms": delayed_rtt(),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
