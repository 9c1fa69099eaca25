"""Garbage at the TURN cores is a counted drop, never an exception (hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.stun.attributes import Attr
from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode
from coremesh.turn import AllocationFailed, TurnClient, TurnServer, TurnServerConfig
from coremesh.turn.client import ClientState

SERVER = Address("198.51.100.1", 3478)
CLIENT = Address("192.0.2.10", 40000)
NOW = 1_700_000_000.0


def server() -> TurnServer:
    return TurnServer(
        TurnServerConfig(realm="r", users={"u": "p"}, relay_ipv4="198.51.100.1"), rng=random.Random(1)
    )


def stun_like() -> st.SearchStrategy[bytes]:
    """Well-framed STUN messages of TURN methods with random attributes."""
    attr = st.tuples(st.sampled_from([int(a) for a in Attr] + [0x7F00, 0xC000]), st.binary(max_size=24))

    def build(method: int, cls: int, attrs: list[tuple[int, bytes]]) -> bytes:
        msg = StunMessage(method, StunClass(cls), bytes(12), attrs)
        return encode(msg, fingerprint=False)

    return st.builds(
        build,
        st.sampled_from([int(m) for m in Method] + [0x00F]),
        st.integers(0, 3),
        st.lists(attr, max_size=6),
    )


def channel_like() -> st.SearchStrategy[bytes]:
    return st.builds(lambda n, body: n.to_bytes(2, "big") + body, st.integers(0x4000, 0x4FFF), st.binary())


inputs = st.one_of(st.binary(max_size=200), stun_like(), channel_like())


@settings(max_examples=400, deadline=None)
@given(inputs)
def test_server_never_raises_on_client_input(data: bytes) -> None:
    s = server()
    for transport in ("udp", "tcp"):
        effects = s.handle_client(data, CLIENT, SERVER, transport, NOW, wall=NOW)
        assert isinstance(effects, list)


@settings(max_examples=200, deadline=None)
@given(inputs)
def test_server_never_raises_on_peer_input(data: bytes) -> None:
    s = server()
    assert s.handle_peer(data, Address("198.51.100.1", 50000), Address("203.0.113.1", 1), NOW) == []
    assert s.stats()["drop_no_allocation"] == 1


@settings(max_examples=400, deadline=None)
@given(inputs)
def test_client_never_raises(data: bytes) -> None:
    client = TurnClient(SERVER, "u", "p", random_bytes=random.Random(1).randbytes)
    client.allocate(0.0)
    client.bind_channel(Address("203.0.113.1", 1), 0.0)
    assert client.on_datagram(data, 0.0) is None or isinstance(client.on_datagram(data, 0.0), tuple)


def test_garbage_is_counted() -> None:
    s = server()
    assert s.handle_client(b"\xff" * 30, CLIENT, SERVER, "udp", NOW, wall=NOW) == []
    assert s.handle_client(b"\x00\x03\x00\x01" + bytes(16), CLIENT, SERVER, "udp", NOW, wall=NOW) == []
    assert s.handle_client(b"\x40\x00\x00\x10ab", CLIENT, SERVER, "udp", NOW, wall=NOW) == []
    stats = s.stats()
    assert stats["drop_unknown_type"] == 1 and stats["drop_malformed"] == 2 and stats["drops"] == 3


# -------------------------------------------------------- 401/438 with random REALM and NONCE

text_bytes = st.one_of(
    st.binary(max_size=300),  # not UTF-8, too long, anything
    st.text(max_size=150).map(lambda t: t.encode("utf-8")),  # controls, RTL, unassigned, ...
    st.sampled_from([b"r", b"ex\x01ample", b"\xe2\x80\x8f", b"\xd8\xa7a", b"r" * 129, b"\xef\xbf\xbe"]),
)
challenge_attrs = st.lists(
    st.tuples(st.sampled_from([int(Attr.REALM), int(Attr.NONCE), int(Attr.ERROR_CODE)]), text_bytes),
    max_size=4,
)


def _error_reply(
    request: bytes, code: int, attrs: list[tuple[int, bytes]], *, realm: bool, garbage_first: bool = False
) -> bytes:
    """An error response; with ``garbage_first`` the random attributes (maybe an ERROR-CODE) lead."""
    err = decode(request).response(StunClass.ERROR)
    if garbage_first:
        err.attributes.extend(attrs)
    err.add_error(code)
    if realm:
        err.add_text(Attr.REALM, "r")
        err.add_text(Attr.NONCE, "n0nce")
    if not garbage_first:
        err.attributes.extend(attrs)
    return encode(err, fingerprint=False)


def _settles(client: TurnClient, now: float) -> None:
    """Nobody answers any more: within 40 s the client must have failed, never hang ALLOCATING."""
    client.datagrams_to_send()
    while (t := client.get_timer()) is not None and t < now + 100:
        now = t
        client.handle_timer(now)
    assert client.state is ClientState.FAILED
    events = []
    while (ev := client.next_event()) is not None:
        events.append(ev)
    assert len(events) == 1 and isinstance(events[0], AllocationFailed)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([401, 438]), challenge_attrs, st.booleans())
def test_client_first_challenge_with_random_realm_and_nonce(
    code: int, attrs: list[tuple[int, bytes]], first: bool
) -> None:
    client = TurnClient(SERVER, "u", "p", random_bytes=random.Random(1).randbytes)
    client.allocate(0.0)
    (request,) = client.datagrams_to_send()
    reply = _error_reply(request, code, attrs, realm=False, garbage_first=first)
    assert client.on_datagram(reply, 0.1) is None
    _settles(client, 0.1)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([401, 438]), challenge_attrs, st.booleans())
def test_client_later_challenge_with_random_realm_and_nonce(
    code: int, attrs: list[tuple[int, bytes]], first: bool
) -> None:
    client = TurnClient(SERVER, "u", "p", random_bytes=random.Random(1).randbytes)
    client.allocate(0.0)
    (request,) = client.datagrams_to_send()
    client.on_datagram(_error_reply(request, 401, [], realm=True), 0.1)  # a good first challenge
    (signed,) = client.datagrams_to_send()
    assert decode(signed).has(Attr.MESSAGE_INTEGRITY)
    reply = _error_reply(signed, code, attrs, realm=False, garbage_first=first)
    assert client.on_datagram(reply, 0.2) is None
    _settles(client, 0.2)
