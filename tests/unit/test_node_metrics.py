"""The node's Prometheus metrics for overlay routing (node/metrics.py), read from ``MeshNode.stats()``
at each scrape: names, types and values, and no key counted twice."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coremesh_node.metrics import NodeCollector
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROUTING_STATS = {
    "routes": 3,
    "route_changes": 5,
    "forwarded_packets": 40,
    "forwarded_bytes": 40_000,
    "broadcast_duplicates": 2,
    "broadcasts_delivered": 7,
    "multicasts_delivered": 4,
    "drop_route_unattested": 1,
}


@dataclass(frozen=True)
class Peer:
    state: str
    path: str
    via: str | None = None


@dataclass
class Node:
    counters: dict[str, int] = field(default_factory=dict)
    peers: list[Peer] = field(default_factory=list)

    def get_peers(self) -> list[Peer]:
        return self.peers

    def stats(self) -> dict[str, int]:
        return self.counters


@dataclass
class Source:
    node: Node
    ready: bool = True

    def traffic(self) -> Mapping[str, int]:
        return {}


def scrape(node: Node) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], dict[str, str]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(lambda: Source(node), "0.0.0"))
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


def test_routing_metrics_have_their_names_and_values() -> None:
    node = Node(dict(ROUTING_STATS), [Peer("connected", "routed"), Peer("connected", "direct")])
    samples, types = scrape(node)
    assert samples[("coremesh_node_routes", ())] == 3 and types["coremesh_node_routes"] == "gauge"
    assert samples[("coremesh_node_route_changes_total", ())] == 5
    assert samples[("coremesh_node_forwarded_packets_total", ())] == 40
    assert samples[("coremesh_node_forwarded_bytes_total", ())] == 40_000
    assert samples[("coremesh_node_broadcast_duplicates_total", ())] == 2
    assert samples[("coremesh_node_deliveries_total", (("kind", "broadcast"),))] == 7
    assert samples[("coremesh_node_deliveries_total", (("kind", "multicast"),))] == 4
    for name in (
        "route_changes",
        "forwarded_packets",
        "forwarded_bytes",
        "broadcast_duplicates",
        "deliveries",
    ):
        assert types[f"coremesh_node_{name}"] == "counter", name
    assert samples[("coremesh_node_drops_total", (("layer", "mesh"), ("reason", "route_unattested")))] == 1
    assert samples[("coremesh_node_connections", (("path", "routed"),))] == 1
    assert samples[("coremesh_node_connections", (("path", "direct"),))] == 1
    # Each stats key under one name only: none of them also as a generic coremesh_node_mesh_*.
    assert not [key for key in samples if key[0].startswith("coremesh_node_mesh_")]


def test_a_node_that_does_not_route_yet_shows_the_same_names_at_zero() -> None:
    samples, _ = scrape(Node())
    for name in (
        "coremesh_node_routes",
        "coremesh_node_route_changes_total",
        "coremesh_node_forwarded_packets_total",
        "coremesh_node_forwarded_bytes_total",
        "coremesh_node_broadcast_duplicates_total",
    ):
        assert samples[(name, ())] == 0, name
    assert samples[("coremesh_node_deliveries_total", (("kind", "broadcast"),))] == 0
    assert samples[("coremesh_node_connections", (("path", "routed"),))] == 0
