"""DHT datagrams: round trips, signature checks, padding, and total decoding (fuzz)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.dht import messages as m
from coremesh.errors import AuthenticationFailed, DecodeError
from coremesh.identity import Identity, PeerId

from .dht_helpers import record

IDENT = Identity(bytes(range(32)))
SIGN = IDENT.sign
ME = IDENT.peer_id

_peer = st.binary(min_size=32, max_size=32).map(PeerId)
_v4 = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 65535)).map(
    lambda t: Address(".".join(str((t[0] >> s) & 255) for s in (24, 16, 8, 0)), t[1])
)
_v6 = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 65535)).map(
    lambda t: Address(m.ipaddress.IPv6Address(t[0]).compressed, t[1])
)
_addr = st.one_of(_v4, _v6).filter(lambda a: not (":" in a.host and a.host.startswith("::ffff:")))
_contacts = st.lists(st.tuples(_peer, _addr), max_size=20).map(tuple)
_record = st.integers(0, 1000).map(lambda s: record(IDENT, seq=s))

_bodies = st.one_of(
    st.just(m.Ping()),
    _addr.map(m.Pong),
    _peer.map(m.FindNode),
    _peer.map(m.FindValue),
    _contacts.map(m.Nodes),
    st.builds(m.Value, st.one_of(st.none(), _record), _contacts.map(lambda c: c[:8])),
    _record.map(m.Store),
    st.sampled_from(list(m.StoreStatus)).map(m.Stored),
    st.lists(_record, max_size=4).map(lambda rs: m.Pex(tuple(rs))),
)


def _normal(a: Address) -> Address:
    ip = m.ipaddress.ip_address(a.host)
    if isinstance(ip, m.ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return Address(str(ip.ipv4_mapped), a.port)
    return a


@given(body=_bodies, txid=st.integers(0, 2**64 - 1))
@settings(max_examples=200, deadline=None)
def test_round_trip(body: m.Body, txid: int) -> None:
    data = m.encode_message(SIGN, ME, txid, body, pad_to=m.REQUEST_PAD)
    assert len(data) <= m.MAX_DATAGRAM
    msg = m.decode_message(data)
    assert msg.txid == txid and msg.sender == ME
    assert msg.body == body
    if body.__class__ in (m.FindNode, m.FindValue, m.Ping):
        assert len(data) == m.REQUEST_PAD  # requests are padded
    if isinstance(body, m.Nodes | m.Pong | m.Stored):
        assert len(data) == m.OVERHEAD + len(m.encode_body(body))  # responses never are


def test_full_response_fits_three_times_a_padded_request() -> None:
    six = Address("2001:db8::1", 1)
    contacts = tuple((PeerId(bytes([i]) * 32), six) for i in range(20))
    response = m.encode_message(SIGN, ME, 1, m.Nodes(contacts))
    request = m.encode_message(SIGN, ME, 1, m.FindNode(ME), pad_to=m.REQUEST_PAD)
    assert len(response) <= m.AMPLIFICATION * len(request) <= m.MAX_DATAGRAM


def test_signature_is_checked() -> None:
    data = bytearray(m.encode_message(SIGN, ME, 7, m.Ping()))
    data[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        m.decode_message(bytes(data))
    other = Identity(bytes(range(1, 33)))
    forged = m.encode_message(other.sign, ME, 7, m.Ping())  # claims to be ME, signed by another
    with pytest.raises(AuthenticationFailed):
        m.decode_message(forged)


def test_specific_malformations() -> None:
    good = m.encode_message(SIGN, ME, 7, m.FindNode(ME), pad_to=m.REQUEST_PAD)
    with pytest.raises(DecodeError, match="truncated"):
        m.parse_envelope(good[:50])
    with pytest.raises(DecodeError, match="too large"):
        m.parse_envelope(good + bytes(m.MAX_DATAGRAM))
    with pytest.raises(DecodeError, match="not a DHT"):
        m.parse_envelope(b"\xe4" + good[1:])
    with pytest.raises(DecodeError, match="version"):
        m.parse_envelope(good[:1] + b"\x09" + good[2:])
    with pytest.raises(DecodeError, match="kind"):
        m.parse_envelope(good[:2] + b"\x63" + good[3:])
    with pytest.raises(DecodeError, match="padding"):
        m.decode_body(m.Kind.FIND_NODE, ME.key + b"\x01")
    with pytest.raises(DecodeError, match="trailing"):
        m.decode_body(m.Kind.STORED, b"\x00\x00")
    with pytest.raises(DecodeError, match="family"):
        m.decode_body(m.Kind.PONG, b"\x05" + bytes(6))
    with pytest.raises(DecodeError, match="contacts"):
        m.decode_body(m.Kind.NODES, bytes([m.MAX_CONTACTS + 1]))
    with pytest.raises(DecodeError, match="status"):
        m.decode_body(m.Kind.STORED, b"\x09")


@given(st.binary(max_size=1300))
@settings(max_examples=500, deadline=None)
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError, AuthenticationFailed):
        m.decode_message(data)


@given(body=_bodies, data=st.data())
@settings(max_examples=300, deadline=None)
def test_fuzz_mutated_bodies(body: m.Body, data: st.DataObject) -> None:
    raw = bytearray(m.encode_body(body))
    if raw:
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        with contextlib.suppress(DecodeError):
            m.decode_body(m.kind_of(body), candidate)
