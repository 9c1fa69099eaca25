from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import DecodeError
from coremesh.secure import wire


@pytest.mark.parametrize(
    ("first", "proto"),
    [(0, wire.Protocol.STUN), (3, wire.Protocol.STUN), (64, wire.Protocol.TURN_CHANNEL),
     (79, wire.Protocol.TURN_CHANNEL), (0xE4, wire.Protocol.MESH), (0xE1, wire.Protocol.MESH),
     (20, wire.Protocol.UNKNOWN), (128, wire.Protocol.UNKNOWN)],
)  # fmt: skip
def test_classify_follows_rfc7983_ranges(first: int, proto: wire.Protocol) -> None:
    assert wire.classify(bytes([first]) + b"rest") is proto
    assert wire.classify(b"") is wire.Protocol.UNKNOWN


def test_every_mesh_type_is_outside_stun_and_turn_ranges() -> None:
    for t in wire.PacketType:
        assert wire.classify(bytes([t])) is wire.Protocol.MESH


@given(st.integers(0, 2**32 - 1), st.binary(min_size=wire.NOISE_MSG1_LEN, max_size=wire.NOISE_MSG1_LEN))
def test_handshake_init_round_trip(index: int, noise: bytes) -> None:
    packet = wire.encode_handshake_init(index, noise) + b"m" * 16 + b"n" * 16
    assert len(packet) == wire.HANDSHAKE_INIT_LEN
    init = wire.decode_handshake_init(packet)
    assert (init.sender_index, init.noise, init.mac1, init.mac2) == (index, noise, b"m" * 16, b"n" * 16)
    assert init.covered == packet[:-32]


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=wire.NOISE_MSG2_LEN, max_size=wire.NOISE_MSG2_LEN),
)
def test_handshake_resp_round_trip(sender: int, receiver: int, noise: bytes) -> None:
    packet = wire.encode_handshake_resp(sender, receiver, noise) + bytes(32)
    resp = wire.decode_handshake_resp(packet)
    assert (resp.sender_index, resp.receiver_index, resp.noise) == (sender, receiver, noise)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_transport_header_round_trip(index: int, counter: int) -> None:
    header = wire.encode_transport_header(index, counter)
    assert len(header) == wire.TRANSPORT_HEADER_LEN
    assert wire.decode_transport_header(header + bytes(16)) == (index, counter)


@given(st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32))
def test_identity_probe_never_amplifies(nonce: int, key: bytes) -> None:
    probe = wire.encode_identity_probe(nonce)
    reply = wire.encode_identity_reply(nonce, key, bytes(64))
    assert len(reply) <= len(probe)
    assert wire.decode_identity_probe(probe) == nonce
    assert wire.decode_identity_reply(reply) == (nonce, key, bytes(64))


def test_wrong_version_is_a_clear_decode_error() -> None:
    packet = bytearray(wire.encode_handshake_init(1, bytes(wire.NOISE_MSG1_LEN)) + bytes(32))
    packet[1] = 9
    with pytest.raises(DecodeError, match="version 9"):
        wire.decode_handshake_init(bytes(packet))


DECODERS = [
    wire.decode_handshake_init,
    wire.decode_handshake_resp,
    wire.decode_transport_header,
    wire.decode_identity_probe,
    wire.decode_identity_reply,
]


@settings(max_examples=500)
@given(st.binary(max_size=300), st.sampled_from(DECODERS))
def test_fuzz_decoders_raise_only_decode_error(data: bytes, decoder: object) -> None:
    with contextlib.suppress(DecodeError):
        decoder(data)  # type: ignore[operator]
