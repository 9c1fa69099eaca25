"""The BROADCAST, MULTICAST and MEMBERSHIP bodies: round trips, group names, total decoders."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import DecodeError
from coremesh.identity import Identity, PeerId, verify_signature
from coremesh.routing.flood_messages import (
    ALL_TARGETS,
    BROADCAST_DOMAIN,
    MEMBERSHIP_DOMAIN,
    MULTICAST_DOMAIN,
    Broadcast,
    InvalidGroup,
    MembershipRecord,
    Multicast,
    decode_broadcast,
    decode_membership,
    decode_multicast,
    encode_membership,
    group_bytes,
    in_target_filter,
    record_size,
    sorted_groups,
    target_filter,
)

IDENT = Identity(bytes(range(32)))
SIG = bytes(range(64))

_peers = st.binary(min_size=32, max_size=32).map(PeerId)
_seqnos = st.integers(0, 2**64 - 1)


def _encodable(g: str) -> bool:
    try:
        group_bytes(g)
    except InvalidGroup:
        return False
    return True


_valid_groups = st.text(min_size=1, max_size=16).filter(_encodable)  # 16 characters: at most 64 bytes


def _record(member: PeerId, seqno: int, groups: set[str]) -> MembershipRecord:
    return MembershipRecord(member, seqno, sorted_groups(groups), SIG)


@given(origin=_peers, seqno=_seqnos, data=st.binary(max_size=300))
@settings(max_examples=100, deadline=None)
def test_broadcast_round_trip(origin: PeerId, seqno: int, data: bytes) -> None:
    msg = Broadcast(origin, seqno, data, SIG)
    assert decode_broadcast(msg.encode()) == msg


@given(
    origin=_peers,
    seqno=_seqnos,
    group=_valid_groups,
    data=st.binary(max_size=300),
    targets=st.binary(min_size=32, max_size=32),
)
@settings(max_examples=100, deadline=None)
def test_multicast_round_trip(origin: PeerId, seqno: int, group: str, data: bytes, targets: bytes) -> None:
    msg = Multicast(origin, seqno, group, data, SIG, targets)
    assert decode_multicast(msg.encode()) == msg


@given(
    records=st.lists(st.tuples(_peers, _seqnos, st.sets(_valid_groups, max_size=5)), min_size=1, max_size=5)
)
@settings(max_examples=100, deadline=None)
def test_membership_round_trip(records: list[tuple[PeerId, int, set[str]]]) -> None:
    built = [_record(m, s, g) for m, s, g in records]
    body = encode_membership(built)
    assert decode_membership(body) == built
    assert len(body) == 2 + sum(record_size(r.groups) for r in built)


@pytest.mark.parametrize("decode", [decode_broadcast, decode_multicast, decode_membership])
@given(data=st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_decoders_raise_only_decode_error(decode: object, data: bytes) -> None:
    assert callable(decode)
    with contextlib.suppress(DecodeError):
        decode(data)


def _valid_bodies() -> list[tuple[object, bytes]]:
    peer = IDENT.peer_id
    return [
        (decode_broadcast, Broadcast(peer, 7, b"hello", SIG).encode()),
        (decode_multicast, Multicast(peer, 7, "grüppe", b"hello", SIG).encode()),
        (decode_membership, encode_membership([_record(peer, 7, {"a", "bé", "c"}), _record(peer, 8, set())])),
    ]


@given(data=st.data())
@settings(max_examples=400, deadline=None)
def test_mutations_of_valid_messages_raise_only_decode_error(data: st.DataObject) -> None:
    decode, body = data.draw(st.sampled_from(_valid_bodies()))
    assert callable(decode)
    raw = bytearray(body)
    op = data.draw(st.sampled_from(["flip", "truncate", "extend", "insert"]))
    if op == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    elif op == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=40))
    else:
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=3))
    with contextlib.suppress(DecodeError):
        decode(bytes(raw))


def test_decoders_refuse_versions_trailing_bytes_and_unsorted_groups() -> None:
    peer = IDENT.peer_id
    body = Broadcast(peer, 1, b"", SIG).encode()
    decode_broadcast(body)
    with pytest.raises(DecodeError, match="version"):
        decode_broadcast(b"\x02" + body[1:])
    with pytest.raises(DecodeError, match="truncated"):
        decode_broadcast(body[:-1])
    good = encode_membership([_record(peer, 1, {"a"})])
    with pytest.raises(DecodeError, match="trailing"):
        decode_membership(good + b"\x00")
    with pytest.raises(DecodeError, match="empty"):
        decode_membership(b"\x01\x00" + good[2:])
    # Groups out of order: the same set has one encoding only.
    unsorted = b"\x01\x01" + peer.key + (1).to_bytes(8, "big") + b"\x02\x01b\x01a" + SIG
    with pytest.raises(DecodeError, match="sorted"):
        decode_membership(unsorted)
    dup = b"\x01\x01" + peer.key + (1).to_bytes(8, "big") + b"\x02\x01a\x01a" + SIG
    with pytest.raises(DecodeError, match="sorted"):
        decode_membership(dup)
    not_utf8 = Multicast(peer, 1, "ab", b"", SIG).encode().replace(b"\x02ab", b"\x02\xff\xfe")
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_multicast(not_utf8)


@pytest.mark.parametrize("bad", ["", "x" * 65, "é" * 33, "\ud800", 7, None, b"bytes"])
def test_bad_group_names_raise_a_clear_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="group name"):
        group_bytes(bad)  # type: ignore[arg-type]
    assert issubclass(InvalidGroup, ValueError)


def test_group_names_of_one_to_64_utf8_bytes_are_accepted() -> None:
    assert group_bytes("a") == b"a"
    assert len(group_bytes("x" * 64)) == 64
    assert len(group_bytes("é" * 32)) == 64
    assert sorted_groups({"b", "a", "é"}) == ("a", "b", "é")


def test_signatures_are_domain_separated_and_cover_every_field() -> None:
    peer = IDENT.peer_id
    b = Broadcast(peer, 5, b"data", SIG).signed_bytes()
    m = Multicast(peer, 5, "g", b"data", SIG).signed_bytes()
    r = _record(peer, 5, {"g"}).signed_bytes()
    assert (
        b.startswith(BROADCAST_DOMAIN) and m.startswith(MULTICAST_DOMAIN) and r.startswith(MEMBERSHIP_DOMAIN)
    )
    assert len({b, m, r}) == 3
    sig = IDENT.sign(b)
    assert verify_signature(peer, b, sig)
    assert not verify_signature(peer, Broadcast(peer, 6, b"data", SIG).signed_bytes(), sig)
    assert not verify_signature(peer, Broadcast(peer, 5, b"datA", SIG).signed_bytes(), sig)
    assert not verify_signature(peer, m, sig)
    assert (
        Multicast(peer, 5, "g", b"data", SIG).signed_bytes()
        != Multicast(peer, 5, "h", b"data", SIG).signed_bytes()
    )
    assert _record(peer, 5, {"g"}).signed_bytes() != _record(peer, 5, {"g", "h"}).signed_bytes()


def test_target_filter_has_no_false_negatives_and_few_false_positives() -> None:
    members = [Identity(bytes([i]) * 32).peer_id for i in range(1, 9)]
    others = [Identity(i.to_bytes(2, "big") * 16).peer_id for i in range(300, 1300)]
    for seqno in (1, 2, 1_800_000_000_000):
        bits = target_filter(members, seqno)
        assert all(in_target_filter(bits, m, seqno) for m in members)
        false_positives = sum(in_target_filter(bits, p, seqno) for p in others)
        assert false_positives < 20  # about 0.02% expected with 8 members in 256 bits
        assert not any(in_target_filter(target_filter([], seqno), m, seqno) for m in members)
        assert all(in_target_filter(ALL_TARGETS, p, seqno) for p in others[:50])


def test_the_target_filter_is_outside_the_signature() -> None:
    peer = IDENT.peer_id
    a = Multicast(peer, 5, "g", b"data", SIG, target_filter([peer], 5))
    b = Multicast(peer, 5, "g", b"data", SIG)
    assert a.signed_bytes() == b.signed_bytes()
    assert a.encode() != b.encode()
    assert decode_multicast(a.encode()).targets == a.targets


def test_constructors_refuse_bad_values() -> None:
    peer = IDENT.peer_id
    with pytest.raises(ValueError, match="seqno"):
        Broadcast(peer, -1, b"", SIG)
    with pytest.raises(ValueError, match="signature"):
        Broadcast(peer, 1, b"", b"short")
    with pytest.raises(ValueError, match="sorted"):
        MembershipRecord(peer, 1, ("b", "a"), SIG)
    with pytest.raises(ValueError, match="group name"):
        Multicast(peer, 1, "", b"", SIG)
    with pytest.raises(ValueError, match="1 to 255"):
        encode_membership([])
