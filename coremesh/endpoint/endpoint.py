"""The sans-IO endpoint: every peer connection of one node on one UDP socket.

Fed with ``receive_datagram(data, addr, now)`` and ``handle_timer(now)``, drained with
``datagrams_to_send(now)``, ``get_timer()`` and ``next_event()``. It owns the table of connections
(by PeerId and by session index), dispatches handshake packets, answers and sends identity probes,
and keeps the node's budget of probe sockets; each connection is a
:class:`~coremesh.endpoint.peer.PeerConnection` (sessions, stream, timers, close), whose paths are a
:class:`~coremesh.endpoint.migration.PeerPaths`.

No per-peer state exists before authentication: a handshake initiation is checked by its mac1 (no
Diffie-Hellman for packets not addressed to us), then authenticated by Noise, and only then does a
connection object come to exist. Every drop is counted by reason in :attr:`Endpoint.counters`.

A different ``conn_id`` from a known peer means the peer opened a new connection (after a restart,
say) and the old one is torn down. When both peers dial each other at once, the connection opened
by the lower PeerId wins, on both sides.

Routing: the endpoint holds the node's TURN route table (which peer address goes through which
TURN server; the shell writes it as allocations bind channels or are lost) and resolves every
datagram it gives out to a :data:`~coremesh.endpoint.paths.SendAddress` that names one way out, so
the shell never decides a route.

Timers: connections whose timer may have moved are noted as touched; ``get_timer`` and
``handle_timer`` re-read only those into a :class:`~coremesh.endpoint.timers.TimerHeap`, so the next
deadline costs O(log n) and ``handle_timer`` visits only the connections that are due.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Hashable
from typing import Final, cast

from ..access.acl import AclLists, PeerAcl, PeerNotAllowed
from ..access.handshake_guard import HandshakeGuard, host_key
from ..access.scopes import ResourceLimits, ResourceScopes, SendBufferFull
from ..addr import Address
from ..config import MeshConfig
from ..errors import (
    AuthenticationFailed,
    ConnectionClosed,
    DecodeError,
    LocalProtocolError,
    PeerNotFound,
)
from ..identity import Identity, PeerId
from ..reliability import ReliabilityConfig
from ..routing.overlay import OVERLAY_PREFIX, ROUTED_HEADER_LEN
from ..secure import wire
from ..secure.session import Responder
from ..traversal import Candidate, TraversalConfig
from ..traversal.agent import PROBE_IDS
from . import events as ev
from .overlay import Overlay
from .paths import DirectAddress, PathAddress, RoutedAddress, SendAddress, TurnAddress, udp_address
from .peer import PeerConnection, PeerSnapshot
from .states import ConnState, PeerState
from .timers import TimerHeap

PROBE_RETRIES: Final = 3
PROBE_INTERVAL: Final = 0.5
MAX_TIMESTAMPS: Final = 65536
MAX_PENDING_PROBES: Final = 256
MAX_KEPT_PROBE_SOCKETS: Final = 16  # probe sockets that carry connections after a birthday attempt
# What a routed packet adds to an end-to-end packet: the overlay prefix, the ROUTED header, and the
# hop session's transport header and tag (a source route adds a count byte and 32 bytes per hop).
ROUTED_OVERHEAD: Final = len(OVERLAY_PREFIX) + ROUTED_HEADER_LEN + wire.TRANSPORT_OVERHEAD


class Endpoint:
    """All connections of one node. Time (``now``, seconds, monotonic) and randomness are inputs."""

    def __init__(
        self,
        identity: Identity,
        config: MeshConfig,
        *,
        rng: random.Random,
        wall_offset: float = 0.0,
        traversal: TraversalConfig | None = None,
        acl: PeerAcl | None = None,
    ) -> None:
        self.identity = identity
        # Who may connect (docs/access.md); the node passes its own, which outlives a restart.
        lists = AclLists.of(config.allowed_peer_ids, config.denied_peer_ids)
        self.acl = acl if acl is not None else PeerAcl(lists)
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
            padding_buckets=config.padding_buckets,
        )
        # End-to-end connections through the overlay: their packets travel inside a hop's packet.
        self.routed_stream_config = dataclasses.replace(
            self.stream_config,
            base_datagram_size=self.stream_config.base_datagram_size - ROUTED_OVERHEAD,
            max_datagram_size=self.stream_config.max_datagram_size - ROUTED_OVERHEAD,
        )
        self._responder = Responder(identity)
        # Before any Diffie-Hellman: replays, cookies under load, per-source limits (docs/access.md).
        self.guard = HandshakeGuard.for_config(identity.x25519_public, rng, config)
        self._peers: dict[PeerId, PeerConnection] = {}
        self._replacements: dict[PeerId, PeerConnection] = {}  # new connections awaiting confirmation
        # How much for whom (docs/access.md, "Resource limits"): connections and unconfirmed
        # responder state in total and per source host (the handshake gate bounds the rate, the
        # scopes the state), send buffers, unread messages, forwarded bytes.
        self.scopes = ResourceScopes(ResourceLimits.from_config(config))
        self._indexes: dict[int, PeerConnection] = {}
        self._timestamps: OrderedDict[PeerId, bytes] = OrderedDict()
        self._probes: dict[int, tuple[PathAddress, int, float]] = {}
        self._dirty: dict[PeerConnection, None] = {}
        # The timer heap, the connections whose timer may have moved since it was last read, and
        # the order in which due connections run (that of the tables: peers, then replacements).
        self._timers: TimerHeap[PeerConnection] = TimerHeap()
        self._touched: dict[PeerConnection, None] = {}
        self._rank: dict[PeerConnection, int] = {}
        self._ranks = itertools.count()
        self._events: deque[ev.Event] = deque()
        self.out: list[tuple[bytes, PathAddress]] = []
        # TURN routes: peer UDP address -> the TURN server whose allocation carries our traffic to
        # it (written by the shell, which owns the allocations; read when packets leave).
        self._turn_routes: dict[Address, Address] = {}
        self.counters: Counter[str] = Counter()
        # NAT traversal: our candidates (the shell keeps them current).
        self.traversal_config = traversal if traversal is not None else TraversalConfig()
        self.traversal_enabled = config.enable_nat_traversal
        # Probe sockets of the birthday approach: the runtime opens and closes them in this order
        # ((True, id) opens, (False, id) closes); bounded by one attempt plus kept paths.
        self.socket_commands: deque[tuple[bool, int]] = deque()
        self.probe_sockets: set[int] = set()
        birthday = self.traversal_config.birthday
        self.max_probe_sockets = birthday.sockets * birthday.max_attempts + MAX_KEPT_PROBE_SOCKETS
        self._probe_base = 0
        self.local_candidates: tuple[Candidate, ...] = ()
        self.nat_type = ""
        # Overlay routing: neighbours, forwarding, routed connections (endpoint/overlay.py).
        self.overlay = Overlay(self, 0.0)
        self._links_changed = False

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

    def next_probe_base(self) -> int:
        """Probe socket ids of a new connection (each connection has its own range)."""
        base = self._probe_base
        self._probe_base += PROBE_IDS
        return base

    def open_probe_sockets(self, ids: tuple[int, ...]) -> bool:
        """Ask the runtime for probe sockets, within the node's budget (one attempt at a time)."""
        if len(self.probe_sockets) + len(ids) > self.max_probe_sockets:
            self.counters["birthday_refused"] += 1
            return False
        self.probe_sockets.update(ids)
        self.socket_commands.extend((True, i) for i in ids)
        self.counters["birthday_attempts"] += 1
        return True

    def close_probe_sockets(self, ids: tuple[int, ...]) -> None:
        for i in ids:
            if i in self.probe_sockets:
                self.probe_sockets.discard(i)
                self.socket_commands.append((False, i))

    def transmit(self, data: bytes, address: PathAddress) -> None:
        self.out.append((data, address))

    def emit(self, event: ev.Event) -> None:
        self._events.append(event)

    def stream_config_for(self, address: PathAddress) -> ReliabilityConfig:
        """The stream parameters of a connection on ``address``: smaller datagrams when its
        packets ride inside routed packets (and smaller again by a source route's bytes)."""
        if not isinstance(address, RoutedAddress):
            return self.stream_config
        if not address.route:
            return self.routed_stream_config
        extra = 1 + 32 * (len(address.route) - 1)
        base = self.routed_stream_config
        return dataclasses.replace(
            base,
            base_datagram_size=base.base_datagram_size - extra,
            max_datagram_size=base.max_datagram_size - extra,
        )

    def connections(self) -> dict[PeerId, PeerConnection]:
        """The established or pending connection of each peer (not replacements)."""
        return self._peers

    def links_changed(self) -> None:
        """A connection came up or ended: the overlay's neighbours are re-read before the next
        packets leave (so a dead link is withdrawn at once)."""
        self._links_changed = True

    def mark_dirty(self, conn: PeerConnection) -> None:
        """``conn`` has something to send (flushed by ``datagrams_to_send``)."""
        self._dirty[conn] = None
        self._touched[conn] = None

    def _touch(self, conn: PeerConnection) -> PeerConnection:
        """``conn``'s timer may have moved: re-read it before the next timer question."""
        self._touched[conn] = None
        return conn

    def _add(self, table: dict[PeerId, PeerConnection], conn: PeerConnection) -> None:
        table[conn.peer_id] = conn
        self._rank[conn] = next(self._ranks)
        self._touched[conn] = None

    @property
    def max_unconfirmed(self) -> int:
        """Unconfirmed responder sessions at most: throwaway identities hold at most this many slots."""
        return self.scopes.limits.max_unconfirmed

    def forget(self, conn: PeerConnection) -> None:
        """``conn`` ended (:meth:`PeerConnection.end`): drop it from every table."""
        self.scopes.release(conn)
        if self._peers.get(conn.peer_id) is conn:
            del self._peers[conn.peer_id]
        if self._replacements.get(conn.peer_id) is conn:
            del self._replacements[conn.peer_id]
        self._dirty.pop(conn, None)
        self._touched.pop(conn, None)
        self._timers.discard(conn)
        self._rank.pop(conn, None)
        self._links_changed = True

    def promote(self, conn: PeerConnection) -> None:
        """A confirmed replacement becomes the peer's connection; the old one ends."""
        self.scopes.confirm(conn)  # (every connection that comes up passes here)
        if self._replacements.get(conn.peer_id) is not conn:
            return
        del self._replacements[conn.peer_id]
        old = self._peers.get(conn.peer_id)
        if old is not None and old is not conn:
            old.end("peer opened a new connection", clean=False)
        self._add(self._peers, conn)

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
            elif kind == wire.PacketType.COOKIE_REPLY:
                self._on_cookie_reply(data, now)
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

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, SendAddress]]:
        """What to send now, each datagram with the one way out it takes (see :data:`SendAddress`)."""
        if self._dirty:
            dirty = self._dirty
            self._dirty = {}
            for conn in dirty:
                conn.flush(now)
            self._touched.update(dirty)
        overlay = self.overlay
        if self._links_changed:
            self._links_changed = False
            overlay.reconcile(now)
        if overlay.pending:
            overlay.flush_control(now)
        out, self.out = self.out, []
        resolved = self._resolve(out)
        if self.out:  # routed packets, sealed into their next hops' sessions
            more, self.out = self.out, []
            resolved.extend(self._resolve(more))
        return resolved

    # -- TURN routes --------------------------------------------------------------------------

    def set_turn_route(self, peer: Address, server: Address) -> None:
        """Send what goes to ``peer`` through our TURN allocation at ``server`` (channel bound)."""
        self._turn_routes[peer] = server

    def clear_turn_route(self, peer: Address) -> None:
        """Send to ``peer`` straight again."""
        self._turn_routes.pop(peer, None)

    def clear_turn_routes_via(self, server: Address) -> None:
        """The allocation at ``server`` is gone: every peer it carried is sent to straight again."""
        routes = self._turn_routes
        for peer in [p for p, s in routes.items() if s == server]:
            del routes[peer]

    def turn_route(self, peer: Address) -> Address | None:
        """The TURN server that carries our traffic to ``peer``, if any."""
        return self._turn_routes.get(peer)

    def send_address(self, address: PathAddress) -> SendAddress:
        """The one way out for a packet to ``address``: a plain address through its TURN route
        when there is one, else straight; a direct address straight; a TURN address (back the way
        it came) through the TURN route of its peer when there is one, else straight."""
        if isinstance(address, Address):
            server = self._turn_routes.get(address)
            return address if server is None else TurnAddress(server, address)
        if isinstance(address, DirectAddress):
            return address.address
        if isinstance(address, TurnAddress):
            server = self._turn_routes.get(address.peer)
            if server is None:
                return address.peer
            return address if server == address.server else TurnAddress(server, address.peer)
        if isinstance(address, RoutedAddress):
            raise LocalProtocolError("a routed packet has no UDP way out of its own (see Overlay.wrap)")
        return address

    def _resolve(self, out: list[tuple[bytes, PathAddress]]) -> list[tuple[bytes, SendAddress]]:
        """Turn every destination in ``out`` into its :data:`SendAddress`, in place (as
        :meth:`send_address` does, inlined for the two common kinds: a plain address without TURN
        routes costs one type check)."""
        routes = self._turn_routes
        routed = False
        for i, (data, address) in enumerate(out):
            if type(address) is Address:
                if routes and (server := routes.get(address)) is not None:
                    out[i] = (data, TurnAddress(server, address))
            elif type(address) is DirectAddress:
                out[i] = (data, address.address)
            elif type(address) is TurnAddress:
                out[i] = (data, self.send_address(address))
            elif type(address) is RoutedAddress:
                self.overlay.wrap(data, address)  # into self.out, sealed for the next hop
                routed = True
        if routed:
            out = [item for item in out if type(item[1]) is not RoutedAddress]
        return cast("list[tuple[bytes, SendAddress]]", out)  # every destination is resolved now

    def _read_timers(self) -> None:
        """Bring the heap up to date with the connections touched since it was last read."""
        if self._touched:
            timers = self._timers
            for conn in self._touched:
                timers.set(conn, conn.next_timer())
            self._touched = {}

    def get_timer(self) -> float | None:
        self._read_timers()
        best = self._timers.next_deadline()
        overlay = self.overlay.get_timer()
        if overlay is not None and (best is None or overlay < best):
            best = overlay
        for _, _, deadline in self._probes.values():
            if best is None or deadline < best:
                best = deadline
        return best

    def handle_timer(self, now: float) -> None:
        self._read_timers()
        due = self._timers.pop_due(now)
        if len(due) > 1:
            # In table order (peers, then replacements), as if every connection were visited.
            replacements = self._replacements
            due.sort(key=lambda c: (replacements.get(c.peer_id) is c, self._rank[c]))
        for conn in due:
            if conn.state is not ConnState.CLOSED:
                conn.on_timer(now)
                self._touch(conn)
        self.overlay.handle_timer(now)
        for nonce, (address, attempts, deadline) in list(self._probes.items()):
            if deadline <= now:
                if attempts >= PROBE_RETRIES:
                    del self._probes[nonce]
                    self.emit(ev.IdentityResolved(address=address, nonce=nonce, peer_id=None))
                else:
                    self._probes[nonce] = (address, attempts + 1, now + PROBE_INTERVAL)
                    self.transmit(wire.encode_identity_probe(nonce), address)

    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    # -- commands -----------------------------------------------------------------------------

    def connect(
        self,
        peer_id: PeerId,
        address: PathAddress,
        now: float,
        timeout: float | None = None,
        *,
        pinned: bool = False,
    ) -> PeerState:
        """Start connecting (idempotent). Returns the connection's state after the call.

        The handshake is retried until ``timeout`` (default: ``config.connect_timeout``). A
        ``pinned`` connection stays on the path it is established on (no NAT traversal)."""
        if peer_id == self.peer_id:
            raise LocalProtocolError("a node cannot connect to itself")
        decision = self.acl.decide(peer_id)
        if not decision.allowed:
            self.counters["acl_connects_refused"] += 1
            raise PeerNotAllowed(peer_id, decision.reason)
        conn = self._peers.get(peer_id)
        if conn is not None and conn.state.public in (PeerState.CONNECTED, PeerState.CONNECTING):
            return conn.state.public
        if conn is not None:
            conn.end("replaced by a new connection", clean=True)
        limit = self.scopes.limits.max_connections
        if len(self._peers) >= limit:
            self.counters["connects_refused_max_connections"] += 1
            raise LocalProtocolError(f"max_connections ({limit}) reached")
        conn = PeerConnection(
            self,
            peer_id,
            address,
            self.rng.randbytes(8),
            initiator=True,
            now=now,
            timeout=timeout,
            pinned=pinned,
        )
        self._add(self._peers, conn)
        conn.start_handshake(now)
        self.counters["connects_started"] += 1
        return conn.state.public

    def redirect(
        self, peer_id: PeerId, address: PathAddress, now: float, *, deadline: float | None = None
    ) -> bool:
        """Aim a pending connect at another path (e.g. a relay) and send a fresh initiation now.

        Returns False if there is no pending connect to that peer. The connect deadline restarts,
        unless the caller gives the whole connect's ``deadline``: then it gives up exactly then.
        """
        conn = self._peers.get(peer_id)
        if conn is None or not self._touch(conn).redirect(address, now, deadline):
            return False
        self.counters["connects_redirected"] += 1
        return True

    def also_try(self, peer_id: PeerId, address: PathAddress, now: float) -> bool:
        """Send a pending connect's initiation on a second path as well, now and with every retry
        (happy eyeballs, RFC 8305 in spirit). The first response decides the path; the responder
        refuses the slower copy as a replay. False if there is no pending connect to that peer."""
        conn = self._peers.get(peer_id)
        return conn is not None and self._touch(conn).also_try(address)

    def send(self, peer_id: PeerId, data: bytes, now: float) -> None:
        """Queue one message. Raises :class:`~coremesh.access.scopes.SendBufferFull` when the
        peer's send buffer is at its cap (use :meth:`try_send` to wait for room), else like
        :meth:`try_send`."""
        conn = self._connected(peer_id)
        if not self.scopes.send_allowed(conn.stream.send_buffered):
            self.counters["send_buffer_full"] += 1
            raise SendBufferFull(
                f"send buffer to {peer_id} is full ({self.scopes.limits.send_buffer_size} bytes): "
                "the peer does not read as fast as we send"
            )
        conn.send(data, now)

    def consume(self, peer_id: PeerId, nbytes: int) -> bool:
        """The application read ``nbytes`` of messages: return that much receive window to the peer.
        True if this queued a window update to send."""
        conn = self._peers.get(peer_id)
        return conn is not None and self._touch(conn).consume(nbytes)

    def rekey(self, peer_id: PeerId, now: float) -> bool:
        """Start a rekey of the connection to ``peer_id`` now, ahead of its schedule. Returns False
        if none starts: one is in flight, or one is held back (see ``rekey_allowed_from``).
        Raises :class:`~coremesh.errors.PeerNotFound` or :class:`~coremesh.errors.ConnectionClosed`
        if there is no established connection."""
        return self._touch(self._connected(peer_id)).rekey(now)

    def try_send(self, peer_id: PeerId, data: bytes, now: float) -> bool:
        """Queue one message if the send buffer has room, with one liveness check; False under
        back-pressure (wait for :class:`~.events.SendReady`). Raises
        :class:`~coremesh.errors.PeerNotFound` or :class:`~coremesh.errors.ConnectionClosed`."""
        if self._connected(peer_id).try_send(data, now):
            return True
        self.counters["send_buffer_full"] += 1
        return False

    def ping(self, peer_id: PeerId, now: float) -> int:
        """Queue a PING; the matching :class:`~coremesh.endpoint.events.PongReceived` carries the token."""
        return self._connected(peer_id).send_ping(now)

    def close(self, peer_id: PeerId, now: float, reason: str = "") -> None:
        conn = self._peers.get(peer_id)
        if conn is not None:
            self._touch(conn).close(now, reason)

    def close_all(self, now: float, reason: str = "node stopping") -> None:
        for conn in list(self._peers.values()):
            self._touch(conn).close(now, reason)

    def apply_acl(self, now: float) -> int:
        """The access list changed: close every connection (pending ones too) of a peer it now
        refuses. Returns how many were closed."""
        refused = [
            conn
            for table in (self._peers, self._replacements)
            for conn in table.values()
            if not self.acl.permits(conn.peer_id)
        ]
        for conn in refused:
            self._touch(conn).close(now, "refused by the access list")
        self.counters["acl_connections_closed"] += len(refused)
        self._links_changed = True
        return len(refused)

    def set_local_candidates(self, candidates: list[Candidate], nat_type: str, now: float) -> None:
        """Our candidates (host, server-reflexive, relayed) and NAT type, as the shell learns them."""
        self.local_candidates = tuple(dict.fromkeys(candidates))[:16]
        self.nat_type = nat_type
        for conn in self._peers.values():
            self._touch(conn).paths.set_local(self.local_candidates, nat_type, now)

    def set_relay_path(self, peer_id: PeerId, address: PathAddress) -> bool:
        """Give a direct connection a relay path to fall back to (e.g. the keyed relay)."""
        conn = self._peers.get(peer_id)
        return conn is not None and self._touch(conn).paths.set_fallback(address)

    def probe_identity(self, address: PathAddress) -> int:
        """Ask ``address`` which peer it is; answered by an :class:`~.events.IdentityResolved`.

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
            if udp_address(conn.address) == address:
                conn.on_datagram_too_big(size, now)

    def state_of(self, peer_id: PeerId) -> PeerState | None:
        conn = self._peers.get(peer_id)
        return None if conn is None else conn.state.public

    def snapshot(self, peer_id: PeerId) -> PeerSnapshot | None:
        conn = self._peers.get(peer_id)
        return None if conn is None else conn.snapshot()

    def snapshots(self) -> list[PeerSnapshot]:
        return [conn.snapshot() for conn in self._peers.values()]

    def _connected(self, peer_id: PeerId) -> PeerConnection:
        conn = self._peers.get(peer_id)
        if conn is None:
            raise PeerNotFound(f"not connected to {peer_id}")
        state = conn.state.public
        if state is not PeerState.CONNECTED:
            raise ConnectionClosed(f"connection to {peer_id} is {state.value}", reason=state.value)
        return conn

    # -- receive paths ------------------------------------------------------------------------

    def _on_transport(self, data: bytes, addr: PathAddress, now: float) -> None:
        # The header at C level (the checked form is wire.decode_transport_header); receive_datagram
        # dispatched on the type byte already.
        if len(data) < wire.TRANSPORT_OVERHEAD:
            raise DecodeError("truncated transport packet")
        _, index, counter = wire.TRANSPORT_HEADER.unpack_from(data)
        conn = self._indexes.get(index)
        session = conn.session_for_index(index) if conn is not None else None
        if conn is None or session is None:
            self.counters["drop_unknown_session"] += 1
            return
        if type(addr) is RoutedAddress and addr.peer != conn.peer_id:
            # A hop rewrote the source of a routed packet: it must not steer the connection.
            self.counters["drop_routed_source_mismatch"] += 1
            return
        highest = session.replay.highest
        plaintext = session.open_unless_replayed(data, counter)
        if plaintext is None:
            self.counters["drop_replay"] += 1
            return
        self.counters["transport_packets_received"] += 1
        self._touch(conn).on_transport(session, plaintext, addr, highest is None or counter > highest, now)

    def _on_initiation(self, data: bytes, addr: PathAddress, now: float) -> None:
        init = wire.decode_handshake_init(data)
        if not self._responder.check_mac1(init):
            self.counters["drop_bad_mac1"] += 1
            return
        refusal = self.guard.admit(init, addr, udp_address(addr), now)
        if refusal is not None:  # no Diffie-Hellman: a replay, a rate-limited source, or under load
            self.counters[refusal.reason] += 1
            if refusal.reply is not None:
                self.counters["cookie_replies_sent"] += 1
                self.transmit(refusal.reply, addr)
            return
        self.counters["handshakes_admitted"] += 1
        index = self.free_index()
        try:
            result = self._responder.respond(init, local_index=index, random_bytes=self.random_bytes, now=now)
        except AuthenticationFailed:
            self.counters["drop_handshake_auth_failed"] += 1
            return
        peer = result.peer_id
        if isinstance(addr, RoutedAddress) and addr.peer != peer:
            # A routed initiation names its source: a peer cannot open a session as another's.
            self.counters["drop_routed_source_mismatch"] += 1
            return
        decision = self.acl.decide(peer)
        if not decision.allowed:  # refused before any per-peer state, and before any response
            self.counters[f"drop_acl_{decision.reason}"] += 1
            return
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
            if conn.state is ConnState.DIALING:
                # Simultaneous open: the connection dialed by the lower PeerId wins on both sides.
                if self.peer_id.key < peer.key:
                    self.counters["drop_simultaneous_open_lost"] += 1
                    return
                conn.yield_to_peer_dial(result.conn_id, now)
            elif conn.state is ConnState.CONFIRMING:
                conn.end("superseded", clean=False)
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
            if len(self._peers) >= self.scopes.limits.max_connections:
                self.counters["drop_max_connections"] += 1
                return
            host = self._make_room_for_unconfirmed(addr)
            if host is None:
                return
            conn = PeerConnection(self, peer, addr, result.conn_id, initiator=False, now=now)
            self.scopes.reserve_unconfirmed(conn, host)
            self._add(self._peers, conn)
        elif conn.state.public in (PeerState.CLOSING, PeerState.DRAINING):
            self.counters["drop_handshake_closing"] += 1
            return
        elif conn.state is ConnState.CONNECTED and conn.handshake is not None:
            # Simultaneous rekey: both peers' handshakes are in flight. As with a simultaneous open,
            # the one started by the lower PeerId wins on both sides; the other side answers it.
            if self.peer_id.key < peer.key:
                self.counters["drop_simultaneous_rekey_lost"] += 1
                return
            conn.cancel_handshake()
            self.counters["rekeys_yielded"] += 1
        self._indexes[index] = conn
        self._touch(conn).on_initiation_answered(result.session, addr)
        self.transmit(result.response, addr)
        self.counters["handshake_responses_sent"] += 1

    def _replacement_for(
        self, peer: PeerId, conn_id: bytes, addr: PathAddress, now: float
    ) -> PeerConnection | None:
        pending = self._replacements.get(peer)
        if pending is not None and pending.conn_id == conn_id:
            return pending
        if pending is not None:
            pending.end("superseded", clean=False)
        host = self._make_room_for_unconfirmed(addr)
        if host is None:
            return None
        pending = PeerConnection(self, peer, addr, conn_id, initiator=False, now=now)
        self.scopes.reserve_unconfirmed(pending, host)
        self._add(self._replacements, pending)
        return pending

    def _make_room_for_unconfirmed(self, addr: PathAddress) -> Hashable | None:
        """Unconfirmed responder state has its own quotas, in total and per source host, and a
        host its quota of connections (:mod:`coremesh.access.scopes`), so that initiations from
        throwaway identities cannot take every slot, nor one host many. When a quota is full a new
        initiation is refused, not an older one evicted: a refused initiator just retries, while
        one whose response went out and whose state we dropped would be left half-open.
        Returns the source host to reserve for, or None (refused, counted)."""
        host = host_key(udp_address(addr), addr)
        refusal = self.scopes.refusal_for_unconfirmed(host)
        if refusal is None:
            return host
        self.counters[refusal] += 1
        return None

    def resource_usage(self) -> dict[str, int]:
        """What the node's resource scopes hold now (gauges): connections, unconfirmed
        handshakes, inbound connections counted per host, hosts, bytes queued to send."""
        usage = self.scopes.usage()
        return {
            "connections": len(self._peers) + len(self._replacements),
            "unconfirmed": usage.unconfirmed,
            "inbound": usage.inbound,
            "hosts": usage.hosts,
            "send_buffered_bytes": sum(
                c.stream.send_buffered for t in (self._peers, self._replacements) for c in t.values()
            ),
        }

    def _on_response(self, data: bytes, addr: PathAddress, now: float) -> None:
        resp = wire.decode_handshake_resp(data)
        conn = self._indexes.get(resp.receiver_index)
        hs = conn.handshake if conn is not None else None
        if conn is None or hs is None or hs.local_index != resp.receiver_index:
            self.counters["drop_unexpected_response"] += 1
            return
        if isinstance(addr, RoutedAddress) and addr.peer != conn.peer_id:
            self.counters["drop_routed_source_mismatch"] += 1
            return
        self._touch(conn).on_response(resp, addr, now)

    def _on_cookie_reply(self, data: bytes, now: float) -> None:
        reply = wire.decode_cookie_reply(data)
        conn = self._indexes.get(reply.receiver_index)
        hs = conn.handshake if conn is not None else None
        if conn is None or hs is None or hs.local_index != reply.receiver_index:
            self.counters["drop_unexpected_cookie_reply"] += 1
            return
        self._touch(conn).on_cookie_reply(hs, reply, now)

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
