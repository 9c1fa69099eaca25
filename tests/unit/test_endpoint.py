"""The endpoint core end to end under the seeded virtual-time network: no sockets, no clock."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.config import MeshConfig
from coremesh.endpoint import events as ev
from coremesh.endpoint.endpoint import Endpoint
from coremesh.endpoint.states import PeerState
from coremesh.errors import PeerNotFound
from coremesh.identity import Identity
from coremesh.secure import wire
from coremesh.secure.replay import COUNTER_LIMIT
from coremesh.secure.session import compute_mac, mac1_key
from coremesh.sim import LinkProfile, SimNetwork

A_ADDR = Address("192.0.2.1", 1000)
B_ADDR = Address("192.0.2.2", 2000)


@dataclass
class Node:
    """Wraps an Endpoint for the simulator and records the events it emits."""

    endpoint: Endpoint
    events: list[ev.Event] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)

    def _drain(self) -> None:
        while (e := self.endpoint.next_event()) is not None:
            self.events.append(e)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.endpoint.receive_datagram(data, addr, now)
        self._drain()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = self.endpoint.datagrams_to_send(now)
        self.sent.extend(data for data, _ in out)
        self._drain()
        return out

    def get_timer(self) -> float | None:
        return self.endpoint.get_timer()

    def handle_timer(self, now: float) -> None:
        self.endpoint.handle_timer(now)
        self._drain()

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]

    def messages(self) -> list[bytes]:
        return [e.data for e in self.of(ev.MessageReceived)]


def make(seed: int, identity_seed: int, **config: object) -> Node:
    cfg = MeshConfig(**{"heartbeat_interval": 1.0, "idle_timeout": 5.0, **config})  # type: ignore[arg-type]
    rng = random.Random(seed)
    identity = Identity(random.Random(identity_seed).randbytes(32))
    return Node(Endpoint(identity, cfg, rng=rng, wall_offset=1.7e9))


def pair(
    seed: int = 1, profile: LinkProfile | None = None, **config: object
) -> tuple[SimNetwork, Node, Node]:
    net = SimNetwork(seed, profile or LinkProfile(latency=0.01))
    a, b = make(seed * 2 + 1, 1, **config), make(seed * 2 + 2, 2, **config)
    net.attach(A_ADDR, a)
    net.attach(B_ADDR, b)
    return net, a, b


def connect(net: SimNetwork, a: Node, b: Node, timeout: float = 30.0) -> None:
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(
        lambda: bool(a.of(ev.PeerConnected)) and bool(b.of(ev.PeerConnected)), timeout=timeout
    ), (a.events, b.events, a.endpoint.counters, b.endpoint.counters)


def test_connect_and_exchange_messages() -> None:
    net, a, b = pair()
    connect(net, a, b)
    (ca,) = a.of(ev.PeerConnected)
    (cb,) = b.of(ev.PeerConnected)
    assert ca.peer_id == b.endpoint.peer_id and ca.initiator
    assert cb.peer_id == a.endpoint.peer_id and not cb.initiator and cb.address == A_ADDR
    a.endpoint.send(b.endpoint.peer_id, b"to b", net.clock.now)
    b.endpoint.send(a.endpoint.peer_id, b"to a", net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(a.messages()) and bool(b.messages()), timeout=5)
    assert b.messages() == [b"to b"] and a.messages() == [b"to a"]


def test_connect_time_is_one_round_trip() -> None:
    net, a, b = pair(profile=LinkProfile(latency=0.025))
    connect(net, a, b)
    # The initiator is connected after exactly one RTT (2 x 25 ms); the responder after 1.5 RTT.
    assert net.clock.now == pytest.approx(0.075, abs=1e-6)


ADVERSE = LinkProfile(
    latency=0.02, jitter=0.01, loss=0.1, duplicate=0.05, reorder=0.1, reorder_delay=0.03, corrupt=0.02
)


@pytest.mark.parametrize("seed", range(12))
def test_every_message_arrives_once_in_order_on_a_hostile_network(seed: int) -> None:
    net, a, b = pair(seed, ADVERSE)
    connect(net, a, b, timeout=60)
    rng = random.Random(seed)
    to_b = [rng.randbytes(rng.choice([0, 1, 100, 1200, 3000, 20000])) for _ in range(120)]
    to_a = [rng.randbytes(rng.randint(0, 5000)) for _ in range(60)]
    for i in range(max(len(to_a), len(to_b))):
        if i < len(to_b):
            a.endpoint.send(b.endpoint.peer_id, to_b[i], net.clock.now)
        if i < len(to_a):
            b.endpoint.send(a.endpoint.peer_id, to_a[i], net.clock.now)
        if i % 10 == 0:
            net.flush()
            net.run_for(0.005)
    net.flush()
    done = net.run_until(
        lambda: len(b.messages()) >= len(to_b) and len(a.messages()) >= len(to_a), timeout=120
    )
    assert done, (len(b.messages()), len(a.messages()), net.stats)
    assert b.messages() == to_b
    assert a.messages() == to_a
    assert (
        net.stats.corrupted == 0
        or a.endpoint.counters["drop_auth_failed"]
        + b.endpoint.counters["drop_auth_failed"]
        + a.endpoint.counters["drop_malformed"]
        + b.endpoint.counters["drop_malformed"]
        > 0
    )
    assert not a.of(ev.PeerDisconnected) and not b.of(ev.PeerDisconnected)


def test_wrong_peer_id_fails_without_creating_state_at_the_responder() -> None:
    net, a, b = pair(connect_timeout=2.0)
    impostor = Identity(bytes(range(32))).peer_id  # B's address, but not B's key
    a.endpoint.connect(impostor, B_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.ConnectFailed)), timeout=10)
    assert b.endpoint.counters["drop_bad_mac1"] >= 1
    assert b.endpoint.snapshots() == [] and not b.events
    assert a.endpoint.state_of(impostor) is None


def test_forged_initiation_with_valid_mac1_creates_no_state() -> None:
    _net, _, b = pair()
    bogus = wire.encode_handshake_init(7, random.Random(5).randbytes(wire.NOISE_MSG1_LEN))
    packet = bogus + compute_mac(mac1_key(b.endpoint.identity.x25519_public), bogus) + bytes(16)
    b.receive_datagram(packet, A_ADDR, 0.0)
    assert b.endpoint.counters["drop_handshake_auth_failed"] == 1
    assert b.endpoint.snapshots() == [] and not b.events


def test_an_unconfirmed_responder_session_is_forgotten() -> None:
    net, a, b = pair(connect_timeout=2.0)
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now)
    net.flush()
    net.set_link(B_ADDR, A_ADDR, LinkProfile(loss=1.0))  # B's responses never arrive
    net.run_for(0.5)
    assert b.endpoint.snapshots() and not b.events
    net.run_for(5.0)
    assert b.endpoint.snapshots() == [] and not b.events
    assert b.endpoint.counters["handshakes_unconfirmed"] >= 1
    assert a.of(ev.ConnectFailed)


def test_replayed_initiation_is_refused() -> None:
    net, a, b = pair()
    connect(net, a, b)
    captured = [d for d in a.sent if d[0] == wire.PacketType.HANDSHAKE_INIT]
    assert captured
    b.receive_datagram(captured[0], Address("198.51.100.9", 9), net.clock.now)
    assert b.endpoint.counters["drop_replayed_handshake"] == 1
    assert len(b.of(ev.PeerConnected)) == 1 and not b.of(ev.PeerDisconnected)


def test_keepalives_hold_an_idle_connection_and_silence_times_it_out() -> None:
    net, a, b = pair()
    connect(net, a, b)
    net.run_for(20.0)  # four idle timeouts with no application traffic
    assert not a.of(ev.PeerDisconnected) and not b.of(ev.PeerDisconnected)
    net.partition(A_ADDR, B_ADDR)
    net.partition(B_ADDR, A_ADDR)
    started = net.clock.now
    assert net.run_until(
        lambda: bool(a.of(ev.PeerDisconnected)) and bool(b.of(ev.PeerDisconnected)), timeout=10
    )
    (gone,) = a.of(ev.PeerDisconnected)
    assert "idle timeout" in gone.reason and not gone.clean
    assert 4.0 <= net.clock.now - started <= 6.5
    assert a.endpoint.snapshots() == [] and b.endpoint.snapshots() == []


def test_explicit_close_is_seen_by_the_peer() -> None:
    net, a, b = pair()
    connect(net, a, b)
    a.endpoint.send(b.endpoint.peer_id, b"last words", net.clock.now)
    a.endpoint.close(b.endpoint.peer_id, net.clock.now, "bye")
    net.flush()
    assert net.run_until(
        lambda: bool(a.of(ev.PeerDisconnected)) and bool(b.of(ev.PeerDisconnected)), timeout=3
    )
    assert b.messages() == [b"last words"]
    (theirs,) = b.of(ev.PeerDisconnected)
    assert theirs.clean and theirs.reason == "closed by peer: bye"
    (ours,) = a.of(ev.PeerDisconnected)
    assert ours.clean and ours.reason == "closed"
    net.run_for(3.0)
    assert a.endpoint.snapshots() == [] and b.endpoint.snapshots() == []


def stream_through_rekeys(net: SimNetwork, a: Node, b: Node, count: int) -> None:
    connect(net, a, b)
    sent = []
    for i in range(count):
        data = i.to_bytes(4, "big") * 100
        sent.append(data)
        a.endpoint.send(b.endpoint.peer_id, data, net.clock.now)
        net.flush()
        net.run_for(0.02)
    assert net.run_until(lambda: len(b.messages()) == len(sent), timeout=30)
    assert b.messages() == sent
    assert len(a.of(ev.PeerConnected)) == 1 and not a.of(ev.PeerDisconnected)
    assert len(b.of(ev.PeerConnected)) == 1 and not b.of(ev.PeerDisconnected)


def test_rekeying_by_time_loses_nothing() -> None:
    net, a, b = pair(3, LinkProfile(latency=0.005, loss=0.02), rekey_after_time=1.0)
    stream_through_rekeys(net, a, b, 400)  # 8 s of virtual time
    assert a.endpoint.counters["rekeys_started"] + b.endpoint.counters["rekeys_started"] >= 6


def test_rekeying_by_volume_loses_nothing() -> None:
    net, a, b = pair(4, LinkProfile(latency=0.005, loss=0.02), rekey_after_packets=64)
    stream_through_rekeys(net, a, b, 400)
    assert a.endpoint.counters["rekeys_started"] >= 4


def test_simultaneous_open_makes_one_connection() -> None:
    net, a, b = pair(profile=LinkProfile(latency=0.02))
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, 0.0)
    b.endpoint.connect(a.endpoint.peer_id, A_ADDR, 0.0)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.PeerConnected)) and bool(b.of(ev.PeerConnected)), timeout=5)
    a.endpoint.send(b.endpoint.peer_id, b"x", net.clock.now)
    b.endpoint.send(a.endpoint.peer_id, b"y", net.clock.now)
    net.flush()
    net.run_for(2.0)
    assert b.messages() == [b"x"] and a.messages() == [b"y"]
    assert len(a.of(ev.PeerConnected)) == len(b.of(ev.PeerConnected)) == 1
    assert not a.of(ev.PeerDisconnected) and not b.of(ev.PeerDisconnected)


def test_a_restarted_peer_replaces_its_old_connection() -> None:
    net, a, b = pair()
    connect(net, a, b)
    net.detach(B_ADDR)
    b2 = make(99, 2)  # same identity, fresh process
    net.attach(B_ADDR, b2)
    b2.endpoint.connect(a.endpoint.peer_id, A_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(b2.of(ev.PeerConnected)) and bool(a.of(ev.PeerDisconnected)), timeout=5)
    (gone,) = a.of(ev.PeerDisconnected)
    assert gone.reason == "peer opened a new connection"
    b2.endpoint.send(a.endpoint.peer_id, b"i'm back", net.clock.now)
    net.flush()
    assert net.run_until(lambda: a.messages() == [b"i'm back"], timeout=5)
    assert len(a.of(ev.PeerConnected)) == 2


def test_authenticated_packets_from_a_new_address_migrate_the_session() -> None:
    net, a, b = pair()
    connect(net, a, b)
    new_addr = Address("192.0.2.3", 3000)
    net.detach(B_ADDR)
    net.attach(new_addr, b)  # a NAT rebinding: B's packets now come from another port
    b.endpoint.send(a.endpoint.peer_id, b"from my new port", net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(a.messages()), timeout=5)
    (moved,) = a.of(ev.AddressChanged)
    assert moved.new == new_addr
    a.endpoint.send(b.endpoint.peer_id, b"reply", net.clock.now)
    net.flush()
    assert net.run_until(lambda: b.messages() == [b"reply"], timeout=5)


def test_max_connections_is_enforced_at_the_responder() -> None:
    net = SimNetwork(7, LinkProfile(latency=0.001))
    hub = make(1, 1, max_connections=2)
    net.attach(A_ADDR, hub)
    spokes = []
    for i in range(3):
        spoke = make(10 + i, 10 + i, connect_timeout=1.0)
        addr = Address("192.0.2.50", 5000 + i)
        net.attach(addr, spoke)
        spoke.endpoint.connect(hub.endpoint.peer_id, A_ADDR, net.clock.now)
        spokes.append(spoke)
    net.flush()
    net.run_for(3.0)
    assert len(hub.of(ev.PeerConnected)) == 2
    assert hub.endpoint.counters["drop_max_connections"] >= 1
    assert sum(1 for s in spokes if s.of(ev.ConnectFailed)) == 1


def test_identity_probe_learns_the_peer_id() -> None:
    net, a, b = pair()
    nonce = a.endpoint.probe_identity(B_ADDR)
    a.endpoint.start_probe(nonce, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.IdentityResolved)), timeout=2)
    (resolved,) = a.of(ev.IdentityResolved)
    assert resolved.peer_id == b.endpoint.peer_id and resolved.nonce == nonce


def test_identity_probe_without_answer_resolves_to_none() -> None:
    net, a, _ = pair()
    nonce = a.endpoint.probe_identity(Address("192.0.2.99", 1))
    a.endpoint.start_probe(nonce, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.IdentityResolved)), timeout=5)
    assert a.of(ev.IdentityResolved)[0].peer_id is None


def test_sending_to_an_unknown_peer_is_a_typed_error() -> None:
    from coremesh.errors import PeerNotFound

    _, a, b = pair()
    with pytest.raises(PeerNotFound):
        a.endpoint.send(b.endpoint.peer_id, b"x", 0.0)
    assert a.endpoint.state_of(b.endpoint.peer_id) is None


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=200), max_size=20), st.integers(0xE0, 0xEF))
def test_fuzz_garbage_is_counted_never_raised(datagrams: list[bytes], first: int) -> None:
    net, a, b = pair()
    connect(net, a, b)
    before = a.endpoint.state_of(b.endpoint.peer_id)
    for data in datagrams:
        a.receive_datagram(bytes([first]) + data, B_ADDR, net.clock.now)
        a.receive_datagram(data, B_ADDR, net.clock.now)
    assert a.endpoint.state_of(b.endpoint.peer_id) is before is PeerState.CONNECTED
    a.endpoint.send(b.endpoint.peer_id, b"still fine", net.clock.now)
    net.flush()
    assert net.run_until(lambda: b.messages() == [b"still fine"], timeout=5)


def test_a_pending_connect_can_be_redirected_to_another_path() -> None:
    net, a, b = pair(connect_timeout=2.0)
    dead = Address("192.0.2.77", 7)
    a.endpoint.connect(b.endpoint.peer_id, dead, net.clock.now)
    net.flush()
    net.run_for(1.5)
    assert not a.of(ev.PeerConnected) and not a.of(ev.ConnectFailed)
    assert a.endpoint.redirect(b.endpoint.peer_id, B_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.PeerConnected)), timeout=1.0)
    assert not a.of(ev.ConnectFailed)  # the deadline restarted with the redirect
    assert a.endpoint.counters["connects_redirected"] == 1
    assert not a.endpoint.redirect(b.endpoint.peer_id, dead, net.clock.now)  # connected: nothing pending


# -- regressions found in review ------------------------------------------------------------------


def test_a_delayed_initiation_after_simultaneous_open_changes_nothing() -> None:
    net, a, b = pair()
    lo, hi = sorted([a, b], key=lambda n: n.endpoint.peer_id.key)  # lo's dial wins the tie-break
    lo_addr, hi_addr = (A_ADDR, B_ADDR) if lo is a else (B_ADDR, A_ADDR)
    held: list[tuple[bytes, Address]] = []
    deliver = lo.receive_datagram

    def hold_first_initiation(data: bytes, addr: Address, now: float) -> None:
        if data[0] == wire.PacketType.HANDSHAKE_INIT and not held:
            held.append((data, addr))
            return
        deliver(data, addr, now)

    lo.receive_datagram = hold_first_initiation  # type: ignore[method-assign]
    hi.endpoint.connect(lo.endpoint.peer_id, lo_addr, 0.0)
    lo.endpoint.connect(hi.endpoint.peer_id, hi_addr, 0.0)
    net.flush()
    net.run_for(1.0)
    lo.receive_datagram = deliver  # type: ignore[method-assign]
    lo.receive_datagram(*held[0], net.clock.now)  # the held copy arrives a second late
    net.flush()
    net.run_for(20.0)
    for node in (lo, hi):
        assert len(node.of(ev.PeerConnected)) == 1 and not node.of(ev.PeerDisconnected), node.events


def test_a_replayed_initiation_cannot_tear_down_a_live_connection() -> None:
    net, a, b = pair()
    connect(net, a, b)
    captured = next(d for d in a.sent if d[0] == wire.PacketType.HANDSHAKE_INIT)
    a.endpoint.close(b.endpoint.peer_id, net.clock.now)
    net.flush()
    net.run_for(3)
    net.detach(B_ADDR)
    b2 = make(99, 2)  # B restarts: it remembers no timestamps
    net.attach(B_ADDR, b2)
    b2.endpoint.connect(a.endpoint.peer_id, A_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(b2.of(ev.PeerConnected)), timeout=5)
    b2.receive_datagram(captured, Address("198.51.100.66", 4444), net.clock.now)  # the replay
    net.flush()
    net.run_for(10)
    assert b2.endpoint.state_of(a.endpoint.peer_id) is PeerState.CONNECTED
    assert not b2.of(ev.PeerDisconnected)


def test_losing_the_first_packet_after_the_handshake_does_not_leave_a_half_open_connection() -> None:
    net, a, b = pair(heartbeat_interval=5.0, idle_timeout=30.0, connect_timeout=5.0)
    deliver = b.receive_datagram
    dropped: list[float] = []

    def lose_first_transport_packet(data: bytes, addr: Address, now: float) -> None:
        if data[0] == wire.PacketType.TRANSPORT and not dropped:
            dropped.append(now)
            return
        deliver(data, addr, now)

    b.receive_datagram = lose_first_transport_packet  # type: ignore[method-assign]
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, 0.0)
    net.flush()
    net.run_for(6.0)  # past the responder's confirmation deadline
    assert dropped and b.endpoint.state_of(a.endpoint.peer_id) is PeerState.CONNECTED
    a.endpoint.send(b.endpoint.peer_id, b"hello", net.clock.now)
    net.flush()
    assert net.run_until(lambda: b.messages() == [b"hello"], timeout=5)


def test_throwaway_identities_cannot_take_every_slot() -> None:
    from coremesh.secure.session import InitiatorHandshake

    net, a, b = pair(max_connections=16, connect_timeout=2.0)
    for i in range(16):
        hs = InitiatorHandshake(
            Identity(random.Random(1000 + i).randbytes(32)),
            b.endpoint.peer_id,
            local_index=i + 1,
            conn_id=bytes(8),
            wall_time=1.7e9,
            random_bytes=random.Random(i).randbytes,
            started_at=0.0,
        )
        b.receive_datagram(hs.packet, Address("198.51.100.7", 1000 + i), 0.0)
    assert len(b.endpoint.snapshots()) == b.endpoint.max_unconfirmed < 16
    assert b.endpoint.counters["drop_unconfirmed_full"] == 16 - b.endpoint.max_unconfirmed
    # The other slots stay usable: B can still dial out.
    b.endpoint.connect(Identity(bytes(range(5, 37))).peer_id, Address("192.0.2.9", 9), net.clock.now)
    # A real peer is refused while the quota is full (no state dropped, nothing half-open) and gets
    # in by retrying once the unconfirmed entries expire.
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now, timeout=10.0)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.PeerConnected)) and bool(b.of(ev.PeerConnected)), timeout=8)


def test_a_close_with_a_backlog_delivers_everything_first() -> None:
    net, a, b = pair(profile=LinkProfile(latency=0.01, bandwidth_bps=2_000_000, queue_limit=200_000))
    connect(net, a, b)
    sent = [bytes([i]) * 20_000 for i in range(50)]  # 1 MB: about 4 s at 2 Mbit/s
    for data in sent:
        a.endpoint.send(b.endpoint.peer_id, data, net.clock.now)
    a.endpoint.close(b.endpoint.peer_id, net.clock.now, "bye")
    net.flush()
    assert net.run_until(lambda: bool(b.of(ev.PeerDisconnected)), timeout=20)
    assert b.messages() == sent
    assert b.of(ev.PeerDisconnected)[0].reason == "closed by peer: bye"
    assert net.run_until(lambda: bool(a.of(ev.PeerDisconnected)), timeout=5)
    assert a.of(ev.PeerDisconnected)[0].clean


def test_keys_expire_when_rekeying_keeps_failing() -> None:
    net, a, b = pair(rekey_after_time=10.0, heartbeat_interval=1.0, idle_timeout=5.0)
    connect(net, a, b)
    deliver_b, deliver_a = b.receive_datagram, a.receive_datagram

    def no_handshakes(deliver):  # type: ignore[no-untyped-def]
        def receive(data: bytes, addr: Address, now: float) -> None:
            if data[0] not in (wire.PacketType.HANDSHAKE_INIT, wire.PacketType.HANDSHAKE_RESP):
                deliver(data, addr, now)

        return receive

    b.receive_datagram = no_handshakes(deliver_b)  # type: ignore[method-assign]
    a.receive_datagram = no_handshakes(deliver_a)  # type: ignore[method-assign]
    assert net.run_until(lambda: bool(a.of(ev.PeerDisconnected)), timeout=40)
    (gone,) = a.of(ev.PeerDisconnected)
    assert "keys expired" in gone.reason and 29.0 <= net.clock.now <= 31.0


def test_a_burst_of_connects_larger_than_the_unconfirmed_quota_all_succeed() -> None:
    net = SimNetwork(11, LinkProfile(latency=0.001))
    hub = make(1, 1, max_connections=16)  # 8 unconfirmed at a time
    net.attach(A_ADDR, hub)
    spokes = []
    for i in range(14):
        spoke = make(100 + i, 100 + i)
        net.attach(Address("192.0.2.60", 6000 + i), spoke)
        spoke.endpoint.connect(hub.endpoint.peer_id, A_ADDR, 0.0)
        spokes.append(spoke)
    net.flush()
    assert net.run_until(
        lambda: all(s.of(ev.PeerConnected) for s in spokes) and len(hub.of(ev.PeerConnected)) == 14, timeout=5
    )
    assert hub.endpoint.counters["drop_unconfirmed_full"] > 0  # the quota was hit, and nobody lost out
    net.run_for(3.0)
    assert not any(s.of(ev.PeerDisconnected) for s in spokes) and not hub.of(ev.PeerDisconnected)


# -- rekeying: simultaneous rekeys (issue 10) -------------------------------------------------------


def chat(net: SimNetwork, a: Node, b: Node, duration: float, sent: dict[str, list[bytes]]) -> None:
    """Both peers send a message every 10 ms for ``duration`` seconds of virtual time."""
    end = net.clock.now + duration
    while net.clock.now < end:
        for src, dst, key in ((a, b, "to_b"), (b, a, "to_a")):
            data = len(sent[key]).to_bytes(4, "big") * 50
            sent[key].append(data)
            src.endpoint.send(dst.endpoint.peer_id, data, net.clock.now)
        net.flush()
        net.run_for(0.01)


def assert_nothing_dropped_or_lost(net: SimNetwork, a: Node, b: Node, sent: dict[str, list[bytes]]) -> None:
    assert net.run_until(
        lambda: len(b.messages()) == len(sent["to_b"]) and len(a.messages()) == len(sent["to_a"]), timeout=30
    )
    assert b.messages() == sent["to_b"] and a.messages() == sent["to_a"]
    pa, pb = a.endpoint.peer_id, b.endpoint.peer_id
    drops = (a.endpoint.counters["drop_unknown_session"], b.endpoint.counters["drop_unknown_session"])
    lost = (a.endpoint.snapshot(pb).packets_lost, b.endpoint.snapshot(pa).packets_lost)  # type: ignore[union-attr]
    assert drops == (0, 0) and lost == (0, 0), (drops, lost, a.endpoint.counters, b.endpoint.counters)
    assert len(a.of(ev.PeerConnected)) == len(b.of(ev.PeerConnected)) == 1
    assert not a.of(ev.PeerDisconnected) and not b.of(ev.PeerDisconnected)


def test_simultaneous_rekeys_drop_and_lose_nothing() -> None:
    # Both peers start a rekey at the same instant, then one of them alone: the one-sided rekey
    # retires the previous session, which must not be one the peer still sends on.
    net, a, b = pair(5, LinkProfile(latency=0.05), rekey_after_time=1000.0)
    connect(net, a, b)
    pa, pb = a.endpoint.peer_id, b.endpoint.peer_id
    lo, hi = sorted([a, b], key=lambda n: n.endpoint.peer_id.key)
    sent: dict[str, list[bytes]] = {"to_a": [], "to_b": []}
    chat(net, a, b, 0.3, sent)
    for rounds in range(1, 6):
        assert a.endpoint.rekey(pb, net.clock.now) and b.endpoint.rekey(pa, net.clock.now)
        chat(net, a, b, 0.5, sent)
        one = a if rounds % 2 else b
        assert one.endpoint.rekey(pb if one is a else pa, net.clock.now)
        chat(net, a, b, 0.5, sent)
    assert_nothing_dropped_or_lost(net, a, b, sent)
    # The lower PeerId's rekey won each tie; the higher answered it and abandoned its own.
    assert (
        lo.endpoint.counters["drop_simultaneous_rekey_lost"] == 5
        and hi.endpoint.counters["rekeys_yielded"] == 5
    )
    completed = a.endpoint.counters["handshakes_completed"] + b.endpoint.counters["handshakes_completed"]
    assert completed == 1 + 5 * 2  # the connect, then per round the tie's winner and the one-sided rekey


def test_timed_rekeys_after_a_simultaneous_one_do_not_collide() -> None:
    net, a, b = pair(6, LinkProfile(latency=0.05), rekey_after_time=2.0)
    connect(net, a, b)
    pa, pb = a.endpoint.peer_id, b.endpoint.peer_id
    sent: dict[str, list[bytes]] = {"to_a": [], "to_b": []}
    chat(net, a, b, 0.3, sent)
    assert a.endpoint.rekey(pb, net.clock.now) and b.endpoint.rekey(pa, net.clock.now)
    chat(net, a, b, 20.0, sent)  # about ten rekey periods
    assert_nothing_dropped_or_lost(net, a, b, sent)
    started = a.endpoint.counters["rekeys_started"] + b.endpoint.counters["rekeys_started"]
    assert started >= 2 + 9
    ties = (
        a.endpoint.counters["drop_simultaneous_rekey_lost"]
        + b.endpoint.counters["drop_simultaneous_rekey_lost"]
    )
    assert ties == 1  # only the forced one: the timed rekeys that followed never started together


def test_a_rekey_waits_for_the_previous_one_to_be_used() -> None:
    net, a, b = pair(7, LinkProfile(latency=0.05), rekey_after_time=1000.0)
    connect(net, a, b)
    net.run_for(0.5)
    pa, pb = a.endpoint.peer_id, b.endpoint.peer_id
    assert a.endpoint.rekey(pb, net.clock.now)
    assert not a.endpoint.rekey(pb, net.clock.now)  # in flight
    net.run_for(0.06)  # B answered: until A sends under the new keys, B does not start a rekey
    assert not b.endpoint.rekey(pa, net.clock.now)
    net.run_for(0.06)  # A has the new keys, but B has not sent under them yet
    assert not a.endpoint.rekey(pb, net.clock.now)
    assert net.run_until(lambda: b.endpoint.counters["transport_packets_received"] > 0, timeout=1)
    net.run_for(0.3)
    assert a.endpoint.rekey(pb, net.clock.now)
    with pytest.raises(PeerNotFound):
        a.endpoint.rekey(Identity(bytes(32)).peer_id, net.clock.now)


def rekey_when_allowed(net: SimNetwork, a: Node, b: Node, one: Node, sent: dict[str, list[bytes]]) -> None:
    """``one`` rekeys as soon as it may, while both peers keep sending."""
    other = b if one is a else a
    for _ in range(200):
        if one.endpoint.rekey(other.endpoint.peer_id, net.clock.now):
            return
        chat(net, a, b, 0.05, sent)
    raise AssertionError("the rekey was held back for 10 s")


def test_crossing_rekeys_that_both_complete_settle_on_one_session() -> None:
    # B rekeys, but none of its packets reach A for a while: A's answer to B stays unused past its
    # wait, so A starts its own rekey, which B answers. Both handshakes complete; both peers must
    # then send on the same session, or the next rekey retires the one the other still sends on.
    net, a, b = pair(8, LinkProfile(latency=0.05), rekey_after_time=1000.0, connect_timeout=1.0)
    connect(net, a, b)
    pa, pb = a.endpoint.peer_id, b.endpoint.peer_id
    sent: dict[str, list[bytes]] = {"to_a": [], "to_b": []}
    chat(net, a, b, 0.3, sent)
    deliver = a.receive_datagram

    def no_transport_from_b(data: bytes, addr: Address, now: float) -> None:
        if data[0] != wire.PacketType.TRANSPORT:
            deliver(data, addr, now)

    a.receive_datagram = no_transport_from_b  # type: ignore[method-assign]
    assert b.endpoint.rekey(pa, net.clock.now)
    chat(net, a, b, 1.1, sent)
    assert a.endpoint.rekey(pb, net.clock.now)  # B's keys went unused for longer than A waits
    chat(net, a, b, 0.3, sent)
    a.receive_datagram = deliver  # type: ignore[method-assign]
    chat(net, a, b, 0.5, sent)
    assert a.endpoint.counters["drop_unknown_session"] == b.endpoint.counters["drop_unknown_session"] == 0
    for one in (a, b, a):
        rekey_when_allowed(net, a, b, one, sent)
        chat(net, a, b, 0.5, sent)
    assert net.run_until(
        lambda: len(b.messages()) == len(sent["to_b"]) and len(a.messages()) == len(sent["to_a"]), timeout=30
    )
    assert b.messages() == sent["to_b"] and a.messages() == sent["to_a"]
    assert a.endpoint.counters["drop_unknown_session"] == b.endpoint.counters["drop_unknown_session"] == 0
    assert not a.of(ev.PeerDisconnected) and not b.of(ev.PeerDisconnected)


def test_rekey_deadlines_are_jittered_by_the_injected_rng() -> None:
    times = []
    for seed in range(1, 5):
        net, a, b = pair(seed, LinkProfile(latency=0.01), rekey_after_time=10.0)
        connect(net, a, b)
        assert net.run_until(lambda: a.endpoint.counters["rekeys_started"] > 0, timeout=15)  # noqa: B023
        # A's session dates from the response, after one round trip (0.02 s): A rekeys up to 5%
        # of rekey_after_time before the period ends, never after; B (responder) only later.
        assert 0.02 + 9.5 <= net.clock.now <= 0.02 + 10.0
        assert b.endpoint.counters["rekeys_started"] == 0
        times.append(net.clock.now)
    assert len(set(times)) == len(times)


def test_exhausted_nonces_end_the_connection_without_a_traceback() -> None:
    # Unreachable in practice (a rekey starts after rekey_after_packets <= 2^60), so the session's
    # counter is set by hand: the connection ends with a reason, datagrams_to_send does not raise.
    net, a, b = pair()
    connect(net, a, b)
    session = a.endpoint._peers[b.endpoint.peer_id].current
    assert session is not None
    session.send_counter = COUNTER_LIMIT
    a.endpoint.send(b.endpoint.peer_id, b"no keys left", net.clock.now)
    net.flush()
    (gone,) = a.of(ev.PeerDisconnected)
    assert "session keys exhausted" in gone.reason and not gone.clean
    assert a.endpoint.counters["nonces_exhausted"] == 1
    assert a.endpoint.state_of(b.endpoint.peer_id) is None
    assert net.run_until(lambda: bool(b.of(ev.PeerDisconnected)), timeout=10)  # B times out


def drop_initiations(node: Node) -> None:
    deliver = node.receive_datagram

    def receive(data: bytes, addr: Address, now: float) -> None:
        if data[0] != wire.PacketType.HANDSHAKE_INIT:
            deliver(data, addr, now)

    node.receive_datagram = receive  # type: ignore[method-assign]


def test_rekey_retries_fit_before_the_keys_expire() -> None:
    # A short rekey period: the connect's retry back-off (0.25 s doubling to 2 s) would leave a
    # rekey three or four attempts in the two periods before the keys expire.
    net, a, b = pair(rekey_after_time=1.0, heartbeat_interval=0.5, idle_timeout=5.0)
    connect(net, a, b)
    before = a.endpoint.counters["handshake_initiations_sent"]
    drop_initiations(a)
    drop_initiations(b)
    assert net.run_until(lambda: bool(a.of(ev.PeerDisconnected)), timeout=10)
    assert "keys expired" in a.of(ev.PeerDisconnected)[0].reason
    # From about 1 s to 3 s, every 0.25 s (+-10%).
    assert a.endpoint.counters["handshake_initiations_sent"] - before >= 7
