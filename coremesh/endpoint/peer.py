"""One peer connection: its state, its secure sessions, its handshake retries, its reliable stream,
its timers, what it receives, and how it closes.

A :class:`PeerConnection` belongs to an :class:`~coremesh.endpoint.endpoint.Endpoint`, which finds
it (by PeerId or session index) and calls its methods; where its packets go is its
:class:`~coremesh.endpoint.migration.PeerPaths`. Its state changes in one place,
:meth:`PeerConnection._set_state`, checked against :mod:`coremesh.endpoint.states`.

Sessions: up to three at a time (previous, current, next) so that rekeying never drops a packet in
flight. Connections are identified by a ``conn_id`` the initiator picks; rekey handshakes carry the
same id and continue the same stream. When both peers rekey at once, the rekey started by the lower
PeerId wins (see :meth:`PeerConnection.install_session`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..errors import (
    AuthenticationFailed,
    DecodeError,
    LocalProtocolError,
    NonceExhausted,
    RemoteProtocolError,
)
from ..identity import PeerId
from ..reliability import ReliableStream
from ..reliability import events as rev
from ..reliability.padding import ENVELOPE_PREFIX, CoverSchedule, open_envelope
from ..routing.overlay import OVERLAY_PREFIX
from ..secure import wire
from ..secure.session import COOKIE_LIFETIME, InitiatorHandshake, SecureSession
from ..traversal import encode_path_frames
from ..traversal.frames import PATH_PREFIX, PathFrame
from . import events as ev
from .migration import PeerPaths
from .paths import PathAddress, RoutedAddress, same_path
from .states import ANNOUNCED, ConnState, PeerState, check_transition

if TYPE_CHECKING:
    from .endpoint import Endpoint

log = logging.getLogger("coremesh.endpoint.peer")

HANDSHAKE_RETRY_INITIAL: Final = 0.25
HANDSHAKE_RETRY_MAX: Final = 2.0
CLOSE_LINGER_MAX: Final = 2.0
# Rekey schedule: the initiator of the current session rekeys after rekey_after_time, the responder
# after 1.1x as a fallback; both deadlines move up to 5% of rekey_after_time earlier, at random (the
# endpoint's injected rng), so that two peers do not keep reaching them at the same moment.
REKEY_RESPONDER_FACTOR: Final = 1.1
REKEY_JITTER: Final = 0.05

CLOSE_NORMAL: Final = 0
CLOSE_PROTOCOL_ERROR: Final = 1

# States whose end the application still has to hear of (PeerDisconnected).
_END_UNANNOUNCED: Final = frozenset({ConnState.CONNECTED, ConnState.CLOSING, ConnState.CROSSED})
_CLOSING_OR_CLOSED: Final = frozenset(
    {ConnState.CLOSING, ConnState.DRAINING, ConnState.CROSSED, ConnState.CLOSED}
)


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
    path: str = "direct"  # "direct", "turn", "keyed" or "routed"
    path_reason: str | None = None  # why the connection is relayed, when it is


class PeerConnection:
    """One peer: its state, sessions (previous/current/next), the reliable stream, and timers."""

    def __init__(
        self,
        endpoint: Endpoint,
        peer_id: PeerId,
        address: PathAddress,
        conn_id: bytes,
        *,
        initiator: bool,
        now: float,
        timeout: float | None = None,
        pinned: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.peer_id = peer_id
        self.conn_id = conn_id
        self.initiator = initiator  # we opened it (changes once at most: a simultaneous open we lose)
        self.pinned = pinned  # path="relay": never move to a direct path
        self.state = ConnState.DIALING if initiator else ConnState.CONFIRMING
        self.stream = ReliableStream(endpoint.stream_config_for(address), now)
        self.paths = PeerPaths(self, address)
        self.previous: SecureSession | None = None
        self.current: SecureSession | None = None
        self.next: SecureSession | None = None
        # ``next`` was answered before a session we initiated became current (two rekeys both
        # completed): it stays receive only and is never promoted (see install_session).
        self.next_superseded = False
        self.rekey_at: float | None = None  # when to rekey the current session (jittered)
        # The handshake in flight: always while DIALING, during a rekey while CONNECTED.
        self.handshake: InitiatorHandshake | None = None
        self.handshake_attempt = 0
        self.handshake_retry_at: float | None = None
        self.extra_paths: list[PathAddress] = []  # a pending connect also tried there (raced)
        self.cookie: tuple[bytes, float] | None = None  # the peer's cookie under load, and until when
        # An initiator gives up after connect_timeout; a responder forgets a session the initiator
        # never confirmed after the same time, so no half-open state outlives a lost handshake.
        self.connect_deadline: float | None = now + (
            endpoint.config.connect_timeout if timeout is None else timeout
        )
        self.created_at = now
        self.last_received = now
        self.last_ping_at = now
        self.connected_at: float | None = None
        self.linger_deadline: float | None = None
        self.close_started = 0.0
        self.ping_tokens = 0
        cfg = endpoint.config  # cover traffic (reliability/padding.py): off unless configured
        self.cover = CoverSchedule(cfg.cover_rate, cfg.cover_idle, now) if cfg.cover_rate > 0 else None
        log.debug("peer %s: created %s", peer_id.short(), self.state.name)

    @property
    def address(self) -> PathAddress:
        """Where this connection's packets go."""
        return self.paths.address

    @property
    def finished(self) -> bool:
        return self.state is ConnState.CLOSED

    @property
    def announced(self) -> bool:
        """The application has seen PeerConnected."""
        return self.state in ANNOUNCED

    def _set_state(self, new: ConnState, cause: str) -> None:
        """The one place a connection changes state."""
        old = self.state
        check_transition(old, new)
        log.debug("peer %s: %s -> %s (%s)", self.peer_id.short(), old.name, new.name, cause)
        self.state = new

    # -- sessions -----------------------------------------------------------------------------

    def sessions(self) -> Iterator[SecureSession]:
        for s in (self.current, self.next, self.previous):
            if s is not None:
                yield s

    def session_for_index(self, index: int) -> SecureSession | None:
        """The session ``index`` names (run per packet received: no generator)."""
        for s in (self.current, self.next, self.previous):
            if s is not None and s.local_index == index:
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

    def on_initiation_answered(self, session: SecureSession, addr: PathAddress) -> None:
        """We answered the peer's initiation with ``session``: it waits in ``next`` for the peer's
        first packet under it. Before the connection is up, answers go where the initiation came from."""
        self._retire(self.next)
        self.next = session
        self.next_superseded = False
        if not self.announced and self.address != addr:
            self.paths.aim(addr)

    def _retire(self, session: SecureSession | None) -> None:
        if session is not None:
            self.endpoint.release_index(session.local_index)

    # -- handshakes ---------------------------------------------------------------------------

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
            cookie=self.cookie[0] if self.cookie is not None and now < self.cookie[1] else None,
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

    def on_cookie_reply(self, hs: InitiatorHandshake, reply: wire.CookieReply, now: float) -> None:
        """The peer is under load and answered ``hs`` with a cookie: the next initiations carry
        mac2 for COOKIE_LIFETIME seconds. The first cookie in that time sends the next one at once
        (not at the retry timer's), so a forger on the path cannot make us initiate more often."""
        had_cookie = self.cookie is not None and now < self.cookie[1]
        try:
            self.cookie = (hs.open_cookie_reply(reply), now + COOKIE_LIFETIME)
        except AuthenticationFailed:
            self.endpoint.counters["drop_bad_cookie_reply"] += 1
            return
        self.endpoint.counters["cookie_replies_received"] += 1
        if not had_cookie and self.handshake_retry_at is not None:
            self.handshake_retry_at = now

    def cancel_handshake(self) -> None:
        if self.handshake is not None:
            self.endpoint.release_index(self.handshake.local_index)
            self.handshake = None
            self.handshake_retry_at = None

    def redirect(self, address: PathAddress, now: float, deadline: float | None) -> bool:
        """Aim a pending connect at another path and send a fresh initiation now. The connect
        deadline restarts (never cutting short the caller's), unless ``deadline`` is given."""
        if self.state is not ConnState.DIALING:
            return False
        self.paths.aim(address)
        self.handshake_attempt = 0
        if deadline is not None:
            self.connect_deadline = deadline
        else:
            timeout = self.endpoint.config.connect_timeout
            self.connect_deadline = max(self.connect_deadline or now, now + timeout)
        self.start_handshake(now)
        return True

    def also_try(self, address: PathAddress) -> bool:
        """Send the pending initiation on a second path as well, now and with every retry."""
        if self.state is not ConnState.DIALING or self.handshake is None:
            return False
        if address == self.address or address in self.extra_paths:
            return True
        self.extra_paths = [address]
        self.endpoint.transmit(self.handshake.packet, address)
        self.endpoint.counters["connects_raced"] += 1
        return True

    def yield_to_peer_dial(self, conn_id: bytes, now: float) -> None:
        """Simultaneous open, and the peer's dial wins: abandon ours and answer the peer's."""
        self._set_state(ConnState.CONFIRMING, "the peer's dial wins a simultaneous open")
        self.cancel_handshake()
        self.conn_id = conn_id
        self.initiator = False
        self.connect_deadline = now + self.endpoint.config.connect_timeout

    def on_response(self, resp: wire.HandshakeResp, addr: PathAddress, now: float) -> None:
        """The response to our handshake in flight (the endpoint matched its index)."""
        ep = self.endpoint
        hs = self.handshake
        assert hs is not None
        if not hs.check_mac1(resp):
            ep.counters["drop_bad_mac1"] += 1
            return
        try:
            session, echoed = hs.complete(resp, now)
        except (AuthenticationFailed, LocalProtocolError):
            # A forged response spoils this attempt only; the retry timer starts a fresh one.
            ep.counters["drop_handshake_auth_failed"] += 1
            return
        if echoed != self.conn_id:
            ep.counters["drop_handshake_mismatch"] += 1
            return
        self.handshake = None
        self.handshake_retry_at = None
        self.handshake_attempt = 0
        self.install_session(session)
        self.last_received = now
        if not self.announced:
            if not (isinstance(addr, RoutedAddress) and same_path(addr, self.address)):
                self.paths.aim(addr)  # (a source route we dial along is kept: answers come by table)
            if isinstance(addr, RoutedAddress) and self.stream.packets_sent == 0:
                # The routed attempt of a race answered first: its packets travel inside a hop's
                # packet, so the stream starts with the routed datagram sizes.
                self.stream = ReliableStream(ep.stream_config_for(addr), now)
            self.announce(now, "handshake response")
        # The responder only trusts the new keys once a packet arrives under them: send an
        # ack-eliciting PING, which the stream retransmits until it is acknowledged.
        self.send_ping(now)
        ep.mark_dirty(self)
        ep.counters["handshakes_completed"] += 1

    def announce(self, now: float, cause: str) -> None:
        self.extra_paths = []
        self.endpoint.promote(self)
        self.endpoint.links_changed()
        self._set_state(ConnState.CONNECTED, cause)
        self.connected_at = now
        self.connect_deadline = None
        self.last_ping_at = now
        self.endpoint.counters["connections_established"] += 1
        self.endpoint.emit(
            ev.PeerConnected(peer_id=self.peer_id, address=self.address, initiator=self.initiator)
        )
        self.paths.start(now)

    # -- rekeying -----------------------------------------------------------------------------

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

    def rekey(self, now: float) -> bool:
        """Rekey now unless one is in flight or held back (see :meth:`rekey_allowed_from`)."""
        allowed = self.rekey_allowed_from()
        if self.handshake is not None or allowed is None or now < allowed:
            return False
        self.start_rekey(now)
        return True

    # -- timers -------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        if self.state is ConnState.CLOSED:
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
        if self.state is ConnState.CONNECTED:
            candidates.append(max(self.last_received, self.last_ping_at) + cfg.heartbeat_interval)
            candidates.append(self.last_received + cfg.idle_timeout)
            if self.current is not None and self.handshake is None:
                due = self.rekey_due_at()
                if due is not None:
                    candidates.append(due)
            if self.current is not None:
                candidates.append(self.keys_expire_at())
            t = self.paths.next_timer()
            if t is not None:
                candidates.append(t)
            if self.cover is not None and (t := self.cover.deadline()) is not None:
                candidates.append(t)
        return min(candidates) if candidates else None

    def on_timer(self, now: float) -> None:
        ep = self.endpoint
        cfg = ep.config
        if self.linger_deadline is not None and now >= self.linger_deadline:
            if self.state is ConnState.CLOSING:
                # Data queued before the close still drains while the peer keeps acknowledging.
                if (
                    now - self.last_received <= self.linger_time()
                    and now - self.close_started < cfg.idle_timeout
                ):
                    self.linger_deadline = now + self.linger_time()
                    return
                self.end("closed, but the peer did not acknowledge the close", clean=False)
            else:
                self.end("closed by peer", clean=True)
            return
        if self.connect_deadline is not None and now >= self.connect_deadline and not self.announced:
            if self.state is ConnState.CONFIRMING:
                ep.counters["handshakes_unconfirmed"] += 1
                self.end("handshake never confirmed", clean=False)
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
            self.end("connect timeout", clean=False)
            return
        connected = self.state is ConnState.CONNECTED
        if connected and self.current is not None and now >= self.keys_expire_at():
            ep.counters["keys_expired"] += 1
            self.end("session keys expired: rekeying did not succeed", clean=False)
            return
        if connected and now >= self.last_received + cfg.idle_timeout:
            ep.counters["idle_timeouts"] += 1
            self.end(f"idle timeout: nothing heard for {cfg.idle_timeout:g}s", clean=False)
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
        if self.state is ConnState.CONNECTED:
            if now >= max(self.last_received, self.last_ping_at) + cfg.heartbeat_interval:
                self.last_ping_at = now
                self.send_ping(now)
            if self.handshake is None and self.current is not None:
                due = self.rekey_due_at()
                if due is not None and now >= due:
                    self.start_rekey(now)
            self.paths.on_timer(now)
            if self.cover is not None:
                self.send_cover(now)
        ep.mark_dirty(self)

    # -- sending ------------------------------------------------------------------------------

    def send(self, data: bytes, now: float) -> None:
        self.stream.send_message(data, now)
        self.endpoint.mark_dirty(self)

    def try_send(self, data: bytes, now: float) -> bool:
        """Queue one message if the send buffer has room; False under back-pressure."""
        if not self.stream.can_send():
            return False
        self.send(data, now)
        return True

    def consume(self, nbytes: int) -> bool:
        """The application read ``nbytes``: True if this queued a window update."""
        if self.stream.consume(nbytes):
            self.endpoint.mark_dirty(self)
            return True
        return False

    def send_ping(self, now: float) -> int:
        self.ping_tokens += 1
        token = self.ping_tokens
        self.stream.send_ping(token, now)
        self.endpoint.mark_dirty(self)
        return token

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
        connection (only if rekeying kept failing for 2^64 packets). A padded connection pads it
        to its bucket first (path and overlay packets in an envelope)."""
        padder = self.stream.padder
        if padder is not None:
            payload = padder.pad(payload)
        try:
            return session.seal(payload)
        except NonceExhausted:
            self.endpoint.counters["nonces_exhausted"] += 1
            self.end("session keys exhausted: rekeying did not succeed", clean=False)
            return None

    def flush(self, now: float) -> None:
        session = self.current
        if session is None or self.state is ConnState.CLOSED:
            return
        ep = self.endpoint
        if self.cover is not None:
            self.cover.wake(now, self.stream.messages_sent + self.stream.messages_received)
        payloads = self.stream.payloads_to_send(now)
        if not payloads:
            return
        address = self.paths.address
        out = ep.out
        for payload in payloads:
            packet = self.seal(session, payload)
            if packet is None:
                return
            out.append((packet, address))
        if (
            self.handshake is None
            and session.send_counter >= ep.config.rekey_after_packets
            and self.state is ConnState.CONNECTED
        ):
            allowed = self.rekey_allowed_from()
            if allowed is not None and now >= allowed:
                self.start_rekey(now)

    def send_cover(self, now: float) -> None:
        """At the end of a cover slot in which nothing was sent, one cover packet
        (reliability/padding.py): outside the stream, never acknowledged."""
        session, padder, cover = self.current, self.stream.padder, self.cover
        if session is None or padder is None or cover is None:
            return
        messages = self.stream.messages_sent + self.stream.messages_received
        if cover.on_slot(now, padder.sent, messages):
            packet = self.seal(session, padder.cover())
            if packet is not None:
                self.endpoint.out.append((packet, self.paths.address))
                self.endpoint.counters["cover_packets_sent"] += 1

    def on_datagram_too_big(self, size: int, now: float) -> None:
        if self.current is not None:
            self.stream.on_datagram_too_big(size, now)
            self.endpoint.mark_dirty(self)

    # -- receiving ----------------------------------------------------------------------------

    def on_transport(
        self, session: SecureSession, plaintext: bytes, addr: PathAddress, newest: bool, now: float
    ) -> None:
        ep = self.endpoint
        self.last_received = now
        if session is self.next:
            self.on_next_used()
        if self.state in (ConnState.DIALING, ConnState.CONFIRMING) and self.current is not None:
            self.announce(now, "first packet under the new keys")
        if plaintext.startswith(OVERLAY_PREFIX):  # for the overlay (routing/overlay.py), not the stream
            if self.state is ConnState.CONNECTED:
                ep.overlay.on_packet(self, plaintext, now)
            return
        if plaintext.startswith(PATH_PREFIX):  # a path packet (traversal/frames.py), not the stream
            if self.state is ConnState.CONNECTED:
                self.paths.on_path_packet(plaintext, addr, now)
            ep.mark_dirty(self)
            return
        if plaintext.startswith(ENVELOPE_PREFIX):  # padded (reliability/padding.py)
            try:
                inner = open_envelope(plaintext)
            except DecodeError:
                ep.counters["drop_malformed_envelope"] += 1
                return
            if not inner:
                ep.counters["cover_packets_received"] += 1
                return
            self.on_transport(session, inner, addr, newest, now)
            return
        if newest:
            address = self.paths.address
            # The usual case, the same address, needs no question to paths.py.
            if addr != address and not same_path(addr, address):
                self.paths.on_new_address(addr, now)
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
            if self.stream.largest_acked > acked:
                self.paths.on_ack_progress(now)
            self.drain_stream(now)
        ep.mark_dirty(self)

    def drain_stream(self, now: float) -> None:
        ep = self.endpoint
        stream = self.stream
        while (event := stream.next_event()) is not None:
            if isinstance(event, rev.MessageReceived):
                ep.emit(ev.MessageReceived(peer_id=self.peer_id, data=event.data))
            elif isinstance(event, rev.PongReceived):
                ep.emit(ev.PongReceived(peer_id=self.peer_id, token=event.token, rtt=event.rtt))
            elif isinstance(event, rev.SendReady):
                ep.emit(ev.SendReady(peer_id=self.peer_id))
            elif isinstance(event, rev.CloseReceived):
                if self.state is ConnState.CLOSING:
                    self._set_state(ConnState.CROSSED, "CLOSE received")
                else:
                    reason = "closed by peer" + (f": {event.reason}" if event.reason else "")
                    self._set_state(ConnState.DRAINING, "CLOSE received")
                    ep.emit(
                        ev.PeerDisconnected(
                            peer_id=self.peer_id, reason=reason, clean=event.code == CLOSE_NORMAL
                        )
                    )
                self.linger_deadline = now + self.linger_time()
            elif isinstance(event, rev.CloseAcked) and self.state is ConnState.CLOSING:
                self.end("closed", clean=True)
                return

    # -- closing ------------------------------------------------------------------------------

    def linger_time(self) -> float:
        rtt = self.stream.smoothed_rtt or self.endpoint.stream_config.initial_rtt
        return min(CLOSE_LINGER_MAX, max(0.2, 4 * rtt))

    def close(self, now: float, reason: str = "") -> None:
        if self.state in _CLOSING_OR_CLOSED:
            return
        if self.current is None:
            self.end("closed", clean=True)
            return
        self.cancel_handshake()
        self._set_state(ConnState.CLOSING, "close()")
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
        self.end(reason, clean=False)

    def end(self, reason: str, *, clean: bool) -> None:
        """The connection is over: tell the application (if it knew of it), release everything,
        and leave the endpoint. Ending an ended connection does nothing."""
        if self.state is ConnState.CLOSED:
            return
        if self.state in _END_UNANNOUNCED:
            self.endpoint.emit(ev.PeerDisconnected(peer_id=self.peer_id, reason=reason, clean=clean))
        self._set_state(ConnState.CLOSED, reason)
        self.cancel_handshake()
        self.paths.close()  # its probe sockets go with it
        for session in list(self.sessions()):
            self._retire(session)
        self.previous = self.current = self.next = None
        self.endpoint.forget(self)

    # -- views --------------------------------------------------------------------------------

    def snapshot(self) -> PeerSnapshot:
        s = self.stream
        return PeerSnapshot(
            peer_id=self.peer_id,
            address=self.address,
            state=self.state.public,
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
            path=self.paths.kind(),
            path_reason=self.paths.reason(),
        )
