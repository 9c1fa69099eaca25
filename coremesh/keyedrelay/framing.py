"""How keyed relay frames travel: on raw TCP, a preamble then length-prefixed frames; on WebSocket,
one binary message per frame at :data:`WS_PATH`.

A raw TCP connection (after TLS, if any) starts with :data:`MAGIC`; then every frame is a QUIC varint
length and the frame (:func:`tcp_frame`). :class:`FrameReader` cuts the byte stream back into frames,
bounded: it never buffers more than one frame, and a bad length raises :class:`DecodeError`.
"""

from __future__ import annotations

from typing import Final

from coremesh.errors import DecodeError
from coremesh.reliability.varint import decode_varint, encode_varint

from .frames import MAX_FRAME

MAGIC: Final = b"CMRL"  # first bytes of a raw TCP connection (after TLS, if any)
WS_PATH: Final = "/v1/relay"


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
