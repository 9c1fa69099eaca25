"""Peer records: signing, bounded decoding, refusal reasons, and the record store."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.dht import InvalidRecord, PeerRecord, RecordRejected
from coremesh.dht.messages import StoreStatus
from coremesh.dht.records import MAX_ADDRESSES, MAX_RECORD_SIZE
from coremesh.dht.store import RecordStore
from coremesh.errors import DecodeError
from coremesh.identity import Identity

from .dht_helpers import WALL, identity, record

IDENT = Identity(bytes(range(32)))
OTHER = Identity(bytes(range(1, 33)))

_host = st.tuples(
    st.integers(1, 254), st.integers(0, 255), st.integers(0, 255), st.integers(1, 254), st.integers(1, 65535)
).map(lambda t: ("host", f"{t[0]}.{t[1]}.{t[2]}.{t[3]}:{t[4]}"))
_v6 = st.integers(1, 65535).map(lambda p: ("srflx", f"[2001:db8::1]:{p}"))
_keyed = st.integers(1, 65535).map(lambda p: ("keyed", f"wss://198.51.100.7:{p}/relay"))
_addresses = st.lists(st.one_of(_host, _v6, _keyed), max_size=4).map(tuple)


@given(
    seq=st.integers(0, 2**64 - 1),
    expires=st.floats(0, 2e10, allow_nan=False, allow_infinity=False),
    addrs=_addresses,
)
@settings(max_examples=60, deadline=None)
def test_round_trip(seq: int, expires: float, addrs: tuple[tuple[str, str], ...]) -> None:
    r = PeerRecord.create(IDENT, seq, expires, addrs)
    back = PeerRecord.decode(r.encode())
    assert back == r
    assert back.verify()


@given(st.binary(max_size=700))
@settings(max_examples=300, deadline=None)
def test_decode_is_total(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        PeerRecord.decode(data)


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_mutated_record_is_refused_or_rejected(data: st.DataObject) -> None:
    raw = bytearray(record(IDENT).encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        r = PeerRecord.decode(bytes(raw))
    except DecodeError:
        return
    with pytest.raises(RecordRejected):
        r.check(WALL)


def test_bad_signature_expired_and_future_are_refused_with_reasons() -> None:
    good = record(IDENT)
    good.check(WALL)
    forged = PeerRecord(OTHER.peer_id, good.seq, good.expires_at, good.addresses, good.signature)
    with pytest.raises(RecordRejected) as exc:
        forged.check(WALL)
    assert exc.value.reason == "bad_signature"
    with pytest.raises(RecordRejected) as exc:
        good.check(WALL + 7200)
    assert exc.value.reason == "expired"
    far = PeerRecord.create(IDENT, 1, WALL + 10 * 86400, [])
    with pytest.raises(RecordRejected) as exc:
        far.check(WALL)
    assert exc.value.reason == "too_far_future"


def test_invalid_values_are_refused_locally() -> None:
    with pytest.raises(InvalidRecord):
        PeerRecord.create(IDENT, 1, WALL, [("bogus", "1.2.3.4:5")])
    with pytest.raises(InvalidRecord):
        PeerRecord.create(IDENT, 1, WALL, [("host", "example.com:5")])
    with pytest.raises(InvalidRecord):
        PeerRecord.create(IDENT, -1, WALL, [])
    with pytest.raises(InvalidRecord):
        PeerRecord.create(IDENT, 1, float("nan"), [])
    with pytest.raises(InvalidRecord):
        PeerRecord.create(IDENT, 1, WALL, [("host", "1.2.3.4:5")] * (MAX_ADDRESSES + 1))
    long_url = "wss://198.51.100.7:443/" + "a" * 100
    with pytest.raises(InvalidRecord, match="bytes"):
        PeerRecord.create(IDENT, 1, WALL, [("keyed", long_url)] * 6)


def test_decode_bounds() -> None:
    with pytest.raises(DecodeError, match="too large"):
        PeerRecord.decode(bytes(MAX_RECORD_SIZE + 1))
    with pytest.raises(DecodeError, match="truncated"):
        PeerRecord.decode(record(IDENT).encode()[:50])
    raw = bytearray(record(IDENT).encode())
    raw[0] = 9
    with pytest.raises(DecodeError, match="version"):
        PeerRecord.decode(bytes(raw))


def test_store_newest_seq_wins_and_older_is_refused() -> None:
    store = RecordStore(OTHER.peer_id, max_records=10, max_ttl=86400)
    assert store.put(record(IDENT, seq=2), WALL) is StoreStatus.STORED
    assert store.put(record(IDENT, seq=2), WALL) is StoreStatus.STORED  # the same record again
    with pytest.raises(RecordRejected) as exc:
        store.put(record(IDENT, seq=1), WALL)
    assert exc.value.reason == "stale_seq"
    with pytest.raises(RecordRejected) as exc:
        store.put(record(IDENT, seq=2, addr="192.0.2.9:1"), WALL)
    assert exc.value.reason == "stale_seq"
    store.put(record(IDENT, seq=3), WALL)
    got = store.get(IDENT.peer_id, WALL)
    assert got is not None and got.seq == 3
    assert store.get(IDENT.peer_id, WALL + 7200) is None  # expired records are not served


def test_store_is_bounded_and_keeps_the_closest() -> None:
    local = identity(random.Random(5))
    store = RecordStore(local.peer_id, max_records=5, max_ttl=86400)
    rng = random.Random(6)
    idents = [identity(rng) for _ in range(20)]
    for ident in idents:
        try:
            store.put(record(ident), WALL)
        except RecordRejected as exc:
            assert exc.reason == "store_full"
    assert len(store) == 5
    closest = sorted(idents, key=lambda i: local.peer_id.distance(i.peer_id))[:5]
    assert {r.peer_id for r in store.records()} == {i.peer_id for i in closest}
    assert store.purge(WALL + 7200) == 5
