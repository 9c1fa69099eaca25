"""The bootstrap node's admin HTTP API (aiohttp): health, readiness, Prometheus metrics and status.

    GET /healthz            the process answers: {"ok": true}
    GET /readyz             the DHT is serving: {"ready": true, ...}; 503 while starting or stopping
    GET /metrics            Prometheus text: routing table size, records stored, lookups served, drops
                            by reason, mesh connections, process metrics
    GET /v1/status          role "bootstrap", peer id, addresses, uptime, DHT state; the shape of the
                            node's status, so ``coremesh --admin HOST:PORT status --json`` works here
    GET /v1/peers           the mesh connections (as the node's API lists them)
    GET /v1/lookup?peer=ID  resolve a PeerId through the DHT: its signed record, hops and time

Errors are ``{"error": "one clear line", "code": "..."}`` with a 4xx/5xx status, as in the node's API.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from coremesh.addr import Address
from coremesh.dht.records import record_json
from coremesh.errors import InvalidPeerId, MeshError, PeerNotFound
from coremesh.identity import PeerId
from coremesh.service import version
from coremesh.service.admin import (
    AdminRunner,
    ApiError,
    error_response,
    json_errors,
    metrics_registry,
    metrics_response,
)
from coremesh.service.jsonable import state_text
from coremesh.service.logs import EventLogger

log = EventLogger("coremesh_bootstrap.admin")

NAMESPACE: Final = "coremesh_bootstrap"
LOOKUP_TIMEOUT_MAX: Final = 30.0


class BootstrapNode(Protocol):
    """What the admin API needs from the node (a :class:`coremesh.MeshNode` with its DHT)."""

    @property
    def peer_id(self) -> PeerId: ...
    @property
    def listen_addresses(self) -> list[Address]: ...
    def get_peers(self) -> list[Any]: ...
    def stats(self) -> dict[str, int]: ...
    def dht_status(self) -> dict[str, Any]: ...
    async def lookup(self, peer: PeerId, *, timeout: float | None = None) -> Any: ...


# Gauges among the DHT's stats(); every other key is a counter. Keys named drop_<reason> become one
# family labelled by reason.
_GAUGES: Final = frozenset(
    {"routing_table_size", "records_stored", "known_peers", "buckets", "lookups_active"}
)


class BootstrapCollector(Collector):
    """Reads the node's counters at every scrape, so the metrics can never drift from them."""

    def __init__(self, state: BootstrapState) -> None:
        self._state = state

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(f"{NAMESPACE}_build", "bootstrap version", value={"version": version()})
        node = self._state.node
        if node is None:
            return
        ready = GaugeMetricFamily(f"{NAMESPACE}_ready", "1 while the bootstrap node serves")
        ready.add_metric([], 1 if self._state.ready else 0)
        yield ready
        connections = GaugeMetricFamily(f"{NAMESPACE}_connections", "mesh connections now")
        connections.add_metric([], sum(1 for p in node.get_peers() if state_text(p.state) == "connected"))
        yield connections
        stats: Mapping[str, Any] = node.dht_status().get("stats", {})
        drops = CounterMetricFamily(
            f"{NAMESPACE}_dht_drops", "DHT datagrams dropped, by reason", labels=["reason"]
        )
        for key, value in sorted(stats.items()):
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if key.startswith("drop_"):
                drops.add_metric([key[len("drop_") :]], value)
            elif key in _GAUGES:
                yield GaugeMetricFamily(f"{NAMESPACE}_dht_{key}", f"DHT {key.replace('_', ' ')}", value=value)
            else:
                name = key.removesuffix("_total")
                yield CounterMetricFamily(
                    f"{NAMESPACE}_dht_{name}", f"DHT {name.replace('_', ' ')}", value=value
                )
        yield drops
        for key, value in sorted(node.stats().items()):
            if key.startswith("drop_") and isinstance(value, int):
                yield CounterMetricFamily(
                    f"{NAMESPACE}_mesh_{key}", f"mesh packets dropped: {key[5:]}", value=value
                )


@dataclass
class BootstrapState:
    """What the admin API shows; ``main`` fills it in as the node starts and stops."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    node: BootstrapNode | None = None
    addresses: list[str] = field(default_factory=list)
    admin_address: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False

    def status(self) -> dict[str, Any]:
        node = self.node
        body: dict[str, Any] = {
            "role": "bootstrap",
            "peer_id": None,
            "addresses": list(self.addresses),
            "listen": [],
            "admin": self.admin_address,
            "version": version(),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "connections": 0,
            "ready": self.ready,
            "settings": dict(self.settings),
        }
        if node is not None:
            body["peer_id"] = node.peer_id.to_text()
            body["listen"] = [str(a) for a in node.listen_addresses]
            body["connections"] = sum(1 for p in node.get_peers() if state_text(p.state) == "connected")
            body["dht"] = node.dht_status()
            body["stats"] = {k: v for k, v in node.stats().items() if isinstance(v, int)}
        return body


STATE: Final = web.AppKey("coremesh_bootstrap_admin_state", BootstrapState)
REGISTRY: Final = web.AppKey("coremesh_bootstrap_registry", CollectorRegistry)

_ERROR_MAP: Final = (
    (InvalidPeerId, 400, "invalid_peer_id"),
    (PeerNotFound, 404, "peer_not_found"),
    (TimeoutError, 504, "timeout"),
    (MeshError, 500, "mesh_error"),
)


def create_admin_app(state: BootstrapState) -> web.Application:
    app = web.Application(
        middlewares=[json_errors(log, _ERROR_MAP, service="coremesh-bootstrap")], client_max_size=64 * 1024
    )
    app[STATE] = state
    app[REGISTRY] = metrics_registry(BootstrapCollector(state))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/peers", _peers)
    app.router.add_get("/v1/lookup", _lookup)
    return app


async def _healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"ok": True})


async def _readyz(request: web.Request) -> web.Response:
    """Readiness: the DHT is serving (503 while starting or stopping)."""
    st = request.app[STATE]
    if not st.ready or st.node is None:
        return error_response(503, "not_ready", "the bootstrap node is not serving (starting or stopping)")
    return web.json_response({"ready": True, "role": "bootstrap", "peer_id": st.node.peer_id.to_text()})


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus metrics: routing table, records, lookups served, drops by reason, connections."""
    return metrics_response(request.app[REGISTRY])


async def _status(request: web.Request) -> web.Response:
    """Role `bootstrap`, PeerId, addresses, uptime, DHT state and counters."""
    return web.json_response(request.app[STATE].status())


def _node(request: web.Request) -> BootstrapNode:
    node = request.app[STATE].node
    if node is None:
        raise ApiError(503, "not_ready", "the bootstrap node is not running")
    return node


async def _peers(request: web.Request) -> web.Response:
    """Its mesh connections, as the node lists them."""
    node = _node(request)
    peers = []
    for p in node.get_peers():
        peers.append(
            {
                "peer_id": p.peer_id.to_text(),
                "address": str(p.address),
                "state": state_text(p.state),
                "rtt_ms": None if p.rtt is None else round(p.rtt * 1000, 3),
            }
        )
    return web.json_response({"peers": peers})


async def _lookup(request: web.Request) -> web.Response:
    """A PeerId's signed record, found through the DHT."""
    node = _node(request)
    text = request.query.get("peer", "").strip()
    if not text:
        raise ApiError(400, "bad_request", 'query parameter "peer" (a PeerId) is required')
    peer = PeerId.from_text(text)
    try:
        timeout = float(request.query.get("timeout", "5"))
    except ValueError:
        raise ApiError(400, "bad_request", '"timeout": expected seconds') from None
    if not 0 < timeout <= LOOKUP_TIMEOUT_MAX:
        raise ApiError(400, "bad_request", f'"timeout": expected 0 to {LOOKUP_TIMEOUT_MAX:g} seconds')
    started = time.monotonic()
    record = await node.lookup(peer, timeout=timeout)
    body = record_json(record, time.time())
    body["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
    return web.json_response(body)


class AdminServer(AdminRunner):
    def started(self, address: Address) -> None:
        self.app[STATE].admin_address = str(address)

    def stopping(self) -> None:
        self.app[STATE].ready = False
