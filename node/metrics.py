"""The node's Prometheus metrics (``GET /metrics``), read from the node at every scrape.

Nothing is counted twice: every value comes from what the node already counts (``MeshNode.stats()``,
``dht_status()``, ``get_peers()``) or from the daemon's own traffic (the inbox, ``/v1/send``), so the
metrics can never drift from ``/v1/status``. A counter the node adds later still shows up, as
``coremesh_node_mesh_<key>_total``, before it is given a name here.

    coremesh_node_connections{path}                 connected peers now, by path: direct, turn, keyed, routed
    coremesh_node_packets_total{direction}          UDP datagrams sent / received on the mesh socket
    coremesh_node_bytes_total{direction}            their bytes (UDP payload), probe sockets included
    coremesh_node_payload_bytes_total{direction}    message bytes sent (``/v1/send``) / received (inbox)
    coremesh_node_messages_total{direction}         messages sent / received, likewise
    coremesh_node_handshakes_total{result}          ok (completed), failed (timed out, or not
                                                    authenticated: the key was not the peer's)
    coremesh_node_handshakes_started_total          handshake initiations sent
    coremesh_node_drops_total{layer, reason}        packets dropped by the mesh or the DHT, by reason
    coremesh_node_path_switches_total{to}           connections moved to another path (traversal)
    coremesh_node_traversal_<event>_total           NAT traversal: birthday attempts, path checks, ...
    coremesh_node_dht_<gauge>                       routing table size, records stored, lookups active
    coremesh_node_dht_<event>_total                 lookups served and started, PEX, records accepted
    coremesh_node_dht_bytes_total{direction}        DHT message bytes
    coremesh_node_routes                            destinations the overlay has a route to now
    coremesh_node_route_changes_total               primary routes changed (new, replaced, lost)
    coremesh_node_forwarded_packets_total           ROUTED packets this node forwarded for others
    coremesh_node_forwarded_bytes_total             their bytes
    coremesh_node_broadcast_duplicates_total        broadcast copies that arrived again (not delivered)
    coremesh_node_deliveries_total{kind}            broadcasts and multicasts delivered to this node
    coremesh_node_inbox_messages, _inbox_bytes      messages waiting for ``coremesh recv``
    coremesh_node_ready, coremesh_node_build_info   serving or not; the version
    process_*                                       memory, CPU, open files (prometheus_client)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

NAMESPACE: Final = "coremesh_node"
PATHS: Final = ("direct", "turn", "keyed", "routed")

# MeshNode.stats() keys with a name of their own (the rest: drop_* by reason, path_switches_to_*,
# traversal events, else coremesh_node_mesh_<key>_total).
# A connect to a node that names another identity fails before any handshake times out.
_HANDSHAKE_FAILED: Final = ("connect_timeouts", "drop_handshake_auth_failed", "connect_identity_mismatch")
_NAMED: Final = frozenset(
    {
        "datagrams_sent",
        "datagrams_received",
        "bytes_sent",
        "bytes_received",
        "connections",  # a gauge; connections by path come from get_peers()
        "handshakes_completed",
        "handshake_initiations_sent",
        "connect_timeouts",
        "connect_identity_mismatch",
        "routes",
        "route_changes",
        "forwarded_packets",
        "forwarded_bytes",
        "broadcast_duplicates",
        "broadcasts_delivered",
        "multicasts_delivered",
    }
)
_TRAVERSAL: Final = frozenset(
    {
        "birthday_attempts",
        "birthday_refused",
        "path_challenges_sent",
        "path_challenges_answered",
        "path_packets_sent",
        "migrations_reverted",
        "relay_packets_after_switch",
        "address_changes",
    }
)
# Overlay routing (docs/routing.md): MeshNode.stats() key -> (metric name, help). "routes" is a gauge.
_ROUTING: Final = {
    "route_changes": ("route_changes", "primary routes changed: new, replaced by a better one, or lost"),
    "forwarded_packets": ("forwarded_packets", "ROUTED packets forwarded for other nodes"),
    "forwarded_bytes": ("forwarded_bytes", "bytes of the ROUTED packets forwarded for other nodes"),
    "broadcast_duplicates": ("broadcast_duplicates", "broadcast copies that arrived again (dropped)"),
}
_DELIVERED: Final = {"broadcast": "broadcasts_delivered", "multicast": "multicasts_delivered"}
_DHT_GAUGES: Final = frozenset(
    {"routing_table_size", "records_stored", "lookups_active", "lookups_queued", "pending_requests"}
)


class MetricsSource(Protocol):
    """What the metrics read: the node, the daemon's traffic and readiness."""

    @property
    def node(self) -> Any: ...
    @property
    def ready(self) -> bool: ...
    def traffic(self) -> Mapping[str, int]: ...


def _state_text(state: Any) -> str:
    return str(getattr(state, "value", state))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class NodeCollector(Collector):
    """Builds every family from the node's counters at each scrape."""

    def __init__(self, source: Callable[[], MetricsSource], version: str) -> None:
        self._source = source
        self._version = version

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on what the node counts: never checked at registration

    def collect(self) -> Iterator[Metric]:
        source = self._source()
        node = source.node
        yield InfoMetricFamily(f"{NAMESPACE}_build", "node version", value={"version": self._version})
        yield GaugeMetricFamily(f"{NAMESPACE}_ready", "1 while the node serves", value=int(source.ready))

        by_path = dict.fromkeys(PATHS, 0)
        for peer in node.get_peers():
            if _state_text(peer.state) == "connected":
                via = str(getattr(peer, "via", None) or getattr(peer, "path", "direct"))
                by_path[via] = by_path.get(via, 0) + 1
        connections = GaugeMetricFamily(
            f"{NAMESPACE}_connections", "connected peers now, by path", labels=["path"]
        )
        for path, count in by_path.items():
            connections.add_metric([path], count)
        yield connections

        stats: Mapping[str, Any] = node.stats()
        traffic = source.traffic()
        yield _by_direction(
            "packets",
            "UDP datagrams on the mesh socket",
            stats.get("datagrams_sent", 0),
            stats.get("datagrams_received", 0),
        )
        yield _by_direction(
            "bytes",
            "UDP payload bytes on the node's sockets (the mesh socket and its probe sockets)",
            stats.get("bytes_sent", 0),
            stats.get("bytes_received", 0),
        )
        yield _by_direction(
            "payload_bytes",
            "message bytes sent through the admin API and received into the inbox",
            traffic.get("bytes_sent", 0),
            traffic.get("bytes_received", 0),
        )
        yield _by_direction(
            "messages",
            "messages sent through the admin API and received into the inbox",
            traffic.get("messages_sent", 0),
            traffic.get("messages_received", 0),
        )
        handshakes = CounterMetricFamily(
            f"{NAMESPACE}_handshakes",
            "handshakes by result: ok, failed (timed out or not authenticated)",
            labels=["result"],
        )
        handshakes.add_metric(["ok"], stats.get("handshakes_completed", 0))
        handshakes.add_metric(["failed"], sum(stats.get(k, 0) for k in _HANDSHAKE_FAILED))
        yield handshakes
        yield CounterMetricFamily(
            f"{NAMESPACE}_handshakes_started",
            "handshake initiations sent",
            value=stats.get("handshake_initiations_sent", 0),
        )

        yield from _routing(stats)

        drops = CounterMetricFamily(
            f"{NAMESPACE}_drops", "packets dropped, by layer and reason", labels=["layer", "reason"]
        )
        switches = CounterMetricFamily(
            f"{NAMESPACE}_path_switches", "connections moved to another path, by path", labels=["to"]
        )
        for path in PATHS:
            switches.add_metric([path], stats.get(f"path_switches_to_{path}", 0))
        others: list[Metric] = []
        for key, value in sorted(stats.items()):
            if not _number(value) or key in _NAMED:
                continue
            if key.startswith("drop_"):
                drops.add_metric(["mesh", key[len("drop_") :]], value)
            elif key.startswith("path_switches_to_"):
                if key[len("path_switches_to_") :] not in PATHS:
                    switches.add_metric([key[len("path_switches_to_") :]], value)
            elif key in _TRAVERSAL:
                others.append(
                    CounterMetricFamily(
                        f"{NAMESPACE}_traversal_{key}", f"NAT traversal: {key.replace('_', ' ')}", value=value
                    )
                )
            else:
                name = key.removesuffix("_total")
                others.append(
                    CounterMetricFamily(f"{NAMESPACE}_mesh_{name}", f"MeshNode.stats()[{key!r}]", value=value)
                )
        yield switches
        yield from others

        dht_status = getattr(node, "dht_status", None)
        dht: Mapping[str, Any] = dht_status() if callable(dht_status) else {}
        if dht.get("enabled"):
            dht_stats: Mapping[str, Any] = dht.get("stats", {})
            yield _by_direction(
                "dht_bytes",
                "DHT message bytes",
                dht_stats.get("bytes_sent", 0),
                dht_stats.get("bytes_received", 0),
            )
            for key, value in sorted(dht_stats.items()):
                if not _number(value) or key in ("bytes_sent", "bytes_received"):
                    continue
                if key.startswith("drop_"):
                    drops.add_metric(["dht", key[len("drop_") :]], value)
                elif key in _DHT_GAUGES:
                    text = f"DHT {key.replace('_', ' ')} now"
                    yield GaugeMetricFamily(f"{NAMESPACE}_dht_{key}", text, value=value)
                else:
                    name = key.removesuffix("_total")
                    yield CounterMetricFamily(
                        f"{NAMESPACE}_dht_{name}", f"DHT {name.replace('_', ' ')}", value=value
                    )
        yield drops

        inbox = traffic.get("inbox_queued"), traffic.get("inbox_bytes")
        if inbox[0] is not None and inbox[1] is not None:
            yield GaugeMetricFamily(
                f"{NAMESPACE}_inbox_messages", "messages waiting for coremesh recv", value=inbox[0]
            )
            yield GaugeMetricFamily(
                f"{NAMESPACE}_inbox_bytes", "payload bytes waiting for coremesh recv", value=inbox[1]
            )


def _routing(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """The overlay's families, 0 until the node routes (a scrape always has the same names)."""
    yield GaugeMetricFamily(
        f"{NAMESPACE}_routes", "destinations the overlay has a route to now", value=stats.get("routes", 0)
    )
    for key, (name, text) in _ROUTING.items():
        yield CounterMetricFamily(f"{NAMESPACE}_{name}", text, value=stats.get(key, 0))
    delivered = CounterMetricFamily(
        f"{NAMESPACE}_deliveries",
        "broadcasts and multicasts delivered to this node, by kind",
        labels=["kind"],
    )
    for kind, key in _DELIVERED.items():
        delivered.add_metric([kind], stats.get(key, 0))
    yield delivered


def _by_direction(name: str, text: str, sent: int, received: int) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{NAMESPACE}_{name}", text, labels=["direction"])
    family.add_metric(["sent"], sent)
    family.add_metric(["received"], received)
    return family
