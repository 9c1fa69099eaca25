"""The sans-IO endpoint: every peer connection of one node on one UDP socket.

Fed with ``receive_datagram(data, addr, now)`` and ``handle_timer(now)``, drained with
``datagrams_to_send(now)``, ``get_timer()`` and ``next_event()``. It owns the handshakes, the secure
sessions (:mod:`coremesh.session`) and one reliable stream (:mod:`coremesh.reliability`) per peer.

No per-peer state exists before authentication: a handshake initiation is checked by its mac1 (no
Diffie-Hellman for packets not addressed to us), then authenticated by Noise, and only then does a
connection object come to exist. Every drop is counted by reason in :attr:`Endpoint.counters`.

Connections are identified by a ``conn_id`` the initiator picks; rekey handshakes carry the same id
and continue the same stream, while a different id from a known peer means the peer opened a new
connection (after a restart, say) and the old one is torn down. When both peers dial each other at
once, the connection opened by the lower PeerId wins, on both sides.
"""

from __future__ import annotations

import enum
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from . import events as ev
from . import wire
from .config import MeshConfig
from .errors import (
    AuthenticationFailed,
    ConnectionClosed,
    DecodeError,
    LocalProtocolError,
    PeerNotFound,
    RemoteProtocolError,
)
from .identity import Identity, PeerId
from .paths import PathAddress
from .reliability import ReliabilityConfig, ReliableStream
from .reliability import events as rev
from .session import InitiatorHandshake, Responder, SecureSession

HANDSHAKE_RETRY_INITIAL: Final = 0.25
HANDSHAKE_RETRY_MAX: Final = 2.0
CLOSE_LINGER_MAX: Final = 2.0
PROBE_RETRIES: Final = 3
PROBE_INTERVAL: Final = 0.5
MAX_TIMESTAMPS: Final = 65536
MAX_PENDING_PROBES: Final = 256

CLOSE_NORMAL: Final = 0
CLOSE_PROTOCOL_ERROR: Final = 1


class PeerState(enum.Enum):
    CONNECTING = "connecting"  # a handshake in flight (initiator) or awaiting key confirmation
    CONNECTED = "connected"
    CLOSING = "closing"  # we sent CLOSE and wait for its acknowledgement
    DRAINING = "draining"  # the peer closed; we linger to acknowledge its CLOSE


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """Read-only view of one connection, for the API and the admin server."""

    peer_id: PeerId
    address: PathAddress
    state: PeerState
    initiator: bool
    connected_at: float | None
    rtt: float | None
    datagram_size: int
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    packets_sent: int
    packets_lost: int
    cwnd: int


class PeerConnection:
    """State of one peer: its sessions (previous/current/next), the reliable stream, and timers."""

    def __init__(
        self,
        endpoint: Endpoint,
        peer_id: PeerId,
        address: PathAddress,
        conn_id: bytes,
        *,
        initiator: bool,
        now: float,
    ) -> None:
        self.endpoint = endpoint
        self.peer_id = peer_id
        self.address = address
        self.conn_id = conn_id
        self.initiator = initiator
        self.state = PeerState.CONNECTING
        self.stream = ReliableStream(endpoint.stream_config, now)
        self.previous: SecureSession | None = None
        self.current: SecureSession | None = None
        self.next: SecureSession | None = None
        self.handshake: InitiatorHandshake | None = None
        self.handshake_attempt = 0
        self.handshake_retry_at: float | None = None
        # An initiator gives up after connect_timeout; a responder forgets a session the initiator
        # never confirmed after the same time, so no half-open state outlives a lost handshake.
        self.connect_deadline: float | None = now + endpoint.config.connect_timeout
        self.created_at = now
        self.last_received = now
        self.last_ping_at = now
        self.connected_at: float | None = None
        self.announced = False
        self.end_announced = False  # PeerDisconnected emitted (it may still linger to ack a CLOSE)
        self.finished = False  # removed from the endpoint
        self.linger_deadline: float | None = None
        self.close_started = 0.0
        self.ping_tokens = 0

    # -- sessions -----------------------------------------------------------------------------

    def sessions(self) -> Iterator[SecureSession]:
        for s in (self.current, self.next, self.previous):
            if s is not None:
                yield s

    def session_for_index(self, index: int) -> SecureSession | None:
        for s in self.sessions():
            if s.local_index == index:
                return s
        return None

    def install_session(self, session: SecureSession) -> None:
        """A session the initiator completed becomes current at once."""
        self._retire(self.previous)
        self.previous, self.current = self.current, session

    def confirm_next(self) -> None:
        """The initiator used the responder's pending session: it becomes current."""
        assert self.next is not None
        session, self.next = self.next, None
        session.confirmed = True
        self.install_session(session)

    def set_next(self, session: SecureSession) -> None:
        self._retire(self.next)
        self.next = session

    def _retire(self, session: SecureSession | None) -> None:
        if session is not None:
            self.endpoint.release_index(session.local_index)

    def start_handshake(self, now: float) -> None:
        ep = self.endpoint
        if self.handshake is not None:
            ep.release_index(self.handshake.local_index)
        index = ep.allocate_index(self)
        self.handshake = InitiatorHandshake(
            ep.identity,
            self.peer_id,
            local_index=index,
            conn_id=self.conn_id,
            wall_time=now + ep.wall_offset,
            random_bytes=ep.random_bytes,
            started_at=now,
        )
        delay = min(HANDSHAKE_RETRY_INITIAL * (2**self.handshake_attempt), HANDSHAKE_RETRY_MAX)
        self.handshake_attempt += 1
        self.handshake_retry_at = now + delay * (0.9 + 0.2 * ep.rng.random())
        ep.transmit(self.handshake.packet, self.address)
        ep.counters["handshake_initiations_sent"] += 1

    def cancel_handshake(self) -> None:
        if self.handshake is not None:
            self.endpoint.release_index(self.handshake.local_index)
            self.handshake = None
            self.handshake_retry_at = None

    # -- timers -------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        if self.finished:
            return None
        cfg = self.endpoint.config
        candidates: list[float] = []
        if self.handshake_retry_at is not None:
            candidates.append(self.handshake_retry_at)
        if self.connect_deadline is not None:
            candidates.append(self.connect_deadline)
        if self.linger_deadline is not None:
            candidates.append(self.linger_deadline)
        if self.current is not None:
            t = self.stream.get_timer()
            if t is not None:
                candidates.append(t)
        if self.state is PeerState.CONNECTED:
            candidates.append(max(self.last_received, self.last_ping_at) + cfg.heartbeat_interval)
            candidates.append(self.last_received + cfg.idle_timeout)
            if self.current is not None and self.handshake is None:
                candidates.append(self.rekey_due_at())
            if self.current is not None:
                candidates.append(self.keys_expire_at())
        return min(candidates) if candidates else None

    def keys_expire_at(self) -> float:
        """After three rekey periods without a successful rekey the keys are refused (WireGuard's
        reject-after-time): a connection cannot go on forever on one set of keys."""
        assert self.current is not None
        return self.current.created_at + 3 * self.endpoint.config.rekey_after_time

    def rekey_due_at(self) -> float:
        assert self.current is not None
        # The side that initiated the current session rekeys first; the other only as a fallback,
        # so that both rarely start a handshake at the same moment.
        factor = 1.0 if self.current.is_initiator else 1.1
        return self.current.created_at + self.endpoint.config.rekey_after_time * factor

    def on_timer(self, now: float) -> None:
        ep = self.endpoint
        cfg = ep.config
        if self.linger_deadline is not None and now >= self.linger_deadline:
            if self.state is PeerState.CLOSING:
                # Data queued before the close still drains while the peer keeps acknowledging.
                if (
                    now - self.last_received <= self.linger_time()
                    and now - self.close_started < cfg.idle_timeout
                ):
                    self.linger_deadline = now + self.linger_time()
                    return
                ep.remove(self, reason="closed, but the peer did not acknowledge the close", clean=False)
            else:
                ep.remove(self, reason="closed by peer", clean=True)
            return
        if self.connect_deadline is not None and now >= self.connect_deadline and not self.announced:
            if not self.initiator:
                ep.counters["handshakes_unconfirmed"] += 1
                ep.remove(self, reason="handshake never confirmed", clean=False, announce=False)
                return
            ep.counters["connect_timeouts"] += 1
            ep.emit(
                ev.ConnectFailed(
                    peer_id=self.peer_id,
                    address=self.address,
                    reason=(
                        f"no handshake response from {self.address} within {cfg.connect_timeout:g}s "
                        f"(no node listening there, or the node there is not {self.peer_id.short()}…)"
                    ),
                )
            )
            ep.remove(self, reason="connect timeout", clean=False, announce=False)
            return
        if self.state is PeerState.CONNECTED and self.current is not None and now >= self.keys_expire_at():
            ep.counters["keys_expired"] += 1
            ep.remove(self, reason="session keys expired: rekeying did not succeed", clean=False)
            return
        if self.state is PeerState.CONNECTED and now >= self.last_received + cfg.idle_timeout:
            ep.counters["idle_timeouts"] += 1
            ep.remove(self, reason=f"idle timeout: nothing heard for {cfg.idle_timeout:g}s", clean=False)
            return
        if self.handshake_retry_at is not None and now >= self.handshake_retry_at:
            if self.announced:
                ep.counters["rekey_retries"] += 1
            self.start_handshake(now)
        if self.current is not None:
            t = self.stream.get_timer()
            if t is not None and now >= t:
                self.stream.handle_timer(now)
                self.drain_stream(now)
        if self.state is PeerState.CONNECTED:
            if now >= max(self.last_received, self.last_ping_at) + cfg.heartbeat_interval:
                self.last_ping_at = now
                self.send_ping(now)
            if self.handshake is None and self.current is not None and now >= self.rekey_due_at():
                ep.counters["rekeys_started"] += 1
                self.handshake_attempt = 0
                self.start_handshake(now)
        ep.mark_dirty(self)

    def send_ping(self, now: float) -> int:
        self.ping_tokens += 1
        token = self.ping_tokens
        self.stream.send_ping(token, now)
        self.endpoint.mark_dirty(self)
        return token

    # -- packets ------------------------------------------------------------------------------

    def on_transport(
        self, session: SecureSession, plaintext: bytes, addr: PathAddress, newest: bool, now: float
    ) -> None:
        ep = self.endpoint
        self.last_received = now
        if session is self.next:
            self.confirm_next()
        if not self.announced and self.current is not None and self.state is PeerState.CONNECTING:
            self.announce(now)
        if newest and addr != self.address:
            old, self.address = self.address, addr
            ep.counters["address_changes"] += 1
            ep.emit(ev.AddressChanged(peer_id=self.peer_id, old=old, new=addr))
        if plaintext:
            try:
                self.stream.receive_payload(plaintext, now)
            except DecodeError:
                ep.counters["drop_malformed_frames"] += 1
                return
            except RemoteProtocolError as exc:
                ep.counters["protocol_violations"] += 1
                self.fail(f"protocol violation by peer: {exc}", now)
                return
            self.drain_stream(now)
        ep.mark_dirty(self)

    def announce(self, now: float) -> None:
        self.endpoint.promote(self)
        self.announced = True
        self.state = PeerState.CONNECTED
        self.connected_at = now
        self.connect_deadline = None
        self.last_ping_at = now
        self.endpoint.counters["connections_established"] += 1
        self.endpoint.emit(
            ev.PeerConnected(peer_id=self.peer_id, address=self.address, initiator=self.initiator)
        )

    def drain_stream(self, now: float) -> None:
        ep = self.endpoint
        stream = self.stream
        while (event := stream.next_event()) is not None:
            if isinstance(event, rev.MessageReceived):
                ep.emit(ev.MessageReceived(peer_id=self.peer_id, data=event.data))
            elif isinstance(event, rev.PongReceived):
                ep.emit(ev.PongReceived(peer_id=self.peer_id, token=event.token, rtt=event.rtt))
            elif isinstance(event, rev.SendBufferAvailable):
                ep.emit(ev.SendReady(peer_id=self.peer_id))
            elif isinstance(event, rev.CloseReceived):
                if self.state is not PeerState.CLOSING:
                    reason = "closed by peer" + (f": {event.reason}" if event.reason else "")
                    ep.announce_end(self, reason=reason, clean=event.code == CLOSE_NORMAL)
                self.state = PeerState.DRAINING
                self.linger_deadline = now + self.linger_time()
            elif isinstance(event, rev.CloseAcked) and self.state is PeerState.CLOSING:
                ep.remove(self, reason="closed", clean=True)
                return

    def linger_time(self) -> float:
        rtt = self.stream.smoothed_rtt or self.endpoint.stream_config.initial_rtt
        return min(CLOSE_LINGER_MAX, max(0.2, 4 * rtt))

    def close(self, now: float, reason: str = "") -> None:
        if self.state in (PeerState.CLOSING, PeerState.DRAINING) or self.finished:
            return
        if self.current is None:
            self.endpoint.remove(self, reason="closed", clean=True)
            return
        self.cancel_handshake()
        self.state = PeerState.CLOSING
        self.close_started = now
        self.stream.close(CLOSE_NORMAL, reason, now)
        self.linger_deadline = now + self.linger_time()
        self.endpoint.mark_dirty(self)

    def fail(self, reason: str, now: float) -> None:
        """Close because the peer misbehaved: tell it why, then forget the connection."""
        if self.current is not None and not self.stream.is_closed:
            try:
                self.stream.close(CLOSE_PROTOCOL_ERROR, reason[:200], now)
                self.flush(now)
            except LocalProtocolError:
                pass
        self.endpoint.remove(self, reason=reason, clean=False)

    def flush(self, now: float) -> None:
        session = self.current
        if session is None or self.finished:
            return
        ep = self.endpoint
        payloads = self.stream.payloads_to_send(now)
        if not payloads:
            return
        address = self.address
        out = ep.out
        for payload in payloads:
            out.append((session.seal(payload), address))
        if (
            self.handshake is None
            and session.send_counter >= ep.config.rekey_after_packets
            and self.state is PeerState.CONNECTED
        ):
            ep.counters["rekeys_started"] += 1
            self.handshake_attempt = 0
            self.start_handshake(now)

    def send_keepalive(self) -> None:
        """An empty transport packet: confirms a fresh session to the responder."""
        if self.current is not None:
            self.endpoint.transmit(self.current.seal(b""), self.address)

    def snapshot(self) -> PeerSnapshot:
        s = self.stream
        return PeerSnapshot(
            peer_id=self.peer_id,
            address=self.address,
            state=self.state,
            initiator=self.initiator,
            connected_at=self.connected_at,
            rtt=s.smoothed_rtt if s.min_rtt > 0 else None,  # None until the first RTT sample
            datagram_size=s.max_datagram_size,
            bytes_sent=s.bytes_sent,
            bytes_received=s.bytes_received,
            messages_sent=s.messages_sent,
            messages_received=s.messages_received,
            packets_sent=s.packets_sent,
            packets_lost=s.packets_lost,
            cwnd=s.cwnd,
        )


class Endpoint:
    """All connections of one node. Time (``now``, seconds, monotonic) and randomness are inputs."""

    def __init__(
        self,
        identity: Identity,
        config: MeshConfig,
        *,
        rng: random.Random,
        wall_offset: float = 0.0,
    ) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self.config = config
        self.rng = rng
        self.wall_offset = wall_offset
        self.stream_config = ReliabilityConfig(
            base_datagram_size=config.datagram_size,
            max_datagram_size=config.max_datagram_size if config.pmtu_discovery else config.datagram_size,
            pmtu_discovery=config.pmtu_discovery and config.max_datagram_size > config.datagram_size,
            overhead=wire.TRANSPORT_OVERHEAD,
            send_buffer_size=config.send_buffer_size,
            receive_window=config.receive_window,
            max_message_size=config.max_message_size,
        )
        self._responder = Responder(identity)
        self._peers: dict[PeerId, PeerConnection] = {}
        self._replacements: dict[PeerId, PeerConnection] = {}  # new connections awaiting confirmation
        # Unconfirmed responder state is capped apart (flood defence until handshake cookies land):
        # throwaway identities can hold at most this many of the max_connections slots.
        self.max_unconfirmed = max(2, config.max_connections // 2)
        self._indexes: dict[int, PeerConnection] = {}
        self._timestamps: OrderedDict[PeerId, bytes] = OrderedDict()
        self._probes: dict[int, tuple[PathAddress, int, float]] = {}
        self._dirty: dict[PeerConnection, None] = {}
        self._events: deque[ev.Event] = deque()
        self.out: list[tuple[bytes, PathAddress]] = []
        self.counters: Counter[str] = Counter()

    # -- plumbing used by PeerConnection -------------------------------------------------------

    def random_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def free_index(self) -> int:
        """A random session index not in use (not yet registered)."""
        while True:
            index = self.rng.getrandbits(32)
            if index and index not in self._indexes:
                return index

    def allocate_index(self, conn: PeerConnection) -> int:
        index = self.free_index()
        self._indexes[index] = conn
        return index

    def release_index(self, index: int) -> None:
        self._indexes.pop(index, None)

    def transmit(self, data: bytes, address: PathAddress) -> None:
        self.out.append((data, address))

    def emit(self, event: ev.Event) -> None:
        self._events.append(event)

    def mark_dirty(self, conn: PeerConnection) -> None:
        self._dirty[conn] = None

    def announce_end(self, conn: PeerConnection, *, reason: str, clean: bool) -> None:
        if conn.announced and not conn.end_announced:
            conn.end_announced = True
            self.emit(ev.PeerDisconnected(peer_id=conn.peer_id, reason=reason, clean=clean))

    def remove(self, conn: PeerConnection, *, reason: str, clean: bool, announce: bool = True) -> None:
        if announce:
            self.announce_end(conn, reason=reason, clean=clean)
        conn.finished = True
        conn.cancel_handshake()
        for session in list(conn.sessions()):
            self.release_index(session.local_index)
        conn.previous = conn.current = conn.next = None
        if self._peers.get(conn.peer_id) is conn:
            del self._peers[conn.peer_id]
        if self._replacements.get(conn.peer_id) is conn:
            del self._replacements[conn.peer_id]
        self._dirty.pop(conn, None)

    # -- the sans-IO interface ----------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: PathAddress, now: float) -> None:
        if not data:
            self.counters["drop_empty"] += 1
            return
        kind = data[0]
        try:
            if kind == wire.PacketType.TRANSPORT:
                self._on_transport(data, addr, now)
            elif kind == wire.PacketType.HANDSHAKE_INIT:
                self._on_initiation(data, addr, now)
            elif kind == wire.PacketType.HANDSHAKE_RESP:
                self._on_response(data, addr, now)
            elif kind == wire.PacketType.IDENTITY_PROBE:
                self._on_identity_probe(data, addr)
            elif kind == wire.PacketType.IDENTITY_REPLY:
                self._on_identity_reply(data, addr)
            else:
                self.counters["drop_unknown_type"] += 1
        except DecodeError:
            self.counters["drop_malformed"] += 1
        except AuthenticationFailed:
            self.counters["drop_auth_failed"] += 1

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, PathAddress]]:
        if self._dirty:
            dirty = self._dirty
            self._dirty = {}
            for conn in dirty:
                conn.flush(now)
        out, self.out = self.out, []
        return out

    def get_timer(self) -> float | None:
        best: float | None = None
        for conn in self._all_connections():
            t = conn.next_timer()
            if t is not None and (best is None or t < best):
                best = t
        for _, _, deadline in self._probes.values():
            if best is None or deadline < best:
                best = deadline
        return best

    def handle_timer(self, now: float) -> None:
        for conn in list(self._all_connections()):
            t = conn.next_timer()
            if t is not None and t <= now:
                conn.on_timer(now)
        for nonce, (address, attempts, deadline) in list(self._probes.items()):
            if deadline <= now:
                if attempts >= PROBE_RETRIES:
                    del self._probes[nonce]
                    self.emit(ev.IdentityResolved(address=address, nonce=nonce, peer_id=None))
                else:
                    self._probes[nonce] = (address, attempts + 1, now + PROBE_INTERVAL)
                    self.transmit(wire.encode_identity_probe(nonce), address)

    def _all_connections(self) -> Iterator[PeerConnection]:
        yield from self._peers.values()
        yield from self._replacements.values()

    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    # -- commands -----------------------------------------------------------------------------

    def connect(
        self, peer_id: PeerId, address: PathAddress, now: float, timeout: float | None = None
    ) -> PeerState:
        """Start connecting (idempotent). Returns the connection's state after the call.

        The handshake is retried until ``timeout`` (default: ``config.connect_timeout``)."""
        if peer_id == self.peer_id:
            raise LocalProtocolError("a node cannot connect to itself")
        conn = self._peers.get(peer_id)
        if conn is not None and conn.state in (PeerState.CONNECTED, PeerState.CONNECTING):
            return conn.state
        if conn is not None:
            self.remove(conn, reason="replaced by a new connection", clean=True)
        if len(self._peers) >= self.config.max_connections:
            raise LocalProtocolError(f"max_connections ({self.config.max_connections}) reached")
        conn = PeerConnection(self, peer_id, address, self.rng.randbytes(8), initiator=True, now=now)
        if timeout is not None:
            conn.connect_deadline = now + timeout
        self._peers[peer_id] = conn
        conn.start_handshake(now)
        self.counters["connects_started"] += 1
        return conn.state

    def redirect(self, peer_id: PeerId, address: PathAddress, now: float) -> bool:
        """Aim a pending connect at another path (e.g. a relay) and send a fresh initiation now.

        Returns False if there is no pending connect to that peer. The connect deadline restarts.
        """
        conn = self._peers.get(peer_id)
        if conn is None or conn.finished or conn.announced or not conn.initiator:
            return False
        conn.address = address
        conn.handshake_attempt = 0
        conn.connect_deadline = now + self.config.connect_timeout
        conn.start_handshake(now)
        self.counters["connects_redirected"] += 1
        return True

    def send(self, peer_id: PeerId, data: bytes, now: float) -> None:
        conn = self._connected(peer_id)
        conn.stream.send_message(data, now)
        self.mark_dirty(conn)

    def consume(self, peer_id: PeerId, nbytes: int) -> bool:
        """The application read ``nbytes`` of messages: return that much receive window to the peer.
        True if this queued a window update to send."""
        conn = self._peers.get(peer_id)
        if conn is None or conn.finished:
            return False
        if conn.stream.consume(nbytes):
            self.mark_dirty(conn)
            return True
        return False

    def can_send(self, peer_id: PeerId) -> bool:
        return self._connected(peer_id).stream.can_send()

    def ping(self, peer_id: PeerId, now: float) -> int:
        """Queue a PING; the matching :class:`~coremesh.events.PongReceived` carries the token."""
        return self._connected(peer_id).send_ping(now)

    def close(self, peer_id: PeerId, now: float, reason: str = "") -> None:
        conn = self._peers.get(peer_id)
        if conn is not None:
            conn.close(now, reason)

    def close_all(self, now: float, reason: str = "node stopping") -> None:
        for conn in list(self._peers.values()):
            conn.close(now, reason)

    def probe_identity(self, address: PathAddress) -> int:
        """Ask ``address`` which peer it is; answered by an :class:`~coremesh.events.IdentityResolved`.

        The answer is not proof: the handshake that follows authenticates the claimed id.
        """
        if len(self._probes) >= MAX_PENDING_PROBES:
            raise LocalProtocolError("too many identity probes in flight")
        nonce = self.rng.getrandbits(64)
        self._probes[nonce] = (address, 1, 0.0)
        return nonce

    def start_probe(self, nonce: int, now: float) -> None:
        address, attempts, _ = self._probes[nonce]
        self._probes[nonce] = (address, attempts, now + PROBE_INTERVAL)
        self.transmit(wire.encode_identity_probe(nonce), address)

    def on_datagram_too_big(self, address: PathAddress, size: int, now: float) -> None:
        """The shell's send failed with EMSGSIZE: tell the stream of the peer at that address."""
        self.counters["drop_emsgsize"] += 1
        for conn in self._peers.values():
            if conn.address == address and conn.current is not None:
                conn.stream.on_datagram_too_big(size, now)
                self.mark_dirty(conn)

    def state_of(self, peer_id: PeerId) -> PeerState | None:
        conn = self._peers.get(peer_id)
        return None if conn is None or conn.finished else conn.state

    def snapshot(self, peer_id: PeerId) -> PeerSnapshot | None:
        conn = self._peers.get(peer_id)
        return None if conn is None else conn.snapshot()

    def snapshots(self) -> list[PeerSnapshot]:
        return [conn.snapshot() for conn in self._peers.values()]

    def _connected(self, peer_id: PeerId) -> PeerConnection:
        conn = self._peers.get(peer_id)
        if conn is None or conn.finished:
            raise PeerNotFound(f"not connected to {peer_id}")
        if conn.state is not PeerState.CONNECTED:
            raise ConnectionClosed(f"connection to {peer_id} is {conn.state.value}", reason=conn.state.value)
        return conn

    # -- receive paths ------------------------------------------------------------------------

    def _on_transport(self, data: bytes, addr: PathAddress, now: float) -> None:
        index, counter = wire.decode_transport_header(data)
        conn = self._indexes.get(index)
        session = conn.session_for_index(index) if conn is not None else None
        if conn is None or session is None:
            self.counters["drop_unknown_session"] += 1
            return
        if not session.replay.check(counter):
            self.counters["drop_replay"] += 1
            return
        highest = session.replay.highest
        newest = highest is None or counter > highest
        plaintext = session.open(data, counter)
        self.counters["transport_packets_received"] += 1
        conn.on_transport(session, plaintext, addr, newest, now)

    def _on_initiation(self, data: bytes, addr: PathAddress, now: float) -> None:
        init = wire.decode_handshake_init(data)
        if not self._responder.check_mac1(init):
            self.counters["drop_bad_mac1"] += 1
            return
        index = self.free_index()
        try:
            result = self._responder.respond(init, local_index=index, random_bytes=self.random_bytes, now=now)
        except AuthenticationFailed:
            self.counters["drop_handshake_auth_failed"] += 1
            return
        peer = result.peer_id
        last = self._timestamps.get(peer)
        if peer == self.peer_id or (last is not None and result.timestamp <= last):
            self.counters["drop_replayed_handshake" if peer != self.peer_id else "drop_self_handshake"] += 1
            return
        # Authenticated and newer than anything seen from this peer: remember it before deciding,
        # so that a delayed copy of this very initiation is refused later.
        self._timestamps[peer] = result.timestamp
        self._timestamps.move_to_end(peer)
        if len(self._timestamps) > MAX_TIMESTAMPS:
            self._timestamps.popitem(last=False)
        conn = self._peers.get(peer)
        if conn is not None and conn.conn_id != result.conn_id:
            if conn.state is PeerState.CONNECTING and conn.initiator and not conn.announced:
                # Simultaneous open: the connection dialed by the lower PeerId wins on both sides.
                if self.peer_id.key < peer.key:
                    self.counters["drop_simultaneous_open_lost"] += 1
                    return
                conn.cancel_handshake()
                conn.conn_id = result.conn_id
                conn.initiator = False
                conn.connect_deadline = now + self.config.connect_timeout
            elif not conn.announced:
                self.remove(conn, reason="superseded", clean=False, announce=False)
                conn = None
            else:
                # A live connection is only replaced once the new session is confirmed by a transport
                # packet: a replayed or stale initiation must not tear it down.
                conn = self._replacement_for(peer, result.conn_id, addr, now)
                if conn is None:
                    return
        if conn is None:
            # Refused rather than evicted: an initiator that gets no response fails cleanly, while
            # one whose response was sent and whose state we then dropped would be left half-open.
            if len(self._peers) >= self.config.max_connections:
                self.counters["drop_max_connections"] += 1
                return
            if not self._make_room_for_unconfirmed():
                return
            conn = PeerConnection(self, peer, addr, result.conn_id, initiator=False, now=now)
            self._peers[peer] = conn
        elif conn.state in (PeerState.CLOSING, PeerState.DRAINING):
            self.counters["drop_handshake_closing"] += 1
            return
        self._indexes[index] = conn
        conn.set_next(result.session)
        if conn.address != addr and not conn.announced:
            conn.address = addr
        self.transmit(result.response, addr)
        self.counters["handshake_responses_sent"] += 1

    def _replacement_for(
        self, peer: PeerId, conn_id: bytes, addr: PathAddress, now: float
    ) -> PeerConnection | None:
        pending = self._replacements.get(peer)
        if pending is not None and pending.conn_id == conn_id:
            return pending
        if pending is not None:
            self.remove(pending, reason="superseded", clean=False, announce=False)
        if not self._make_room_for_unconfirmed():
            return None
        pending = PeerConnection(self, peer, addr, conn_id, initiator=False, now=now)
        self._replacements[peer] = pending
        return pending

    def _unconfirmed(self) -> list[PeerConnection]:
        waiting = [c for c in self._peers.values() if not c.announced and not c.initiator]
        return waiting + list(self._replacements.values())

    def _make_room_for_unconfirmed(self) -> bool:
        """Unconfirmed responder state has its own quota, so that initiations from throwaway
        identities cannot take every slot. When it is full a new initiation is refused, not an
        older one evicted: a refused initiator just retries, while one whose response went out and
        whose state we dropped would be left half-open."""
        if len(self._unconfirmed()) < self.max_unconfirmed:
            return True
        self.counters["drop_unconfirmed_full"] += 1
        return False

    def promote(self, conn: PeerConnection) -> None:
        """A confirmed replacement becomes the peer's connection; the old one ends."""
        if self._replacements.get(conn.peer_id) is not conn:
            return
        del self._replacements[conn.peer_id]
        old = self._peers.get(conn.peer_id)
        if old is not None and old is not conn:
            self.remove(old, reason="peer opened a new connection", clean=False)
        self._peers[conn.peer_id] = conn

    def _on_response(self, data: bytes, addr: PathAddress, now: float) -> None:
        resp = wire.decode_handshake_resp(data)
        conn = self._indexes.get(resp.receiver_index)
        hs = conn.handshake if conn is not None else None
        if conn is None or hs is None or hs.local_index != resp.receiver_index:
            self.counters["drop_unexpected_response"] += 1
            return
        if not hs.check_mac1(resp):
            self.counters["drop_bad_mac1"] += 1
            return
        try:
            session, echoed = hs.complete(resp, now)
        except (AuthenticationFailed, LocalProtocolError):
            # A forged response spoils this attempt only; the retry timer starts a fresh one.
            self.counters["drop_handshake_auth_failed"] += 1
            return
        if echoed != conn.conn_id:
            self.counters["drop_handshake_mismatch"] += 1
            return
        conn.handshake = None
        conn.handshake_retry_at = None
        conn.handshake_attempt = 0
        conn.install_session(session)
        conn.last_received = now
        if not conn.announced:
            conn.address = addr
            conn.announce(now)
        # The responder only trusts the new keys once a packet arrives under them: send an
        # ack-eliciting PING, which the stream retransmits until it is acknowledged.
        conn.send_ping(now)
        self.mark_dirty(conn)
        self.counters["handshakes_completed"] += 1

    def _on_identity_probe(self, data: bytes, addr: PathAddress) -> None:
        nonce = wire.decode_identity_probe(data)
        self.counters["identity_probes_answered"] += 1
        self.transmit(wire.encode_identity_reply(nonce, self.peer_id.key, bytes(64)), addr)

    def _on_identity_reply(self, data: bytes, addr: PathAddress) -> None:
        nonce, key, _ = wire.decode_identity_reply(data)
        probe = self._probes.get(nonce)
        if probe is None or probe[0] != addr:
            self.counters["drop_unexpected_identity_reply"] += 1
            return
        del self._probes[nonce]
        try:
            peer = PeerId(key)
            peer.x25519_public()
        except Exception:
            self.counters["drop_malformed"] += 1
            return
        self.emit(ev.IdentityResolved(address=addr, nonce=nonce, peer_id=peer))
