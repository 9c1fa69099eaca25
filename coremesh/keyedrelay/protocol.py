"""The keyed mesh relay protocol, sans-IO: frames, the relay's core, and the client's registration.

A keyed relay forwards opaque mesh packets (Noise transport packets: the relay never sees plaintext)
between nodes that registered by proving their identity. It is addressed by :class:`PeerId`, not by
IP address, and is carried over TCP or WebSocket, for networks where UDP is blocked. The spec is
``docs/keyed-relay.md``; this module is the whole protocol, without sockets or clocks:

- the frame codec (:func:`encode_frame`, :func:`decode_frame`) and the raw-TCP framing
  (:data:`MAGIC`, :func:`tcp_frame`, :class:`FrameReader`). Decoders are pure and bounded: bad
  input raises :class:`DecodeError` and nothing else;
- :class:`UnregisteredLimiter`, the cap on connections that have not registered (in all and per
  source; the oldest makes room); per-peer rates use :class:`coremesh.ratelimit.TokenBucket`;
- :class:`RelayCore`, every session of a relay: registration, replacement, forwarding, limits,
  timeouts and counters. Fed with ``open_session`` / ``receive_frame`` / ``connection_lost`` /
  ``handle_timer(now)``; drained with :meth:`RelayCore.drain` (:class:`Transmit` and
  :class:`Disconnect` actions) and :meth:`RelayCore.get_timer`;
- :class:`ClientSession`, one client connection: answers the challenge, tracks registration,
  keepalives and idle time. Fed with ``receive_frame`` / ``handle_timer(now)``; drained with
  ``frames_to_send()``, ``next_event()`` and ``get_timer()``.

Time is always passed in (``now``, seconds) and randomness is injected (``random_bytes``).
"""

from __future__ import annotations

import enum
import heapq
import struct
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from coremesh.errors import DecodeError, LocalProtocolError
from coremesh.identity import Identity, PeerId, verify_signature
from coremesh.ratelimit import TokenBucket
from coremesh.reliability.varint import decode_varint, encode_varint

PROTOCOL_VERSION: Final = 1
MAGIC: Final = b"CMRL"  # first bytes of a raw TCP connection (after TLS, if any)
WS_PATH: Final = "/v1/relay"
SIGNATURE_CONTEXT: Final = b"coremesh-keyed-relay-v1"
NONCE_LEN: Final = 32
PEER_ID_LEN: Final = 32
SIGNATURE_LEN: Final = 64
PING_DATA_LEN: Final = 8
MAX_PACKET: Final = 65535
SEND_HEADER_LEN: Final = 1 + PEER_ID_LEN  # type + destination (or source, in RECV)
MAX_FRAME: Final = SEND_HEADER_LEN + MAX_PACKET  # 65568: the largest frame the protocol defines
MIN_FRAME: Final = SEND_HEADER_LEN + 1280  # a relay must carry at least an IPv6-minimum packet
MAX_REASON: Final = 255  # bytes of UTF-8 in ERROR and CLOSE
PEER_UNKNOWN_RATE: Final = 2.0  # PEER_UNKNOWN notices per second per session ...
PEER_UNKNOWN_BURST: Final = 4.0  # ... with this burst


class FrameType(enum.IntEnum):
    CHALLENGE = 0x01  # relay → client
    REGISTER = 0x02  # client → relay
    REGISTERED = 0x03  # relay → client
    ERROR = 0x04  # relay → client: registration refused; the relay then closes
    SEND = 0x05  # client → relay
    RECV = 0x06  # relay → client
    PEER_UNKNOWN = 0x07  # relay → client (rate-limited)
    PING = 0x08  # both ways
    PONG = 0x09  # both ways
    CLOSE = 0x0A  # both ways: the sender closes the session


class CloseCode(enum.IntEnum):
    """Codes of ERROR and CLOSE frames."""

    NORMAL = 0  # the client (or the relay) is done
    SHUTDOWN = 1  # the relay is stopping
    REPLACED = 2  # the same PeerId registered again on another connection
    PROTOCOL_ERROR = 3  # a malformed frame, or a frame not allowed in the current state
    AUTH_FAILED = 4  # REGISTER's signature does not verify
    REGISTER_TIMEOUT = 5  # no valid REGISTER in time
    IDLE_TIMEOUT = 6  # nothing heard for idle_timeout
    SERVER_FULL = 7  # max_sessions registered peers, or the unregistered connections' cap, reached
    UNSUPPORTED_VERSION = 8  # the client does not speak the relay's version
    SLOW_READER = 9  # the session's send queue stayed full while the relay ran out of queue memory


# --- frames ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    nonce: bytes
    relay_id: PeerId | None = None
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_LEN:
            raise ValueError(f"a challenge nonce is {NONCE_LEN} bytes")
        if not 0 <= self.version <= 255:
            raise ValueError("version is one byte")


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    peer_id: PeerId
    signature: bytes

    def __post_init__(self) -> None:
        if len(self.signature) != SIGNATURE_LEN:
            raise ValueError(f"a signature is {SIGNATURE_LEN} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Registered:
    max_packet: int

    def __post_init__(self) -> None:
        if not 1 <= self.max_packet <= MAX_PACKET:
            raise ValueError(f"max_packet must be 1..{MAX_PACKET}")


def _check_code_reason(code: int, reason: str) -> None:
    if not 0 <= code <= 0xFFFF:
        raise ValueError("a close code is 0..65535")
    if len(reason.encode("utf-8")) > MAX_REASON:
        raise ValueError(f"a reason is at most {MAX_REASON} bytes of UTF-8")


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        _check_code_reason(self.code, self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    dst: PeerId
    packet: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.packet) <= MAX_PACKET:
            raise ValueError(f"a packet is 1..{MAX_PACKET} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Recv:
    src: PeerId
    packet: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.packet) <= MAX_PACKET:
            raise ValueError(f"a packet is 1..{MAX_PACKET} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerUnknown:
    dst: PeerId


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    data: bytes = bytes(PING_DATA_LEN)

    def __post_init__(self) -> None:
        if len(self.data) != PING_DATA_LEN:
            raise ValueError(f"ping data is {PING_DATA_LEN} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    data: bytes = bytes(PING_DATA_LEN)

    def __post_init__(self) -> None:
        if len(self.data) != PING_DATA_LEN:
            raise ValueError(f"pong data is {PING_DATA_LEN} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        _check_code_reason(self.code, self.reason)


Frame = Challenge | Register | Registered | Error | Send | Recv | PeerUnknown | Ping | Pong | Close

_U16 = struct.Struct("!H")
_TYPE_BYTE = {t: bytes((t,)) for t in FrameType}


def _code_reason(code: int, reason: str) -> bytes:
    return _U16.pack(code) + reason.encode("utf-8")


def encode_frame(frame: Frame) -> bytes:
    """The bytes of one frame (without the raw-TCP length prefix)."""
    match frame:
        case Send(dst=dst, packet=packet):
            return b"".join((_TYPE_BYTE[FrameType.SEND], dst.key, packet))
        case Recv(src=src, packet=packet):
            return b"".join((_TYPE_BYTE[FrameType.RECV], src.key, packet))
        case Challenge(nonce=nonce, relay_id=relay_id, version=version):
            rid = relay_id.key if relay_id is not None else b""
            return _TYPE_BYTE[FrameType.CHALLENGE] + bytes((version,)) + nonce + rid
        case Register(peer_id=peer_id, signature=signature):
            return _TYPE_BYTE[FrameType.REGISTER] + peer_id.key + signature
        case Registered(max_packet=max_packet):
            return _TYPE_BYTE[FrameType.REGISTERED] + _U16.pack(max_packet)
        case Error(code=code, reason=reason):
            return _TYPE_BYTE[FrameType.ERROR] + _code_reason(code, reason)
        case PeerUnknown(dst=dst):
            return _TYPE_BYTE[FrameType.PEER_UNKNOWN] + dst.key
        case Ping(data=data):
            return _TYPE_BYTE[FrameType.PING] + data
        case Pong(data=data):
            return _TYPE_BYTE[FrameType.PONG] + data
        case Close(code=code, reason=reason):
            return _TYPE_BYTE[FrameType.CLOSE] + _code_reason(code, reason)
    raise TypeError(f"not a keyed relay frame: {frame!r}")  # pragma: no cover


def _exact(data: bytes, length: int, name: str) -> None:
    if len(data) != length:
        raise DecodeError(f"{name} frame must be {length} bytes, got {len(data)}")


def _decode_code_reason(data: bytes, name: str) -> tuple[int, str]:
    if len(data) < 3:
        raise DecodeError(f"{name} frame truncated")
    raw = data[3:]
    if len(raw) > MAX_REASON:
        raise DecodeError(f"{name} reason longer than {MAX_REASON} bytes")
    try:
        reason = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{name} reason is not UTF-8") from None
    return _U16.unpack_from(data, 1)[0], reason


def _decode_packet_frame(data: bytes, name: str, max_packet: int) -> tuple[PeerId, bytes]:
    n = len(data) - SEND_HEADER_LEN
    if n < 1:
        raise DecodeError(f"{name} frame truncated (needs a peer id and a packet)")
    if n > max_packet:
        raise DecodeError(f"{name} packet of {n} bytes exceeds {max_packet}")
    return PeerId(data[1:SEND_HEADER_LEN]), data[SEND_HEADER_LEN:]


def decode_frame(data: bytes, *, max_packet: int = MAX_PACKET) -> Frame:
    """Decode one frame. Raises :class:`DecodeError` (only) on anything malformed."""
    if not data:
        raise DecodeError("empty frame")
    kind = data[0]
    if kind == FrameType.SEND:
        dst, packet = _decode_packet_frame(data, "SEND", max_packet)
        return Send(dst=dst, packet=packet)
    if kind == FrameType.RECV:
        src, packet = _decode_packet_frame(data, "RECV", max_packet)
        return Recv(src=src, packet=packet)
    if kind == FrameType.CHALLENGE:
        if len(data) not in (2 + NONCE_LEN, 2 + NONCE_LEN + PEER_ID_LEN):
            raise DecodeError(f"CHALLENGE frame must be {2 + NONCE_LEN} or {2 + NONCE_LEN + 32} bytes")
        rid = PeerId(data[2 + NONCE_LEN :]) if len(data) > 2 + NONCE_LEN else None
        return Challenge(version=data[1], nonce=data[2 : 2 + NONCE_LEN], relay_id=rid)
    if kind == FrameType.REGISTER:
        _exact(data, 1 + PEER_ID_LEN + SIGNATURE_LEN, "REGISTER")
        return Register(peer_id=PeerId(data[1:33]), signature=data[33:])
    if kind == FrameType.REGISTERED:
        _exact(data, 3, "REGISTERED")
        max_pkt = _U16.unpack_from(data, 1)[0]
        if max_pkt == 0:
            raise DecodeError("REGISTERED max_packet is 0")
        return Registered(max_packet=max_pkt)
    if kind == FrameType.ERROR:
        code, reason = _decode_code_reason(data, "ERROR")
        return Error(code=code, reason=reason)
    if kind == FrameType.PEER_UNKNOWN:
        _exact(data, 1 + PEER_ID_LEN, "PEER_UNKNOWN")
        return PeerUnknown(dst=PeerId(data[1:]))
    if kind == FrameType.PING:
        _exact(data, 1 + PING_DATA_LEN, "PING")
        return Ping(data=data[1:])
    if kind == FrameType.PONG:
        _exact(data, 1 + PING_DATA_LEN, "PONG")
        return Pong(data=data[1:])
    if kind == FrameType.CLOSE:
        code, reason = _decode_code_reason(data, "CLOSE")
        return Close(code=code, reason=reason)
    raise DecodeError(f"unknown frame type 0x{kind:02x}")


def registration_message(nonce: bytes, peer_id: PeerId) -> bytes:
    """What REGISTER signs: the context string, the relay's nonce and the registering PeerId."""
    return SIGNATURE_CONTEXT + nonce + peer_id.key


def make_register(identity: Identity, nonce: bytes) -> Register:
    peer_id = identity.peer_id
    return Register(peer_id=peer_id, signature=identity.sign(registration_message(nonce, peer_id)))


def truncate_reason(reason: str) -> str:
    """``reason`` cut (at a character boundary) to fit :data:`MAX_REASON` bytes of UTF-8."""
    raw = reason.encode("utf-8")
    if len(raw) <= MAX_REASON:
        return reason
    return raw[:MAX_REASON].decode("utf-8", errors="ignore")


# --- raw TCP framing -----------------------------------------------------------------------------


def tcp_frame(frame: bytes) -> bytes:
    """One frame as it travels on a raw TCP connection: a QUIC varint length, then the frame."""
    return encode_varint(len(frame)) + frame


class FrameReader:
    """Cuts a raw TCP byte stream into frames. Bounded: never buffers more than one frame.

    ``feed(data)`` returns the complete frames; a length of 0 or above ``max_frame`` raises
    :class:`DecodeError` (the connection is then unusable: close it).
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end:
            first = buf[pos]
            size = 1 << (first >> 6)
            if pos + size > end:
                break
            length, body = decode_varint(bytes(buf[pos : pos + size]), 0)
            if length == 0 or length > self.max_frame:
                raise DecodeError(f"frame length {length} outside 1..{self.max_frame}")
            if body + length > end - pos:
                break
            start = pos + body
            frames.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames


# --- admission of unregistered connections ------------------------------------------------------

K = TypeVar("K", bound=Hashable)


class UnregisteredLimiter(Generic[K]):
    """Connections that have not registered (yet), oldest first, capped in total and per source.

    ``admit(key, source, now)`` adds a new connection and returns the ones to close to make room,
    oldest first: the oldest of the same ``source`` while that source holds ``max_per_source``,
    then the oldest of all while there are ``max_total``. So idle connections can neither lock out
    a newcomer nor hold more than their share; a client that registers promptly is never the oldest
    for long. ``remove(key)`` when the connection registers or ends (unknown keys are ignored).
    Keys are opaque to this class (the server uses its transports); sources are e.g. IP addresses.
    """

    __slots__ = ("_all", "_by_source", "max_per_source", "max_total")

    def __init__(self, max_total: int, max_per_source: int) -> None:
        if not 1 <= max_per_source <= max_total:
            raise ValueError("need 1 <= max_per_source <= max_total")
        self.max_total = max_total
        self.max_per_source = max_per_source
        self._all: OrderedDict[K, Hashable] = OrderedDict()
        self._by_source: dict[Hashable, OrderedDict[K, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: object) -> bool:
        return key in self._all

    def count(self, source: Hashable) -> int:
        keys = self._by_source.get(source)
        return len(keys) if keys is not None else 0

    def admit(self, key: K, source: Hashable) -> list[K]:
        evicted: list[K] = []
        same = self._by_source.get(source)
        while same is not None and len(same) >= self.max_per_source:
            oldest = next(iter(same))
            self.remove(oldest)
            evicted.append(oldest)
            same = self._by_source.get(source)
        while len(self._all) >= self.max_total:
            oldest = next(iter(self._all))
            self.remove(oldest)
            evicted.append(oldest)
        self._all[key] = source
        self._by_source.setdefault(source, OrderedDict())[key] = None
        return evicted

    def remove(self, key: K) -> None:
        source = self._all.pop(key, _MISSING)
        if source is _MISSING:
            return
        keys = self._by_source[source]
        del keys[key]
        if not keys:
            del self._by_source[source]


_MISSING: Final = object()


# --- the relay's core ----------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimits:
    """The limits :class:`RelayCore` enforces (the server's config maps onto these)."""

    rate_bytes_per_s: float = 12_500_000.0
    rate_packets_per_s: float = 20_000.0
    burst: float = 1.0  # seconds of rate a bucket can bank
    max_sessions: int = 10_000  # registered sessions (peers) at once
    max_frame: int = MAX_FRAME
    register_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_unregistered: int = 1024  # sessions that have not registered (yet), counted apart

    def __post_init__(self) -> None:
        for name in ("rate_bytes_per_s", "rate_packets_per_s", "burst", "register_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.max_sessions, int) or self.max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive integer, got {self.max_sessions!r}")
        if not isinstance(self.max_unregistered, int) or self.max_unregistered < 1:
            raise ValueError(f"max_unregistered must be a positive integer, got {self.max_unregistered!r}")
        if not isinstance(self.max_frame, int) or not MIN_FRAME <= self.max_frame <= MAX_FRAME:
            raise ValueError(
                f"max_frame must be an integer in {MIN_FRAME}..{MAX_FRAME}, got {self.max_frame!r}"
            )

    @property
    def max_packet(self) -> int:
        return self.max_frame - SEND_HEADER_LEN


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


_RECV_BYTE: Final = bytes((FrameType.RECV,))


# --- the client's side ---------------------------------------------------------------------------


class ClientState(enum.Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_REGISTERED = "await-registered"
    REGISTERED = "registered"
    CLOSED = "closed"


CLIENT_TRANSITIONS: Final[dict[tuple[ClientState, str], ClientState]] = {
    (ClientState.AWAIT_CHALLENGE, "challenge"): ClientState.AWAIT_REGISTERED,
    (ClientState.AWAIT_REGISTERED, "registered"): ClientState.REGISTERED,
    (ClientState.AWAIT_CHALLENGE, "close"): ClientState.CLOSED,
    (ClientState.AWAIT_REGISTERED, "close"): ClientState.CLOSED,
    (ClientState.REGISTERED, "close"): ClientState.CLOSED,
}

CLIENT_ACCEPTS: Final[dict[ClientState, frozenset[FrameType]]] = {
    ClientState.AWAIT_CHALLENGE: frozenset({FrameType.CHALLENGE, FrameType.ERROR, FrameType.CLOSE}),
    ClientState.AWAIT_REGISTERED: frozenset(
        {FrameType.REGISTERED, FrameType.ERROR, FrameType.CLOSE, FrameType.PING, FrameType.PONG}
    ),
    ClientState.REGISTERED: frozenset(
        {FrameType.RECV, FrameType.PEER_UNKNOWN, FrameType.PING, FrameType.PONG, FrameType.CLOSE}
    ),
    ClientState.CLOSED: frozenset(),
}


class RelayNotRegistered(LocalProtocolError):
    """``send`` was called while the client is not registered at its relay (connecting, or lost)."""


class PacketTooLarge(LocalProtocolError, ValueError):
    """A packet is empty or larger than the relay carries (its REGISTERED ``max_packet``)."""


@dataclass(frozen=True, slots=True)
class RegisteredEvent:
    max_packet: int
    relay_id: PeerId | None


@dataclass(frozen=True, slots=True)
class PacketReceived:
    src: PeerId
    packet: bytes


@dataclass(frozen=True, slots=True)
class PeerUnknownEvent:
    dst: PeerId


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session is over. ``by_relay``: the relay sent ERROR/CLOSE (else: us, a timeout, bad input)."""

    code: int
    reason: str
    by_relay: bool


ClientEvent = RegisteredEvent | PacketReceived | PeerUnknownEvent | SessionEnded


@dataclass(slots=True, eq=False)
class ClientSession:
    """One connection of a client to a keyed relay, sans-IO.

    Answers the CHALLENGE with a signed REGISTER, reports :class:`RegisteredEvent`, turns RECV into
    :class:`PacketReceived`, sends PING after ``keepalive_interval`` of silence and gives up after
    ``idle_timeout`` (default three keepalives). ``expected_relay`` refuses a relay announcing
    another PeerId (informational only: the CHALLENGE is not signed; TLS authenticates the relay).
    """

    identity: Identity
    now: float
    register_timeout: float = 10.0
    keepalive_interval: float = 15.0
    idle_timeout: float | None = None
    expected_relay: PeerId | None = None
    random_bytes: Callable[[int], bytes] = field(kw_only=True)  # injected: the core reads no randomness
    state: ClientState = field(default=ClientState.AWAIT_CHALLENGE, init=False)
    max_packet: int = field(default=MAX_PACKET, init=False)
    relay_id: PeerId | None = field(default=None, init=False)
    _opened_at: float = field(default=0.0, init=False)
    _last_rx: float = field(default=0.0, init=False)
    _pinged: bool = field(default=False, init=False)
    _out: list[bytes] = field(default_factory=list, init=False)
    _events: deque[ClientEvent] = field(default_factory=deque, init=False)

    def __post_init__(self) -> None:
        if self.idle_timeout is None:
            self.idle_timeout = 3 * self.keepalive_interval
        if self.register_timeout <= 0 or self.keepalive_interval <= 0 or self.idle_timeout <= 0:
            raise ValueError("register_timeout, keepalive_interval and idle_timeout must be positive")
        self._opened_at = self.now
        self._last_rx = self.now

    @property
    def registered(self) -> bool:
        return self.state is ClientState.REGISTERED

    # -- inputs --

    def receive_frame(self, data: bytes, now: float) -> None:
        if self.state is ClientState.CLOSED:
            return
        self._last_rx = now
        self._pinged = False
        if data and data[0] == FrameType.RECV and self.state is ClientState.REGISTERED:
            if len(data) <= SEND_HEADER_LEN:
                self._fail("malformed frame: RECV truncated")
                return
            self._events.append(PacketReceived(PeerId(data[1:SEND_HEADER_LEN]), data[SEND_HEADER_LEN:]))
            return
        try:
            frame = decode_frame(data)
        except DecodeError as exc:
            self._fail(f"malformed frame: {exc}")
            return
        ftype = FrameType(data[0])
        if ftype not in CLIENT_ACCEPTS[self.state]:
            self._fail(f"{ftype.name} not allowed in state {self.state.value}")
            return
        match frame:
            case Challenge(version=version, nonce=nonce, relay_id=relay_id):
                if version != PROTOCOL_VERSION:
                    self._fail(
                        f"relay speaks version {version}, we speak {PROTOCOL_VERSION}",
                        CloseCode.UNSUPPORTED_VERSION,
                    )
                    return
                if self.expected_relay is not None and relay_id != self.expected_relay:
                    self._fail(
                        f"relay announced {relay_id!r}, expected {self.expected_relay!r}",
                        CloseCode.AUTH_FAILED,
                    )
                    return
                self.relay_id = relay_id
                self._transition("challenge")
                self._out.append(encode_frame(make_register(self.identity, nonce)))
            case Registered(max_packet=max_packet):
                self._transition("registered")
                self.max_packet = max_packet
                self._events.append(RegisteredEvent(max_packet, self.relay_id))
            case Recv(src=src, packet=packet):  # pragma: no cover - handled above
                self._events.append(PacketReceived(src, packet))
            case PeerUnknown(dst=dst):
                self._events.append(PeerUnknownEvent(dst))
            case Ping(data=pdata):
                self._out.append(encode_frame(Pong(data=pdata)))
            case Pong():
                pass
            case Error(code=code, reason=reason) | Close(code=code, reason=reason):
                self._transition("close")
                self._events.append(SessionEnded(code, reason, by_relay=True))

    def handle_timer(self, now: float) -> None:
        if self.state is ClientState.CLOSED:
            return
        if self.state is not ClientState.REGISTERED:
            if now >= self._opened_at + self.register_timeout:
                self._fail("registration timed out", CloseCode.REGISTER_TIMEOUT)
            return
        assert self.idle_timeout is not None
        if now >= self._last_rx + self.idle_timeout:
            self._fail("relay idle timeout", CloseCode.IDLE_TIMEOUT)
        elif now >= self._last_rx + self.keepalive_interval and not self._pinged:
            self._pinged = True
            self._out.append(encode_frame(Ping(data=self.random_bytes(PING_DATA_LEN))))

    def get_timer(self) -> float | None:
        if self.state is ClientState.CLOSED:
            return None
        if self.state is not ClientState.REGISTERED:
            return self._opened_at + self.register_timeout
        assert self.idle_timeout is not None
        if self._pinged:
            return self._last_rx + self.idle_timeout
        return self._last_rx + self.keepalive_interval

    def encode_send(self, dst: PeerId, packet: bytes) -> bytes:
        """The SEND frame for ``packet`` to ``dst``; raises if not registered or the size is wrong."""
        if self.state is not ClientState.REGISTERED:
            raise RelayNotRegistered(f"not registered at the relay (state {self.state.value})")
        if not 1 <= len(packet) <= self.max_packet:
            raise PacketTooLarge(f"packet of {len(packet)} bytes: the relay carries 1..{self.max_packet}")
        return b"".join((_SEND_BYTE, dst.key, packet))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close locally: a CLOSE frame goes out and :class:`SessionEnded` is reported."""
        if self.state is ClientState.CLOSED:
            return
        reason = truncate_reason(reason)
        self._out.append(encode_frame(Close(code=code, reason=reason)))
        self._transition("close")
        self._events.append(SessionEnded(code, reason, by_relay=False))

    # -- outputs --

    def frames_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    # -- internals --

    def _fail(self, reason: str, code: int = CloseCode.PROTOCOL_ERROR) -> None:
        self.close(code, reason)

    def _transition(self, event: str) -> None:
        nxt = CLIENT_TRANSITIONS.get((self.state, event))
        if nxt is None:  # pragma: no cover - a bug in this module
            raise LocalProtocolError(f"no transition from {self.state.value} on {event}")
        self.state = nxt


_SEND_BYTE: Final = bytes((FrameType.SEND,))
