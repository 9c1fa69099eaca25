"""The ROUTE_UPDATE codec: round trips, splitting into packets, and a decoder that only raises
DecodeError, on arbitrary bytes and on mutations of valid messages."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import DecodeError
from coremesh.identity import Identity, PeerId
from coremesh.routing.messages import (
    COUNTS_LEN,
    HEADER_LEN,
    INFINITY,
    Elsewhere,
    RouteEntry,
    RouteUpdate,
    UpdateParts,
    Want,
    decode_update,
    encode_update,
    item_size,
    pack_update,
)
from coremesh.routing.records import OriginRecord

IDS = [Identity(bytes([i]) * 32) for i in range(1, 9)]
PEERS = [i.peer_id for i in IDS]
RECORDS = [
    OriginRecord.create(p, 5 + n, PEERS[n + 1 : n + 3], i.sign)
    for n, (p, i) in enumerate(zip(PEERS, IDS, strict=True))
]

_u32 = st.integers(0, 2**32 - 1)
_peer = st.sampled_from(PEERS)
_entry = st.builds(
    RouteEntry, st.lists(_peer, min_size=1, max_size=6).map(tuple), st.integers(0, INFINITY - 1)
) | st.builds(  # based: the first id is the base
    RouteEntry,
    st.lists(_peer, min_size=2, max_size=6).map(tuple),
    st.integers(0, INFINITY - 1),
    st.just(True),
)


@st.composite
def updates(draw: st.DrawFn) -> RouteUpdate:
    msg_no = draw(_u32)
    empty = msg_no == 0
    return RouteUpdate(
        epoch=draw(_u32),
        msg_no=msg_no,
        ack_epoch=draw(_u32),
        acks=tuple(draw(st.lists(_u32, max_size=8))),
        records=() if empty else tuple(draw(st.lists(st.sampled_from(RECORDS), max_size=3))),
        routes=() if empty else tuple(draw(st.lists(_entry, max_size=8))),
        withdrawals=() if empty else tuple(draw(st.lists(_peer, max_size=4))),
        elsewhere=() if empty else tuple(draw(st.lists(_peer, max_size=4))),
        wants=() if empty else tuple(draw(st.lists(_peer, max_size=4))),
        view=draw(st.integers(0, 255)),
    )


@given(updates())
@settings(max_examples=150, deadline=None)
def test_round_trip(update: RouteUpdate) -> None:
    assert decode_update(encode_update(update)) == update


def test_ids_are_sent_once_per_message() -> None:
    a, b, c = PEERS[:3]
    one = encode_update(RouteUpdate(1, 1, routes=(RouteEntry((a, b, c), 10),)))
    two = encode_update(RouteUpdate(1, 1, routes=(RouteEntry((a, b, c), 10), RouteEntry((a, b), 5))))
    assert len(two) - len(one) == 3 + 2 * 2  # no new id: metric, hop count, two indices


@given(st.binary(max_size=600))
@settings(max_examples=400, deadline=None)
def test_decode_is_total(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_update(data)


@given(updates(), st.data())
@settings(max_examples=300, deadline=None)
def test_mutations_raise_only_decode_error(update: RouteUpdate, data: st.DataObject) -> None:
    raw = bytearray(encode_update(update))
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[i] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        del raw[i:]
    else:
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=40))
    with contextlib.suppress(DecodeError):
        decode_update(bytes(raw))


def test_malformed_messages_raise_decode_error() -> None:
    a, b = PEERS[:2]
    good = encode_update(RouteUpdate(1, 2, routes=(RouteEntry((a, b), 3),), withdrawals=(b,)))
    assert decode_update(good).withdrawals == (b,)
    head = encode_update(RouteUpdate(1, 2))[:HEADER_LEN]  # header, no acks
    ids_one = b"\x00\x00\x00\x01" + a.key  # id index 0 is a

    def body(sections: int, *parts: bytes) -> bytes:
        return head + bytes((sections,)) + b"".join(parts)

    def route(entry: bytes) -> bytes:
        return body(0x06, ids_one, b"\x00\x01" + entry)  # id table and one route entry

    assert decode_update(route(b"\x00\x05\x01\x00\x00")).routes == (RouteEntry((a,), 5),)
    cases = {
        "version": b"\x01" + good[1:],
        "trailing": good + b"\x00",
        "truncated": good[:-1],
        "index out of range": route(b"\x00\x05\x01\x00\x01"),
        "metric infinity": route(b"\xff\xff\x01\x00\x00"),
        "no hops": route(b"\x00\x05\x00"),
        "no based hops": route(b"\x00\x05\x80"),
        "a base alone": route(b"\x00\x05\x81\x00\x00"),
        "repeated id": body(0x06, b"\x00\x00\x00\x02" + a.key + a.key, b"\x00\x01\x00\x05\x01\x00\x00"),
        "want index out of range": body(0x22, ids_one, b"\x00\x01\x00\x07"),
        "pure ack with routes": good[:5] + b"\x00\x00\x00\x00" + good[9:],
        "bad record": body(0x01, b"\x01" + bytes(10)),
        "unknown section": body(0x40),
        "empty section": body(0x04, b"\x00\x00"),
        "empty id table": body(0x02, b"\x00\x00\x00\x00"),
    }
    for name, data in cases.items():
        with pytest.raises(DecodeError):
            decode_update(data)
        assert name


def test_a_pure_ack_carries_nothing_else() -> None:
    with pytest.raises(ValueError):
        RouteUpdate(1, 0, routes=(RouteEntry((PEERS[0],), 1),))
    ack = RouteUpdate(1, 0, ack_epoch=9, acks=(1, 2, 3))
    assert decode_update(encode_update(ack)) == ack


@given(
    st.lists(
        st.one_of(
            st.sampled_from(RECORDS),
            _entry,
            _peer,
            st.builds(Elsewhere, _peer),
            st.builds(Want, _peer),
        ),
        max_size=60,
    ),
    st.integers(300, 1200),
)
@settings(max_examples=100, deadline=None)
def test_pack_update_keeps_order_and_fits(items: list[object], budget: int) -> None:
    parts = pack_update(items, budget)  # type: ignore[arg-type]
    flat: list[object] = []
    for p in parts:
        assert p
        update = RouteUpdate(
            1,
            1,
            records=tuple(p.records),
            routes=tuple(p.routes),
            withdrawals=tuple(p.withdrawals),
            elsewhere=tuple(p.elsewhere),
            wants=tuple(p.wants),
        )
        body = encode_update(update)
        assert len(body) <= p.size <= budget  # size: an upper bound (sections may be left out)
        assert decode_update(body) == update
        flat += [*p.records, *p.routes, *p.withdrawals, *map(Elsewhere, p.elsewhere), *map(Want, p.wants)]
    assert sorted(map(repr, flat)) == sorted(map(repr, items))
    # Items go out in the order given: a record listed before a route is never sent after it.
    remaining = [
        [*p.records, *p.routes, *p.withdrawals, *map(Elsewhere, p.elsewhere), *map(Want, p.wants)]
        for p in parts
    ]
    k = 0
    for item in items:
        while item not in remaining[k]:
            k += 1
        remaining[k].remove(item)


def test_pack_update_refuses_an_item_that_cannot_fit() -> None:
    long = RouteEntry(tuple(PEERS), 1)
    assert item_size(long, set()) == 3 + 34 * len(PEERS)
    with pytest.raises(ValueError):
        pack_update([long], HEADER_LEN + COUNTS_LEN + 100)
    assert pack_update([], 1000) == []
    assert UpdateParts().size == HEADER_LEN + COUNTS_LEN


def test_entries_are_validated() -> None:
    with pytest.raises(ValueError):
        RouteEntry((), 1)
    with pytest.raises(ValueError):
        RouteEntry((PEERS[0],), INFINITY)
    with pytest.raises(ValueError):
        RouteEntry((PEERS[0],), 1, based=True)  # a base and nothing after it
    with pytest.raises(ValueError):
        RouteEntry(tuple(PEERS[:1]) * 128, 1)  # the hops byte's top bit marks a based entry
    with pytest.raises(ValueError):
        RouteUpdate(2**32, 1)
    assert RouteEntry((PEERS[0], PEERS[1]), 3).destination == PEERS[1]
    assert isinstance(PEERS[0], PeerId)
