"""The overlay packet format (coremesh/routing/overlay.py): round trips, and hostile bytes only ever
raise DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremesh.errors import DecodeError
from coremesh.identity import Identity, PeerId
from coremesh.routing import overlay as ov

PEERS = [Identity(bytes([i]) * 32).peer_id for i in range(1, 6)]
peers = st.sampled_from(PEERS)


@st.composite
def routed(draw: st.DrawFn) -> ov.Routed:
    return ov.Routed(
        destination=draw(peers),
        source=draw(peers),
        hop_limit=draw(st.integers(0, 255)),
        inner=draw(st.binary(min_size=1, max_size=300)),
        source_route=tuple(draw(st.lists(peers, max_size=ov.MAX_SOURCE_ROUTE))),
        probe=draw(st.booleans()),
    )


@given(routed())
def test_routed_round_trips(packet: ov.Routed) -> None:
    data = ov.encode_routed(packet)
    assert ov.is_overlay_packet(data) and ov.overlay_type(data) == ov.OverlayType.ROUTED
    assert ov.decode_routed(data) == packet


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    for payload in (data, ov.OVERLAY_PREFIX + data, ov.OVERLAY_PREFIX + b"\xe8" + data):
        with contextlib.suppress(DecodeError):
            ov.decode_routed(payload)


@given(routed(), st.data())
def test_mutated_packets_raise_only_decode_error(packet: ov.Routed, data: st.DataObject) -> None:
    raw = bytearray(ov.encode_routed(packet))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        decoded = ov.decode_routed(bytes(raw[:cut]))
    except DecodeError:
        return
    assert isinstance(decoded.destination, PeerId) and len(decoded.source_route) <= ov.MAX_SOURCE_ROUTE


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (ov.OVERLAY_PREFIX, "not an overlay packet"),
        (ov.OVERLAY_PREFIX + b"\x10" + bytes(80), "not a ROUTED packet"),
        (ov.OVERLAY_PREFIX + b"\xe8\x01\x05", "truncated"),
        (ov.OVERLAY_PREFIX + b"\xe8\x09\x05\x00" + bytes(65), "version"),
        (ov.OVERLAY_PREFIX + b"\xe8\x01\x05\x80" + bytes(65), "flags"),
        (ov.OVERLAY_PREFIX + b"\xe8\x01\x05\x01" + bytes(64) + b"\x00x", "source route"),
        (ov.OVERLAY_PREFIX + b"\xe8\x01\x05\x01" + bytes(64) + b"\x02" + bytes(40), "source route"),
    ],
)
def test_malformed_routed_packets_say_why(bad: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        ov.decode_routed(bad)


def test_encode_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="hop_limit"):
        ov.encode_routed(ov.Routed(PEERS[0], PEERS[1], 256, b"x"))
    with pytest.raises(ValueError, match="source route"):
        ov.encode_routed(ov.Routed(PEERS[0], PEERS[1], 4, b"x", tuple(PEERS) * 4))
