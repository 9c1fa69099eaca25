"""Keyed relay frames: their types, close codes, and the pure codec.

A frame is one message of the keyed relay protocol (``docs/keyed-relay.md``): a type byte and a
fixed layout per type. :func:`encode_frame` and :func:`decode_frame` are pure and bounded: bad input
raises :class:`DecodeError` and nothing else. How frames travel (a length prefix on raw TCP, one
WebSocket message each) is :mod:`.framing`; who may send which frame when is :mod:`.server` and
:mod:`.client`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from coremesh.errors import DecodeError
from coremesh.identity import Identity, PeerId

PROTOCOL_VERSION: Final = 1
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
