"""``ConnectionRegistry``: a node's Connection objects, kept in step with the endpoint core.

The one place that turns the core's events into updates of :class:`~.connection.Connection`
objects, resolves whoever waits on the core (a connect, a ping, an identity probe) and tells the
``on_connection`` callbacks. It is also the :class:`~.connection.ConnectionOwner` of every
Connection: a message a Connection sends goes through here to the endpoint, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..addr import Address
from ..endpoint import events as ev
from ..endpoint.paths import PathAddress, RelayAddress, RoutedAddress, udp_address
from ..endpoint.peer import PeerSnapshot
from ..endpoint.states import PeerState
from ..errors import ConnectionClosed, ConnectionFailed, MeshError, PeerNotFound
from ..identity import PeerId
from ..routing.flood import Delivery
from .connection import Connection, ConnectionEvent, ConnectionState, PeerInfo, PingResult
from .parts import NodeParts, not_started

log = logging.getLogger("coremesh.node")

_STATE_MAP = {
    PeerState.CONNECTING: ConnectionState.CONNECTING,
    PeerState.CONNECTED: ConnectionState.CONNECTED,
    PeerState.CLOSING: ConnectionState.CLOSED,
    PeerState.DRAINING: ConnectionState.CLOSED,
}


def public_path(kind: str) -> str:
    """The API's ``path`` for a path kind: ``direct``, ``routed`` (through other peers) or ``relay``."""
    return kind if kind in ("direct", "routed") else "relay"


class HandshakeTimedOut(ConnectionFailed):
    """The endpoint gave a connect up at its deadline; the dialer says what it tried instead."""


class ConnectionRegistry:
    """Connections by peer, the futures waiting on the core, and the state-change callbacks."""

    def __init__(self, parts: NodeParts) -> None:
        self._parts = parts
        self._connections: dict[PeerId, Connection] = {}
        self._connect_waiters: dict[PeerId, list[asyncio.Future[Connection]]] = {}
        self._ping_waiters: dict[tuple[PeerId, int], asyncio.Future[float]] = {}
        self._probe_waiters: dict[int, asyncio.Future[PeerId | None]] = {}
        self._callbacks: list[Callable[[ConnectionEvent], object]] = []
        self._delivery_callbacks: list[Callable[[Delivery], object]] = []
        self._route_probe_waiters: dict[int, asyncio.Future[ev.RouteProbeAnswered]] = {}
        # Why a relayed connection is not on the cheaper relay (e.g. a TURN 403), by peer.
        self._path_notes: dict[PeerId, str] = {}

    # -- the connections ------------------------------------------------------------------------

    def get(self, peer: PeerId) -> Connection | None:
        """The open connection to ``peer``, if any."""
        conn = self._connections.get(peer)
        return conn if conn is not None and not conn.is_closed else None

    def open_connections(self) -> list[Connection]:
        return [c for c in self._connections.values() if not c.is_closed]

    def mark_all_closed(self, reason: str) -> None:
        """Mark every connection closed and fail every connect waiting (the node stopped)."""
        for conn in list(self._connections.values()):
            conn._mark_closed(reason)
        self._connections.clear()
        self.fail_waiters(ConnectionFailed(reason))

    def peers(self) -> list[PeerInfo]:
        """What the endpoint knows of each established connection."""
        runtime, endpoint = self._parts.runtime, self._parts.endpoint
        if endpoint is None:
            return []
        wall = time.time() - (runtime.now() if runtime else 0.0)
        peers = []
        for snap in endpoint.snapshots():
            if snap.state is not PeerState.CONNECTED:
                continue  # connecting, or closed and only lingering to acknowledge the CLOSE
            peers.append(
                PeerInfo(
                    peer_id=snap.peer_id,
                    address=snap.address,
                    state=_STATE_MAP[snap.state],
                    path=public_path(snap.path),
                    via=snap.path,
                    reason=self.path_reason(snap),
                    rtt=snap.rtt,
                    initiator=snap.initiator,
                    connected_at=(snap.connected_at or 0.0) + wall,
                    datagram_size=snap.datagram_size,
                    bytes_sent=snap.bytes_sent,
                    bytes_received=snap.bytes_received,
                    messages_sent=snap.messages_sent,
                    messages_received=snap.messages_received,
                )
            )
        return peers

    def direct_peers(self) -> list[tuple[PeerId, Address]]:
        """Connected peers with a direct address: who the DHT gossips records to."""
        return [(p.peer_id, p.address) for p in self.peers() if isinstance(p.address, Address)]

    def path_info(self, peer: PeerId) -> tuple[str, str | None]:
        endpoint = self._parts.endpoint
        snap = endpoint.snapshot(peer) if endpoint is not None else None
        if snap is None:
            return "direct", None
        return snap.path, self.path_reason(snap)

    def path_reason(self, snap: PeerSnapshot) -> str | None:
        """Why the connection is relayed; on the keyed relay also why TURN did not carry it."""
        reason = snap.path_reason
        note = self._path_notes.get(snap.peer_id)
        if note is None or snap.path != "keyed":
            return reason
        return f"{reason}; {note}" if reason else note

    def set_path_note(self, peer: PeerId, note: str) -> None:
        """Remember why a relayed connection to ``peer`` is not on a cheaper relay."""
        self._path_notes[peer] = note

    def _path_of(self, address: PathAddress, peer: PeerId | None = None) -> str:
        """``relay`` when a relay carries the traffic (keyed relay, or a TURN route), else ``direct``."""
        endpoint = self._parts.endpoint
        if peer is not None and endpoint is not None:
            snap = endpoint.snapshot(peer)
            if snap is not None:
                return public_path(snap.path)
        if isinstance(address, RoutedAddress):
            return "routed"
        if isinstance(address, RelayAddress):
            return "relay"
        if isinstance(address, Address) and endpoint is not None and endpoint.turn_route(address) is not None:
            return "relay"
        return "direct"

    # -- ConnectionOwner: what a Connection asks of the core -------------------------------------

    def try_send(self, peer_id: PeerId, data: bytes) -> bool:
        runtime, endpoint = self._parts.runtime, self._parts.endpoint
        if runtime is None or endpoint is None:
            raise not_started()
        try:
            queued = endpoint.try_send(peer_id, data, runtime.now())
        except PeerNotFound:
            raise ConnectionClosed(f"connection to {peer_id} is closed", "closed") from None
        if queued:
            runtime.schedule_flush()
        return queued

    def consumed(self, peer_id: PeerId, nbytes: int) -> None:
        endpoint, runtime = self._parts.endpoint, self._parts.runtime
        if endpoint is not None and runtime is not None and endpoint.consume(peer_id, nbytes):
            runtime.schedule_flush()

    def close(self, peer_id: PeerId) -> None:
        endpoint, runtime = self._parts.endpoint, self._parts.runtime
        if endpoint is None or runtime is None:
            return
        endpoint.close(peer_id, runtime.now())
        runtime.pump()

    async def ping(self, peer_id: PeerId, *, timeout: float) -> PingResult:
        runtime, endpoint = self._parts.require_running()
        if self.get(peer_id) is None:
            raise PeerNotFound(f"not connected to {peer_id}")
        token = endpoint.ping(peer_id, runtime.now())
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._ping_waiters[(peer_id, token)] = fut
        runtime.schedule_flush()
        try:
            rtt = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ConnectionFailed(f"no answer to ping from {peer_id} within {timeout:g}s") from None
        finally:
            self._ping_waiters.pop((peer_id, token), None)
        snap = endpoint.snapshot(peer_id)
        if snap is None:
            return PingResult(rtt=rtt, path="direct")
        return PingResult(
            rtt=rtt,
            path=public_path(snap.path),
            reason=self.path_reason(snap),
            via=snap.path,
            hops=endpoint.overlay.hops(peer_id) if snap.path == "routed" else (),
        )

    # -- waiting on the core -----------------------------------------------------------------------

    def wait_connected(self, peer_id: PeerId) -> asyncio.Future[Connection]:
        """A future for the next connection to ``peer_id`` (or the failure of its connect)."""
        fut: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self._connect_waiters.setdefault(peer_id, []).append(fut)
        return fut

    def stop_waiting(self, peer_id: PeerId, fut: asyncio.Future[Connection]) -> None:
        waiters = self._connect_waiters.get(peer_id)
        if waiters and fut in waiters:
            waiters.remove(fut)

    def is_awaited(self, peer_id: PeerId) -> bool:
        """Whether some connect still waits for ``peer_id``."""
        return bool(self._connect_waiters.get(peer_id))

    def wait_identity(self, nonce: int) -> asyncio.Future[PeerId | None]:
        """A future for the answer to the identity probe ``nonce``."""
        fut: asyncio.Future[PeerId | None] = asyncio.get_running_loop().create_future()
        self._probe_waiters[nonce] = fut
        return fut

    def stop_waiting_identity(self, nonce: int) -> None:
        self._probe_waiters.pop(nonce, None)

    def fail_waiters(self, error: MeshError, peer: PeerId | None = None) -> None:
        for key in list(self._connect_waiters):
            if peer is None or key == peer:
                for fut in self._connect_waiters.pop(key):
                    if not fut.done():
                        fut.set_exception(error)

    # -- callbacks -----------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[ConnectionEvent], object]) -> None:
        self._callbacks.append(callback)

    def unsubscribe(self, callback: Callable[[ConnectionEvent], object]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def notify(self, event: ConnectionEvent) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("on_connection callback failed")

    def subscribe_deliveries(self, callback: Callable[[Delivery], object]) -> Callable[[], None]:
        self._delivery_callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._delivery_callbacks:
                self._delivery_callbacks.remove(callback)

        return unsubscribe

    def wait_route_probe(self, nonce: int) -> asyncio.Future[ev.RouteProbeAnswered]:
        fut: asyncio.Future[ev.RouteProbeAnswered] = asyncio.get_running_loop().create_future()
        self._route_probe_waiters[nonce] = fut
        return fut

    def stop_waiting_route_probe(self, nonce: int) -> None:
        self._route_probe_waiters.pop(nonce, None)

    # -- events from the core --------------------------------------------------------------------

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.MessageReceived):
            conn = self._connections.get(event.peer_id)
            if conn is not None and not conn._deliver(event.data):
                self._inbox_full(conn)
        elif isinstance(event, ev.SendReady):
            conn = self._connections.get(event.peer_id)
            if conn is not None:
                conn._set_writable()
        elif isinstance(event, ev.PongReceived):
            fut = self._ping_waiters.pop((event.peer_id, event.token), None)
            if fut is not None and not fut.done():
                fut.set_result(event.rtt)
        elif isinstance(event, ev.PeerConnected):
            self._on_connected(event)
        elif isinstance(event, ev.PeerDisconnected):
            self._on_disconnected(event)
        elif isinstance(event, ev.ConnectFailed):
            self.fail_waiters(
                HandshakeTimedOut(f"cannot connect to {event.peer_id}: {event.reason}"), event.peer_id
            )
            self.notify(ConnectionEvent(event.peer_id, ConnectionState.FAILED, event.address, event.reason))
        elif isinstance(event, ev.AddressChanged):
            conn = self._connections.get(event.peer_id)
            if conn is not None:
                conn._set_address(event.new)
                conn.path = self._path_of(event.new, event.peer_id)
            log.info("peer address changed", extra={"peer_id": str(event.peer_id), "address": str(event.new)})
        elif isinstance(event, ev.PathChanged):
            conn = self._connections.get(event.peer_id)
            if conn is not None:
                conn.path = public_path(event.kind)
            log.info(
                "path changed",
                extra={
                    "peer_id": str(event.peer_id),
                    "path": event.kind,
                    "address": str(event.address),
                    "reason": event.reason,
                },
            )
        elif isinstance(event, ev.OverlayDelivered):
            for deliver in list(self._delivery_callbacks):
                try:
                    deliver(event.delivery)
                except Exception:
                    log.exception("on_delivery callback failed")
        elif isinstance(event, ev.RouteProbeAnswered):
            answered = self._route_probe_waiters.pop(event.nonce, None)
            if answered is not None and not answered.done():
                answered.set_result(event)
        elif isinstance(event, ev.IdentityResolved):
            probe = self._probe_waiters.pop(event.nonce, None)
            if probe is not None and not probe.done():
                probe.set_result(event.peer_id)

    def _inbox_full(self, conn: Connection) -> None:
        """A message found ``max_queued_messages`` unread before it: the peer is closed, never
        queued for without bound (the receive window bounds the bytes, this their number)."""
        runtime, endpoint = self._parts.runtime, self._parts.endpoint
        if endpoint is None:
            return
        endpoint.counters["drop_inbox_full"] += 1
        if runtime is not None and endpoint.state_of(conn.peer_id) is PeerState.CONNECTED:
            endpoint.counters["connections_closed_inbox_full"] += 1
            endpoint.close(conn.peer_id, runtime.now(), "too many unread messages")
            runtime.schedule_flush()

    def _on_connected(self, event: ev.PeerConnected) -> None:
        old = self._connections.get(event.peer_id)
        if old is not None:
            old._mark_closed("replaced by a new connection")
        relays, endpoint = self._parts.relays, self._parts.endpoint
        conn = Connection(
            self,
            event.peer_id,
            event.address,
            initiator=event.initiator,
            max_queued=endpoint.scopes.limits.max_queued_messages if endpoint is not None else 1 << 62,
        )
        conn.path = self._path_of(event.address, event.peer_id)
        keyed = relays.keyed_relay() if relays is not None else None
        if keyed is not None and endpoint is not None and conn.path == "direct":
            # A direct connection can still fall back: to the keyed relay, if its path dies.
            endpoint.set_relay_path(event.peer_id, RelayAddress(keyed, event.peer_id))
        self._connections[event.peer_id] = conn
        for fut in self._connect_waiters.pop(event.peer_id, []):
            if not fut.done():
                fut.set_result(conn)
        self.notify(ConnectionEvent(event.peer_id, ConnectionState.CONNECTED, event.address))

    def _on_disconnected(self, event: ev.PeerDisconnected) -> None:
        conn = self._connections.pop(event.peer_id, None)
        self._path_notes.pop(event.peer_id, None)
        address = conn.remote_address if conn is not None else None
        udp = udp_address(address) if address is not None else None
        endpoint, relays = self._parts.endpoint, self._parts.relays
        if udp is not None and endpoint is not None:
            endpoint.clear_turn_route(udp)
            if relays is not None:
                relays.forget(udp)
        if conn is not None:
            conn._mark_closed(event.reason)
        for key, fut in list(self._ping_waiters.items()):
            if key[0] == event.peer_id and not fut.done():
                fut.set_exception(ConnectionClosed(f"connection to {event.peer_id} closed", event.reason))
        state = ConnectionState.CLOSED if event.clean else ConnectionState.FAILED
        self.notify(ConnectionEvent(event.peer_id, state, address, event.reason))
