"""Keyed relay frames: round trips, exact layouts, and a decoder that only ever raises DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import DecodeError
from coremesh.identity import Identity, PeerId
from coremesh.keyedrelay.frames import (
    MAX_FRAME,
    MAX_PACKET,
    MAX_REASON,
    Challenge,
    Close,
    Error,
    FrameType,
    PeerUnknown,
    Ping,
    Pong,
    Recv,
    Register,
    Registered,
    Send,
    decode_frame,
    encode_frame,
    make_register,
    registration_message,
    truncate_reason,
)
from coremesh.keyedrelay.framing import FrameReader, tcp_frame

PEER = Identity(bytes(range(32))).peer_id
TYPES: dict[type, FrameType] = {
    Challenge: FrameType.CHALLENGE,
    Register: FrameType.REGISTER,
    Registered: FrameType.REGISTERED,
    Error: FrameType.ERROR,
    Send: FrameType.SEND,
    Recv: FrameType.RECV,
    PeerUnknown: FrameType.PEER_UNKNOWN,
    Ping: FrameType.PING,
    Pong: FrameType.PONG,
    Close: FrameType.CLOSE,
}
peer_ids = st.binary(min_size=32, max_size=32).map(PeerId)
packets = st.binary(min_size=1, max_size=2048)
reasons = st.text(max_size=80).filter(lambda s: len(s.encode("utf-8")) <= MAX_REASON)
codes = st.integers(min_value=0, max_value=0xFFFF)

frames = st.one_of(
    st.builds(
        Challenge,
        nonce=st.binary(min_size=32, max_size=32),
        relay_id=st.none() | peer_ids,
        version=st.integers(0, 255),
    ),
    st.builds(Register, peer_id=peer_ids, signature=st.binary(min_size=64, max_size=64)),
    st.builds(Registered, max_packet=st.integers(1, MAX_PACKET)),
    st.builds(Error, code=codes, reason=reasons),
    st.builds(Send, dst=peer_ids, packet=packets),
    st.builds(Recv, src=peer_ids, packet=packets),
    st.builds(PeerUnknown, dst=peer_ids),
    st.builds(Ping, data=st.binary(min_size=8, max_size=8)),
    st.builds(Pong, data=st.binary(min_size=8, max_size=8)),
    st.builds(Close, code=codes, reason=reasons),
)


@given(frames)
def test_every_frame_round_trips(frame: object) -> None:
    data = encode_frame(frame)  # type: ignore[arg-type]
    assert decode_frame(data) == frame
    assert data[0] == TYPES[type(frame)]


@given(st.lists(frames, max_size=8), st.integers(1, 64))
def test_tcp_framing_whole_and_in_pieces(items: list[object], chunk: int) -> None:
    stream = b"".join(tcp_frame(encode_frame(f)) for f in items)  # type: ignore[arg-type]
    whole = FrameReader().feed(stream)
    assert [decode_frame(f) for f in whole] == items
    reader = FrameReader()
    got: list[bytes] = []
    for i in range(0, len(stream), chunk):
        got += reader.feed(stream[i : i + chunk])
    assert got == whole and reader.buffered == 0


def test_byte_by_byte_and_trailing_partial() -> None:
    data = tcp_frame(encode_frame(Send(dst=PEER, packet=b"x" * 300)))
    reader = FrameReader()
    got: list[bytes] = []
    for b in data + data[:5]:
        got += reader.feed(bytes((b,)))
    assert len(got) == 1 and reader.buffered == 5


def test_layouts_are_exact() -> None:
    nonce = bytes(range(32))
    assert encode_frame(Challenge(nonce=nonce)) == b"\x01\x01" + nonce
    assert encode_frame(Challenge(nonce=nonce, relay_id=PEER)) == b"\x01\x01" + nonce + PEER.key
    assert encode_frame(Registered(max_packet=1200)) == b"\x03\x04\xb0"
    assert encode_frame(Error(code=4, reason="no")) == b"\x04\x00\x04no"
    assert encode_frame(Send(dst=PEER, packet=b"ab")) == b"\x05" + PEER.key + b"ab"
    assert encode_frame(Recv(src=PEER, packet=b"ab")) == b"\x06" + PEER.key + b"ab"
    assert encode_frame(PeerUnknown(dst=PEER)) == b"\x07" + PEER.key
    assert encode_frame(Ping(data=b"12345678")) == b"\x0812345678"
    assert encode_frame(Pong(data=b"12345678")) == b"\x0912345678"
    assert encode_frame(Close(code=2, reason="replaced")) == b"\x0a\x00\x02replaced"
    assert tcp_frame(b"\x08" + bytes(8)) == b"\x09\x08" + bytes(8)
    assert tcp_frame(bytes(300))[:2] == (0x4000 | 300).to_bytes(2, "big")


def test_register_signs_context_nonce_and_peer() -> None:
    identity = Identity(bytes(32))
    nonce = b"n" * 32
    reg = make_register(identity, nonce)
    assert registration_message(nonce, reg.peer_id) == b"coremesh-keyed-relay-v1" + nonce + reg.peer_id.key
    assert len(encode_frame(reg)) == 97


def test_largest_packet_and_limits() -> None:
    frame = encode_frame(Send(dst=PEER, packet=bytes(MAX_PACKET)))
    assert len(frame) == MAX_FRAME
    assert decode_frame(frame) == Send(dst=PEER, packet=bytes(MAX_PACKET))
    with pytest.raises(DecodeError, match="exceeds 1200"):
        decode_frame(encode_frame(Send(dst=PEER, packet=bytes(1201))), max_packet=1200)
    with pytest.raises(ValueError):
        Send(dst=PEER, packet=bytes(MAX_PACKET + 1))
    with pytest.raises(ValueError):
        Send(dst=PEER, packet=b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty frame"),
        (b"\x00", "unknown frame type 0x00"),
        (b"\xff" + bytes(40), "unknown frame type 0xff"),
        (b"\x01\x01" + bytes(31), "CHALLENGE frame must be"),
        (b"\x01\x01" + bytes(33), "CHALLENGE frame must be"),
        (b"\x02" + bytes(95), "REGISTER frame must be 97 bytes"),
        (b"\x03\x00\x00", "max_packet is 0"),
        (b"\x03\x01", "REGISTERED frame must be 3 bytes"),
        (b"\x04\x00", "ERROR frame truncated"),
        (b"\x04\x00\x01\xff", "ERROR reason is not UTF-8"),
        (b"\x0a\x00\x01" + b"a" * 256, "CLOSE reason longer than 255"),
        (b"\x05" + bytes(32), "SEND frame truncated"),
        (b"\x06" + bytes(10), "RECV frame truncated"),
        (b"\x07" + bytes(31), "PEER_UNKNOWN frame must be 33 bytes"),
        (b"\x08" + bytes(7), "PING frame must be 9 bytes"),
        (b"\x09" + bytes(9), "PONG frame must be 9 bytes"),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_frame(data)


def test_frame_reader_refuses_zero_and_oversized_lengths() -> None:
    with pytest.raises(DecodeError, match="frame length 0"):
        FrameReader().feed(b"\x00")
    with pytest.raises(DecodeError, match=r"outside 1\.\.2000"):
        FrameReader(2000).feed((0x4000 | 2001).to_bytes(2, "big"))
    with pytest.raises(DecodeError):
        FrameReader().feed(b"\xff" * 8)  # a 62-bit length


def test_reason_truncated_at_a_character_boundary() -> None:
    reason = "é" * 200  # 400 bytes
    cut = truncate_reason(reason)
    assert len(cut.encode()) <= MAX_REASON and reason.startswith(cut)
    assert decode_frame(encode_frame(Close(code=1, reason=cut))) == Close(code=1, reason=cut)


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_fuzz_decode_frame_only_raises_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_frame(data)


@settings(max_examples=1000)
@given(st.integers(1, 10), st.binary(max_size=120), st.integers(0, 119))
def test_fuzz_mutated_valid_frames(kind: int, tail: bytes, flip: int) -> None:
    data = bytearray(bytes((kind,)) + tail)
    if data and flip < len(data):
        data[flip] ^= 0x5A
    try:
        frame = decode_frame(bytes(data))
    except DecodeError:
        return
    assert encode_frame(frame) == bytes(data)  # whatever decodes re-encodes to the same bytes


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_fuzz_frame_reader_only_raises_decode_error(data: bytes) -> None:
    reader = FrameReader(1000)
    try:
        for frame in reader.feed(data):
            assert 1 <= len(frame) <= 1000
    except DecodeError:
        pass
    assert reader.buffered <= len(data)
