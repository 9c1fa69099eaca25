"""TURN ChannelData (RFC 8656 section 12.4) and TCP stream framing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import DecodeError
from coremesh.stun import (
    Attr,
    ChannelData,
    Method,
    StunClass,
    StunDecodeError,
    StunEncodeError,
    StunMessage,
    decode,
    decode_channel_data,
    encode,
    encode_channel_data,
    frame_length,
    is_channel_data,
)

channels = st.integers(0x4000, 0x4FFF)


@given(channels, st.binary(max_size=300), st.booleans())
def test_round_trip(channel: int, data: bytes, pad: bool) -> None:
    wire = encode_channel_data(channel, data, pad=pad)
    assert is_channel_data(wire)
    assert len(wire) == 4 + len(data) + ((-len(data) & 3) if pad else 0)
    assert decode_channel_data(wire, pad=pad) == ChannelData(channel, data)
    # a padded message is also a valid UDP datagram (padding may be present over UDP)
    assert decode_channel_data(encode_channel_data(channel, data, pad=True)) == ChannelData(channel, data)


def test_layout() -> None:
    assert encode_channel_data(0x4001, b"abcde") == b"\x40\x01\x00\x05abcde"
    assert encode_channel_data(0x4001, b"abcde", pad=True) == b"\x40\x01\x00\x05abcde\0\0\0"
    assert encode_channel_data(0x4FFF, b"") == b"\x4f\xff\0\0"
    assert decode_channel_data(b"\x4f\xff\0\0", pad=True) == ChannelData(0x4FFF, b"")


@pytest.mark.parametrize("channel", [0x5000, 0x7FFF])
def test_rfc5766_channels_are_accepted_for_interoperability(channel: int) -> None:
    encoded = encode_channel_data(channel, b"x")
    assert decode_channel_data(encoded) == ChannelData(channel, b"x")
    assert is_channel_data(encoded + b"\0")


@pytest.mark.parametrize("channel", [0x0000, 0x3FFF, 0x8000, 0xFFFF])
def test_channel_range(channel: int) -> None:
    with pytest.raises(StunEncodeError):
        encode_channel_data(channel, b"x")
    with pytest.raises(StunDecodeError, match="outside"):
        decode_channel_data(channel.to_bytes(2, "big") + b"\0\x01x")


def test_length_checks() -> None:
    with pytest.raises(StunDecodeError, match="shorter"):
        decode_channel_data(b"\x40\x00\x00")
    with pytest.raises(StunDecodeError, match="exceeds"):
        decode_channel_data(b"\x40\x00\x00\x05abcd")
    # UDP: up to three bytes of padding may follow; more is malformed
    for extra in range(4):
        assert decode_channel_data(b"\x40\x00\x00\x01a" + b"\0" * extra).data == b"a"
    with pytest.raises(StunDecodeError, match="after ChannelData"):
        decode_channel_data(b"\x40\x00\x00\x01a" + b"\0" * 4)
    with pytest.raises(StunDecodeError, match="after ChannelData"):
        decode_channel_data(b"\x40\x00\x00\x04abcd" + b"\0")
    # TCP: exactly padded
    assert decode_channel_data(b"\x40\x00\x00\x01a\0\0\0", pad=True).data == b"a"
    with pytest.raises(StunDecodeError, match="TCP"):
        decode_channel_data(b"\x40\x00\x00\x01a", pad=True)
    with pytest.raises(StunDecodeError, match="TCP"):
        decode_channel_data(b"\x40\x00\x00\x01a\0\0\0\0", pad=True)
    with pytest.raises(StunEncodeError):
        encode_channel_data(0x4000, b"x" * 65536)


def test_is_channel_data() -> None:
    assert is_channel_data(b"\x40\x00\x00\x00")
    assert is_channel_data(b"\x4f\xff\x00\x00")
    assert is_channel_data(b"\x7f\xff\x00\x00")  # RFC 5766's range
    assert not is_channel_data(b"\x80\x00\x00\x00")
    assert not is_channel_data(b"\x3f\x00\x00\x00")
    assert not is_channel_data(b"\x40\x00\x00")


@settings(max_examples=2000)
@given(st.binary(max_size=40), st.booleans())
def test_fuzz(data: bytes, pad: bool) -> None:
    with contextlib.suppress(DecodeError):
        decode_channel_data(data, pad=pad)
    with contextlib.suppress(DecodeError):
        frame_length(data)


def test_stream_framing() -> None:
    msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, bytes(12))
    msg.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    frames = [
        encode(msg),
        encode_channel_data(0x4000, b"abc", pad=True),
        encode_channel_data(0x4001, b"", pad=True),
        encode_channel_data(0x4002, b"12345678", pad=True),
        encode(msg, fingerprint=False),
    ]
    stream = b"".join(frames)
    out = []
    while stream:
        n = frame_length(stream)
        assert n is not None
        out.append(stream[:n])
        stream = stream[n:]
    assert out == frames
    assert decode(out[0]) == decode(frames[0])
    assert decode_channel_data(out[1], pad=True) == ChannelData(0x4000, b"abc")
    assert frame_length(b"") is None and frame_length(frames[0][:3]) is None
    assert frame_length(frames[1][:4]) == 8
    with pytest.raises(StunDecodeError):
        frame_length(b"\xe4\x00\x00\x00")
    with pytest.raises(StunDecodeError):
        frame_length(b"\x00\x01\x00\x03")
