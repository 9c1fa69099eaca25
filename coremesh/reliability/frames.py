"""Frame codec of the reliability layer: pure functions from frames to bytes and back.

A plaintext payload is a packet number (a QUIC varint, RFC 9000 §16) followed by one or more
frames. Each frame starts with a type byte; integers are QUIC varints unless said otherwise::

    PADDING  0x00                                    (a run of zero bytes)
    PING     0x01 token:u64                          (answered with PONG; RFC 9000 §19.2)
    PONG     0x02 token:u64
    ACK      0x03 largest delay_us range_count first_range (gap range_len)*   (RFC 9000 §19.3)
    STREAM   0x04 offset length data                 (RFC 9000 §19.8, always with LEN)
    MAX_DATA 0x05 limit                              (RFC 9000 §19.9)
    CLOSE    0x06 code reason_len reason:utf-8       (RFC 9000 §19.19, reason <= 256 bytes)

Frames are ``NamedTuple`` values: immutable, typed and cheap to build in the per-packet path.
Every decoding failure (truncation, unknown type, out-of-range value, bad UTF-8) raises
``DecodeError`` with code ``FRAME_ENCODING_ERROR``; nothing else escapes ``decode_payload``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from coremesh.errors import DecodeError
from coremesh.reliability.codes import ErrorCode
from coremesh.reliability.varint import MAX_VARINT, encode_varint

__all__ = [
    "MAX_ACK_RANGES",
    "MAX_CLOSE_REASON",
    "AckFrame",
    "CloseFrame",
    "Frame",
    "FrameType",
    "MaxDataFrame",
    "PaddingFrame",
    "PingFrame",
    "PongFrame",
    "StreamFrame",
    "decode_payload",
    "encode_ack",
    "encode_frame",
    "encode_payload",
    "stream_header",
]

MAX_ACK_RANGES = 64
"""Most ACK ranges one ACK frame may carry (first range included)."""

MAX_CLOSE_REASON = 256
"""Most bytes of UTF-8 reason a CLOSE frame may carry."""

_U64_MAX = (1 << 64) - 1


class FrameType:
    """Frame type bytes."""

    PADDING = 0x00
    PING = 0x01
    PONG = 0x02
    ACK = 0x03
    STREAM = 0x04
    MAX_DATA = 0x05
    CLOSE = 0x06


class PaddingFrame(NamedTuple):
    """``length`` zero bytes."""

    length: int


class PingFrame(NamedTuple):
    """Asks the peer for a PONG carrying the same 64-bit ``token``."""

    token: int


class PongFrame(NamedTuple):
    """Answers the PING with this ``token``."""

    token: int


class AckFrame(NamedTuple):
    """Acknowledged packet numbers.

    ``ranges`` are inclusive ``(smallest, largest)`` pairs in descending order, separated by at least
    one missing packet number; ``delay_us`` is how long the receiver held the largest one (µs).
    """

    ranges: tuple[tuple[int, int], ...]
    delay_us: int

    @property
    def largest(self) -> int:
        return self.ranges[0][1]


class StreamFrame(NamedTuple):
    """``data`` at byte ``offset`` of the ordered stream."""

    offset: int
    data: bytes


class MaxDataFrame(NamedTuple):
    """The peer may send stream bytes up to (excluding) this absolute offset."""

    limit: int


class CloseFrame(NamedTuple):
    """The sender closes the connection with a wire ``code`` and a human ``reason``."""

    code: int
    reason: str


Frame = PaddingFrame | PingFrame | PongFrame | AckFrame | StreamFrame | MaxDataFrame | CloseFrame

_new: Callable[..., Any] = tuple.__new__  # builds a NamedTuple without its Python-level __new__


def _err(message: str) -> DecodeError:
    return DecodeError(message, ErrorCode.FRAME_ENCODING_ERROR)


# ----------------------------------------------------------------------------------------- encoding


def stream_header(offset: int, length: int) -> bytes:
    """Type, offset and length fields of a STREAM frame; the data follows."""
    return b"\x04" + encode_varint(offset) + encode_varint(length)


def encode_ack(ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...], delay_us: int) -> bytes:
    """Encode an ACK frame from descending inclusive ``(smallest, largest)`` ranges (RFC 9000 §19.3)."""
    if not ranges or len(ranges) > MAX_ACK_RANGES:
        raise ValueError(f"an ACK frame carries 1..{MAX_ACK_RANGES} ranges, not {len(ranges)}")
    smallest, largest = ranges[0]
    if not 0 <= smallest <= largest:
        raise ValueError(f"bad ACK range {ranges[0]}")
    parts = [
        b"\x03",
        encode_varint(largest),
        encode_varint(delay_us),
        encode_varint(len(ranges) - 1),
        encode_varint(largest - smallest),
    ]
    for lo, hi in ranges[1:]:
        if not 0 <= lo <= hi <= smallest - 2:
            raise ValueError(f"ACK ranges must descend with gaps: {ranges}")
        parts.append(encode_varint(smallest - hi - 2))
        parts.append(encode_varint(hi - lo))
        smallest = lo
    return b"".join(parts)


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame. Raises ``ValueError`` for a field out of range."""
    if isinstance(frame, StreamFrame):
        if frame.offset + len(frame.data) > MAX_VARINT:
            raise ValueError("stream offset out of range")
        return stream_header(frame.offset, len(frame.data)) + bytes(frame.data)
    if isinstance(frame, AckFrame):
        return encode_ack(frame.ranges, frame.delay_us)
    if isinstance(frame, PingFrame | PongFrame):
        if not 0 <= frame.token <= _U64_MAX:
            raise ValueError(f"token out of range: {frame.token}")
        kind = FrameType.PING if isinstance(frame, PingFrame) else FrameType.PONG
        return bytes((kind,)) + frame.token.to_bytes(8, "big")
    if isinstance(frame, MaxDataFrame):
        return b"\x05" + encode_varint(frame.limit)
    if isinstance(frame, CloseFrame):
        reason = frame.reason.encode("utf-8")
        if len(reason) > MAX_CLOSE_REASON:
            raise ValueError(f"close reason longer than {MAX_CLOSE_REASON} bytes")
        return b"\x06" + encode_varint(frame.code) + encode_varint(len(reason)) + reason
    if isinstance(frame, PaddingFrame):
        if frame.length < 1:
            raise ValueError("padding length must be >= 1")
        return bytes(frame.length)
    raise TypeError(f"not a frame: {frame!r}")


def encode_payload(packet_number: int, frames: list[Frame] | tuple[Frame, ...]) -> bytes:
    """Encode a whole plaintext payload: packet number, then the frames in order."""
    if not frames:
        raise ValueError("a packet carries at least one frame")
    return encode_varint(packet_number) + b"".join(encode_frame(f) for f in frames)


# ----------------------------------------------------------------------------------------- decoding


_stream_4_2 = struct.Struct(">IH").unpack_from


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    prefix = first >> 6
    if prefix == 0:
        return first, pos + 1
    if prefix == 1:
        return ((first & 0x3F) << 8) | data[pos + 1], pos + 2
    size = 1 << prefix
    end = pos + size
    if end > len(data):
        raise IndexError
    return int.from_bytes(data[pos:end], "big") & ((1 << (8 * size - 2)) - 1), end


def _decode_ack(data: bytes, pos: int) -> tuple[AckFrame, int]:
    largest, pos = _varint(data, pos)
    delay, pos = _varint(data, pos)
    count, pos = _varint(data, pos)
    if count >= MAX_ACK_RANGES:
        raise _err(f"ACK frame with {count + 1} ranges (at most {MAX_ACK_RANGES})")
    first, pos = _varint(data, pos)
    smallest = largest - first
    if smallest < 0:
        raise _err("ACK first range below packet number 0")
    ranges = [(smallest, largest)]
    for _ in range(count):
        gap, pos = _varint(data, pos)
        length, pos = _varint(data, pos)
        hi = smallest - gap - 2
        lo = hi - length
        if lo < 0:
            raise _err("ACK range below packet number 0")
        ranges.append((lo, hi))
        smallest = lo
    frame: AckFrame = _new(AckFrame, (tuple(ranges), delay))
    return frame, pos


def decode_payload(payload: bytes) -> tuple[int, list[Frame]]:
    """Decode a plaintext payload into ``(packet_number, frames)``.

    The input is hostile: any malformation raises ``DecodeError`` and nothing else. A payload needs at
    least one frame.
    """
    if type(payload) is not bytes:
        payload = bytes(payload)
    try:
        pn, pos = _varint(payload, 0)
        end = len(payload)
        frames: list[Frame] = []
        append = frames.append
        while pos < end:
            kind = payload[pos]
            pos += 1
            if kind == 0x04:  # STREAM; the 4-byte offset + 2-byte length form our encoder uses, inline
                if pos + 6 <= end and payload[pos] >> 6 == 2 and payload[pos + 4] >> 6 == 1:
                    offset, length = _stream_4_2(payload, pos)
                    offset &= 0x3FFF_FFFF
                    length &= 0x3FFF
                    pos += 6
                else:
                    offset, pos = _varint(payload, pos)
                    length, pos = _varint(payload, pos)
                stop = pos + length
                if stop > end:
                    raise _err("truncated STREAM data")
                if offset + length > MAX_VARINT:
                    raise _err("STREAM frame beyond the largest stream offset")
                append(_new(StreamFrame, (offset, payload[pos:stop])))
                pos = stop
            elif kind == 0x03:
                frame, pos = _decode_ack(payload, pos)
                append(frame)
            elif kind == 0x00:
                start = pos - 1
                while pos < end and payload[pos] == 0:
                    pos += 1
                append(_new(PaddingFrame, (pos - start,)))
            elif kind == 0x01 or kind == 0x02:
                stop = pos + 8
                if stop > end:
                    raise _err("truncated PING/PONG token")
                token = int.from_bytes(payload[pos:stop], "big")
                append(_new(PingFrame if kind == 0x01 else PongFrame, (token,)))
                pos = stop
            elif kind == 0x05:
                limit, pos = _varint(payload, pos)
                append(_new(MaxDataFrame, (limit,)))
            elif kind == 0x06:
                code, pos = _varint(payload, pos)
                length, pos = _varint(payload, pos)
                if length > MAX_CLOSE_REASON:
                    raise _err(f"CLOSE reason of {length} bytes (at most {MAX_CLOSE_REASON})")
                stop = pos + length
                if stop > end:
                    raise _err("truncated CLOSE reason")
                try:
                    reason = payload[pos:stop].decode("utf-8")
                except UnicodeDecodeError:
                    raise _err("CLOSE reason is not UTF-8") from None
                append(_new(CloseFrame, (code, reason)))
                pos = stop
            else:
                raise _err(f"unknown frame type 0x{kind:02x}")
    except IndexError:
        raise _err("truncated payload") from None
    if not frames:
        raise _err("payload without frames")
    return pn, frames
