"""Endpoints behind simulated RFC 4787 NATs go from the relay to a direct path, deterministically."""

from __future__ import annotations

import pytest

from coremesh.addr import Address
from coremesh.endpoint import events as ev
from coremesh.sim import nat as N
from coremesh.sim.network import LinkProfile, SimNetwork
from coremesh.sim.relay import SimNode
from coremesh.traversal import TraversalConfig

from .traversal_sim import A_PUB, B_PUB, both_direct, connect_via_relay, path, world

CONES = [N.FULL_CONE, N.ADDRESS_RESTRICTED, N.PORT_RESTRICTED]
# (NAT of A, NAT of B, expected path). Theory: two endpoint-independent mappings always punch; a
# symmetric NAT punches towards a filter that lets its new port in (full cone, address-restricted)
# or, sequential, by port prediction; port-restricted vs random symmetric and symmetric vs
# symmetric stay relayed.
CASES = (
    [(x, y, "direct") for x in CONES for y in CONES]
    + [(x, N.SYMMETRIC_RANDOM, "direct") for x in CONES[:2]]
    + [(x, N.SYMMETRIC_SEQUENTIAL, "direct") for x in CONES]
    + [
        (N.PORT_RESTRICTED, N.SYMMETRIC_RANDOM, "direct"),  # the birthday approach
        (N.SYMMETRIC_RANDOM, N.SYMMETRIC_RANDOM, "keyed"),
        (N.SYMMETRIC_SEQUENTIAL, N.SYMMETRIC_RANDOM, "keyed"),
        (None, N.PORT_RESTRICTED, "direct"),
        (None, N.SYMMETRIC_RANDOM, "direct"),
    ]
)


@pytest.mark.parametrize(("nat_a", "nat_b", "expected"), CASES, ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("swap", [False, True], ids=["a-dials", "b-dials"])
def test_relayed_connection_upgrades_where_the_nats_allow(
    nat_a: N.Behaviour | None, nat_b: N.Behaviour | None, expected: str, swap: bool
) -> None:
    w = world(nat_b, nat_a) if swap else world(nat_a, nat_b)
    connect_via_relay(w)
    assert path(w.a, w.b) == "keyed"
    if expected == "direct":
        # A birthday attempt starts with the second round of checks and sprays for ~4 s.
        assert w.net.run_until(lambda: both_direct(w), timeout=12.0)
        (changed,) = w.a.of(ev.PathChanged)
        assert changed.kind == "direct"  # type: ignore[attr-defined]
    else:
        w.net.run_for(8.0)
        assert path(w.a, w.b) == path(w.b, w.a) == "keyed"
        snap = w.a.endpoint.snapshot(w.b.peer_id)
        assert snap is not None and snap.path_reason is not None
        assert "direct checks failed" in snap.path_reason and "symmetric" in snap.path_reason
    # Messages flow on whatever path was chosen.
    w.a.endpoint.send(w.b.peer_id, b"hello", w.net.clock.now)
    w.net.flush()
    assert w.net.run_until(lambda: w.b.messages() == [b"hello"], timeout=5.0)


def test_port_prediction_needs_the_nat_type() -> None:
    w = world(N.PORT_RESTRICTED, N.SYMMETRIC_SEQUENTIAL, tell_nat_types=False)
    connect_via_relay(w)
    w.net.run_for(6.0)
    assert path(w.a, w.b) == "keyed"


def _public_pair(src: Address, dst: Address) -> bool:
    return {src.host, dst.host} == {A_PUB, B_PUB}


def test_transfer_survives_upgrade_cut_fallback_and_return_without_loss_dup_or_reorder() -> None:
    cfg = TraversalConfig(dead_after=1.0, retry_initial=1.0, retry_max=2.0)
    w = world(N.PORT_RESTRICTED, N.PORT_RESTRICTED, latency=0.02, config=cfg)
    connect_via_relay(w)
    sent: list[bytes] = []
    blocked = False
    w.net.block = lambda src, dst: blocked and _public_pair(src, dst)

    def pump(seconds: float) -> None:
        end = w.net.clock.now + seconds
        while w.net.clock.now < end:
            msg = b"m%06d" % len(sent) + bytes(200)
            w.a.endpoint.send(w.b.peer_id, msg, w.net.clock.now)
            sent.append(msg)
            w.net.run_for(0.01)

    pump(1.0)  # starts on the relay, moves to the direct path meanwhile
    assert both_direct(w)
    blocked = True  # the direct path dies mid-transfer (an iptables DROP between the NATs)
    pump(3.0)
    assert path(w.a, w.b) == "keyed" and path(w.b, w.a) == "keyed"
    snap = w.a.endpoint.snapshot(w.b.peer_id)
    assert snap is not None and snap.path_reason is not None
    blocked = False  # the path returns: a retry round finds it again
    pump(4.0)
    assert both_direct(w)
    assert w.net.run_until(lambda: len(w.b.messages()) == len(sent), timeout=10.0)
    assert w.b.messages() == sent  # every message once, in order
    kinds = [e.kind for e in w.a.of(ev.PathChanged)]  # type: ignore[attr-defined]
    assert kinds == ["direct", "keyed", "direct"]


def test_nat_rebinding_on_a_direct_path_migrates_the_session() -> None:
    w = world(None, N.PORT_RESTRICTED)
    connect_via_relay(w)
    assert w.net.run_until(lambda: both_direct(w), timeout=5.0)
    assert w.nat_b is not None
    w.nat_b._by_key.clear()  # the NAT forgets its mappings: B's next packets leave from a new port
    w.nat_b._by_port.clear()
    w.nat_b._next_port = 30000
    w.b.endpoint.send(w.a.peer_id, b"after rebinding", w.net.clock.now)
    w.net.flush()
    assert w.net.run_until(lambda: w.a.messages() == [b"after rebinding"], timeout=5.0)
    w.a.endpoint.send(w.b.peer_id, b"reply", w.net.clock.now)
    w.net.flush()
    assert w.net.run_until(lambda: w.b.messages() == [b"reply"], timeout=5.0)
    assert path(w.a, w.b) == "direct"


@pytest.mark.parametrize("swap", [False, True], ids=["cone-dials", "symmetric-dials"])
def test_predicted_ports_never_crowd_out_what_checks_reveal(swap: bool) -> None:
    # netcheck only says "symmetric": the cone side then also tries predicted ports, but the
    # symmetric side's real port (a peer-reflexive candidate) must still get a pair.
    w = world(N.SYMMETRIC_RANDOM, N.FULL_CONE) if swap else world(N.FULL_CONE, N.SYMMETRIC_RANDOM)
    sym = w.a if swap else w.b
    sym.endpoint.set_local_candidates(list(sym.endpoint.local_candidates), "symmetric", w.net.clock.now)
    connect_via_relay(w)
    assert w.net.run_until(lambda: both_direct(w), timeout=5.0)


def test_hostile_authenticated_path_frames_are_counted_drops() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from coremesh.traversal.frames import PATH_PREFIX

    w = world(N.PORT_RESTRICTED, N.PORT_RESTRICTED)
    connect_via_relay(w)
    session = w.a.endpoint._peers[w.b.peer_id].current
    assert session is not None
    src = w.a.relay_address(w.a.peer_id)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=120))
    def feed(garbage: bytes) -> None:
        w.b.endpoint.receive_datagram(session.seal(PATH_PREFIX + garbage), src, w.net.clock.now)

    feed()
    counters = w.b.endpoint.counters
    assert counters["drop_malformed_path_frames"] > 0
    w.a.endpoint.send(w.b.peer_id, b"still fine", w.net.clock.now)
    w.net.flush()
    assert w.net.run_until(lambda: w.b.messages() == [b"still fine"], timeout=5.0)


class _Sink:
    """An attacker's socket: records what reaches it, sends nothing."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.got.append(data)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return []

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None


def _race_a_copy(w_net: SimNetwork, sender: SimNode, receiver: SimNode, attacker: Address) -> None:
    """An on-path attacker copies the sender's next packet and races it from its own address."""
    sender.endpoint.send(receiver.peer_id, b"hello", w_net.clock.now)
    (packet, _dst) = next(iter(sender.endpoint.datagrams_to_send(w_net.clock.now)))
    receiver.endpoint.receive_datagram(packet, attacker, w_net.clock.now)
    w_net.flush()


def test_a_replayed_packet_from_an_attacker_address_is_validated_before_use() -> None:
    w = world(None, N.PORT_RESTRICTED)
    connect_via_relay(w)
    assert w.net.run_until(lambda: both_direct(w), timeout=5.0)
    attacker = Address("198.51.100.66", 6666)
    sink = _Sink()
    w.net.attach(attacker, sink)
    a_conn = w.a.endpoint._peers[w.b.peer_id]
    genuine = a_conn.address
    _race_a_copy(w.net, w.b, w.a, attacker)
    w.net.run_for(3.0)
    assert a_conn.address == genuine  # never moved: the attacker cannot answer the challenge
    assert all(e.new != attacker for e in w.a.of(ev.AddressChanged))  # type: ignore[attr-defined]
    assert 1 <= len(sink.got) <= 2  # the challenge (and its one retry) only, no data


def test_a_replayed_packet_on_a_connection_without_relay_is_followed_then_reverted() -> None:
    net = SimNetwork(3, LinkProfile(latency=0.01))
    a, b = _plain(1, 1), _plain(2, 2)
    a_addr, b_addr, attacker = (
        Address("192.0.2.1", 1),
        Address("192.0.2.2", 2),
        Address("198.51.100.66", 6666),
    )
    net.attach(a_addr, a)
    net.attach(b_addr, b)
    sink = _Sink()
    net.attach(attacker, sink)
    a.endpoint.connect(b.peer_id, b_addr, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.PeerConnected)) and bool(b.of(ev.PeerConnected)), timeout=5)
    net.run_for(0.5)
    _race_a_copy(net, a, b, attacker)
    b_conn = b.endpoint._peers[a.peer_id]
    assert b_conn.address == attacker  # a NAT rebinding looks the same: followed at once...
    # ...and left again: the genuine peer's next packet brings it back (RFC 9000 §9.3.3), or the
    # unanswered challenge reverts it after a second.
    assert net.run_until(lambda: b_conn.address == a_addr and b_conn.paths.migration is None, timeout=3.0)
    net.run_for(2.0)
    assert b_conn.address == a_addr
    assert len(sink.got) < 10
    b.endpoint.send(a.peer_id, b"reply", net.clock.now)
    net.flush()
    assert net.run_until(lambda: a.messages() == [b"reply"], timeout=5.0)


def _plain(seed: int, ident: int) -> SimNode:
    import random

    from coremesh.config import MeshConfig
    from coremesh.endpoint.endpoint import Endpoint
    from coremesh.identity import Identity

    cfg = MeshConfig(heartbeat_interval=1.0, idle_timeout=20.0)
    identity = Identity(random.Random(ident).randbytes(32))
    return SimNode(Endpoint(identity, cfg, rng=random.Random(seed), wall_offset=1.7e9))


def test_an_unanswered_migration_reverts_after_a_second() -> None:
    net = SimNetwork(4, LinkProfile(latency=0.01))
    a, b = _plain(1, 1), _plain(2, 2)
    a_addr, b_addr, attacker = (
        Address("192.0.2.1", 1),
        Address("192.0.2.2", 2),
        Address("198.51.100.66", 6666),
    )
    net.attach(a_addr, a)
    net.attach(b_addr, b)
    net.attach(attacker, _Sink())
    a.endpoint.connect(b.peer_id, b_addr, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(b.of(ev.PeerConnected)), timeout=5)
    net.run_for(0.5)
    _race_a_copy(net, a, b, attacker)
    net.detach(a_addr)  # the genuine peer stays silent meanwhile
    b_conn = b.endpoint._peers[a.peer_id]
    assert b_conn.address == attacker
    net.run_for(1.5)
    assert b_conn.address == a_addr and b.endpoint.counters["migrations_reverted"] == 1


def test_a_raced_connect_takes_the_first_path_that_answers() -> None:
    # Both paths deliver: the direct copy arrives first, the relayed copy is refused as a replay,
    # and there is exactly one connection.
    w = world(None, None)
    w.a.endpoint.connect(w.b.peer_id, Address("10.0.2.2", 4000), w.net.clock.now)
    assert w.a.endpoint.also_try(w.b.peer_id, w.a.relay_address(w.b.peer_id), w.net.clock.now)
    w.net.flush()
    assert w.net.run_until(
        lambda: bool(w.a.of(ev.PeerConnected)) and bool(w.b.of(ev.PeerConnected)), timeout=5
    )
    w.net.run_for(1.0)
    assert path(w.a, w.b) == "direct" and len(w.b.of(ev.PeerConnected)) == 1
    assert w.b.endpoint.counters["drop_replayed_handshake"] >= 1
    # The direct address is unreachable (a port-restricted NAT in front of B): the relay answers.
    w = world(None, N.PORT_RESTRICTED)
    w.a.endpoint.connect(w.b.peer_id, Address(B_PUB, 4000), w.net.clock.now)
    w.a.endpoint.also_try(w.b.peer_id, w.a.relay_address(w.b.peer_id), w.net.clock.now)
    w.net.flush()
    assert w.net.run_until(lambda: bool(w.a.of(ev.PeerConnected)), timeout=5)
    assert w.a.of(ev.PeerConnected)[0].address == w.a.relay_address(w.b.peer_id)  # type: ignore[attr-defined]
    assert w.net.run_until(lambda: both_direct(w), timeout=5.0)  # and traversal takes it direct
