"""The node's admin HTTP API (JSON over HTTP/1.1, aiohttp); messages come from the inbox (node/inbox.py).

Endpoints (documented with examples in docs/admin-api.md):

    GET  /v1/status     identity, addresses, uptime, connection count, counters
    GET  /v1/peers      one object per known peer
    POST /v1/connect    {"peer": "PEERID@HOST:PORT"}
    POST /v1/ping       {"peer": "PEERID", "count": N}
    POST /v1/send       {"peer": "PEERID", "data": "text"} or {"data_b64": "..."}
    GET  /v1/messages   ?count=N&timeout=S  long-poll, then remove and return up to N messages
    GET  /v1/netcheck   ?refresh=1  NAT behaviour, public addresses, relay latency (last run, or a new one)
    GET  /v1/lookup     ?peer=ID&timeout=S  a PeerId's signed record, found through the DHT
    GET  /v1/routes     the overlay routing table: per destination its next hop, metric, hops, backups
    POST /v1/route      {"peer": "PEERID", "timeout": S}  traceroute: the hops with per-hop latency
    POST /v1/broadcast  {"data": "text"}  to every node of the mesh (docs/routing.md)
    POST /v1/join       {"group": "NAME"}; POST /v1/leave {"group": "NAME"}
    POST /v1/multicast  {"group": "NAME", "data": "text"}  to the group's members
    GET  /v1/groups     the groups this node is a member of
    GET  /v1/acl        the allow-list and deny-list (docs/access.md); POST {"mode": "open"|"closed"}
    POST /v1/allow      {"peer": "PEERID"} allow it (closes an open mesh); {"remove": true} takes it off
    POST /v1/deny       {"peer": "PEERID"} refuse it, closing its connection; {"remove": true} takes it off
    GET  /metrics       Prometheus text: connections by path, packets, bytes, handshakes, drops, DHT
                        and traversal counters (node/metrics.py)
    GET  /healthz       the process answers
    GET  /readyz        the node is started and serving (503 while starting or stopping)

Every error is ``{"error": "one clear line", "code": "..."}`` with a 4xx/5xx status; a handler never
answers with a traceback. The app is built by :func:`create_admin_app` so tests can run it in-process
against any object with the :class:`NodeLike` surface.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import ipaddress
import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from coremesh.access.acl import AclFull, PeerNotAllowed
from coremesh.addr import Address, format_address, parse_address
from coremesh.config import parse_peer_address
from coremesh.dht.records import record_json
from coremesh.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionFailed,
    InvalidAddress,
    InvalidPeerId,
    MeshError,
    MessageTooLarge,
    NatTraversalFailed,
    NetcheckError,
    PeerNotFound,
)
from coremesh.identity import PeerId
from coremesh.netcheck.hostaddrs import host_addresses
from coremesh.routing.flood import InvalidGroup, TooManyGroups
from coremesh.service import version
from coremesh.service.admin import (
    AdminRunner,
    ApiError,
    error_response,
    json_errors,
    metrics_registry,
    metrics_response,
)
from coremesh.service.jsonable import jsonable, state_text
from coremesh.service.nodeapi import (
    CONNECT_PATHS,
    CONNECT_TIMEOUT_RANGE,
    LOOKUP_TIMEOUT_RANGE,
    MAX_RECV_COUNT,
    PING_COUNT_RANGE,
    PING_INTERVAL_RANGE,
    PING_TIMEOUT_RANGE,
    RECV_TIMEOUT_RANGE,
    ROUTE_MAX_HOPS,
    ROUTE_TIMEOUT_RANGE,
    SEND_TIMEOUT_RANGE,
    group_name_error,
)

from .inbox import Inbox
from .logs import log
from .metrics import NodeCollector

# The ranges below are shared with the CLI (coremesh.service.nodeapi): it refuses locally what we would.
MAX_POLL_TIMEOUT: Final = RECV_TIMEOUT_RANGE[1]
MAX_PING_COUNT: Final = PING_COUNT_RANGE[1]
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_SEND_TIMEOUT: Final = 10.0
# Connecting by PeerId alone first looks the id up in the DHT (bounded by the node's lookup_timeout).
LOOKUP_SLACK: Final = 32.0


class NodeLike(Protocol):
    """What the admin API needs from a node (``coremesh.MeshNode`` has all of it)."""

    @property
    def peer_id(self) -> PeerId: ...
    @property
    def listen_addresses(self) -> list[Address]: ...
    async def connect(
        self, peer: Any, addr: Any = None, *, timeout: float | None = None, path: str = "auto"
    ) -> Any: ...
    def get_peers(self) -> list[Any]: ...
    def get_connection(self, peer: PeerId) -> Any: ...
    async def ping(self, peer: PeerId, *, timeout: float = 5.0) -> Any: ...
    def stats(self) -> dict[str, int]: ...
    # Overlay routing (docs/routing.md): the table, traceroute, broadcast and multicast groups.
    def routes(self) -> list[dict[str, Any]]: ...
    async def trace(self, peer: PeerId, *, timeout: float = 5.0) -> list[dict[str, Any]]: ...
    async def broadcast(self, data: bytes) -> int: ...
    def join(self, group: str) -> None: ...
    def leave(self, group: str) -> None: ...
    async def multicast(self, group: str, data: bytes) -> int: ...
    def groups(self) -> list[str]: ...


# ------------------------------------------------------------------------------------------- helpers


def peer_info_json(info: Any) -> dict[str, Any]:
    """A PeerInfo as JSON: every field, ``rtt`` (seconds) shown as ``rtt_ms``."""
    out: dict[str, Any] = {}
    items = (
        [(f.name, getattr(info, f.name)) for f in dataclasses.fields(info)]
        if dataclasses.is_dataclass(info)
        else list(vars(info).items())
    )
    for name, value in items:
        if name == "rtt":
            out["rtt_ms"] = None if value is None else round(float(value) * 1000, 3)
        else:
            out[name] = jsonable(value, binary="base64")
    return out


def advertised_addresses(listen: Iterable[Address]) -> list[str]:
    """Concrete addresses peers can dial: a wildcard bind is shown as loopback plus the primary
    address of each family (see :mod:`coremesh.netcheck.hostaddrs`)."""
    return list(dict.fromkeys(str(a) for addr in listen for a in host_addresses(addr)))


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "bad_request", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "request body must be a JSON object")
    return body


def _peer_id(value: Any, name: str = "peer") -> PeerId:
    if not isinstance(value, str) or not value:
        raise ApiError(400, "bad_request", f'"{name}" is required: a peer id (56 base32 characters)')
    return PeerId.from_text(value)


def _number(value: Any, name: str, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, "bad_request", f'"{name}": expected a number, got {value!r}') from None
    if isinstance(value, bool) or not low <= number <= high:
        raise ApiError(400, "bad_request", f'"{name}": expected {low:g} to {high:g}, got {value!r}')
    return number


def _integer(value: Any, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value, 10) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, int):
        raise ApiError(400, "bad_request", f'"{name}": expected an integer, got {value!r}')
    if not low <= number <= high:
        raise ApiError(400, "bad_request", f'"{name}": expected {low} to {high}, got {number}')
    return number


def _payload(body: dict[str, Any]) -> bytes:
    """The message bytes of a request: ``"data"`` as text (``"encoding": "base64"`` for bytes, as
    ``/v1/messages`` answers them), or ``"data_b64"``."""
    has_text, has_b64 = "data" in body, "data_b64" in body
    if has_text == has_b64:
        raise ApiError(400, "bad_request", 'give exactly one of "data" (text) or "data_b64" (base64)')
    encoding = body.get("encoding", "utf-8")
    if encoding not in ("utf-8", "base64") or (has_b64 and "encoding" in body):
        raise ApiError(
            400, "bad_request", f'"encoding": expected "utf-8" or "base64" with "data", got {encoding!r}'
        )
    if has_text and encoding == "utf-8":
        if not isinstance(body["data"], str):
            raise ApiError(400, "bad_request", '"data" must be a string (use "data_b64" for bytes)')
        return bytes(body["data"].encode("utf-8"))
    name = "data" if has_text else "data_b64"
    try:
        return base64.b64decode(str(body[name]), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", f'"{name}" is not valid base64') from None


def _group(value: Any) -> str:
    error = group_name_error(value)
    if error is not None:
        raise ApiError(400, "bad_request", f'"group": {error}')
    return str(value)


# The library's errors as API errors; the first matching class wins (subclasses first).
_ERROR_MAP: Final[tuple[tuple[type[BaseException], int, str], ...]] = (
    (InvalidPeerId, 400, "invalid_peer_id"),
    (PeerNotAllowed, 403, "peer_not_allowed"),
    (AclFull, 409, "acl_full"),
    (NetcheckError, 409, "netcheck_unavailable"),
    (InvalidAddress, 400, "invalid_address"),
    (PeerNotFound, 404, "peer_not_found"),
    (MessageTooLarge, 413, "message_too_large"),
    (InvalidGroup, 400, "bad_request"),
    (TooManyGroups, 409, "too_many_groups"),
    (AuthenticationFailed, 502, "authentication_failed"),
    (NatTraversalFailed, 502, "nat_traversal_failed"),
    (ConnectionClosed, 409, "connection_closed"),
    (ConnectionFailed, 502, "connect_failed"),
    (TimeoutError, 504, "timeout"),
    (MeshError, 500, "mesh_error"),
)


# ----------------------------------------------------------------------------------------------- app


@dataclass
class AdminState:
    node: NodeLike
    inbox: Inbox
    role: str = "node"
    listen: str | None = None  # the configured listen address, as text
    admin_address: str | None = None  # set once the server is bound
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    extra_status: dict[str, Any] = field(default_factory=dict)
    bytes_sent: int = 0  # message bytes sent through /v1/send
    messages_sent: int = 0
    _addresses: list[str] | None = None

    def traffic(self) -> dict[str, int]:
        """The daemon's own message traffic, for the metrics."""
        return {
            "bytes_sent": self.bytes_sent,
            "messages_sent": self.messages_sent,
            "bytes_received": self.inbox.received_bytes,
            "messages_received": self.inbox.received,
            "inbox_queued": len(self.inbox),
            "inbox_bytes": self.inbox.bytes,
        }

    def addresses(self) -> list[str]:
        if self._addresses is None:
            self._addresses = advertised_addresses(self.node.listen_addresses)
        return self._addresses


STATE: Final = web.AppKey("coremesh_admin_state", AdminState)
REGISTRY: Final = web.AppKey("coremesh_node_registry", CollectorRegistry)


def create_admin_app(
    node: NodeLike,
    inbox: Inbox,
    *,
    role: str = "node",
    listen: str | None = None,
    extra_status: dict[str, Any] | None = None,
    max_body: int = 64 * 1024 * 1024,
) -> web.Application:
    """The admin API over ``node`` and ``inbox``. Set ``app[STATE].ready`` once the node is serving."""
    app = web.Application(middlewares=[json_errors(log, _ERROR_MAP)], client_max_size=max_body)
    state = AdminState(node=node, inbox=inbox, role=role, listen=listen, extra_status=extra_status or {})
    app[STATE] = state
    app[REGISTRY] = metrics_registry(NodeCollector(lambda: state, version()))
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/peers", _peers)
    app.router.add_post("/v1/connect", _connect)
    app.router.add_post("/v1/ping", _ping)
    app.router.add_get("/v1/lookup", _lookup)
    app.router.add_post("/v1/send", _send)
    app.router.add_get("/v1/messages", _messages)
    app.router.add_get("/v1/netcheck", _netcheck)
    app.router.add_get("/v1/routes", _routes)
    app.router.add_post("/v1/route", _route)
    app.router.add_post("/v1/broadcast", _broadcast)
    app.router.add_post("/v1/join", _join)
    app.router.add_post("/v1/leave", _leave)
    app.router.add_post("/v1/multicast", _multicast)
    app.router.add_get("/v1/groups", _groups)
    app.router.add_get("/v1/acl", _acl)
    app.router.add_post("/v1/acl", _acl_mode)
    app.router.add_post("/v1/allow", _allow)
    app.router.add_post("/v1/deny", _deny)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _status(request: web.Request) -> web.Response:
    """Identity, addresses, uptime, connection count, counters, inbox, DHT and relays."""
    st = request.app[STATE]
    node = st.node
    peers = node.get_peers()
    connected = sum(1 for p in peers if state_text(p.state) == "connected")
    body: dict[str, Any] = {
        "role": st.role,
        "peer_id": node.peer_id.to_text(),
        "addresses": st.addresses(),
        "listen": [str(a) for a in node.listen_addresses],
        "admin": st.admin_address,
        "version": version(),
        "uptime_s": round(time.monotonic() - st.started_at, 3),
        "connections": connected,
        "stats": jsonable(node.stats(), binary="base64"),
        "inbox": st.inbox.status(),
    }
    candidates = getattr(node, "candidates", None)
    if callable(candidates):
        body["candidates"] = candidates()  # host, server-reflexive and relayed addresses
    announced = getattr(node, "announced_nat_type", None)
    if isinstance(announced, str):
        body["nat_type"] = announced  # what peers are told ("" until netcheck found it)
    relay_status = getattr(node, "relay_status", None)
    if callable(relay_status):
        body["relays"] = jsonable(relay_status(), binary="base64")
    dht_status = getattr(node, "dht_status", None)
    if callable(dht_status):
        body["dht"] = jsonable(
            dht_status(), binary="base64"
        )  # routing table, published record, drops by reason
    body.update(jsonable(st.extra_status, binary="base64"))
    return web.json_response(body)


async def _peers(request: web.Request) -> web.Response:
    """Every connected peer: address, path (direct, turn, keyed), RTT, traffic counters."""
    node = request.app[STATE].node
    return web.json_response({"peers": [peer_info_json(p) for p in node.get_peers()]})


async def resolve_address(address: Address) -> Address:
    """A host name (``localhost:7946``) resolved to a literal IP; literal IPs pass through.

    Raises :class:`InvalidAddress` if the name does not resolve.
    """
    try:
        ipaddress.ip_address(address.host)
        return address
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise InvalidAddress(f"cannot resolve {address.host!r}: {exc.strerror or exc}") from None
    return parse_address(format_address(str(infos[0][4][0]), address.port))


async def _connect_peer(node: NodeLike, text: str, timeout: float, path: str = "auto") -> tuple[Any, float]:
    if "@" not in text and ":" not in text:
        # A PeerId alone: the node resolves it through the DHT.
        peer = _peer_id(text)
        t0 = time.monotonic()
        try:
            conn = await asyncio.wait_for(
                node.connect(peer, timeout=timeout, path=path), timeout + LOOKUP_SLACK
            )
        except TimeoutError:
            raise ApiError(504, "timeout", f"could not reach {peer} within {timeout:g}s") from None
        return conn, (time.monotonic() - t0) * 1000
    target = parse_peer_address(text)
    if target.peer_id is None:
        raise ApiError(400, "bad_request", f'"peer": expected PEERID or PEERID@HOST:PORT, got {text!r}')
    address = await resolve_address(target.address)
    t0 = time.monotonic()
    try:
        connect = node.connect(target.peer_id, address, timeout=timeout, path=path)
        conn = await asyncio.wait_for(connect, timeout + 2)
    except TimeoutError:
        raise ApiError(
            504, "timeout", f"no answer from {target.peer_id} at {address} within {timeout:g}s"
        ) from None
    return conn, (time.monotonic() - t0) * 1000


async def _connect(request: web.Request) -> web.Response:
    """Connect to `PEERID@HOST:PORT`, or to a bare PeerId resolved through the DHT; wait for the
    secure session."""
    st = request.app[STATE]
    body = await _json_body(request)
    text = body.get("peer")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "bad_request", '"peer" is required: PEERID or PEERID@HOST:PORT')
    timeout = _number(body.get("timeout"), "timeout", DEFAULT_CONNECT_TIMEOUT, *CONNECT_TIMEOUT_RANGE)
    path = body.get("path", "auto")
    if path not in CONNECT_PATHS:
        raise ApiError(
            400, "bad_request", f'"path": expected one of {", ".join(CONNECT_PATHS)}, got {path!r}'
        )
    conn, connect_ms = await _connect_peer(st.node, text, timeout, path)
    return web.json_response(
        {
            "peer_id": conn.peer_id.to_text(),
            "address": str(conn.remote_address),
            "path": conn.path,
            "connect_ms": round(connect_ms, 3),
        }
    )


async def _ping(request: web.Request) -> web.Response:
    """Round-trip times to a peer; one not connected yet is resolved through the DHT (or the routing
    table) and connected first."""
    st = request.app[STATE]
    body = await _json_body(request)
    peer = _peer_id(body.get("peer"))
    count = _integer(body.get("count"), "count", 1, *PING_COUNT_RANGE)
    timeout = _number(body.get("timeout"), "timeout", 5.0, *PING_TIMEOUT_RANGE)
    interval = _number(body.get("interval"), "interval", 0.1, *PING_INTERVAL_RANGE)
    rtts: list[float] = []
    path: str | None = None
    reason: str | None = None
    via: str | None = None
    hops: list[str] = []
    sent = 0
    if st.node.get_connection(peer) is None:
        # Not connected yet: resolve the id through the DHT and connect (racing a routed attempt),
        # or without a DHT connect through the peers that route to it; within the timeout.
        dht_status = getattr(st.node, "dht_status", None)
        if dht_status is not None and dht_status().get("enabled"):
            await _connect_peer(st.node, peer.to_text(), timeout, "auto")
        elif any(r.get("destination") == peer.to_text() for r in st.node.routes()):
            await _connect_peer(st.node, peer.to_text(), timeout, "routed")
    for i in range(count):
        if i and interval:
            await asyncio.sleep(interval)
        sent += 1
        try:
            result = await asyncio.wait_for(st.node.ping(peer, timeout=timeout), timeout + 2)
        except PeerNotFound:
            if not rtts:
                raise ApiError(404, "peer_not_found", f"not connected to {peer}; connect first") from None
            break
        except (ConnectionFailed, TimeoutError):
            continue
        rtts.append(float(result.rtt) * 1000)
        path = result.path
        reason = getattr(result, "reason", None)
        via = getattr(result, "via", None)
        hops = [jsonable(hop, binary="base64") for hop in result.hops]
    if not rtts:
        raise ApiError(504, "timeout", f"no reply from {peer} to {sent} ping(s) within {timeout:g}s each")
    if path is None:
        conn = st.node.get_connection(peer)
        path = getattr(conn, "path", "unknown")
    return web.json_response(
        {
            "peer_id": peer.to_text(),
            "path": path,
            "rtt_ms": round(sum(rtts) / len(rtts), 3),
            "rtts_ms": [round(r, 3) for r in rtts],
            "min_ms": round(min(rtts), 3),
            "max_ms": round(max(rtts), 3),
            "sent": sent,
            "received": len(rtts),
            "via": via or path,  # direct, turn, keyed or routed
            "reason": reason,  # why the path is relayed (failed checks, NAT types); null when direct
            "hops": hops,  # the peers that carry a routed path, in order; [] when direct or relayed
        }
    )


async def _lookup(request: web.Request) -> web.Response:
    """A PeerId's signed record (candidate addresses, seq, expiry), found through the DHT."""
    st = request.app[STATE]
    text = request.query.get("peer", "").strip()
    if not text:
        raise ApiError(400, "bad_request", 'query parameter "peer" (a PeerId) is required')
    peer = _peer_id(text)
    timeout = _number(request.query.get("timeout"), "timeout", 5.0, *LOOKUP_TIMEOUT_RANGE)
    lookup = getattr(st.node, "lookup", None)
    if lookup is None:
        raise ApiError(501, "not_supported", "this node has no DHT")
    t0 = time.monotonic()
    record = await lookup(peer, timeout=timeout)
    body = record_json(record, time.time())
    body["elapsed_ms"] = round((time.monotonic() - t0) * 1000, 3)
    return web.json_response(body)


async def _send(request: web.Request) -> web.Response:
    """Send one message to a connected peer (or to `PEERID@HOST:PORT`, connecting first)."""
    st = request.app[STATE]
    body = await _json_body(request)
    text = body.get("peer")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "bad_request", '"peer" is required: PEERID or PEERID@HOST:PORT')
    timeout = _number(body.get("timeout"), "timeout", DEFAULT_SEND_TIMEOUT, *SEND_TIMEOUT_RANGE)
    data = _payload(body)
    if "@" in text:
        conn, _ = await _connect_peer(st.node, text, DEFAULT_CONNECT_TIMEOUT)
        peer = conn.peer_id
    else:
        peer = _peer_id(text)
        conn = st.node.get_connection(peer)
        if conn is None or conn.is_closed:
            raise ApiError(404, "peer_not_found", f"not connected to {peer}; connect first")
    try:
        await asyncio.wait_for(conn.send(data), timeout)
    except TimeoutError:
        raise ApiError(
            504, "timeout", f"send to {peer} blocked for {timeout:g}s (peer not reading?)"
        ) from None
    st.messages_sent += 1
    st.bytes_sent += len(data)
    return web.json_response({"peer_id": peer.to_text(), "bytes": len(data), "path": conn.path})


async def _messages(request: web.Request) -> web.Response:
    """Long-poll the inbox, then take messages out (oldest first)."""
    st = request.app[STATE]
    q = request.query
    count = _integer(q.get("count"), "count", 0, 1, MAX_RECV_COUNT) if "count" in q else None
    timeout = _number(q.get("timeout"), "timeout", 0.0, *RECV_TIMEOUT_RANGE)
    if timeout > 0:
        await st.inbox.wait_for(1 if count is None else count, timeout)
    messages = st.inbox.take(count)
    return web.json_response({"messages": [m.to_json() for m in messages]})


# ------------------------------------------------------------------- overlay routing (docs/routing.md)


async def _routes(request: web.Request) -> web.Response:
    """The overlay routing table: per destination its next hop, metric, hops, seqno, age and backups."""
    routes = request.app[STATE].node.routes()
    return web.json_response({"routes": jsonable(routes, binary="base64")})


async def _route(request: web.Request) -> web.Response:
    """Traceroute to a peer: one probe per hop limit, the hops with their round-trip times.

    ``timeout`` is the wait for each hop's answer (a hop that does not answer in time is
    ``{"peer_id": null, "rtt_ms": null}``), at most ROUTE_MAX_HOPS hops."""
    body = await _json_body(request)
    peer = _peer_id(body.get("peer"))
    timeout = _number(body.get("timeout"), "timeout", 5.0, *ROUTE_TIMEOUT_RANGE)  # per hop
    bound = timeout * ROUTE_MAX_HOPS + 2
    t0 = time.monotonic()
    try:
        hops = await asyncio.wait_for(request.app[STATE].node.trace(peer, timeout=timeout), bound)
    except TimeoutError:
        raise ApiError(504, "timeout", f"the trace to {peer} did not end within {bound:g}s") from None
    hops = jsonable(hops, binary="base64")
    last = hops[-1] if hops else {}
    return web.json_response(
        {
            "peer_id": peer.to_text(),
            "hops": hops,
            "reached": last.get("peer_id") == peer.to_text() and last.get("rtt_ms") is not None,
            "elapsed_ms": round((time.monotonic() - t0) * 1000, 3),
        }
    )


async def _broadcast(request: web.Request) -> web.Response:
    """Send one message to every node of the mesh (each delivers it once, as kind "broadcast")."""
    body = await _json_body(request)
    data = _payload(body)
    neighbours = await request.app[STATE].node.broadcast(data)
    return web.json_response({"bytes": len(data), "neighbours": neighbours})


async def _membership(request: web.Request, join: bool) -> web.Response:
    body = await _json_body(request)
    group = _group(body.get("group"))
    node = request.app[STATE].node
    (node.join if join else node.leave)(group)
    return web.json_response({"group": group, "groups": node.groups()})


async def _join(request: web.Request) -> web.Response:
    """Join a multicast group: the node delivers the group's messages (signed membership, flooded)."""
    return await _membership(request, join=True)


async def _leave(request: web.Request) -> web.Response:
    """Leave a multicast group (leaving a group the node is not in is not an error)."""
    return await _membership(request, join=False)


async def _multicast(request: web.Request) -> web.Response:
    """Send one message to the members of a group (delivered as kind "multicast" with its group)."""
    body = await _json_body(request)
    group = _group(body.get("group"))
    data = _payload(body)
    neighbours = await request.app[STATE].node.multicast(group, data)
    return web.json_response({"group": group, "bytes": len(data), "neighbours": neighbours})


async def _groups(request: web.Request) -> web.Response:
    """The multicast groups this node is a member of."""
    return web.json_response({"groups": request.app[STATE].node.groups()})


# ------------------------------------------------------------------- access lists (docs/access.md)


def _access(request: web.Request) -> Any:
    access = getattr(request.app[STATE].node, "access", None)
    if access is None:
        raise ApiError(501, "not_supported", "this node has no access lists")
    return access


async def _acl(request: web.Request) -> web.Response:
    """The allow-list and deny-list: mode (open or closed), allow, deny, where they are saved, and
    the decisions taken so far by reason."""
    return web.json_response(_access(request).view())


async def _acl_mode(request: web.Request) -> web.Response:
    """Open the mesh (drop the allow-list) or close it (only allowed peers); closes what it refuses."""
    body = await _json_body(request)
    mode = body.get("mode")
    if mode not in ("open", "closed"):
        raise ApiError(400, "bad_request", f'"mode": expected "open" or "closed", got {mode!r}')
    access = _access(request)
    closed = access.set_open(mode == "open")
    return web.json_response({**access.view(), "connections_closed": closed})


async def _list_change(request: web.Request, allow: bool) -> web.Response:
    body = await _json_body(request)
    peer = _peer_id(body.get("peer"))
    remove = body.get("remove", False)
    if not isinstance(remove, bool):
        raise ApiError(400, "bad_request", f'"remove": expected true or false, got {remove!r}')
    access = _access(request)
    if remove:
        closed = access.remove(peer, allowed=allow)
    else:
        closed = access.allow(peer) if allow else access.deny(peer)
    log.info(
        "acl.changed",
        peer_id=peer.to_text(),
        list="allow" if allow else "deny",
        action="remove" if remove else "add",
        connections_closed=closed,
    )
    return web.json_response(
        {"peer_id": peer.to_text(), "removed": remove, **access.view(), "connections_closed": closed}
    )


async def _allow(request: web.Request) -> web.Response:
    """Allow a peer: on the allow-list (an open mesh becomes closed: everyone else is refused and
    their connections closed) and off the deny-list; ``"remove": true`` takes it off the allow-list."""
    return await _list_change(request, allow=True)


async def _deny(request: web.Request) -> web.Response:
    """Deny a peer: on the deny-list, off the allow-list, its connection closed; ``"remove": true``
    takes it off the deny-list."""
    return await _list_change(request, allow=False)


NETCHECK_TIMEOUT: Final = 90.0


async def _netcheck(request: web.Request) -> web.Response:
    """NAT type, public addresses, hairpinning, relay latency: the last report, or a new one.

    ``?refresh=1`` runs a new one first."""
    node = request.app[STATE].node
    netcheck = getattr(node, "netcheck", None)
    if not callable(netcheck):
        raise ApiError(404, "not_found", "this node does not run netcheck")
    raw = request.query.get("refresh", "0").strip().lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ApiError(400, "bad_request", f'"refresh": expected 1 or 0, got {raw!r}')
    try:
        report = await asyncio.wait_for(netcheck(refresh=raw in ("1", "true", "yes")), NETCHECK_TIMEOUT)
    except TimeoutError:
        raise ApiError(504, "timeout", f"netcheck did not finish within {NETCHECK_TIMEOUT:g}s") from None
    return web.json_response(report.to_json())


async def _healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"ok": True})


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus metrics: connections by path, packets, bytes, handshakes, drops, DHT, traversal."""
    return metrics_response(request.app[REGISTRY])


async def _readyz(request: web.Request) -> web.Response:
    """Readiness: the node is started and serving (503 while starting or stopping)."""
    st = request.app[STATE]
    if not st.ready:
        return error_response(503, "not_ready", "the node is not serving (starting or stopping)")
    return web.json_response({"ready": True, "peer_id": st.node.peer_id.to_text()})


# -------------------------------------------------------------------------------------------- runner


class AdminServer(AdminRunner):
    """The admin app on one TCP address (see :class:`coremesh.service.admin.AdminRunner`)."""

    def started(self, address: Address) -> None:
        self.app[STATE].admin_address = str(address)

    def stopping(self) -> None:
        st = self.app[STATE]
        st.ready = False
        st.inbox.close()  # long-polls return now instead of holding the shutdown
