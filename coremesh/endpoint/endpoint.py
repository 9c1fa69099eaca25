"""The sans-IO endpoint: every peer connection of one node on one UDP socket.

Fed with ``receive_datagram(data, addr, now)`` and ``handle_timer(now)``, drained with
``datagrams_to_send(now)``, ``get_timer()`` and ``next_event()``. It owns the handshakes, the secure
sessions (:mod:`coremesh.secure.session`) and one reliable stream (:mod:`coremesh.reliability`) per peer.

No per-peer state exists before authentication: a handshake initiation is checked by its mac1 (no
Diffie-Hellman for packets not addressed to us), then authenticated by Noise, and only then does a
connection object come to exist. Every drop is counted by reason in :attr:`Endpoint.counters`.

Connections are identified by a ``conn_id`` the initiator picks; rekey handshakes carry the same id
and continue the same stream, while a different id from a known peer means the peer opened a new
connection (after a restart, say) and the old one is torn down. When both peers dial each other at
once, the connection opened by the lower PeerId wins, on both sides; so does the rekey started by
the lower PeerId when both peers rekey at once (see :meth:`PeerConnection.install_session`).
"""

from __future__ import annotations

import enum
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from ..addr import Address
from ..config import MeshConfig
from ..errors import (
    AuthenticationFailed,
    ConnectionClosed,
    DecodeError,
    LocalProtocolError,
    NonceExhausted,
    PeerNotFound,
    RemoteProtocolError,
)
from ..identity import Identity, PeerId
from ..reliability import ReliabilityConfig, ReliableStream
from ..reliability import events as rev
from ..secure import wire
from ..secure.session import InitiatorHandshake, Responder, SecureSession
from ..traversal import (
    Candidate,
    Candidates,
    CandidateType,
    CloseProbeSockets,
    Mode,
    OpenProbeSockets,
    PathChallenge,
    PathResponse,
    SendCandidates,
    SendChallenge,
    Target,
    TraversalAgent,
    TraversalConfig,
    UseDirect,
    UseRelay,
    decode_path_frames,
    encode_path_frames,
    is_path_packet,
)
from ..traversal.agent import PROBE_IDS
from ..traversal.frames import PathFrame
from . import events as ev
from .paths import DirectAddress, PathAddress, ProbeAddress, TurnAddress, path_kind, udp_address

HANDSHAKE_RETRY_INITIAL: Final = 0.25
HANDSHAKE_RETRY_MAX: Final = 2.0
CLOSE_LINGER_MAX: Final = 2.0
PROBE_RETRIES: Final = 3
PROBE_INTERVAL: Final = 0.5
MAX_TIMESTAMPS: Final = 65536
MAX_PENDING_PROBES: Final = 256
MIGRATION_VALIDATION_TIME: Final = 1.0  # an unvalidated new address must answer a challenge in time
MIGRATION_BLOCK_TIME: Final = 10.0  # an address that failed validation is not followed again for this long
MAX_BLOCKED: Final = 16
MAX_KEPT_PROBE_SOCKETS: Final = 16  # probe sockets that carry connections after a birthday attempt
INTERNAL_PATH_PING: Final = (1 << 64) - 2  # PING token of a path switch (its PONG is ignored)
# Rekey schedule: the initiator of the current session rekeys after rekey_after_time, the responder
# after 1.1x as a fallback; both deadlines move up to 5% of rekey_after_time earlier, at random (the
# endpoint's injected rng), so that two peers do not keep reaching them at the same moment.
REKEY_RESPONDER_FACTOR: Final = 1.1
REKEY_JITTER: Final = 0.05

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
    path: str = "direct"  # "direct", "turn" or "keyed"
    path_reason: str | None = None  # why the connection is relayed, when it is


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
        # ``next`` was answered before a session we initiated became current (two rekeys both
        # completed): it stays receive only and is never promoted (see install_session).
        self.next_superseded = False
        self.rekey_at: float | None = None  # when to rekey the current session (jittered)
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
        # NAT traversal (coremesh.traversal): the agent exists once the connection is up.
        self.pinned = False  # path="relay": never move to a direct path
        self.extra_paths: list[PathAddress] = []  # a pending connect also tried there (raced)
        self.agent: TraversalAgent | None = None
        self.relay_path: PathAddress | None = None  # where to fall back when the direct path dies
        self.migration: tuple[PathAddress, Target, float] | None = None  # (previous, new, deadline)
        self.pending_switch: Target | None = None  # a direct address to take once validated
        self.blocked: dict[Target, float] = {}  # addresses that failed validation, until when
        self.path_since = 0.0  # when the connection last moved to a path

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
        """A session we initiated completed: it becomes current at once.

        Both peers may rekey at the same moment. While our handshake is in flight, a rekey
        initiation from the peer is refused if our PeerId is the lower one, and makes us abandon
        ours if it is the higher one (:meth:`Endpoint._on_initiation`), so only one of two crossing
        handshakes completes. Should both complete anyway (we answered the peer's, then started
        ours because the peer's keys went unused too long), the peer's session stays in ``next``,
        superseded: receive only, never promoted. The peer answered ours after its own completed,
        so it promotes ours: both sides end up sending on the newer session, ours.
        """
        if self.next is not None:
            self.next_superseded = True
        self._make_current(session)

    def on_next_used(self) -> None:
        """The peer sent on the session we answered (``next``): it holds the keys, and the session
        becomes current, unless a session we initiated superseded it (see :meth:`install_session`)."""
        assert self.next is not None
        self.next.confirmed = True
        if self.next_superseded:
            return
        session, self.next = self.next, None
        self._make_current(session)

    def _make_current(self, session: SecureSession) -> None:
        self._retire(self.previous)
        self.previous, self.current = self.current, session
        cfg = self.endpoint.config
        period = cfg.rekey_after_time
        base = period if session.is_initiator else period * REKEY_RESPONDER_FACTOR
        self.rekey_at = session.created_at + base - period * REKEY_JITTER * self.endpoint.rng.random()

    def set_next(self, session: SecureSession) -> None:
        self._retire(self.next)
        self.next = session
        self.next_superseded = False

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
        if self.announced:
            # A rekey has two rekey periods before the keys expire: retry often enough to use them.
            delay = min(delay, max(HANDSHAKE_RETRY_INITIAL, ep.config.rekey_after_time / 8))
        self.handshake_attempt += 1
        self.handshake_retry_at = now + delay * (0.9 + 0.2 * ep.rng.random())
        ep.transmit(self.handshake.packet, self.address)
        for extra in self.extra_paths:
            ep.transmit(self.handshake.packet, extra)
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
                due = self.rekey_due_at()
                if due is not None:
                    candidates.append(due)
            if self.current is not None:
                candidates.append(self.keys_expire_at())
            if self.agent is not None:
                t = self.agent.get_timer(self.stream.oldest_unacked_sent_at())
                if t is not None:
                    candidates.append(t)
            if self.migration is not None:
                candidates.append(self.migration[2])
        return min(candidates) if candidates else None

    def keys_expire_at(self) -> float:
        """After three rekey periods without a successful rekey the keys are refused (WireGuard's
        reject-after-time): a connection cannot go on forever on one set of keys."""
        assert self.current is not None
        return self.current.created_at + 3 * self.endpoint.config.rekey_after_time

    def rekey_due_at(self) -> float | None:
        """When to start a rekey: the scheduled ``rekey_at`` (the side that initiated the current
        session rekeys first, the other only as a fallback), unless :meth:`rekey_allowed_from`
        holds it back. None: not until the peer sends on our current session."""
        assert self.rekey_at is not None
        allowed = self.rekey_allowed_from()
        return None if allowed is None else max(self.rekey_at, allowed)

    def rekey_allowed_from(self) -> float | None:
        """The earliest time a rekey may start, whatever the schedule; None while it must not.

        - Our own last rekey has not been used by the peer yet (nothing received under it): the
          peer may still hold it pending, and a new initiation would replace it there while our
          packets under it are in flight. A peer that never answers ends by the idle timeout.
        - The peer's rekey (``next``, which we answered) awaits its first packet: ours would cross
          it. The peer normally sends within a round trip; after three (at least 0.25 s) ours
          starts, and should both be in flight, the tie-break settles them.
        """
        current = self.current
        if current is None or (current.is_initiator and current.packets_received == 0):
            return None
        pending = self.next
        if pending is None or self.next_superseded:
            return current.created_at
        cfg = self.endpoint.config
        return pending.created_at + min(
            cfg.connect_timeout,
            cfg.rekey_after_time,
            max(HANDSHAKE_RETRY_INITIAL, 3 * self.stream.smoothed_rtt),
        )

    def start_rekey(self, now: float) -> None:
        self.endpoint.counters["rekeys_started"] += 1
        self.handshake_attempt = 0
        self.start_handshake(now)

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
                        f"no handshake response from {self.address} within "
                        f"{self.connect_deadline - self.created_at:g}s "
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
            if self.handshake is None and self.current is not None:
                due = self.rekey_due_at()
                if due is not None and now >= due:
                    self.start_rekey(now)
            if self.migration is not None and now >= self.migration[2]:
                self.revert_migration(now)
            if self.agent is not None:
                self.agent.handle_timer(now, self.stream.oldest_unacked_sent_at())
                self.run_agent(now)
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
            self.on_next_used()
        if not self.announced and self.current is not None and self.state is PeerState.CONNECTING:
            self.announce(now)
        if is_path_packet(plaintext):
            if self.state is PeerState.CONNECTED:
                self.on_path_packet(plaintext, addr, now)
            ep.mark_dirty(self)
            return
        if newest and not same_path(addr, self.address):
            self.on_new_address(addr, now)
        if plaintext:
            acked = self.stream.largest_acked
            try:
                self.stream.receive_payload(plaintext, now)
            except DecodeError:
                ep.counters["drop_malformed_frames"] += 1
                return
            except RemoteProtocolError as exc:
                ep.counters["protocol_violations"] += 1
                self.fail(f"protocol violation by peer: {exc}", now)
                return
            if self.agent is not None and self.stream.largest_acked > acked:
                self.agent.on_ack_progress(now)
            self.drain_stream(now)
        ep.mark_dirty(self)

    # -- paths (NAT traversal) ---------------------------------------------------------------------

    def start_traversal(self, now: float) -> None:
        ep = self.endpoint
        if not ep.traversal_enabled:
            return
        kind = ep.kind_of(self, self.address)
        if kind != "direct":
            self.relay_path = self.address
        self.agent = TraversalAgent(
            ep.traversal_config,
            controlling=ep.peer_id.key < self.peer_id.key,
            rng=ep.rng,
            now=now,
            direct=udp_address(self.address) if kind == "direct" else None,
            pinned=self.pinned,
            probe_base=ep.next_probe_base(),
        )
        self.agent.has_fallback = self.relay_path is not None
        self.agent.set_local(ep.local_candidates, ep.nat_type, now)
        self.agent.start(now)
        self.run_agent(now)

    def path_kind(self) -> str:
        return self.endpoint.kind_of(self, self.address)

    def path_reason(self) -> str | None:
        if self.path_kind() == "direct":
            return None
        if self.pinned:
            return "pinned to the relay (connected with path=relay)"
        if self.agent is None:
            return "NAT traversal is disabled"
        return self.agent.reason

    def send_path(self, frames: list[PathFrame], address: PathAddress) -> None:
        session = self.current
        if session is None or self.finished:
            return
        packet = self.seal(session, encode_path_frames(frames))
        if packet is not None:
            self.endpoint.transmit(packet, address)
            self.endpoint.counters["path_packets_sent"] += 1

    def seal(self, session: SecureSession, payload: bytes) -> bytes | None:
        """Encrypt a payload under ``session``; None if its nonces are used up, which ends the
        connection (only if rekeying kept failing for 2^64 packets)."""
        try:
            return session.seal(payload)
        except NonceExhausted:
            ep = self.endpoint
            ep.counters["nonces_exhausted"] += 1
            ep.remove(self, reason="session keys exhausted: rekeying did not succeed", clean=False)
            return None

    def run_agent(self, now: float) -> None:
        agent = self.agent
        if agent is None:
            return
        ep = self.endpoint
        while (action := agent.next_action()) is not None:
            if isinstance(action, SendChallenge):
                self.send_path([PathChallenge(action.token)], direct_path(action.address))
                ep.counters["path_challenges_sent"] += 1
            elif isinstance(action, SendCandidates):
                frame = Candidates(
                    action.round, action.reply, agent.mode is Mode.PINNED, ep.nat_type, ep.local_candidates
                )
                self.send_path([frame], self.address)
            elif isinstance(action, UseDirect):
                self.switch_to(direct_path(action.address), now, None)
            elif isinstance(action, UseRelay) and self.relay_path is not None:
                self.switch_to(self.relay_path, now, action.reason)
            elif isinstance(action, OpenProbeSockets):
                if not ep.open_probe_sockets(action.ids):
                    agent.cancel_birthday(now, f"the node's {ep.max_probe_sockets} probe sockets are in use")
            elif isinstance(action, CloseProbeSockets):
                ep.close_probe_sockets(action.ids)

    def switch_to(self, address: PathAddress, now: float, reason: str | None) -> None:
        """Send on another path from now on. The stream is path-independent: nothing is lost or
        reordered; what was in flight goes again on the new path."""
        ep = self.endpoint
        old = self.address
        if old == address:
            return
        if ep.kind_of(self, old) != "direct" and ep.kind_of(self, address) == "direct":
            self.relay_path = old
        self.address = address
        self.migration = None
        self.pending_switch = None
        self.path_since = now
        if self.agent is not None:
            self.agent.has_fallback = self.relay_path is not None
        self.stream.on_path_changed(now)
        if self.state is PeerState.CONNECTED:
            # An ack-eliciting packet on the new path at once: the peer follows on it (and we get
            # a first RTT sample of the path).
            self.stream.send_ping(INTERNAL_PATH_PING, now)
        kind = ep.kind_of(self, address)
        ep.counters[f"path_switches_to_{kind}"] += 1
        ep.emit(ev.AddressChanged(peer_id=self.peer_id, old=old, new=address))
        ep.emit(ev.PathChanged(peer_id=self.peer_id, address=address, kind=kind, reason=reason))
        ep.mark_dirty(self)

    def on_new_address(self, addr: PathAddress, now: float) -> None:
        """The newest authenticated packet came from another address than we send to.

        A relay path (keyed relay, TURN, or the path we came from) is followed at once: only the
        peer can send there, the relay having authenticated it. A direct address is followed once
        validated (a PATH_CHALLENGE answered): an on-path attacker replaying a packet from its own
        address must not redirect the connection. A NAT rebinding of a direct path is followed at
        once and reverted if the new address does not validate (RFC 9000 §9.3)."""
        ep = self.endpoint
        agent = self.agent
        udp = udp_address(addr)
        target: Target | None = addr if isinstance(addr, ProbeAddress) else udp
        # How the packet came (not how we would send there): a plain address arrived directly even
        # when we route it through TURN, since TURN deliveries are tagged TurnAddress.
        kind = (
            "direct"
            if isinstance(addr, Address) and not ep.is_peer_relay(self, addr)
            else ep.kind_of(self, addr)
        )
        if agent is None or agent.mode is Mode.PINNED or agent.remote_pinned:
            # No traversal on this connection: follow the peer wherever it sends from.
            old, self.address = self.address, addr
            ep.counters["address_changes"] += 1
            ep.emit(ev.AddressChanged(peer_id=self.peer_id, old=old, new=addr))
            return
        if (
            kind != "direct"
            or udp is None
            or (self.relay_path is not None and same_path(addr, self.relay_path))
        ):
            was_direct = self.path_kind() == "direct"
            if was_direct and now < self.path_since + ep.traversal_config.dead_after:
                # Packets the peer sent on the relay before it saw ours on the direct path: the
                # peer only leaves a direct path after dead_after without acknowledgements.
                ep.counters["relay_packets_after_switch"] += 1
                return
            self.switch_to(addr, now, "the peer moved to the relay" if was_direct else None)
            if was_direct:
                agent.adopt_relay(
                    now, "the peer moved back to the relay (its direct checks or liveness failed)"
                )
            return
        assert target is not None
        if agent.is_validated(target):
            self.switch_to(direct_path(target), now, None)
            agent.adopt_direct(target, now)
            return
        until = self.blocked.get(target)
        if until is not None and now < until:
            return
        if self.path_kind() == "direct" and self.relay_path is None:
            # A NAT rebinding: follow at once (the session must survive it), validate, revert on failure.
            old = self.address
            routed = isinstance(addr, Address) and ep.is_routed(addr)
            self.address = DirectAddress(udp) if isinstance(old, DirectAddress) or routed else addr
            self.migration = (old, target, now + MIGRATION_VALIDATION_TIME)
            ep.counters["address_changes"] += 1
            ep.emit(ev.AddressChanged(peer_id=self.peer_id, old=old, new=self.address))
            if agent.direct is not None:
                agent.direct = target
        else:
            self.pending_switch = target
        agent.validate(target, now)
        self.run_agent(now)

    def revert_migration(self, now: float) -> None:
        assert self.migration is not None
        previous, new, _ = self.migration
        self.migration = None
        self.blocked[new] = now + MIGRATION_BLOCK_TIME
        while len(self.blocked) > MAX_BLOCKED:
            del self.blocked[next(iter(self.blocked))]
        old, self.address = self.address, previous
        if self.agent is not None and self.agent.direct is not None:
            self.agent.direct = previous if isinstance(previous, ProbeAddress) else udp_address(previous)
        self.endpoint.counters["migrations_reverted"] += 1
        self.endpoint.emit(ev.AddressChanged(peer_id=self.peer_id, old=old, new=previous))

    def on_path_packet(self, plaintext: bytes, addr: PathAddress, now: float) -> None:
        ep = self.endpoint
        try:
            frames = decode_path_frames(plaintext)
        except DecodeError:
            ep.counters["drop_malformed_path_frames"] += 1
            return
        agent = self.agent
        udp = udp_address(addr)
        target: Target | None = addr if isinstance(addr, ProbeAddress) else udp
        for frame in frames:
            if isinstance(frame, PathChallenge):
                ep.counters["path_challenges_answered"] += 1
                # Back the way it came: from the probe socket it arrived on, or from our socket.
                reply = direct_path(target) if target is not None else addr
                self.send_path([PathResponse(frame.token)], reply)
                if agent is not None and target is not None and not isinstance(addr, TurnAddress):
                    agent.on_challenge(target, now)
            elif isinstance(frame, PathResponse):
                if agent is None:
                    continue
                validated = agent.on_response(frame.token, now)
                if validated is None:
                    ep.counters["drop_unknown_path_response"] += 1
                    continue
                if self.migration is not None and self.migration[1] == validated:
                    self.migration = None
                if self.pending_switch == validated and self.path_kind() != "direct":
                    self.switch_to(direct_path(validated), now, None)
                    agent.adopt_direct(validated, now)
            elif isinstance(frame, Candidates) and agent is not None:
                current = udp_address(self.address)
                relayed = {c.address for c in frame.candidates if c.kind is CandidateType.RELAY}
                if agent.mode is Mode.DIRECT and current in relayed:
                    # We took the peer's TURN relayed address for a direct one: we are relayed.
                    self.relay_path = self.address
                    agent.adopt_relay(now, "connected through the peer's TURN relay")
                agent.on_candidates(
                    frame.round, frame.reply, frame.pinned, frame.nat_type, frame.candidates, now
                )
        self.run_agent(now)

    def announce(self, now: float) -> None:
        self.extra_paths = []
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
        self.start_traversal(now)

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
            packet = self.seal(session, payload)
            if packet is None:
                return
            out.append((packet, address))
        if (
            self.handshake is None
            and session.send_counter >= ep.config.rekey_after_packets
            and self.state is PeerState.CONNECTED
        ):
            allowed = self.rekey_allowed_from()
            if allowed is not None and now >= allowed:
                self.start_rekey(now)

    def send_keepalive(self) -> None:
        """An empty transport packet: confirms a fresh session to the responder."""
        if self.current is not None and (packet := self.seal(self.current, b"")) is not None:
            self.endpoint.transmit(packet, self.address)

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
            path=self.path_kind(),
            path_reason=self.path_reason(),
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
        traversal: TraversalConfig | None = None,
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
        # NAT traversal: our candidates (the shell keeps them current) and whether the runtime
        # sends a plain address through a TURN route (a query of shell state, no I/O).
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
        self.is_routed: Callable[[Address], bool] = lambda _address: False

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

    def kind_of(self, conn: PeerConnection, address: PathAddress) -> str:
        """``direct``, ``turn`` or ``keyed``: how packets to ``address`` travel."""
        kind = path_kind(address)
        if kind != "direct" or isinstance(address, (DirectAddress, ProbeAddress)):
            return kind
        assert isinstance(address, Address)
        if self.is_routed(address):
            return "turn"
        agent = conn.agent
        if agent is not None:
            cand = agent.remote.get(address)
            if cand is not None and cand.kind is CandidateType.RELAY:
                return "turn"  # the peer's TURN relayed address
        return "direct"

    def is_peer_relay(self, conn: PeerConnection, address: Address) -> bool:
        """Whether ``address`` is one of the peer's TURN relayed candidates."""
        agent = conn.agent
        cand = agent.remote.get(address) if agent is not None else None
        return cand is not None and cand.kind is CandidateType.RELAY

    def set_local_candidates(self, candidates: list[Candidate], nat_type: str, now: float) -> None:
        """Our candidates (host, server-reflexive, relayed) and NAT type, as the shell learns them."""
        self.local_candidates = tuple(dict.fromkeys(candidates))[:16]
        self.nat_type = nat_type
        for conn in self._peers.values():
            if conn.agent is not None and not conn.finished:
                conn.agent.set_local(self.local_candidates, nat_type, now)
                conn.run_agent(now)

    def set_relay_path(self, peer_id: PeerId, address: PathAddress) -> bool:
        """Give a direct connection a relay path to fall back to (e.g. the keyed relay)."""
        conn = self._peers.get(peer_id)
        if conn is None or conn.finished or conn.relay_path is not None:
            return False
        conn.relay_path = address
        if conn.agent is not None:
            conn.agent.has_fallback = True
        return True

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
        if conn.agent is not None:
            conn.agent.close()  # its probe sockets go with it
            while (action := conn.agent.next_action()) is not None:
                if isinstance(action, CloseProbeSockets):
                    self.close_probe_sockets(action.ids)
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
        conn.pinned = pinned
        self._peers[peer_id] = conn
        conn.start_handshake(now)
        self.counters["connects_started"] += 1
        return conn.state

    def redirect(
        self, peer_id: PeerId, address: PathAddress, now: float, *, deadline: float | None = None
    ) -> bool:
        """Aim a pending connect at another path (e.g. a relay) and send a fresh initiation now.

        Returns False if there is no pending connect to that peer. The connect deadline restarts,
        unless the caller gives the whole connect's ``deadline``: then it gives up exactly then.
        """
        conn = self._peers.get(peer_id)
        if conn is None or conn.finished or conn.announced or not conn.initiator:
            return False
        conn.address = address
        conn.handshake_attempt = 0
        if deadline is not None:
            conn.connect_deadline = deadline
        else:
            # The deadline restarts, but never cuts short the time the caller gave the whole connect.
            conn.connect_deadline = max(conn.connect_deadline or now, now + self.config.connect_timeout)
        conn.start_handshake(now)
        self.counters["connects_redirected"] += 1
        return True

    def also_try(self, peer_id: PeerId, address: PathAddress, now: float) -> bool:
        """Send a pending connect's initiation on a second path as well, now and with every retry
        (happy eyeballs, RFC 8305 in spirit). The first response decides the path; the responder
        refuses the slower copy as a replay. False if there is no pending connect to that peer."""
        conn = self._peers.get(peer_id)
        if conn is None or conn.finished or conn.announced or not conn.initiator or conn.handshake is None:
            return False
        if address == conn.address or address in conn.extra_paths:
            return True
        conn.extra_paths = [address]
        self.transmit(conn.handshake.packet, address)
        self.counters["connects_raced"] += 1
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

    def rekey(self, peer_id: PeerId, now: float) -> bool:
        """Start a rekey of the connection to ``peer_id`` now, ahead of its schedule. Returns False
        if none starts: one is in flight, or one is held back (see ``rekey_allowed_from``).
        Raises :class:`~coremesh.errors.PeerNotFound` or :class:`~coremesh.errors.ConnectionClosed`
        if there is no established connection."""
        conn = self._connected(peer_id)
        allowed = conn.rekey_allowed_from()
        if conn.handshake is not None or allowed is None or now < allowed:
            return False
        conn.start_rekey(now)
        return True

    def try_send(self, peer_id: PeerId, data: bytes, now: float) -> bool:
        """Queue one message if the send buffer has room, with one liveness check; False under
        back-pressure (wait for :class:`~.events.SendReady`). Raises like :meth:`send`."""
        conn = self._connected(peer_id)
        if not conn.stream.can_send():
            return False
        conn.stream.send_message(data, now)
        self.mark_dirty(conn)
        return True

    def ping(self, peer_id: PeerId, now: float) -> int:
        """Queue a PING; the matching :class:`~coremesh.endpoint.events.PongReceived` carries the token."""
        return self._connected(peer_id).send_ping(now)

    def close(self, peer_id: PeerId, now: float, reason: str = "") -> None:
        conn = self._peers.get(peer_id)
        if conn is not None:
            conn.close(now, reason)

    def close_all(self, now: float, reason: str = "node stopping") -> None:
        for conn in list(self._peers.values()):
            conn.close(now, reason)

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
            if udp_address(conn.address) == address and conn.current is not None:
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
        elif conn.announced and conn.handshake is not None:
            # Simultaneous rekey: both peers' handshakes are in flight. As with a simultaneous open,
            # the one started by the lower PeerId wins on both sides; the other side answers it.
            if self.peer_id.key < peer.key:
                self.counters["drop_simultaneous_rekey_lost"] += 1
                return
            conn.cancel_handshake()
            self.counters["rekeys_yielded"] += 1
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


def direct_path(target: Target) -> PathAddress:
    """Where a check or a direct path to ``target`` goes: straight from our socket (never by a
    relay route), or from the probe socket it names."""
    return target if isinstance(target, ProbeAddress) else DirectAddress(target)


def same_path(a: PathAddress, b: PathAddress) -> bool:
    """Whether packets from ``a`` come by the path we send to at ``b``: a plain and a direct
    address of one UDP endpoint are the same path; a TURN or keyed relay path is only itself."""
    if a == b:
        return True
    direct = (Address, DirectAddress)
    return isinstance(a, direct) and isinstance(b, direct) and udp_address(a) == udp_address(b)
