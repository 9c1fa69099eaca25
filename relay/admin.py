"""The relay's admin HTTP API (aiohttp): health, readiness, Prometheus metrics and status.

    GET /healthz     the process answers: {"ok": true}
    GET /readyz      every configured service is serving: {"ready": true, ...}; 503 while starting or
                     stopping
    GET /metrics     Prometheus text format, read from the services' ``stats()`` at every scrape
    GET /v1/status   role "relay", addresses, uptime, per-service state and counters; the shape of the
                     node's status, so ``coremesh --admin HOST:PORT status --json`` works against a relay

Every error is ``{"error": "one clear line", "code": "..."}`` with a 4xx/5xx status, as in the node's
API. See docs/relay.md for examples and every metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from coremesh.addr import Address
from coremesh.service import version
from coremesh.service.admin import (
    AdminRunner,
    error_response,
    json_errors,
    metrics_registry,
    metrics_response,
)
from coremesh.service.logs import EventLogger

log = EventLogger("coremesh_relay.admin")

NAMESPACE: Final = "coremesh_relay"


class StatsSource(Protocol):
    """What the admin API needs from a service: counters and gauges by name."""

    def stats(self) -> Mapping[str, int]: ...


# ------------------------------------------------------------------------------------------ metrics


@dataclass(frozen=True, slots=True)
class Spec:
    """How one ``stats()`` key is exposed: metric name (without the namespace), kind, help, labels."""

    name: str
    kind: str  # "counter" (exposed with _total) or "gauge"
    help: str
    labels: tuple[tuple[str, str], ...] = ()


def _c(name: str, text: str, **labels: str) -> Spec:
    return Spec(name, "counter", text, tuple(sorted(labels.items())))


def _g(name: str, text: str, **labels: str) -> Spec:
    return Spec(name, "gauge", text, tuple(sorted(labels.items())))


_RELAYED = "bytes relayed by TURN (to_peer: from clients to peers; to_client: back)"
_RELAYED_PKTS = "packets relayed by TURN, by direction"
_DROPS = "packets, frames and requests dropped, by reason"
_AUTH = "requests refused for bad credentials (TURN) or failed registrations (keyed)"


def _drop(service: str, reason: str) -> Spec:
    return _c("drops", _DROPS, service=service, reason=reason)


# The names of what each service's stats() counts. Keys matched by PREFIXES become one labelled
# family; any other key is exposed as coremesh_relay_<service>_<key> (a counter if it ends in _total,
# else a gauge), so nothing a service counts is lost before it gets a name here.
METRICS: Final[Mapping[str, Mapping[str, Spec]]] = {
    "stun_turn": {
        "allocations_current": _g("allocations", "TURN allocations now"),
        "allocations_total": _c("allocations_created", "TURN allocations made since start"),
        "allocations_expired": _c("allocations_expired", "TURN allocations that timed out"),
        "permissions_current": _g("permissions", "TURN permissions now"),
        "channels_current": _g("channels", "TURN channel bindings now"),
        "relay_sockets": _g("relay_sockets", "relayed transport addresses (UDP sockets) now"),
        "bytes_to_peer": _c("relayed_bytes", _RELAYED, direction="to_peer"),
        "bytes_to_client": _c("relayed_bytes", _RELAYED, direction="to_client"),
        "packets_to_peer": _c("relayed_packets", _RELAYED_PKTS, direction="to_peer"),
        "packets_to_client": _c("relayed_packets", _RELAYED_PKTS, direction="to_client"),
        "auth_failures": _c("auth_failures", _AUTH, service="stun_turn"),
        "auth_challenges": _c("auth_challenges", "401 challenges sent (the normal first round of auth)"),
        "stale_nonces": _c("stale_nonces", "438 Stale Nonce answers to expired nonces"),
        "invalid_nonces": _c("invalid_nonces", "requests with a nonce this relay never issued"),
        "forbidden_peers": _c("forbidden_peers", "permissions refused by the peer address policy"),
        "relay_bind_failures": _c("relay_bind_failures", "relay ports that could not be bound"),
        "binding_success": _c("stun_binding_requests", "STUN Binding requests answered"),
        "binding_indication": _c("stun_binding_indications", "STUN Binding indications (keepalives)"),
        "binding_rfc3489": _c("stun_binding_rfc3489", "Binding requests of classic RFC 3489 clients"),
        "udp_datagrams_received": _c("udp_datagrams", "datagrams on the listening sockets", direction="in"),
        "udp_datagrams_sent": _c("udp_datagrams", "datagrams on the listening sockets", direction="out"),
        "tcp_connections": _g("tcp_connections", "STUN/TURN TCP/TLS connections now"),
        "tcp_connections_total": _c("tcp_accepted", "STUN/TURN TCP/TLS connections accepted"),
        "tcp_frames_received": _c("tcp_frames_received", "STUN messages and ChannelData over TCP"),
        "send_errors": _c("send_errors", "datagrams the kernel refused to send"),
        "tcp_drop_oversize": _drop("stun_turn", "tcp_oversize"),
        "tcp_drop_malformed": _drop("stun_turn", "tcp_malformed"),
        "send_dropped_full": _drop("stun_turn", "udp_send_buffer_full"),
        "tcp_send_dropped_full": _drop("stun_turn", "tcp_send_buffer_full"),
        "send_no_socket": _drop("stun_turn", "no_socket"),
        "send_no_connection": _drop("stun_turn", "tcp_connection_gone"),
        "drops": Spec("", "skip", ""),  # the sum of the drop_* counters
    },
    "keyed": {
        "sessions_current": _g("keyed_sessions", "keyed relay connections now (registered or not)"),
        "sessions_registered": _g("keyed_registered_peers", "peers registered with the keyed relay now"),
        "sessions_total": _c("keyed_connections", "keyed relay connections since start"),
        "sessions_ws_total": _c("keyed_websocket_sessions", "keyed relay connections over WebSocket"),
        "registrations_total": _c("keyed_registrations", "successful keyed relay registrations"),
        "sessions_replaced": _c("keyed_sessions_replaced", "registrations that replaced an older one"),
        "bytes_forwarded": _c("keyed_forwarded_bytes", "bytes forwarded by the keyed relay"),
        "frames_forwarded": _c("keyed_forwarded_frames", "packets forwarded by the keyed relay"),
        "peer_unknown_sent": _c("keyed_peer_unknown_sent", "PEER_UNKNOWN answers sent"),
        "auth_failures": _c("auth_failures", _AUTH, service="keyed"),
        "queued_bytes": _g("keyed_queued_bytes", "bytes queued towards keyed relay sessions now"),
        "queue_peak_bytes": _g("keyed_queue_peak_bytes", "largest send queue of one session seen"),
    },
}

# (service or "" for any, key prefix, metric name, kind, help, label for the rest of the key, fixed
# labels). The first match wins.
PREFIXES: Final[tuple[tuple[str, str, str, str, str, str, tuple[tuple[str, str], ...]], ...]] = (
    ("stun_turn", "binding_drop_", "drops", "counter", _DROPS, "reason", (("service", "stun_turn"),)),
    ("", "drop_", "drops", "counter", _DROPS, "reason", ()),
    (
        "stun_turn",
        "binding_error_",
        "stun_errors",
        "counter",
        "STUN/TURN error responses, by code",
        "code",
        (("method", "binding"),),
    ),
    (
        "stun_turn",
        "error_",
        "stun_errors",
        "counter",
        "STUN/TURN error responses, by code",
        "code",
        (("method", "turn"),),
    ),
    ("keyed", "closed_", "keyed_closed", "counter", "keyed relay sessions closed, by reason", "reason", ()),
)


class RelayCollector(Collector):
    """Turns the services' ``stats()`` into Prometheus metric families at every scrape."""

    def __init__(self, services: Callable[[], Mapping[str, StatsSource]], info: Mapping[str, str]) -> None:
        self._services = services
        self._info = dict(info)

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on what the services count: never checked at registration

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(f"{NAMESPACE}_build", "relay version", value=self._info)
        up = GaugeMetricFamily(f"{NAMESPACE}_service_up", "1 if the service is running", labels=["service"])
        families: dict[str, Metric] = {}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for service, source in self._services().items():
            try:
                stats = dict(source.stats())
            except Exception as exc:  # a scrape never fails because one service misbehaves
                log.warning("metrics.stats_failed", service=service, error=f"{type(exc).__name__}: {exc}")
                up.add_metric([service], 0)
                continue
            up.add_metric([service], 1)
            # Every named metric of a running service is exposed from the start, 0 until counted.
            stats = {**dict.fromkeys(METRICS.get(service, {}), 0), **stats}
            for key, value in sorted(stats.items()):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                spec = spec_for(service, key)
                if spec.kind == "skip" or (spec.name, spec.labels) in seen:
                    continue  # an alias of a metric already given
                seen.add((spec.name, spec.labels))
                family = families.get(spec.name + spec.kind)
                if family is None:
                    full = f"{NAMESPACE}_{spec.name}"
                    names = [k for k, _ in spec.labels]
                    if spec.kind == "counter":
                        family = CounterMetricFamily(full, spec.help, labels=names)
                    else:
                        family = GaugeMetricFamily(full, spec.help, labels=names)
                    families[spec.name + spec.kind] = family
                family.add_metric([v for _, v in spec.labels], value)  # type: ignore[attr-defined]
        yield up
        yield from families.values()


def spec_for(service: str, key: str) -> Spec:
    """How ``service``'s ``stats()[key]`` is exposed."""
    spec = METRICS.get(service, {}).get(key)
    if spec is not None:
        return spec
    for only, prefix, name, kind, text, label, fixed in PREFIXES:
        if key.startswith(prefix) and only in ("", service):
            labels = {label: key[len(prefix) :], **dict(fixed)}
            if name == "drops":
                labels["service"] = service
                if prefix != "drop_":  # binding_drop_malformed -> reason="binding_malformed"
                    labels[label] = prefix.removesuffix("drop_") + labels[label]
            return Spec(name, kind, text, tuple(sorted(labels.items())))
    kind = "counter" if key.endswith("_total") else "gauge"
    return Spec(f"{service}_{key}".removesuffix("_total"), kind, f"{service} stats()[{key!r}]")


# ----------------------------------------------------------------------------------------- state


@dataclass
class RelayState:
    """What the admin API shows; ``main`` fills it in as services start and stop."""

    listen: list[str] = field(default_factory=list)
    peer_id: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    services: dict[str, StatsSource] = field(default_factory=dict)
    service_info: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)
    admin_address: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False

    def status(self) -> dict[str, Any]:
        services: dict[str, Any] = {}
        stats: dict[str, int] = {}
        connections = 0
        for name, source in self.services.items():
            info: dict[str, Any] = {}
            getter = self.service_info.get(name)
            if getter is not None:
                info.update(getter())
            try:
                counters = {k: v for k, v in source.stats().items() if isinstance(v, int)}
            except Exception as exc:
                info["error"] = f"stats() failed: {type(exc).__name__}: {exc}"
                counters = {}
            info["stats"] = counters
            services[name] = info
            for key, value in counters.items():
                stats[f"{name}.{key}"] = value
            connections += int(counters.get("allocations", counters.get("allocations_current", 0)))
            connections += int(counters.get("sessions", counters.get("sessions_current", 0)))
        return {
            "role": "relay",
            "peer_id": self.peer_id,
            "addresses": list(self.addresses),
            "listen": list(self.listen),
            "admin": self.admin_address,
            "version": version(),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "connections": connections,  # TURN allocations + keyed relay sessions
            "ready": self.ready,
            "settings": dict(self.settings),
            "services": services,
            "stats": stats,
        }


STATE: Final = web.AppKey("coremesh_relay_admin_state", RelayState)
REGISTRY: Final = web.AppKey("coremesh_relay_registry", CollectorRegistry)


def create_admin_app(state: RelayState) -> web.Application:
    """The admin API over ``state``; set ``state.ready`` once every service is serving."""
    app = web.Application(middlewares=[json_errors(log, service="coremesh-relay")], client_max_size=64 * 1024)
    app[STATE] = state
    collector = RelayCollector(lambda: dict(state.services), {"version": version()})
    app[REGISTRY] = metrics_registry(collector)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/status", _status)
    return app


async def _healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"ok": True})


async def _readyz(request: web.Request) -> web.Response:
    """Readiness: every configured service serves (503 while starting or stopping)."""
    st = request.app[STATE]
    if not st.ready:
        return error_response(503, "not_ready", "the relay is not serving (starting or stopping)")
    return web.json_response({"ready": True, "role": "relay", "peer_id": st.peer_id, "listen": st.listen})


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus metrics: allocations, relayed bytes and packets, keyed sessions, drops by reason."""
    return metrics_response(request.app[REGISTRY])


async def _status(request: web.Request) -> web.Response:
    """Role `relay`, its services (STUN/TURN, keyed relay) with their addresses and counters."""
    return web.json_response(request.app[STATE].status())


# -------------------------------------------------------------------------------------------- runner


class AdminServer(AdminRunner):
    """The admin app on one TCP address (see :class:`coremesh.service.admin.AdminRunner`)."""

    def started(self, address: Address) -> None:
        self.app[STATE].admin_address = str(address)

    def stopping(self) -> None:
        self.app[STATE].ready = False
