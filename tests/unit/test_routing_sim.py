"""The routing simulator (benchmarks/routing_sim.py) on a 30-node network: the real RoutingTable and
Flood cores, real signatures, a short virtual time."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "routing_sim.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routing_sim", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["routing_sim"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rs = _load()


def _params(**kw: object) -> object:
    base = dict(
        nodes=30,
        duration=20.0,
        probe_rate=10.0,
        broadcast_rate=0.5,
        isolated=2,
        isolated_gap=6.0,
        bootstrap_timeout=60.0,
        memory=False,
        seed=3,
    )
    base.update(kw)
    return rs.SimParams(**base)


def test_topology_is_connected_with_the_target_degree() -> None:
    topo = rs.build_topology(200, 8.0, random.Random(1), min_delay=0.002, max_delay=0.03)
    assert len(rs._components(200, [(i, j, 0.0) for i, j in topo.delay])) == 1
    assert 7.0 <= topo.mean_degree() <= 9.0
    assert all(0.002 <= d <= 0.03 for d in topo.delay.values())


def test_dijkstra_takes_the_cheap_detour_and_avoids_links_down() -> None:
    adj = [[1, 2], [0, 2], [0, 1]]
    costs = {(0, 1): 10, (0, 2): 3, (1, 2): 4}

    def cost(a: int, b: int) -> int:
        return costs[(min(a, b), max(a, b))]

    assert rs.dijkstra(adj, cost, lambda a, b: True, 0, 1) == 7
    assert rs.dijkstra(adj, cost, lambda a, b: {a, b} != {0, 2}, 0, 1) == 10
    assert rs.dijkstra(adj, cost, lambda a, b: 1 not in (a, b), 0, 1) is None


def test_without_failures_every_probe_arrives_and_every_broadcast_once() -> None:
    r = rs.run(_params(fail_fraction=0.0, isolated=0))
    assert r["bootstrap_converged_s"] is not None
    assert r["probes"]["sent"] > 100
    assert r["delivery_ratio"] == 1.0
    assert r["stretch_mean"] >= 1.0
    assert r["stretch_min"] >= 1.0
    assert r["broadcasts"] >= 5
    assert r["broadcast_coverage"] == 1.0
    assert r["broadcast_duplicate_deliveries"] == 0
    assert r["broadcast_copies_per_node"] >= 1.0
    assert r["bootstrap_bytes_per_node"] > 0
    assert r["signatures_made"] >= 30  # every node signed its own record
    assert r["verify_calls"] >= r["verify_distinct"] > 0


def test_with_failures_routes_converge_again() -> None:
    r = rs.run(_params(fail_fraction=0.1, down_time=5.0, isolated=3))
    assert r["fail_fraction_measured"] > 0
    assert r["delivery_ratio"] > 0.8
    assert r["stretch_mean"] >= 1.0
    iso = r["repair_isolated_s"]
    assert iso["n"] >= 1 and r["repair_isolated_unrepaired"] == 0
    assert iso["max"] < 30.0
    assert r["repair_churn_unrepaired"] == 0


def test_memo_verifier_gives_the_same_answers_and_checks_once() -> None:
    from coremesh.identity import Identity

    ident = Identity.generate(random.Random(1).randbytes)
    other = Identity.generate(random.Random(2).randbytes)
    v = rs.MemoVerifier()
    sig = ident.sign(b"m")
    assert v(ident.peer_id, b"m", sig) and v(ident.peer_id, b"m", sig)
    assert not v(other.peer_id, b"m", sig)
    assert not v(ident.peer_id, b"n", sig)
    assert (v.calls, v.checks) == (4, 3)


@pytest.mark.parametrize("argv", [["--nodes", "20", "--duration", "5", "--isolated", "1", "--no-memory"]])
def test_main_prints_the_table(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rs.main([*argv, "--broadcast-rate", "1", "--isolated-gap", "3"])
    out = capsys.readouterr().out
    for row in ("delivery ratio", "path stretch", "convergence", "routing traffic", "broadcast copies"):
        assert row in out
