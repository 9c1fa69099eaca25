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
        warmup=4.0,
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


def _churn(**kw: object) -> object:
    sim = rs.RoutingSim(_params(isolated=0, probe_rate=2.0, **kw))
    sim.bootstrap()
    sim.churn()
    return sim


def test_churn_starts_in_the_stationary_state() -> None:
    # down times far longer than the run: the fraction down is what the start made it
    slow = dict(fail_fraction=0.1, down_time=200.0, duration=20.0, warmup=2.0)
    assert 0.04 <= _churn(**slow).down_fraction <= 0.17  # 120 links, ~12 down from the start
    assert _churn(start="all-up", **slow).down_fraction < 0.03  # the old start: hardly any


def test_links_down_from_the_bootstrap_start_churn_without_a_burst() -> None:
    p = _params(start="boot-down", fail_fraction=0.1, down_time=200.0, duration=20.0, warmup=2.0)
    sim = rs.RoutingSim(p)
    assert sim.bootstrap() is not None  # every route the graph without those links allows
    assert sim.boot_down and all(not sim.is_up(a, b) for a, b in sim.boot_down)
    assert sim.route_coverage() == 1.0
    possible = sim.routes_possible()
    assert all(possible[i] == len(sim.reachable(i)) - 1 for i in range(p.nodes))
    events = sim.link_events
    sim.churn()
    assert 0.04 <= sim.down_fraction <= 0.17  # down from the start, with down times of 200 s
    # No burst: the stationary start takes its ~12 links down at once when churn starts.
    assert sim.window["start"]["link_events"] - events <= 3  # in the 2 s warmup, ~1 expected
    stationary = rs.RoutingSim(_params(fail_fraction=0.1, down_time=200.0, duration=20.0, warmup=2.0))
    stationary.bootstrap()
    events = stationary.link_events
    stationary.churn()
    assert stationary.window["start"]["link_events"] - events >= 5


def test_churn_is_measured_after_the_warmup() -> None:
    p = _params(fail_fraction=0.1, down_time=5.0, duration=30.0, warmup=5.0, isolated=0, probe_rate=40.0)
    sim = rs.RoutingSim(p)
    sim.bootstrap()
    t0 = sim.now
    sim.churn()
    assert sim.window["start"]["t"] == t0 + 5.0 and sim.window["end"]["t"] == t0 + 30.0
    assert 0.04 <= sim.down_fraction <= 0.17
    churn_repairs = [r for r in sim.metrics.repairs if r.kind == "churn"]
    assert churn_repairs and all(r.started >= t0 + 5.0 for r in churn_repairs)
    started = sim.metrics.probes["sent"] + sim.metrics.probes["partitioned"]
    assert 800 < started < 1030  # 40 a second from the warmup's end to 2 s before the end: ~920
    no_warmup = _churn(fail_fraction=0.1, down_time=5.0, duration=5.0, warmup=0.0).window
    assert no_warmup["start"]["t"] == no_warmup["warmup"]["t"]


def test_routing_traffic_breakdown_adds_up_and_link_events_are_counted() -> None:
    r = rs.run(_params(fail_fraction=0.1, down_time=5.0, duration=30.0, warmup=5.0, isolated=0))
    assert (r["churn_start"], r["warmup_s"], r["measured_virtual_s"]) == ("stationary", 5.0, 25.0)
    kinds = r["routing_bytes_breakdown"]
    assert set(kinds) == set(rs.TRAFFIC_KINDS)
    assert abs(sum(kinds.values()) - r["routing_bytes_per_node_s"]) <= 0.05 * len(kinds) + 0.05
    packets = r["routing_packets_breakdown"]
    assert abs(sum(packets.values()) - r["routing_packets_per_node_s"]) <= 0.0005 * len(packets) + 0.005
    assert kinds["ack"] > 0 and kinds["link_up"] > 0 and kinds["update"] > 0
    assert r["warmup_routing_bytes_per_node_s"] > 0 and r["warmup_routing_packets_per_node_s"] > 0
    assert r["link_events"] > 10
    assert r["link_events_per_s"] == pytest.approx(r["link_events"] / 25.0, abs=0.001)
    network_bytes = r["routing_bytes_per_node_s"] * r["nodes"] * 25.0
    assert r["routing_bytes_per_link_event"] == pytest.approx(network_bytes / r["link_events"], rel=0.01)


def test_traffic_kind_reads_the_update_head() -> None:
    from coremesh.routing.overlay import OverlayType, overlay_packet

    sim = rs.RoutingSim(_params(nodes=4))
    sim.now = 10.0
    sim.up_since[(0, 1)] = 9.0

    def update(epoch: int, msg_no: int) -> bytes:
        return overlay_packet(OverlayType.ROUTE_UPDATE, rs._UPDATE_HEAD.pack(2, epoch, msg_no) + bytes(20))

    kinds = rs.TRAFFIC_KINDS
    assert kinds[sim.traffic_kind(0, 1, update(7, 0))] == "ack"
    assert kinds[sim.traffic_kind(0, 1, update(7, 1))] == "link_up"
    assert kinds[sim.traffic_kind(0, 1, update(7, 1))] == "retransmission"
    assert kinds[sim.traffic_kind(1, 0, update(7, 1))] == "link_up"  # the other direction: its own numbers
    sim.now = 10.5
    assert kinds[sim.traffic_kind(0, 1, update(7, 3))] == "link_up"
    assert kinds[sim.traffic_kind(0, 1, update(7, 2))] == "retransmission"  # below the high-water mark
    sim.now = 11.0
    assert kinds[sim.traffic_kind(0, 1, update(7, 4))] == "update"
    assert kinds[sim.traffic_kind(0, 1, update(8, 1))] == "update"  # a new epoch numbers from 1 again
    assert kinds[sim.traffic_kind(0, 1, b"short")] == "update"


def test_start_must_be_known() -> None:
    with pytest.raises(ValueError, match="start"):
        rs.RoutingSim(_params(nodes=4, start="half-up"))


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
    for row in (
        "delivery ratio",
        "path stretch",
        "convergence",
        "routing traffic",
        "by kind",
        "in the warmup",
        "link events",
        "broadcast copies",
    ):
        assert row in out
