"""QUIC variable-length integers (RFC 9000 §16).

The two most significant bits of the first byte give the encoded length (1, 2, 4 or 8 bytes); the
remaining bits hold the value in network byte order. Values range over ``0 .. 2**62 - 1``.
"""

from __future__ import annotations

from typing import Final

from coremesh.errors import DecodeError

MAX_VARINT = (1 << 62) - 1

__all__ = ["MAX_VARINT", "VARINT_FORMS", "decode_varint", "encode_varint", "varint_len"]


def _form(bits: int) -> tuple[int, int]:
    if bits <= 6:
        return 0, 1
    if bits <= 14:
        return 0x4000, 2
    if bits <= 30:
        return 0x8000_0000, 4
    return 0xC000_0000_0000_0000, 8


VARINT_FORMS: Final = tuple(_form(bits) for bits in range(63))
"""By ``value.bit_length()`` (0..62): the length tag and the size of the shortest encoding. A hot path
that knows its value is in range encodes it without a call: ``tag, size = VARINT_FORMS[v.bit_length()]``
then ``(v | tag).to_bytes(size, "big")``, exactly what :func:`encode_varint` returns."""


def varint_len(value: int) -> int:
    """Return the number of bytes ``encode_varint(value)`` produces."""
    if value < 0x40:
        return 1
    if value < 0x4000:
        return 2
    if value < 0x4000_0000:
        return 4
    if value <= MAX_VARINT:
        return 8
    raise ValueError(f"varint out of range: {value}")


def encode_varint(value: int) -> bytes:
    """Encode ``value`` (``0 <= value < 2**62``) in the shortest form."""
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"varint out of range: {value}")
    tag, size = VARINT_FORMS[value.bit_length()]
    return (value | tag).to_bytes(size, "big")


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode the varint at ``data[pos:]``; return ``(value, new_pos)``.

    Raises ``DecodeError`` if the input is truncated.
    """
    try:
        first = data[pos]
    except IndexError:
        raise DecodeError("truncated varint") from None
    prefix = first >> 6
    if prefix == 0:
        return first, pos + 1
    size = 1 << prefix
    end = pos + size
    if end > len(data):
        raise DecodeError("truncated varint")
    return int.from_bytes(data[pos:end], "big") & ((1 << (8 * size - 2)) - 1), end
