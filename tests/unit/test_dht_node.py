"""DhtNode in pairs and small groups on the simulated network, driven through its public API."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.dht import (
    BootstrapFinished,
    DhtConfig,
    DhtNode,
    LookupFinished,
    OwnRecordRenewed,
    PeerRecord,
    PublishFinished,
)
from coremesh.dht import messages as m
from coremesh.dht import secure as sec
from coremesh.errors import ConfigError, DecodeError, LocalProtocolError
from coremesh.identity import Identity, PeerId
from coremesh.sim.network import LinkProfile, SimNetwork

from .dht_helpers import WALL, drain, identity, node, record, seal_message, sealed

A_ADDR = Address("10.0.0.1", 4000)
B_ADDR = Address("10.0.1.1", 4000)
X_ADDR = Address("10.0.2.1", 4000)


class Probe:
    """A raw endpoint that sends hand-made (sealed) datagrams and keeps what it receives."""

    def __init__(self, to: PeerId) -> None:
        self.ident = Identity(bytes(range(7, 39)))
        self.to = to
        self.keys: dict[int, bytes] = {}
        self.out: list[tuple[bytes, Address]] = []
        self.got: list[tuple[bytes, Address]] = []

    def send(self, body: m.Body, to: Address, txid: int = 1, pad: int = 0, now: float = 0.0) -> bytes:
        data, self.keys[txid] = sealed(self.ident, self.to, body, txid=txid, pad_to=pad, now=now)
        self.out.append((data, to))
        return data

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.got.append((data, addr))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.out = self.out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def open(self, data: bytes) -> m.Message:
        """A reply to one of our requests, or a request sealed to us, opened and decoded."""
        packet = sec.parse_packet(data)
        if isinstance(packet, sec.SealedReply):
            return m.decode_message(sec.open_reply(self.keys[packet.txid], packet)[1])
        assert isinstance(packet, sec.Sealed)
        opened = sec.open_sealed(self.ident.x25519_private, self.ident.x25519_public, packet)
        return m.decode_message(opened.message)

    def replies(self) -> list[m.Message]:
        return [self.open(d) for d, _ in self.got]


def pair() -> tuple[SimNetwork, DhtNode, DhtNode]:
    net = SimNetwork(seed=3, default=LinkProfile(latency=0.01))
    a, b = node(1), node(2)
    net.attach(A_ADDR, a)
    net.attach(B_ADDR, b)
    return net, a, b


def test_bootstrap_by_address_verifies_ids_both_ways() -> None:
    net, a, b = pair()
    b.bootstrap([A_ADDR], net.clock.now)
    ((hello, _),) = b.datagrams_to_send(net.clock.now)
    assert isinstance(sec.parse_packet(hello), sec.Hello) and len(hello) == sec.HELLO_SIZE
    a.receive_datagram(hello, B_ADDR, net.clock.now)
    ((reply, _),) = a.datagrams_to_send(net.clock.now)
    assert isinstance(sec.parse_packet(reply), sec.HelloReply)  # the PeerId, and no peer list
    b.receive_datagram(reply, A_ADDR, net.clock.now)
    net.run_for(5)
    assert b.routing_table() == [(a.peer_id, A_ADDR)]
    assert a.routing_table() == [(b.peer_id, B_ADDR)]  # A verified B with a PING of its own
    assert any(isinstance(e, BootstrapFinished) and e.contacts == 1 for e in drain(b))
    assert b.observed_address == B_ADDR


def test_bootstrap_to_nobody_reports_zero_contacts() -> None:
    net, a, _ = pair()
    a.bootstrap([Address("10.9.9.9", 1)], net.clock.now)
    net.run_for(10)
    assert [e for e in drain(a) if isinstance(e, BootstrapFinished)] == [BootstrapFinished(contacts=0)]
    assert a.counters["request_timeout"] == 1


def test_unauthenticated_sender_gets_no_table_entry() -> None:
    net, a, _ = pair()
    probe = Probe(a.peer_id)
    net.attach(X_ADDR, probe)
    probe.send(m.FindNode(a.peer_id), A_ADDR, pad=m.REQUEST_PAD - sec.SEALED_OVERHEAD)
    net.run_for(5)
    # A answered, then tried to verify the probe's address with a PING it never answers.
    kinds = [msg.kind for msg in probe.replies()]
    assert kinds == [m.Kind.NODES, m.Kind.PING]
    assert a.routing_table() == []
    assert a.counters["request_timeout"] == 1


def test_unsolicited_misdirected_forged_and_replayed_responses_are_dropped() -> None:
    net, a, b = pair()
    now = net.clock.now
    a.receive_datagram(sec.seal_reply(bytes(32), 42, b"nothing asked"), X_ADDR, now)
    probe = Probe(a.peer_id)
    probe.send(m.Pong(A_ADDR), A_ADDR, txid=43)  # a response kind, sealed as a request
    net.attach(X_ADDR, probe)
    net.run_for(1)
    assert a.counters["unsolicited_response"] == 1 and a.counters["unexpected_kind"] == 1
    # A HELLO from A to B; the answer forged (validly signed) from another address does not count.
    now = net.clock.now
    a.bootstrap([B_ADDR], now)
    ((hello, _),) = a.datagrams_to_send(now)
    nonce = sec.parse_packet(hello).nonce  # type: ignore[union-attr]
    a.receive_datagram(
        sec.encode_hello_reply(probe.ident.sign, probe.ident.peer_id, nonce, A_ADDR), X_ADDR, now
    )
    assert a.counters["unsolicited_response"] == 2
    # A sealed PING from A to B, and B's genuine answer: from another address, tampered, accepted
    # once, then replayed.
    a.add_contact(b.peer_id, B_ADDR, now)
    ping = next(d for d, to in a.datagrams_to_send(now) if to == B_ADDR)  # then the join's FIND_NODE
    b.receive_datagram(ping, A_ADDR, now)
    (pong,) = [d for d, _ in b.datagrams_to_send(now) if isinstance(sec.parse_packet(d), sec.SealedReply)]
    a.receive_datagram(pong, X_ADDR, now)
    assert a.counters["unsolicited_response"] == 3
    tampered = bytearray(pong)
    tampered[-1] ^= 1
    a.receive_datagram(bytes(tampered), B_ADDR, now)
    assert a.counters["undecryptable"] == 1
    a.receive_datagram(pong, B_ADDR, now)
    assert a.observed_address == A_ADDR and b.peer_id in a.table
    a.receive_datagram(pong, B_ADDR, now)
    assert a.counters["unsolicited_response"] == 4
    assert a.counters["garbage_response"] == 0


def test_bad_signature_and_garbage_bytes_are_counted() -> None:
    net, a, _ = pair()
    probe = Probe(a.peer_id)
    net.attach(X_ADDR, probe)
    data = bytearray(m.encode_message(probe.ident.sign, probe.ident.peer_id, 1, m.Ping()))
    data[-3] ^= 0xFF
    bad_signature, _ = seal_message(bytes(data), a.peer_id)
    elsewhere, _ = sealed(probe.ident, probe.ident.peer_id, m.Ping())  # sealed to another key
    old = bytearray(data)
    old[1] = 1  # a version 1 datagram (signed, in clear), from a node not upgraded
    probe.out += [
        (bad_signature, A_ADDR),
        (elsewhere, A_ADDR),
        (bytes(old), A_ADDR),
        (b"\xe7\x02garbage", A_ADDR),
        (b"\x00\x01", A_ADDR),
    ]
    net.run_for(1)
    assert a.counters["bad_signature"] == 1
    assert a.counters["undecryptable"] == 1
    assert a.counters["bad_version"] == 1
    assert a.counters["malformed"] == 1
    assert a.counters["not_dht"] == 1
    assert probe.got == []


def test_responses_never_amplify() -> None:
    net, a, _ = pair()
    rng = random.Random(9)
    for i in range(40):  # give A a full answer to offer
        a.table.update(identity(rng).peer_id, Address(f"2001:db8:{i}::1", 1), 0.0)
    probe = Probe(a.peer_id)
    net.attach(X_ADDR, probe)
    unpadded = probe.send(m.FindNode(a.peer_id), A_ADDR, txid=1)
    padded = probe.send(m.FindNode(a.peer_id), A_ADDR, txid=2, pad=m.REQUEST_PAD - sec.SEALED_OVERHEAD)
    assert len(padded) == m.REQUEST_PAD
    net.run_for(1)
    small, full = (d for d, _ in probe.got[:2])
    assert len(small) <= 3 * len(unpadded)
    assert len(full) <= m.MAX_DATAGRAM
    small_msg, full_msg = probe.open(small), probe.open(full)
    assert isinstance(small_msg.body, m.Nodes) and isinstance(full_msg.body, m.Nodes)
    assert len(small_msg.body.contacts) < len(full_msg.body.contacts) == 20


def test_replies_are_rate_limited_per_source() -> None:
    net, a, _ = pair()
    probe = Probe(a.peer_id)
    net.attach(X_ADDR, probe)
    for i in range(200):
        probe.send(m.Ping(), A_ADDR, txid=i)
    net.run_for(0.5)
    burst = a.config.reply_burst
    pongs = [msg for msg in probe.replies() if msg.kind is m.Kind.PONG]
    assert len(pongs) == burst
    assert a.counters["rate_limited"] == 200 - burst


def test_store_refuses_bad_records_with_reasons() -> None:
    net, a, _ = pair()
    probe = Probe(a.peer_id)
    net.attach(X_ADDR, probe)
    owner = Identity(bytes(range(3, 35)))
    forged = PeerRecord(owner.peer_id, 6, WALL + 600, (), record(probe.ident).signature)
    stores = [
        record(owner, seq=5),  # stored
        record(owner, seq=4),  # older: stale
        record(owner, seq=9, ttl=-10),  # expired
        forged,  # bad signature
    ]
    for i, r in enumerate(stores):
        probe.send(m.Store(r), A_ADDR, txid=i)
    net.run_for(1)
    statuses = [msg.body.status for msg in probe.replies() if isinstance(msg.body, m.Stored)]
    assert statuses == [
        m.StoreStatus.STORED,
        m.StoreStatus.STALE,
        m.StoreStatus.REFUSED,
        m.StoreStatus.REFUSED,
    ]
    assert a.counters["stale_seq"] == 1
    assert a.counters["expired"] == 1
    assert a.counters["bad_signature"] == 1
    held = a.get_record(owner.peer_id, net.clock.now)
    assert held is not None and held.seq == 5


def test_pex_records_are_checked_and_kept() -> None:
    net, a, b = pair()
    owner = Identity(bytes(range(3, 35)))
    b.store.put(record(owner, seq=2), WALL)
    b.publish(record(b.identity), net.clock.now)
    b.gossip([(a.peer_id, A_ADDR)], net.clock.now)
    net.run_for(1)
    assert {r.peer_id for r in a.known_records()} == {owner.peer_id, b.peer_id}
    assert a.counters["pex_received"] == 1


def test_lookup_finds_record_publish_and_renewal() -> None:
    cfg = DhtConfig(record_ttl=600, republish_interval=200, maintenance_interval=5)
    net = SimNetwork(seed=3, default=LinkProfile(latency=0.01))
    nodes = [node(10 + i, cfg) for i in range(8)]
    addrs = [Address(f"10.0.{i}.1", 4000) for i in range(8)]
    for n, addr in zip(nodes, addrs, strict=True):
        net.attach(addr, n)
    for i, n in enumerate(nodes[1:], 1):
        n.bootstrap([addrs[0]], net.clock.now)
        n.publish(PeerRecord.create(n.identity, 1, WALL + 600, [("host", str(addrs[i]))]), net.clock.now)
        net.run_for(2)
    net.run_for(10)
    assert any(isinstance(e, PublishFinished) and e.stored > 0 for e in drain(nodes[5]))
    qid = nodes[0].start_lookup(nodes[7].peer_id, net.clock.now)
    net.run_for(5)
    (done,) = [e for e in drain(nodes[0]) if isinstance(e, LookupFinished)]
    assert done.query_id == qid and done.record is not None and done.record.peer_id == nodes[7].peer_id
    assert done.record.addresses == (("host", str(addrs[7])),)
    assert done.hops >= 1 and done.elapsed > 0
    # Before it expires, the record is re-signed with a higher seq and published again.
    net.run_for(500)
    renewed = [e for e in drain(nodes[7]) if isinstance(e, OwnRecordRenewed)]
    assert renewed and renewed[-1].record.seq > 1
    nodes[1].start_lookup(nodes[7].peer_id, net.clock.now)
    net.run_for(5)
    (done,) = [e for e in drain(nodes[1]) if isinstance(e, LookupFinished)]
    assert done.record is not None and done.record.seq == renewed[-1].record.seq


def test_lookup_of_unknown_peer_ends_without_record() -> None:
    net, a, b = pair()
    b.bootstrap([A_ADDR], net.clock.now)
    net.run_for(3)
    drain(b)
    b.start_lookup(Identity(bytes(range(9, 41))).peer_id, net.clock.now)
    net.run_for(20)
    (done,) = [e for e in drain(b) if isinstance(e, LookupFinished)]
    assert done.record is None and done.closest == ((a.peer_id, A_ADDR),)


def test_snapshot_restore_is_warm_and_verified() -> None:
    net, a, b = pair()
    b.bootstrap([A_ADDR], net.clock.now)
    b.publish(record(b.identity, seq=3), net.clock.now)
    net.run_for(5)
    snap = b.snapshot()
    net.detach(B_ADDR)
    again = DhtNode(b.identity, rng=random.Random(77), wall_offset=WALL)
    net.attach(B_ADDR, again)
    assert again.restore(snap, net.clock.now) == 1
    assert again.routing_table() == []  # not before the contact answered
    net.run_for(5)
    assert again.routing_table() == [(a.peer_id, A_ADDR)]
    assert again.own_record is not None and again.own_record.seq == 3
    for bad in (b"", b"nonsense", snap[:-1], snap + b"\x00"):
        with pytest.raises(DecodeError):
            again.restore(bad, net.clock.now)


def test_local_misuse_is_refused() -> None:
    a = node(1)
    with pytest.raises(LocalProtocolError):
        a.publish(record(Identity(bytes(range(3, 35)))), 0.0)
    with pytest.raises(ConfigError, match="alpha"):
        DhtConfig(alpha=0)
    with pytest.raises(ConfigError, match="republish_interval"):
        DhtConfig(record_ttl=100, republish_interval=200)
    with pytest.raises(ConfigError, match="unknown dht config key"):
        DhtConfig.from_dict({"kk": 3})
    with pytest.raises(ConfigError, match="request_timeout"):
        DhtConfig(request_timeout=float("nan"))


# Each example gets a fresh node (the same identity): examples run in any order and each restarts
# the clock, and a node fed a time earlier than the last one it saw is not a valid input.
_FUZZ_TARGET = node(99).peer_id
_FUZZ_SIGNER = Identity(bytes(range(5, 37)))
_VALID = [
    m.encode_message(_FUZZ_SIGNER.sign, _FUZZ_SIGNER.peer_id, 5, body, pad_to=m.REQUEST_PAD)
    for body in (
        m.Ping(),
        m.FindNode(_FUZZ_TARGET),
        m.FindValue(_FUZZ_TARGET),
        m.Store(record(_FUZZ_SIGNER)),
        m.Pex((record(_FUZZ_SIGNER),)),
        m.Nodes(((_FUZZ_SIGNER.peer_id, A_ADDR),)),
        m.Value(record(_FUZZ_SIGNER), ()),
    )
]


@given(st.binary(max_size=1300))
@settings(max_examples=300, deadline=None)
def test_node_survives_random_datagrams(data: bytes) -> None:
    fuzzed = node(99)
    for head in (
        b"",
        b"\xe7\x01",
        b"\xe7\x02",
        b"\xe7\x02\x10",
        b"\xe7\x02\x11",
        b"\xe7\x02\x12",
        b"\xe7\x02\x13",
    ):
        fuzzed.receive_datagram(head + data, X_ADDR, 1.0)
    fuzzed.datagrams_to_send(1.0)
    assert sum(fuzzed.counters.values()) >= 7  # every one counted: dropped, or a HELLO answered


@given(st.sampled_from(_VALID), st.data())
@settings(max_examples=300, deadline=None)
def test_node_survives_mutated_and_resigned_datagrams(valid: bytes, data: st.DataObject) -> None:
    raw = bytearray(valid[: -m.SIGNATURE_LEN])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(m.HEADER_LEN, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    resigned = bytes(raw) + _FUZZ_SIGNER.sign(m._DOMAIN + bytes(raw))  # valid signature, bad body
    source = Address(f"10.1.{data.draw(st.integers(0, 255))}.{data.draw(st.integers(1, 254))}", 9)
    fuzzed = node(99)
    fuzzed.receive_datagram(seal_message(resigned, _FUZZ_TARGET, 2.0)[0], source, 2.0)
    fuzzed.receive_datagram(seal_message(bytes(raw) + bytes(64), _FUZZ_TARGET, 2.0)[0], source, 2.0)
    assert fuzzed.counters["rate_limited"] == 0  # two datagrams are well within one source's burst
    fuzzed.handle_timer(10.0)
    fuzzed.datagrams_to_send(10.0)
