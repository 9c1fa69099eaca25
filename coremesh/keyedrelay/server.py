"""The relay's side of the keyed relay protocol, sans-IO: :class:`RelayCore`, every session of a relay.

Registration (the challenge, its signature, replacement of an older session of the same PeerId),
forwarding with per-peer rate limits, PEER_UNKNOWN notices, keepalives, timeouts and counters. Fed
with ``open_session`` / ``receive_frame`` / ``connection_lost`` / ``handle_timer(now)``; drained with
:meth:`RelayCore.drain` (:class:`Transmit` and :class:`Disconnect` actions) and
:meth:`RelayCore.get_timer`. Time is passed in and randomness injected (``random_bytes``); the
asyncio shell is the relay service's ``coremesh_relay.keyed``.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from coremesh.errors import DecodeError, LocalProtocolError
from coremesh.identity import PeerId, verify_signature
from coremesh.ratelimit import TokenBucket

from .frames import (
    NONCE_LEN,
    PING_DATA_LEN,
    SEND_HEADER_LEN,
    Challenge,
    Close,
    CloseCode,
    Error,
    FrameType,
    PeerUnknown,
    Ping,
    Pong,
    Register,
    Registered,
    Send,
    decode_frame,
    encode_frame,
    registration_message,
    truncate_reason,
)
from .limits import RelayLimits

PEER_UNKNOWN_RATE: Final = 2.0  # PEER_UNKNOWN notices per second per session ...
PEER_UNKNOWN_BURST: Final = 4.0  # ... with this burst
_RECV_BYTE: Final = bytes((FrameType.RECV,))


class SessionState(enum.Enum):
    AWAIT_REGISTER = "await-register"
    REGISTERED = "registered"
    CLOSED = "closed"


# (state, what happened) → next state. Everything else is a protocol error.
SESSION_TRANSITIONS: Final[dict[tuple[SessionState, str], SessionState]] = {
    (SessionState.AWAIT_REGISTER, "register-ok"): SessionState.REGISTERED,
    (SessionState.AWAIT_REGISTER, "close"): SessionState.CLOSED,
    (SessionState.REGISTERED, "close"): SessionState.CLOSED,
}

# The frames a client may send in each state; any other is a protocol error that closes the session.
SESSION_ACCEPTS: Final[dict[SessionState, frozenset[FrameType]]] = {
    SessionState.AWAIT_REGISTER: frozenset(
        {FrameType.REGISTER, FrameType.PING, FrameType.PONG, FrameType.CLOSE}
    ),
    SessionState.REGISTERED: frozenset({FrameType.SEND, FrameType.PING, FrameType.PONG, FrameType.CLOSE}),
    SessionState.CLOSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send ``frame`` on connection ``conn``."""

    conn: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close connection ``conn`` (after the frames already transmitted on it)."""

    conn: int
    code: int
    reason: str


Action = Transmit | Disconnect


@dataclass(slots=True, eq=False)
class _Session:
    conn: int
    nonce: bytes
    opened_at: float
    last_rx: float
    state: SessionState = SessionState.AWAIT_REGISTER
    peer_id: PeerId | None = None
    pinged: bool = False
    unknown_bucket: TokenBucket | None = None
    timer_at: float = 0.0  # the one live heap entry of this session; others are stale


@dataclass(slots=True, eq=False)
class _PeerEntry:
    conn: int
    bytes_bucket: TokenBucket
    packets_bucket: TokenBucket


COUNTER_NAMES: Final = (
    "sessions_total",
    "registrations_total",
    "sessions_replaced",
    "frames_forwarded",
    "bytes_forwarded",
    "auth_failures",
    "drop_rate_limited",
    "drop_peer_unknown",
    "drop_malformed",
    "drop_protocol_error",
    "drop_server_full",
    "peer_unknown_sent",
    "closed_register_timeout",
    "closed_idle_timeout",
)


class RelayCore:
    """Every session of one keyed relay, sans-IO.

    The shell calls :meth:`open_session` for each new connection (the challenge comes out as a
    :class:`Transmit`), :meth:`receive_frame` for each frame, :meth:`connection_lost` when a
    transport ends, and :meth:`handle_timer` at :meth:`get_timer`; after each call it performs
    :meth:`drain`. ``counters`` counts sessions, forwarding and drops by reason.
    """

    def __init__(
        self,
        limits: RelayLimits | None = None,
        *,
        relay_id: PeerId | None = None,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self.limits = limits if limits is not None else RelayLimits()
        self.relay_id = relay_id
        self._random_bytes = random_bytes
        self._sessions: dict[int, _Session] = {}
        self._peers: dict[PeerId, _PeerEntry] = {}
        self._next_conn = 1
        self._actions: list[Action] = []
        self._timers: list[tuple[float, int]] = []  # (deadline, conn); lazily re-checked
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTER_NAMES, 0))
        self._max_packet = self.limits.max_packet
        bucket_bytes = self.limits.rate_bytes_per_s * self.limits.burst
        self._bytes_capacity = max(bucket_bytes, float(self._max_packet))
        self._packets_capacity = max(self.limits.rate_packets_per_s * self.limits.burst, 1.0)

    # -- queries --

    @property
    def sessions_current(self) -> int:
        return len(self._sessions)

    @property
    def sessions_registered(self) -> int:
        return len(self._peers)

    def session_state(self, conn: int) -> SessionState:
        s = self._sessions.get(conn)
        return s.state if s is not None else SessionState.CLOSED

    def peer_of(self, conn: int) -> PeerId | None:
        s = self._sessions.get(conn)
        return s.peer_id if s is not None else None

    def conn_of(self, peer: PeerId) -> int | None:
        entry = self._peers.get(peer)
        return entry.conn if entry is not None else None

    @property
    def sessions_unregistered(self) -> int:
        return len(self._sessions) - len(self._peers)  # one registered session per peer

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["sessions_current"] = self.sessions_current
        out["sessions_registered"] = self.sessions_registered
        out["sessions_unregistered"] = self.sessions_unregistered
        return out

    # -- inputs --

    def open_session(self, now: float) -> int:
        """A new connection. Returns its id; its CHALLENGE (or, when full, ERROR) is in :meth:`drain`.

        Unregistered sessions are capped by ``max_unregistered`` (a backstop: the server evicts the
        oldest unregistered connection before it gets here, see :class:`UnregisteredLimiter`);
        ``max_sessions`` caps registered sessions only and is checked at REGISTER.
        """
        conn = self._next_conn
        self._next_conn += 1
        if self.sessions_unregistered >= self.limits.max_unregistered:
            reason = "too many unregistered connections"
            self.counters["drop_server_full"] += 1
            self._emit(conn, encode_frame(Error(code=CloseCode.SERVER_FULL, reason=reason)))
            self._actions.append(Disconnect(conn, CloseCode.SERVER_FULL, reason))
            return conn
        nonce = self._random_bytes(NONCE_LEN)
        if len(nonce) != NONCE_LEN:
            raise ValueError("random_bytes returned the wrong length")
        session = _Session(conn=conn, nonce=nonce, opened_at=now, last_rx=now)
        self._sessions[conn] = session
        self.counters["sessions_total"] += 1
        self._emit(conn, encode_frame(Challenge(nonce=nonce, relay_id=self.relay_id)))
        self._schedule(session, now + self.limits.register_timeout)
        return conn

    def receive_frame(self, conn: int, data: bytes, now: float) -> None:
        """One frame from connection ``conn``. Malformed or out-of-state frames close the session."""
        session = self._sessions.get(conn)
        if session is None:
            return
        session.last_rx = now
        session.pinged = False
        kind = data[0] if data else -1
        if kind == FrameType.SEND and session.state is SessionState.REGISTERED:
            self._forward(session, data, now)  # the hot path, decoded in place
            return
        try:
            frame = decode_frame(data, max_packet=self._max_packet)
        except DecodeError as exc:
            self.counters["drop_malformed"] += 1
            self._close(session, CloseCode.PROTOCOL_ERROR, f"malformed frame: {exc}")
            return
        ftype = FrameType(kind)
        if ftype not in SESSION_ACCEPTS[session.state]:
            self.counters["drop_protocol_error"] += 1
            what = "before REGISTER" if session.state is SessionState.AWAIT_REGISTER else "after REGISTERED"
            self._close(session, CloseCode.PROTOCOL_ERROR, f"{ftype.name} not allowed {what}")
            return
        match frame:
            case Register():
                self._register(session, frame, now)
            case Ping(data=pdata):
                self._emit(conn, encode_frame(Pong(data=pdata)))
            case Pong():
                pass
            case Close(code=code, reason=reason):
                self._end(session, code, f"closed by client: {reason}" if reason else "closed by client")
            case Send():  # pragma: no cover - handled above
                self._forward(session, data, now)

    def connection_lost(self, conn: int) -> None:
        """The transport of ``conn`` ended (the shell already knows; no Disconnect is emitted)."""
        session = self._sessions.get(conn)
        if session is not None:
            self._forget(session)

    def close_session(self, conn: int, code: int, reason: str) -> None:
        """Close ``conn`` with CLOSE(code, reason), e.g. when the shell stops or sees bad framing."""
        session = self._sessions.get(conn)
        if session is not None:
            self._close(session, code, reason)

    def malformed(self, conn: int, reason: str) -> None:
        """The shell could not even cut a frame (bad length prefix, non-binary WebSocket message)."""
        session = self._sessions.get(conn)
        if session is not None:
            self.counters["drop_malformed"] += 1
            self._close(session, CloseCode.PROTOCOL_ERROR, f"malformed frame: {reason}")

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self._sessions.values()):
            self._close(session, code, reason)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run.

        Received frames push deadlines later without touching the heap (it would cost a push per
        frame), so this may be earlier than needed: :meth:`handle_timer` then finds nothing due.
        """
        timers, sessions = self._timers, self._sessions
        while timers:
            when, conn = timers[0]
            session = sessions.get(conn)
            if session is not None and session.timer_at == when:
                return when
            heapq.heappop(timers)
        return None

    def handle_timer(self, now: float) -> None:
        timers, sessions = self._timers, self._sessions
        while timers and timers[0][0] <= now:
            when, conn = heapq.heappop(timers)
            session = sessions.get(conn)
            if session is None or session.timer_at != when:
                continue
            deadline = self._check_session_timers(session, now)
            if deadline is not None:
                self._schedule(session, deadline)

    def _schedule(self, session: _Session, when: float) -> None:
        session.timer_at = when
        heapq.heappush(self._timers, (when, session.conn))

    def drain(self) -> list[Action]:
        """The actions to perform, in order; the list is handed over (the core keeps none)."""
        actions, self._actions = self._actions, []
        return actions

    # -- internals --

    def _emit(self, conn: int, frame: bytes) -> None:
        self._actions.append(Transmit(conn, frame))

    def _check_session_timers(self, session: _Session, now: float) -> float | None:
        limits = self.limits
        if session.state is SessionState.AWAIT_REGISTER:
            deadline = session.opened_at + limits.register_timeout
            if now >= deadline:
                self.counters["closed_register_timeout"] += 1
                self._close(session, CloseCode.REGISTER_TIMEOUT, "no registration in time")
                return None
            return deadline
        idle_at = session.last_rx + limits.idle_timeout
        if now >= idle_at:
            self.counters["closed_idle_timeout"] += 1
            self._close(session, CloseCode.IDLE_TIMEOUT, "idle timeout")
            return None
        ping_at = session.last_rx + limits.idle_timeout / 2
        if now >= ping_at:
            if not session.pinged:
                session.pinged = True
                self._emit(session.conn, encode_frame(Ping(data=self._random_bytes(PING_DATA_LEN))))
            return idle_at
        return ping_at

    def _register(self, session: _Session, frame: Register, now: float) -> None:
        message = registration_message(session.nonce, frame.peer_id)
        if not verify_signature(frame.peer_id, message, frame.signature):
            self.counters["auth_failures"] += 1
            reason = "registration signature does not verify"
            self._emit(session.conn, encode_frame(Error(code=CloseCode.AUTH_FAILED, reason=reason)))
            self._end(session, CloseCode.AUTH_FAILED, reason)
            self._actions.append(Disconnect(session.conn, CloseCode.AUTH_FAILED, reason))
            return
        if frame.peer_id not in self._peers and len(self._peers) >= self.limits.max_sessions:
            # Full: a new peer is refused, a registered peer may still replace its own session.
            self.counters["drop_server_full"] += 1
            reason = "relay full"
            self._emit(session.conn, encode_frame(Error(code=CloseCode.SERVER_FULL, reason=reason)))
            self._end(session, CloseCode.SERVER_FULL, reason)
            self._actions.append(Disconnect(session.conn, CloseCode.SERVER_FULL, reason))
            return
        self._transition(session, "register-ok")
        session.peer_id = frame.peer_id
        session.unknown_bucket = TokenBucket(PEER_UNKNOWN_RATE, PEER_UNKNOWN_BURST, now)
        old = self._peers.get(frame.peer_id)
        if old is not None:
            # The newer registration wins; the older session hears why it ends. Rate limits carry over.
            self.counters["sessions_replaced"] += 1
            old_session = self._sessions[old.conn]
            old_session.peer_id = None  # so that closing it does not unregister the new session
            self._close(old_session, CloseCode.REPLACED, "replaced by a newer registration")
            old.conn = session.conn
        else:
            self._peers[frame.peer_id] = _PeerEntry(
                conn=session.conn,
                bytes_bucket=TokenBucket(self.limits.rate_bytes_per_s, self._bytes_capacity, now),
                packets_bucket=TokenBucket(self.limits.rate_packets_per_s, self._packets_capacity, now),
            )
        self.counters["registrations_total"] += 1
        self._emit(session.conn, encode_frame(Registered(max_packet=self._max_packet)))
        self._schedule(session, now + self.limits.idle_timeout / 2)

    def _forward(self, session: _Session, data: bytes, now: float) -> None:
        size = len(data) - SEND_HEADER_LEN
        if size < 1 or size > self._max_packet:
            self.counters["drop_malformed"] += 1
            self._close(session, CloseCode.PROTOCOL_ERROR, f"malformed frame: SEND packet of {size} bytes")
            return
        src = session.peer_id
        assert src is not None
        entry = self._peers[src]
        if not entry.packets_bucket.consume(1, now) or not entry.bytes_bucket.consume(size, now):
            self.counters["drop_rate_limited"] += 1
            return
        dst = PeerId(data[1:SEND_HEADER_LEN])
        target = self._peers.get(dst)
        if target is None:
            self.counters["drop_peer_unknown"] += 1
            bucket = session.unknown_bucket
            if bucket is not None and bucket.consume(1, now):
                self.counters["peer_unknown_sent"] += 1
                self._emit(session.conn, encode_frame(PeerUnknown(dst=dst)))
            return
        self.counters["frames_forwarded"] += 1
        self.counters["bytes_forwarded"] += size
        view = memoryview(data)
        self._actions.append(Transmit(target.conn, b"".join((_RECV_BYTE, src.key, view[SEND_HEADER_LEN:]))))

    def _transition(self, session: _Session, event: str) -> None:
        nxt = SESSION_TRANSITIONS.get((session.state, event))
        if nxt is None:  # pragma: no cover - a bug in this module, not a remote error
            raise LocalProtocolError(f"no transition from {session.state.value} on {event}")
        session.state = nxt

    def _close(self, session: _Session, code: int, reason: str) -> None:
        reason = truncate_reason(reason)
        self._emit(session.conn, encode_frame(Close(code=code, reason=reason)))
        self._end(session, code, reason)
        self._actions.append(Disconnect(session.conn, code, reason))

    def _end(self, session: _Session, code: int, reason: str) -> None:
        del code, reason
        self._transition(session, "close")
        self._forget(session)

    def _forget(self, session: _Session) -> None:
        session.state = SessionState.CLOSED
        self._sessions.pop(session.conn, None)
        peer = session.peer_id
        if peer is not None:
            entry = self._peers.get(peer)
            if entry is not None and entry.conn == session.conn:
                del self._peers[peer]
