"""TURN ChannelData messages (RFC 8656 section 12.4) and stream framing for STUN over TCP.

A ChannelData message is ``channel number:2 | length:2 | application data``. RFC 8656 section 12
allots 0x4000-0x4FFF (first byte 64-79, how RFC 7983 demultiplexes it) and our client picks from
there; RFC 5766 allowed 0x4000-0x7FFF, and deployed clients (coturn's ``turnutils_uclient`` among
them) still use that range, so it is accepted (:data:`CHANNEL_MAX_ACCEPTED`) for interoperability.
``length`` counts the application data only, not the padding.

Padding: over TCP and TLS the message is padded to a multiple of four bytes (``pad=True``); over
UDP padding is not required but may be present, so a datagram may carry up to three bytes after
the data. Anything longer is malformed. A datagram too short for its length field is malformed too
(RFC 8656 section 12.5: silently discarded; here a :class:`StunDecodeError` the caller counts).

:func:`frame_length` cuts a TCP byte stream into STUN messages and ChannelData messages.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from .attributes import StunDecodeError, StunEncodeError

CHANNEL_MIN: Final = 0x4000
CHANNEL_MAX: Final = 0x4FFF  # RFC 8656: what we allocate
CHANNEL_MAX_ACCEPTED: Final = 0x7FFF  # RFC 5766's range: what we accept from others
CHANNEL_HEADER_SIZE: Final = 4
MAX_CHANNEL_DATA: Final = 0xFFFF

_HEAD = struct.Struct("!HH")


class ChannelData(NamedTuple):
    channel: int
    data: bytes


def is_valid_channel(channel: int) -> bool:
    return CHANNEL_MIN <= channel <= CHANNEL_MAX_ACCEPTED


def is_channel_data(data: bytes) -> bool:
    """Fast demultiplexing test: first byte 64-127 (RFC 7983 gives 64-79; RFC 5766 clients use up to
    127) and a whole header."""
    return len(data) >= CHANNEL_HEADER_SIZE and 0x40 <= data[0] <= 0x7F


def encode_channel_data(channel: int, data: bytes, *, pad: bool = False) -> bytes:
    """One ChannelData message; ``pad`` for TCP/TLS (a multiple of four bytes)."""
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX_ACCEPTED:
        raise StunEncodeError(f"channel 0x{channel:04X} outside 0x4000-0x4FFF")
    n = len(data)
    if n > MAX_CHANNEL_DATA:
        raise StunEncodeError(f"ChannelData of {n} bytes exceeds 65535")
    head = _HEAD.pack(channel, n)
    if pad and n & 3:
        return b"".join((head, data, bytes(-n & 3)))
    return head + data


def decode_channel_data(data: bytes, *, pad: bool = False) -> ChannelData:
    """Parse one ChannelData message (a whole datagram, or one frame from :func:`frame_length`)."""
    if type(data) is not bytes:  # a bytearray or memoryview from a stream buffer
        data = bytes(data)
    n = len(data)
    if n < CHANNEL_HEADER_SIZE:
        raise StunDecodeError(f"ChannelData of {n} bytes is shorter than its 4-byte header")
    channel, length = _HEAD.unpack_from(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX_ACCEPTED:
        raise StunDecodeError(f"channel 0x{channel:04X} outside 0x4000-0x4FFF")
    end = CHANNEL_HEADER_SIZE + length
    if n < end:
        raise StunDecodeError(f"ChannelData length {length} exceeds the {n - 4} bytes present")
    padded = end + (-length & 3)
    if pad:
        if n != padded:
            raise StunDecodeError(f"ChannelData over TCP must be {padded} bytes with padding, got {n}")
    elif n > padded:
        raise StunDecodeError(f"{n - end} bytes after ChannelData of length {length}")
    return ChannelData(channel, data[CHANNEL_HEADER_SIZE:end])


def frame_length(buffer: bytes | bytearray | memoryview) -> int | None:
    """Bytes of the next frame at the start of a TCP stream buffer: a STUN message (20 + length)
    or a padded ChannelData message. ``None`` while the 4 bytes that tell are not all there.

    Raises :class:`StunDecodeError` when the stream holds neither (the connection should close).
    """
    if len(buffer) < 4:
        return None
    first = buffer[0]
    length = (buffer[2] << 8) | buffer[3]
    if first < 0x40:  # the first two bits of a STUN message are zero
        if length & 3:
            raise StunDecodeError(f"STUN length {length} in the stream is not a multiple of 4")
        return 20 + length
    if first <= 0x7F:
        return CHANNEL_HEADER_SIZE + length + (-length & 3)
    raise StunDecodeError(f"stream byte 0x{first:02X} starts neither STUN nor ChannelData")
