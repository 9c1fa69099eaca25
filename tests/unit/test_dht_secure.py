"""The DHT's outer packets: Noise N seals, HELLO, replay window, anti-amplification of every reply,
and no peer list in clear (coremesh/dht/secure.py)."""

from __future__ import annotations

import contextlib
import ipaddress
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.dht import DhtConfig, DhtNode, PeerRecord
from coremesh.dht import messages as m
from coremesh.dht import secure as sec
from coremesh.errors import AuthenticationFailed, DecodeError
from coremesh.identity import Identity, PeerId
from coremesh.secure.noise import HandshakeState, KeyPair
from coremesh.sim.network import LinkProfile, SimNetwork

from .dht_helpers import WALL, address, drain, identity, node, record, sealed

RESPONDER = Identity(bytes(range(32)))
REQUESTER = Identity(bytes(range(1, 33)))
_addr = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 65535)).map(
        lambda t: Address(".".join(str((t[0] >> s) & 255) for s in (24, 16, 8, 0)), t[1])
    ),
    st.tuples(st.integers(1, 2**32 - 1), st.integers(0, 65535)).map(
        lambda t: Address(str(ipaddress.IPv6Address((0x20010DB8 << 96) | t[0])), t[1])
    ),
)


# ---- the seal -------------------------------------------------------------------------------------


def test_the_seal_is_noise_message_one_under_the_same_key_schedule() -> None:
    """Noise N's first message is NK's first message under another protocol name (both are
    ``<- s ... -> e, es``): the vector-checked HandshakeState, run as NK, gives the same bytes."""
    e_private = bytes(range(100, 132))
    rs = RESPONDER.x25519_public
    payload = b"payload of the first message"
    name = "Noise_NK_25519_ChaChaPoly_BLAKE2s"
    hs = HandshakeState(
        name,
        initiator=True,
        prologue=sec.PROLOGUE,
        e=KeyPair.from_private(e_private),
        rs=rs,
        random_bytes=lambda n: bytes(n),
    )
    e_public = KeyPair.from_private(e_private).public
    k, h, _ = sec._handshake(e_public, rs, sec._dh(e_private, rs), name.encode())
    assert hs.write_message(payload) == e_public + sec._encrypt(k, h, payload)
    responder = HandshakeState(
        name,
        initiator=False,
        prologue=sec.PROLOGUE,
        s=KeyPair.from_private(RESPONDER.x25519_private),
        random_bytes=lambda n: bytes(n),
    )
    assert responder.read_message(e_public + sec._encrypt(k, h, payload)) == payload


@given(
    message=st.binary(max_size=1100),
    sent_at=st.floats(0, 4e9),
    txid=st.integers(0, 2**64 - 1),
    e=st.binary(min_size=32, max_size=32),
    tokens=st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)
@settings(max_examples=100, deadline=None)
def test_seal_open_reply_round_trip(
    message: bytes, sent_at: float, txid: int, e: bytes, tokens: tuple[bytes, bytes]
) -> None:
    data, key = sec.seal(RESPONDER.peer_id, message, sent_at, e, tokens[0])
    assert len(data) == len(message) + sec.SEALED_OVERHEAD
    packet = sec.parse_packet(data)
    assert isinstance(packet, sec.Sealed)
    opened = sec.open_sealed(RESPONDER.x25519_private, RESPONDER.x25519_public, packet)
    assert opened.message == message and opened.reply_key == key and opened.token == tokens[0]
    assert abs(opened.sent_at - sent_at) <= 0.001
    reply = sec.seal_reply(opened.reply_key, txid, message[:900], tokens[1])
    parsed = sec.parse_packet(reply)
    assert isinstance(parsed, sec.SealedReply) and parsed.txid == txid
    assert sec.open_reply(key, parsed) == (tokens[1], message[:900])
    with pytest.raises(AuthenticationFailed):  # only the responder's key opens the request
        sec.open_sealed(REQUESTER.x25519_private, REQUESTER.x25519_public, packet)
    with pytest.raises(AuthenticationFailed):  # and only this request's key the reply
        sec.open_reply(bytes(32), parsed)


@given(nonce=st.integers(0, 2**64 - 1), observed=_addr, size=st.integers(sec.HELLO_SIZE, m.MAX_DATAGRAM))
@settings(max_examples=100, deadline=None)
def test_hello_round_trip(nonce: int, observed: Address, size: int) -> None:
    hello = sec.parse_packet(sec.encode_hello(nonce, size))
    assert hello == sec.Hello(nonce, size)
    reply = sec.encode_hello_reply(RESPONDER.sign, RESPONDER.peer_id, nonce, observed)
    assert len(reply) <= sec.HELLO_REPLY_MAX <= m.AMPLIFICATION * sec.HELLO_SIZE
    parsed = sec.parse_packet(reply)
    assert isinstance(parsed, sec.HelloReply) and parsed.verify()
    assert (parsed.nonce, parsed.peer_id, parsed.observed) == (nonce, RESPONDER.peer_id, observed)
    forged = bytearray(reply)
    forged[5] ^= 1  # the nonce: the signature no longer holds
    again = sec.parse_packet(bytes(forged))
    assert isinstance(again, sec.HelloReply) and not again.verify()


# ---- total decoding (hypothesis on every new decoder) ---------------------------------------------

_HEADS = [b"", b"\xe7", b"\xe7\x01", b"\xe7\x02"] + [bytes((0xE7, 2, k)) for k in sec.OuterKind]


@given(head=st.sampled_from(_HEADS), data=st.binary(max_size=1300))
@settings(max_examples=500, deadline=None)
def test_parse_packet_raises_only_decode_error(head: bytes, data: bytes) -> None:
    try:
        packet = sec.parse_packet(head + data)
    except DecodeError:
        return
    if isinstance(packet, sec.HelloReply):
        assert packet.verify() in (True, False)


@given(e=st.binary(min_size=32, max_size=32), ciphertext=st.binary(max_size=1200))
@settings(max_examples=300, deadline=None)
def test_open_sealed_raises_only_typed_errors(e: bytes, ciphertext: bytes) -> None:
    with pytest.raises((AuthenticationFailed, DecodeError)):
        sec.open_sealed(RESPONDER.x25519_private, RESPONDER.x25519_public, sec.Sealed(e, ciphertext))


@given(key=st.binary(min_size=32, max_size=32), data=st.binary(max_size=1200))
@settings(max_examples=300, deadline=None)
def test_open_reply_raises_only_authentication_failed(key: bytes, data: bytes) -> None:
    packet = sec.parse_packet(b"\xe7\x02\x13" + bytes(8) + bytes(32) + data)
    assert isinstance(packet, sec.SealedReply)
    with pytest.raises(AuthenticationFailed):
        sec.open_reply(key, packet)


def test_low_order_keys_and_bad_peer_ids_are_typed_errors() -> None:
    with pytest.raises(AuthenticationFailed):  # an all-zero ephemeral key: the DH degenerates
        sec.open_sealed(RESPONDER.x25519_private, RESPONDER.x25519_public, sec.Sealed(bytes(32), bytes(40)))
    not_a_point = next(
        PeerId(bytes([i]) + bytes(31))
        for i in range(256)
        if not sec.can_seal_to(PeerId(bytes([i]) + bytes(31)))
    )
    assert not sec.can_seal_to(not_a_point)
    with pytest.raises(ValueError):  # InvalidPeerId
        sec.seal(not_a_point, b"x", WALL, bytes(range(32)))


def test_versions_and_sizes_are_checked() -> None:
    with pytest.raises(sec.UnsupportedVersion):
        sec.parse_packet(b"\xe7\x01\x03" + bytes(200))  # a version 1 FIND_NODE
    with pytest.raises(DecodeError, match="HELLO of"):
        sec.parse_packet(sec.encode_hello(1)[: sec.HELLO_SIZE - 1])
    with pytest.raises(DecodeError, match="padding"):
        sec.parse_packet(sec.encode_hello(1)[:-1] + b"\x01")
    with pytest.raises(DecodeError, match="too large"):
        sec.parse_packet(sec.encode_hello(1, m.MAX_DATAGRAM + 1))
    with pytest.raises(DecodeError, match="unknown DHT packet kind"):
        sec.parse_packet(b"\xe7\x02\x03" + bytes(200))  # an inner kind is never an outer one


# ---- replay ---------------------------------------------------------------------------------------


def test_replay_cache_window_copies_and_floor() -> None:
    cache = sec.ReplayCache(window=10.0, capacity=3)
    assert cache.check(100.0, 111.0) == "stale_request"
    assert cache.check(121.0, 110.0) == "stale_request"  # from the future, beyond the skew allowed
    for i in range(3):
        assert cache.check(100.0 + i, 105.0) is None
        cache.add(bytes([i]) * 32, 100.0 + i, 105.0)
    assert cache.seen(bytes([1]) * 32) and len(cache) == 3
    cache.add(bytes([9]) * 32, 104.0, 105.0)  # full: the oldest (sent at 100) is forgotten...
    assert not cache.seen(bytes([0]) * 32) and len(cache) == 3
    assert cache.check(100.0, 105.0) == "replay_floor"  # ...and nothing sent by then is taken
    assert cache.check(100.5, 105.0) is None
    cache.purge(112.5)  # sent at 101 and 102: out of the window
    assert len(cache) == 1 and cache.seen(bytes([9]) * 32)


def test_sealed_requests_are_refused_when_replayed_or_out_of_the_window() -> None:
    a = node(1, DhtConfig(replay_window=30.0))
    src, other = Address("10.0.9.1", 4000), Address("10.0.9.2", 4000)
    ping, _ = sealed(REQUESTER, a.peer_id, m.Ping(), now=1.0)
    a.receive_datagram(ping, src, 1.0)
    a.receive_datagram(ping, src, 1.5)
    a.receive_datagram(ping, other, 2.0)  # a copy from anywhere is still a copy
    stale, _ = sealed(REQUESTER, a.peer_id, m.Ping(), txid=2, now=1.0)
    a.receive_datagram(stale, src, 40.0)
    future, _ = sealed(REQUESTER, a.peer_id, m.Ping(), txid=3, now=80.0)
    a.receive_datagram(future, src, 41.0)
    replies = [d for d, _ in a.datagrams_to_send(41.0) if isinstance(sec.parse_packet(d), sec.SealedReply)]
    assert len(replies) == 1
    assert a.counters["replayed_request"] == 2 and a.counters["stale_request"] == 2


# ---- anti-amplification: every reply type ---------------------------------------------------------


def _loaded_node() -> tuple[DhtNode, PeerId]:
    """A node with a full answer to give: 40 IPv6 contacts and the largest record it stores."""
    a = node(1)
    rng = random.Random(9)
    for i in range(40):
        a.table.update(identity(rng).peer_id, Address(f"2001:db8:{i}:ffff:ffff:ffff:ffff:1", 65535), 0.0)
    owner = identity(rng)
    addresses = [("host", f"[2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}]:65535") for i in range(8)]
    big = PeerRecord.create(owner, 1, WALL + 3600, addresses)
    a.store.put(big, WALL)
    return a, owner.peer_id


def test_every_reply_stays_within_three_times_its_request() -> None:
    """Each request kind, at its smallest and padded, from a fresh identity at a fresh address (so
    that the node also sends its verification PING there): everything the node sends to that
    address in answer stays within 3x the request's bytes, and every reply type is met."""
    a, target = _loaded_node()
    requests: list[m.Body] = [
        m.Ping(),
        m.FindNode(target),
        m.FindValue(target),  # a record and contacts
        m.FindValue(PeerId(bytes(32))),  # contacts only
        m.Store(record(Identity(bytes(range(50, 82))))),
        m.Pex((record(Identity(bytes(range(60, 92)))),)),
    ]
    rng = random.Random(4)
    seen: set[object] = set()
    now = 1.0
    n = 0
    for body in requests:
        for pad in (0, m.REQUEST_PAD - sec.SEALED_OVERHEAD):
            n += 1
            src = Address(f"10.7.{n}.1", 4000)
            data, key = sealed(identity(rng), a.peer_id, body, txid=n, pad_to=pad, now=now)
            a.receive_datagram(data, src, now)
            sent = [d for d, to in a.datagrams_to_send(now) if to == src]
            assert sum(len(d) for d in sent) <= m.AMPLIFICATION * len(data), (body, pad)
            assert all(len(d) <= m.MAX_DATAGRAM for d in sent)
            for d in sent:
                packet = sec.parse_packet(d)
                if isinstance(packet, sec.SealedReply):
                    seen.add(m.decode_message(sec.open_reply(key, packet)[1]).kind)
    for size in (sec.HELLO_SIZE, 200):
        n += 1
        src = Address(f"10.7.{n}.1", 4000)
        hello = sec.encode_hello(n, size)
        a.receive_datagram(hello, src, now)
        sent = [d for d, to in a.datagrams_to_send(now) if to == src]
        assert sum(len(d) for d in sent) <= m.AMPLIFICATION * len(hello)
        seen.update(type(sec.parse_packet(d)) for d in sent)
    a.receive_datagram(sec.encode_hello(99)[:-1], Address("10.7.99.1", 4000), now)  # too short
    assert a.datagrams_to_send(now) == [] and a.counters["malformed"] == 1
    assert seen == set(m.RESPONSE_TO.values()) | {sec.HelloReply}  # every reply type was met
    assert a.counters["amplification"] == 0


# ---- no peer list in clear ------------------------------------------------------------------------


class Tap:
    """Records every datagram an endpoint sends (source, destination, bytes)."""

    def __init__(self, inner: DhtNode, at: Address, log: list[tuple[Address, Address, bytes]]) -> None:
        self.inner, self.at, self.log = inner, at, log

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.inner.receive_datagram(data, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = self.inner.datagrams_to_send(now)
        self.log += [(self.at, to, d) for d, to in out]
        return out

    def get_timer(self) -> float | None:
        return self.inner.get_timer()

    def handle_timer(self, now: float) -> None:
        self.inner.handle_timer(now)


def _marks(peer: PeerId, at: Address) -> list[bytes]:
    """The ways a peer or its address could show in clear: the PeerId, its X25519 key, the packed
    address (as in contacts) and its text (as in records)."""
    return [peer.key, peer.x25519_public(), m.encode_address(at)[1:], str(at).encode()]


def test_no_peer_id_or_address_of_a_third_peer_travels_in_clear() -> None:
    net = SimNetwork(seed=5, default=LinkProfile(latency=0.01))
    log: list[tuple[Address, Address, bytes]] = []
    nodes = [node(40 + i) for i in range(8)]
    addrs = [address(i) for i in range(8)]
    for n, at in zip(nodes, addrs, strict=True):
        net.attach(at, Tap(n, at, log))
    for i, (n, at) in enumerate(zip(nodes, addrs, strict=True)):
        if i:
            n.bootstrap([addrs[0]], net.clock.now)
        n.publish(PeerRecord.create(n.identity, 1, WALL + 3600, [("host", str(at))]), net.clock.now)
        net.run_for(2)
    nodes[3].gossip([(nodes[4].peer_id, addrs[4])], net.clock.now)  # PEX: records of others
    net.run_for(5)
    qid = nodes[1].start_lookup(nodes[7].peer_id, net.clock.now)
    net.run_for(5)
    (done,) = [e for e in drain(nodes[1]) if getattr(e, "query_id", None) == qid]
    assert done.record is not None and done.record.addresses == (("host", str(addrs[7])),)  # type: ignore[attr-defined]
    assert nodes[4].counters["pex_received"] == 1
    by_addr = {at: n for n, at in zip(nodes, addrs, strict=True)}
    kinds: set[type] = set()
    for src, dst, data in log:
        packet = sec.parse_packet(data)
        kinds.add(type(packet))
        for at, n in by_addr.items():
            # A HELLO_REPLY names its sender and tells the receiver its own address; that is all.
            if isinstance(packet, sec.HelloReply) and at in (src, dst):
                continue
            for mark in _marks(n.peer_id, at):
                assert mark not in data, (type(packet).__name__, src, dst, at)
    assert kinds == {sec.Hello, sec.HelloReply, sec.Sealed, sec.SealedReply}
    # The check can fail: the same answers in version 1's clear form would carry the contacts.
    clear = m.encode_message(RESPONDER.sign, RESPONDER.peer_id, 1, m.Nodes(((nodes[7].peer_id, addrs[7]),)))
    assert any(mark in clear for mark in _marks(nodes[7].peer_id, addrs[7]))
    assert done.record.encode().find(str(addrs[7]).encode()) > 0  # type: ignore[attr-defined]


def test_stamp_is_milliseconds() -> None:
    data, _ = sec.seal(RESPONDER.peer_id, b"", 1.5, bytes(range(32)))
    packet = sec.parse_packet(data)
    assert isinstance(packet, sec.Sealed)
    opened = sec.open_sealed(RESPONDER.x25519_private, RESPONDER.x25519_public, packet)
    assert opened.sent_at == 1.5


# ---- behind the seal: what a peer's key can make us read --------------------------------------------

_ANSWERER = Identity(bytes(range(70, 102)))
_ANSWERER_AT = Address("10.6.0.1", 4000)


@given(inner=st.binary(max_size=1100), resign=st.booleans(), data=st.data())
@settings(max_examples=300, deadline=None)
def test_a_reply_that_opens_but_holds_garbage_is_a_counted_drop(
    inner: bytes, resign: bool, data: st.DataObject
) -> None:
    """Whatever bytes the peer we asked seals under our request's key (random, or a message of any
    kind with a random body, validly signed), the requester counts it and demotes the peer; nothing
    else happens (no exception, no table entry)."""
    asker = node(61)
    asker.add_contact(_ANSWERER.peer_id, _ANSWERER_AT, 1.0)
    sent = asker.datagrams_to_send(1.0)
    request = sec.parse_packet(sent[0][0])
    assert isinstance(request, sec.Sealed)
    opened = sec.open_sealed(_ANSWERER.x25519_private, _ANSWERER.x25519_public, request)
    asked = m.parse_envelope(opened.message)
    if resign:
        kind = data.draw(st.sampled_from(list(m.Kind)))
        head = struct.pack("!BBBQ32s", 0xE7, m.DHT_VERSION, kind, asked.txid, _ANSWERER.peer_id.key)
        inner = head + inner[:900]
        inner += _ANSWERER.sign(m._DOMAIN + inner)
    asker.receive_datagram(sec.seal_reply(opened.reply_key, asked.txid, inner), _ANSWERER_AT, 1.0)
    decoded = None
    with contextlib.suppress(DecodeError, AuthenticationFailed):
        decoded = m.decode_message(inner)
    if decoded is not None and decoded.kind is m.Kind.PONG and decoded.txid == asked.txid:
        assert asker.counters["garbage_response"] == 0  # a genuine answer after all
    else:
        assert asker.counters["garbage_response"] == 1 and _ANSWERER.peer_id not in asker.table
    asker.handle_timer(30.0)
    asker.datagrams_to_send(30.0)


# ---- address validation -----------------------------------------------------------------------------


def test_address_tokens_are_valid_for_one_address_within_their_lifetime() -> None:
    tokens = sec.AddressTokens(bytes(range(32)), lifetime=100.0)
    here, there = Address("192.0.2.1", 4000), Address("192.0.2.1", 4001)
    token = tokens.issue(here, 250.0)
    assert len(token) == sec.TOKEN_LEN and token != sec.NO_TOKEN
    assert tokens.valid(token, here, 250.0) and tokens.valid(token, here, 399.0)  # its epoch, the next
    assert not tokens.valid(token, here, 400.0)  # two epochs on
    assert not tokens.valid(token, there, 250.0)  # another port is another address
    assert not tokens.valid(sec.NO_TOKEN, here, 250.0)
    assert not sec.AddressTokens(bytes(32), 100.0).valid(token, here, 250.0)  # another node's secret
    assert tokens.issue(Address("node.invalid", 1), 250.0) == sec.NO_TOKEN  # not an IP: never valid


def test_a_validated_address_gets_a_full_answer_to_an_unpadded_request() -> None:
    """The token a reply carries proves the address: with it, a small FIND is answered with a full
    datagram (beyond 3x: the address receives); without it, or from another address, within 3x."""
    a, target = _loaded_node()
    me = Identity(bytes(range(80, 112)))
    here, elsewhere = Address("10.8.1.1", 4000), Address("10.8.2.1", 4000)
    ping, key = sealed(me, a.peer_id, m.Ping(), txid=1, now=1.0)
    a.receive_datagram(ping, here, 1.0)
    (reply,) = [d for d, to in a.datagrams_to_send(1.0) if isinstance(sec.parse_packet(d), sec.SealedReply)]
    packet = sec.parse_packet(reply)
    assert isinstance(packet, sec.SealedReply)
    token, _ = sec.open_reply(key, packet)
    assert token != sec.NO_TOKEN

    def ask(src: Address, with_token: bytes, txid: int) -> tuple[int, int, int]:
        message = m.encode_message(me.sign, me.peer_id, txid, m.FindNode(target))
        data, k = sec.seal(a.peer_id, message, WALL + 2.0, bytes([txid]) * 32, with_token)
        a.receive_datagram(data, src, 2.0)
        sent = [d for d, to in a.datagrams_to_send(2.0) if to == src]
        answer = next(p for p in map(sec.parse_packet, sent) if isinstance(p, sec.SealedReply))
        nodes = m.decode_message(sec.open_reply(k, answer)[1]).body
        assert isinstance(nodes, m.Nodes)
        return len(data), sum(len(d) for d in sent), len(nodes.contacts)

    size, answered, contacts = ask(here, token, 2)
    assert size < m.REQUEST_PAD and m.AMPLIFICATION * size < answered <= m.MAX_DATAGRAM and contacts == 20
    for src, with_token, txid in (
        (elsewhere, token, 3),
        (here, sec.NO_TOKEN, 4),
        (here, bytes(range(16)), 5),
    ):
        size, answered, contacts = ask(src, with_token, txid)
        assert answered <= m.AMPLIFICATION * size and contacts < 20


def test_a_requester_holding_a_token_stops_padding() -> None:
    net = SimNetwork(seed=3, default=LinkProfile(latency=0.01))
    a, b = node(1), node(2)
    a_at, b_at = Address("10.0.0.1", 4000), Address("10.0.1.1", 4000)
    net.attach(a_at, a)
    net.attach(b_at, b)
    b.bootstrap([a_at], net.clock.now)
    net.run_for(5)  # the join's FIND_NODE to A went padded; A's answer carried a token
    assert b.memory_stats()["tokens"] == 1
    b.start_lookup(identity(random.Random(5)).peer_id, net.clock.now)
    sizes = [len(d) for d, to in b.datagrams_to_send(net.clock.now) if to == a_at]
    assert sizes and all(size < m.REQUEST_PAD for size in sizes)
    b.handle_timer(net.clock.now + b.config.token_lifetime + 2 * b.config.maintenance_interval)
    assert b.memory_stats()["tokens"] == 0  # held no longer than their lifetime
