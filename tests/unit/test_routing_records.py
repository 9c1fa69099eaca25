"""Origin records: signing, verification, the wire form, and a decoder that only raises DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import DecodeError
from coremesh.identity import Identity, PeerId
from coremesh.routing.records import RECORD_DOMAIN, OriginRecord, decode_record_from, record_size

ORIGIN = Identity(bytes(range(32)))
OTHER = Identity(bytes(range(1, 33)))
_keys = st.lists(st.binary(min_size=32, max_size=32), max_size=12, unique=True)


def peers(keys: list[bytes]) -> list[PeerId]:
    return [PeerId(k) for k in keys if k != ORIGIN.peer_id.key]


@given(seqno=st.integers(0, 2**64 - 1), keys=_keys)
@settings(max_examples=60, deadline=None)
def test_round_trip_and_verify(seqno: int, keys: list[bytes]) -> None:
    record = OriginRecord.create(ORIGIN.peer_id, seqno, reversed(peers(keys)), ORIGIN.sign)
    assert [n.key for n in record.neighbours] == sorted(n.key for n in peers(keys))
    raw = record.encode()
    assert len(raw) == record.size() == record_size(len(record.neighbours))
    assert OriginRecord.decode(raw) == record
    assert record.verify()
    assert decode_record_from(b"xx" + raw + b"tail", 2) == (record, 2 + len(raw))


def test_the_signature_covers_every_field() -> None:
    a, b = OTHER.peer_id, Identity(bytes(range(2, 34))).peer_id
    record = OriginRecord.create(ORIGIN.peer_id, 7, [a, b], ORIGIN.sign)
    assert record.message().startswith(RECORD_DOMAIN)
    forged = [
        OriginRecord(ORIGIN.peer_id, 8, record.neighbours, record.signature),
        OriginRecord(ORIGIN.peer_id, 7, (a,), record.signature),
        OriginRecord(
            OTHER.peer_id, 7, tuple(sorted([ORIGIN.peer_id, b], key=lambda p: p.key)), record.signature
        ),
        OriginRecord.create(ORIGIN.peer_id, 7, [a, b], OTHER.sign),  # signed by someone else
    ]
    for bad in forged:
        assert not bad.verify()
    # A signature over the bare fields without the domain does not verify either.
    bare = ORIGIN.sign(record.message()[len(RECORD_DOMAIN) :])
    assert not OriginRecord(ORIGIN.peer_id, 7, record.neighbours, bare).verify()
    # An injected verifier is what decides.
    assert not record.verify(lambda peer, msg, sig: False)


def test_construction_is_validated() -> None:
    a, b = sorted([OTHER.peer_id, Identity(bytes(range(2, 34))).peer_id], key=lambda p: p.key)
    sig = bytes(64)
    with pytest.raises(ValueError):
        OriginRecord(ORIGIN.peer_id, 1, (b, a), sig)  # unsorted
    with pytest.raises(ValueError):
        OriginRecord(ORIGIN.peer_id, 1, (a, a), sig)  # repeated
    with pytest.raises(ValueError):
        OriginRecord(ORIGIN.peer_id, 1, (ORIGIN.peer_id,), sig)  # itself
    with pytest.raises(ValueError):
        OriginRecord(ORIGIN.peer_id, -1, (), sig)
    with pytest.raises(ValueError):
        OriginRecord(ORIGIN.peer_id, 1, (), b"short")


def test_malformed_records_raise_decode_error() -> None:
    a, b = sorted([OTHER.peer_id, Identity(bytes(range(2, 34))).peer_id], key=lambda p: p.key)
    raw = OriginRecord.create(ORIGIN.peer_id, 1, [a, b], ORIGIN.sign).encode()
    head = raw[:40]
    cases = {
        "truncated": raw[:-1],
        "trailing": raw + b"\x00",
        "unsorted": head + b"\x00\x02" + b.key + a.key + raw[-64:],
        "repeated": head + b"\x00\x02" + a.key + a.key + raw[-64:],
        "itself": head + b"\x00\x01" + ORIGIN.peer_id.key + raw[-64:],
        "too many": head + b"\x01\x00" + bytes(32 * 256 + 64),
        "empty": b"",
    }
    for name, data in cases.items():
        with pytest.raises(DecodeError):
            OriginRecord.decode(data)
        assert name


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_decode_is_total(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        OriginRecord.decode(data)


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_a_mutated_record_is_refused_or_fails_verification(data: st.DataObject) -> None:
    record = OriginRecord.create(ORIGIN.peer_id, 99, [OTHER.peer_id], ORIGIN.sign)
    raw = bytearray(record.encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        back = OriginRecord.decode(bytes(raw))
    except DecodeError:
        return
    assert not back.verify()


def test_a_held_version_is_reused_only_for_the_very_same_bytes() -> None:
    neighbours = [PeerId(bytes([i]) * 32) for i in (7, 8, 9)]
    held = OriginRecord.create(ORIGIN.peer_id, 5, neighbours, ORIGIN.sign)
    lookup = {ORIGIN.peer_id.key: held}.get
    data = held.encode()
    same, end = decode_record_from(data, 0, lookup)
    assert same is held and end == len(data)
    # Another list under the same seqno and signature is decoded, not taken for the held one.
    other = OriginRecord(ORIGIN.peer_id, 5, (*neighbours[:2], PeerId(b"\x0a" * 32)), held.signature)
    decoded, _ = decode_record_from(other.encode(), 0, lookup)
    assert decoded is not held and decoded == other and not decoded.verify()
    newer = OriginRecord.create(ORIGIN.peer_id, 6, neighbours, ORIGIN.sign)
    assert decode_record_from(newer.encode(), 0, lookup)[0] == newer
    # Malformed bytes still raise, held version or not.
    with pytest.raises(DecodeError):
        decode_record_from(data[:-1], 0, lookup)
