"""The client's side of the keyed relay protocol, sans-IO: :class:`ClientSession`, one connection.

Answers the relay's challenge with a signed REGISTER, tracks registration, keepalives and idle time,
and turns RECV into :class:`PacketReceived`. Fed with ``receive_frame`` / ``handle_timer(now)``;
drained with ``frames_to_send()``, ``next_event()`` and ``get_timer()``. Time is passed in and
randomness injected (``random_bytes``); the asyncio shell is :mod:`coremesh.aio.keyedrelay`.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from coremesh.errors import DecodeError, LocalProtocolError
from coremesh.identity import Identity, PeerId

from .frames import (
    MAX_PACKET,
    PING_DATA_LEN,
    PROTOCOL_VERSION,
    SEND_HEADER_LEN,
    Challenge,
    Close,
    CloseCode,
    Error,
    FrameType,
    PeerUnknown,
    Ping,
    Pong,
    Recv,
    Registered,
    decode_frame,
    encode_frame,
    make_register,
    truncate_reason,
)

_SEND_BYTE: Final = bytes((FrameType.SEND,))


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
