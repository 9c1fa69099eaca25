"""Frame codec of the reliability layer: every frame, round trips, truncation, fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import DecodeError
from coremesh.reliability.codes import ErrorCode
from coremesh.reliability.frames import (
    MAX_ACK_RANGES,
    AckFrame,
    CloseFrame,
    Frame,
    MaxDataFrame,
    PaddingFrame,
    PingFrame,
    PongFrame,
    StreamFrame,
    decode_payload,
    encode_ack,
    encode_frame,
    encode_payload,
)
from coremesh.reliability.varint import MAX_VARINT, VARINT_FORMS, decode_varint, encode_varint, varint_len


def typed(frames: list[Frame]) -> list[tuple[str, Frame]]:
    """NamedTuples of different types compare equal when their fields do: compare types too."""
    return [(type(f).__name__, f) for f in frames]


# ------------------------------------------------------------------------------------ varints


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        # RFC 9000 §A.1 sample encodings.
        (151_288_809_941_952_652, bytes.fromhex("c2197c5eff14e88c")),
        (494_878_333, bytes.fromhex("9d7f3e7d")),
        (15_293, bytes.fromhex("7bbd")),
        (37, bytes.fromhex("25")),
        (0, b"\x00"),
        (63, b"\x3f"),
        (64, b"\x40\x40"),
        (MAX_VARINT, b"\xff" * 8),
    ],
)
def test_varint_vectors(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert varint_len(value) == len(encoded)
    assert decode_varint(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize(
    "value", [0, 1, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, 151_288_809_941_952_652, MAX_VARINT]
)
def test_varint_forms_give_the_shortest_encoding(value: int) -> None:
    # What the send path runs for packet numbers and message length prefixes, without a call.
    tag, size = VARINT_FORMS[value.bit_length()]
    encoded = (value | tag).to_bytes(size, "big")
    assert size == varint_len(value)
    assert decode_varint(encoded, 0) == (value, size)


def test_varint_non_minimal_encoding_decodes() -> None:
    # RFC 9000 §A.1: 0x4025 is a two-byte encoding of 37.
    assert decode_varint(bytes.fromhex("4025"), 0) == (37, 2)


@pytest.mark.parametrize("value", [-1, MAX_VARINT + 1])
def test_varint_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


@pytest.mark.parametrize("data", [b"", b"\x40", b"\x80\x00\x00", b"\xc0" + b"\x00" * 6])
def test_varint_truncated(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_varint(data, 0)


@given(st.integers(0, MAX_VARINT))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(b"\xaa" + encoded + b"\xbb", 1) == (value, 1 + len(encoded))


# ------------------------------------------------------------------------------------ frames

EVERY_FRAME: list[tuple[Frame, bytes]] = [
    (PaddingFrame(3), b"\x00\x00\x00"),
    (PingFrame(0x0102030405060708), b"\x01\x01\x02\x03\x04\x05\x06\x07\x08"),
    (PongFrame(2**64 - 1), b"\x02" + b"\xff" * 8),
    (AckFrame(((5, 10),), 25), b"\x03\x0a\x19\x00\x05"),
    # Ranges 8..10 and 2..5: gap = 8 - 5 - 2 = 1, length = 3 (RFC 9000 §19.3.1).
    (AckFrame(((8, 10), (2, 5)), 0), b"\x03\x0a\x00\x01\x02\x01\x03"),
    (StreamFrame(64, b"hi"), b"\x04\x40\x40\x02hi"),
    (StreamFrame(0, b""), b"\x04\x00\x00"),
    (MaxDataFrame(16384), b"\x05\x80\x00\x40\x00"),
    (CloseFrame(10, "bye"), b"\x06\x0a\x03bye"),
    (CloseFrame(0, ""), b"\x06\x00\x00"),
]


@pytest.mark.parametrize(("frame", "encoded"), EVERY_FRAME)
def test_every_frame_encodes_and_decodes(frame: Frame, encoded: bytes) -> None:
    assert encode_frame(frame) == encoded
    pn, frames = decode_payload(b"\x07" + encoded)
    assert pn == 7
    assert typed(frames) == typed([frame])


def test_fixed_width_stream_header_decodes() -> None:
    # The sender writes STREAM offsets as 4-byte and lengths as 2-byte varints (RFC 9000 §16 allows
    # non-minimal encodings); every truncation of it is still an error.
    payload = b"\x00\x04\x80\x00\x01\x00\x40\x02hi"
    assert decode_payload(payload) == (0, [StreamFrame(256, b"hi")])
    for cut in range(1, len(payload)):
        with pytest.raises(DecodeError):
            decode_payload(payload[:cut])


def test_payload_with_several_frames() -> None:
    frames: list[Frame] = [AckFrame(((0, 3),), 100), StreamFrame(10, b"abc"), PingFrame(1), PaddingFrame(5)]
    payload = encode_payload(300, frames)
    assert payload[:2] == b"\x41\x2c"
    assert decode_payload(payload) == (300, frames)
    assert typed(decode_payload(payload)[1]) == typed(frames)


def test_ack_largest_property() -> None:
    assert AckFrame(((8, 10), (2, 5)), 0).largest == 10


@pytest.mark.parametrize(
    "ranges",
    [[], [(5, 4)], [(5, 10), (4, 4)], [(5, 10), (1, 2), (0, 3)], [(2 * i, 2 * i) for i in range(65, 0, -1)]],
)
def test_encode_ack_rejects_bad_ranges(ranges: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        encode_ack(ranges, 0)


@pytest.mark.parametrize(
    "frame",
    [
        PaddingFrame(0),
        PingFrame(-1),
        PongFrame(2**64),
        CloseFrame(1, "x" * 257),
        StreamFrame(MAX_VARINT, b"ab"),
    ],
)
def test_encode_frame_rejects_out_of_range(frame: Frame) -> None:
    with pytest.raises(ValueError):
        encode_frame(frame)


def test_encode_payload_needs_a_frame() -> None:
    with pytest.raises(ValueError):
        encode_payload(0, [])


# ------------------------------------------------------------------------------------ malformed


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "truncated"),
        (b"\x00", "without frames"),
        (b"\x00\x07", "unknown frame type 0x07"),
        (b"\x00\xff", "unknown frame type 0xff"),
        (b"\x00\x04\x00\x05abc", "truncated STREAM"),
        (b"\x00\x01\x00\x00", "truncated PING"),
        (b"\x00\x03\x05\x00\x00\x06", "below packet number 0"),
        (b"\x00\x03\x0a\x00\x01\x02\x08\x03", "below packet number 0"),
        (b"\x00\x03\x0a\x00\x40\x40\x00", "ranges"),
        (b"\x00\x06\x00\x41\x01" + b"x" * 257, "reason of 257 bytes"),
        (b"\x00\x06\x00\x02\xff\xfe", "not UTF-8"),
        (b"\x00\x06\x00\x05abc", "truncated CLOSE"),
        (b"\x00\x04\xff\xff\xff\xff\xff\xff\xff\xff\x01x", "beyond the largest stream offset"),
    ],
)
def test_malformed_payloads(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as info:
        decode_payload(payload)
    assert info.value.code == ErrorCode.FRAME_ENCODING_ERROR


def test_max_ack_ranges_decodes() -> None:
    ranges = [(2 * i, 2 * i) for i in range(MAX_ACK_RANGES - 1, -1, -1)]
    frame = AckFrame(tuple(ranges), 0)
    _, frames = decode_payload(b"\x00" + encode_frame(frame))
    assert frames == [frame]


@pytest.mark.parametrize(("frame", "encoded"), EVERY_FRAME)
def test_every_truncation_is_a_decode_error(frame: Frame, encoded: bytes) -> None:
    payload = b"\x00" + encoded
    for cut in range(1, len(payload)):
        prefix = payload[:cut]
        if isinstance(frame, PaddingFrame) and cut >= 2:
            assert typed(decode_payload(prefix)[1]) == typed([PaddingFrame(cut - 1)])
            continue
        with pytest.raises(DecodeError):
            decode_payload(prefix)


def test_trailing_garbage_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_payload(encode_payload(1, [PingFrame(5)]) + b"\x99")


def test_memoryview_and_bytearray_input() -> None:
    payload = encode_payload(9, [StreamFrame(3, b"xyz")])
    for form in (bytearray(payload), memoryview(payload)):
        pn, frames = decode_payload(form)  # type: ignore[arg-type]
        assert (pn, frames) == (9, [StreamFrame(3, b"xyz")])
        assert type(frames[0].data) is bytes  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ properties

tokens = st.integers(0, 2**64 - 1)
varints = st.integers(0, MAX_VARINT)


@st.composite
def ack_frames(draw: st.DrawFn) -> AckFrame:
    count = draw(st.integers(1, MAX_ACK_RANGES))
    hi = draw(st.integers(0, 2**40))
    ranges = []
    for _ in range(count):
        lo = hi - draw(st.integers(0, min(hi, 1000)))
        ranges.append((lo, hi))
        hi = lo - 2 - draw(st.integers(0, 1000))
        if hi < 0:
            break
    return AckFrame(tuple(ranges), draw(varints))


@st.composite
def stream_frames(draw: st.DrawFn) -> StreamFrame:
    data = draw(st.binary(max_size=2000))
    return StreamFrame(draw(st.integers(0, MAX_VARINT - len(data))), data)


frames_strategy = st.one_of(
    st.builds(PingFrame, tokens),
    st.builds(PongFrame, tokens),
    ack_frames(),
    stream_frames(),
    st.builds(MaxDataFrame, varints),
    st.builds(CloseFrame, varints, st.text(max_size=64).filter(lambda s: len(s.encode()) <= 256)),
)


@given(st.integers(0, MAX_VARINT), st.lists(frames_strategy, min_size=1, max_size=8), st.integers(0, 50))
def test_payload_round_trip(pn: int, frames: list[Frame], padding: int) -> None:
    all_frames = [*frames, PaddingFrame(padding)] if padding else frames
    decoded_pn, decoded = decode_payload(encode_payload(pn, all_frames))
    assert decoded_pn == pn
    assert typed(decoded) == typed(all_frames)


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_payload(data)


@settings(max_examples=1000)
@given(st.lists(frames_strategy, min_size=1, max_size=4), st.data())
def test_fuzz_mutated_payloads_only_raise_decode_error(frames: list[Frame], data: st.DataObject) -> None:
    payload = bytearray(encode_payload(data.draw(st.integers(0, 2**20)), frames))
    for _ in range(data.draw(st.integers(1, 4))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        decode_payload(bytes(payload))
