"""Resource scopes (coremesh/access/scopes.py): the core by hand, then the endpoint under the
virtual-time network: throwaway identities from one host, a host's connections, a full table, and
a peer that never reads."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremesh.access.scopes import (
    CONNECTIONS_PER_HOST,
    FORWARD_RATE_LIMITED,
    UNCONFIRMED_FULL,
    UNCONFIRMED_PER_HOST,
    ResourceLimits,
    ResourceScopes,
    SendBufferFull,
)
from coremesh.addr import Address
from coremesh.config import MeshConfig
from coremesh.endpoint import events as ev
from coremesh.endpoint.states import PeerState
from coremesh.errors import ConfigError, LocalProtocolError
from coremesh.identity import Identity
from coremesh.secure.session import InitiatorHandshake
from coremesh.sim import LinkProfile, SimNetwork

from .test_endpoint import A_ADDR, B_ADDR, Node, connect, make, pair

# -- the core -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "8", None])
def test_every_limit_is_a_whole_number_of_at_least_one(value: object) -> None:
    with pytest.raises(ConfigError, match="max_unconfirmed_per_host"):
        ResourceLimits(max_unconfirmed_per_host=value)  # type: ignore[arg-type]


def test_the_limits_of_a_node_come_from_its_config() -> None:
    limits = ResourceLimits.from_config(
        MeshConfig(max_connections=10, max_connections_per_host=3, max_unconfirmed_per_host=2)
    )
    assert (limits.max_connections, limits.max_unconfirmed) == (10, 5)  # half may be unconfirmed
    assert (limits.max_connections_per_host, limits.max_unconfirmed_per_host) == (3, 2)
    assert ResourceLimits.from_config(MeshConfig(max_connections=1)).max_unconfirmed == 2


@pytest.mark.parametrize(
    "field",
    ["max_connections_per_host", "max_unconfirmed_per_host", "max_queued_messages", "forward_rate_per_peer"],
)
def test_config_refuses_a_limit_below_one(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        MeshConfig(**{field: 0})  # type: ignore[arg-type]


def test_unconfirmed_sessions_per_host_and_in_total() -> None:
    scopes = ResourceScopes(ResourceLimits(max_unconfirmed=5, max_unconfirmed_per_host=2))
    assert scopes.reserve_unconfirmed("a1", "A") is None
    assert scopes.reserve_unconfirmed("a2", "A") is None
    assert scopes.reserve_unconfirmed("a3", "A") == UNCONFIRMED_PER_HOST  # nothing reserved
    assert scopes.host_unconfirmed("A") == 2
    assert scopes.reserve_unconfirmed("b1", "B") is None
    assert scopes.reserve_unconfirmed("b2", "B") is None
    assert scopes.reserve_unconfirmed("c1", "C") is None
    assert scopes.reserve_unconfirmed("d1", "D") == UNCONFIRMED_FULL  # the node's quota first
    scopes.confirm("a1")  # a confirmed session no longer counts as unconfirmed...
    assert scopes.unconfirmed == 4 and scopes.host_unconfirmed("A") == 1
    assert scopes.host_connections("A") == 2  # ...but still as a connection of its host
    assert scopes.reserve_unconfirmed("a3", "A") is None
    scopes.release("a2")
    scopes.release("a2")  # twice: nothing more
    assert scopes.host_connections("A") == 2 and scopes.host_unconfirmed("A") == 1


def test_a_host_has_a_quota_of_connections_confirmed_or_not() -> None:
    scopes = ResourceScopes(ResourceLimits(max_connections_per_host=2, max_unconfirmed_per_host=2))
    for owner in ("x", "y"):
        assert scopes.reserve_unconfirmed(owner, "H") is None
        scopes.confirm(owner)
    assert scopes.reserve_unconfirmed("z", "H") == CONNECTIONS_PER_HOST
    assert scopes.reserve_unconfirmed("z", "other") is None
    scopes.release("x")
    assert scopes.reserve_unconfirmed("w", "H") is None


@given(
    st.lists(
        st.tuples(st.sampled_from(["reserve", "confirm", "release"]), st.integers(0, 11), st.integers(0, 3)),
        max_size=200,
    )
)
def test_no_sequence_of_calls_exceeds_a_limit_or_leaks(ops: list[tuple[str, int, int]]) -> None:
    limits = ResourceLimits(max_unconfirmed=6, max_unconfirmed_per_host=3, max_connections_per_host=4)
    scopes = ResourceScopes(limits)
    for op, owner, host in ops:
        if op == "reserve":
            scopes.reserve_unconfirmed(owner, host)
        elif op == "confirm":
            scopes.confirm(owner)
        else:
            scopes.release(owner)
        assert scopes.unconfirmed <= limits.max_unconfirmed
        for h in range(4):
            assert scopes.host_unconfirmed(h) <= limits.max_unconfirmed_per_host
            assert scopes.host_unconfirmed(h) <= scopes.host_connections(h) <= limits.max_connections_per_host
    for owner in range(12):
        scopes.release(owner)
    assert scopes.usage().unconfirmed == scopes.usage().inbound == scopes.usage().hosts == 0


def test_forwarding_is_rate_limited_per_neighbour_and_per_source() -> None:
    scopes = ResourceScopes(ResourceLimits(forward_rate_per_peer=10_000))
    assert scopes.admit_forward("n1", "s1", 6_000, 0.0) is None
    assert scopes.admit_forward("n1", "s2", 6_000, 0.0) == FORWARD_RATE_LIMITED  # n1's bucket
    assert scopes.admit_forward("n2", "s1", 6_000, 0.0) == FORWARD_RATE_LIMITED  # s1's bucket
    assert scopes.admit_forward("n2", "s2", 6_000, 0.0) is None  # neither was charged above
    assert scopes.admit_forward("n1", "s1", 6_000, 0.1) == FORWARD_RATE_LIMITED  # 4,000 + 1,000 banked
    assert scopes.admit_forward("n1", "s1", 6_000, 0.2) is None  # refilled at 10,000 bytes a second


def test_the_send_allowance() -> None:
    scopes = ResourceScopes(ResourceLimits(send_buffer_size=100))
    assert scopes.send_allowed(99) and not scopes.send_allowed(100)


# -- the endpoint, in virtual time ------------------------------------------------------------------


def initiation(responder: Node, seed: int) -> bytes:
    """A real initiation from a throwaway identity (it will never confirm)."""
    return InitiatorHandshake(
        Identity(random.Random(5000 + seed).randbytes(32)),
        responder.endpoint.peer_id,
        local_index=seed + 1,
        conn_id=bytes(8),
        wall_time=1.7e9,
        random_bytes=random.Random(seed).randbytes,
        started_at=0.0,
    ).packet


def test_throwaway_identities_from_one_host_hold_only_its_quota() -> None:
    net, a, b = pair(max_connections=64, max_unconfirmed_per_host=4, connect_timeout=2.0)
    for i in range(40):
        b.receive_datagram(initiation(b, i), Address("198.51.100.7", 1000 + i), 0.0)
    counters = b.endpoint.counters
    assert len(b.endpoint.snapshots()) == 4 == b.endpoint.resource_usage()["unconfirmed"]
    assert counters["drop_unconfirmed_per_host"] == 36 and counters["handshake_responses_sent"] == 4
    # Another host still gets its own quota, and a legitimate peer (a third host) connects at once.
    for i in range(40, 44):
        b.receive_datagram(initiation(b, i), Address("198.51.100.8", 1000 + i), 0.0)
    assert len(b.endpoint.snapshots()) == 8
    connect(net, a, b)
    assert counters["drop_unconfirmed_full"] == 0
    # The throwaway sessions expire unconfirmed, and their hosts' quotas are free again.
    net.run_for(3.0)
    assert b.endpoint.resource_usage()["unconfirmed"] == 0
    assert b.endpoint.state_of(a.endpoint.peer_id) is PeerState.CONNECTED


def test_ipv6_hosts_count_by_their_64() -> None:
    _, _, b = pair(max_unconfirmed_per_host=2)
    for i in range(4):
        b.receive_datagram(initiation(b, i), Address(f"2001:db8:1:2::{i + 1}", 7000), 0.0)
    assert len(b.endpoint.snapshots()) == 2 and b.endpoint.counters["drop_unconfirmed_per_host"] == 2
    b.receive_datagram(initiation(b, 9), Address("2001:db8:1:3::1", 7000), 0.0)
    assert len(b.endpoint.snapshots()) == 3


def star(spokes: int, host: str, **config: object) -> tuple[SimNetwork, Node, list[Node]]:
    net = SimNetwork(7, LinkProfile(latency=0.001))
    hub = make(1, 1, **config)
    net.attach(A_ADDR, hub)
    nodes = []
    for i in range(spokes):
        spoke = make(100 + i, 100 + i)
        net.attach(Address(host, 6000 + i), spoke)
        nodes.append(spoke)
    return net, hub, nodes


def test_one_host_gets_at_most_its_connections_and_nobody_is_evicted() -> None:
    net, hub, spokes = star(5, "192.0.2.60", max_connections_per_host=3, connect_timeout=1.0)
    for spoke in spokes[:3]:
        spoke.endpoint.connect(hub.endpoint.peer_id, A_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: len(hub.of(ev.PeerConnected)) == 3, timeout=3)
    for spoke in spokes[3:]:
        spoke.endpoint.connect(hub.endpoint.peer_id, A_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: all(s.of(ev.ConnectFailed) for s in spokes[3:]), timeout=8)
    assert hub.endpoint.counters["drop_connections_per_host"] >= 2
    assert not hub.of(ev.PeerDisconnected)  # the first three stay
    assert hub.endpoint.resource_usage()["inbound"] == 3
    # A peer on another host is not held back by that one.
    other = make(300, 300)
    net.attach(Address("192.0.2.61", 6000), other)
    other.endpoint.connect(hub.endpoint.peer_id, A_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(other.of(ev.PeerConnected)), timeout=3)
    # One of the three leaves: its host has room again.
    spokes[0].endpoint.close(hub.endpoint.peer_id, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(hub.of(ev.PeerDisconnected)), timeout=3)
    spokes[3].endpoint.connect(hub.endpoint.peer_id, A_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: len(spokes[3].of(ev.PeerConnected)) == 1, timeout=3)


def test_a_full_table_refuses_new_peers_and_keeps_every_confirmed_one() -> None:
    net, hub, spokes = star(4, "192.0.2.70", max_connections=3, connect_timeout=1.0)
    for spoke in spokes[:3]:
        spoke.endpoint.connect(hub.endpoint.peer_id, A_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: len(hub.of(ev.PeerConnected)) == 3, timeout=3)
    spokes[3].endpoint.connect(hub.endpoint.peer_id, A_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(spokes[3].of(ev.ConnectFailed)), timeout=8)
    assert hub.endpoint.counters["drop_max_connections"] >= 1 and not hub.of(ev.PeerDisconnected)
    with pytest.raises(LocalProtocolError, match="max_connections"):  # our own dials too
        hub.endpoint.connect(spokes[3].endpoint.peer_id, Address("192.0.2.70", 6003), net.clock.now)
    assert hub.endpoint.counters["connects_refused_max_connections"] == 1


def test_a_peer_that_never_reads_cannot_grow_our_send_buffer() -> None:
    cap = 64 * 1024
    net, a, b = pair(send_buffer_size=cap, receive_window=64 * 1024)
    connect(net, a, b)
    peer = b.endpoint.peer_id
    message = bytes(1000)
    for _ in range(3):  # fill b's window, then our buffer: b's application never reads
        while a.endpoint.try_send(peer, message, net.clock.now):
            net.flush()
        net.run_for(1.0)
    assert a.endpoint.counters["send_buffer_full"] == 3
    a.endpoint.counters["send_buffer_full"] = 1
    assert a.endpoint.counters["send_buffer_full"] == 1
    with pytest.raises(SendBufferFull):
        a.endpoint.send(peer, message, net.clock.now)
    assert a.endpoint.counters["send_buffer_full"] == 2
    net.run_for(5.0)  # the window never opens: nothing more leaves, nothing more is queued
    buffered = a.endpoint.resource_usage()["send_buffered_bytes"]
    assert cap <= buffered < cap + len(message) + 8
    assert not a.endpoint.try_send(peer, message, net.clock.now)
    # b holds what its window let in and no more; both ends are still connected.
    assert len(b.messages()) * len(message) <= 64 * 1024
    assert a.endpoint.state_of(peer) is PeerState.CONNECTED
    assert b.endpoint.state_of(a.endpoint.peer_id) is PeerState.CONNECTED
    # Once b reads, a may send again.
    b.endpoint.consume(a.endpoint.peer_id, len(b.messages()) * len(message))
    net.flush()
    assert net.run_until(lambda: a.endpoint.try_send(peer, message, net.clock.now), timeout=5)
    assert any(isinstance(e, ev.SendReady) for e in a.events)


def test_unconfirmed_sessions_of_replacements_count_too() -> None:
    """A known peer's new connection (a restart) waits unconfirmed like any other; once confirmed,
    the host's count holds the new connection only."""
    net, a, b = pair()
    connect(net, a, b)
    assert b.endpoint.resource_usage()["inbound"] == 1
    restarted = make(99, 1)  # the same identity as a, a fresh endpoint on the same host
    net.attach(Address(A_ADDR.host, A_ADDR.port + 1), restarted)
    restarted.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(restarted.of(ev.PeerConnected)), timeout=5)
    net.run_for(1.0)
    usage = b.endpoint.resource_usage()
    assert usage["inbound"] == 1 and usage["unconfirmed"] == 0


def test_a_forwarding_node_carries_at_most_its_rate_and_the_stream_still_gets_through() -> None:
    from coremesh.endpoint.paths import RoutedAddress

    from .test_endpoint_overlay import mesh, routed_connect

    rate = 20_000
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    b.endpoint.scopes = ResourceScopes(ResourceLimits.from_config(MeshConfig(forward_rate_per_peer=rate)))
    routed_connect(net, a, c)
    assert isinstance(a.endpoint.snapshot(c.endpoint.peer_id).address, RoutedAddress)  # type: ignore[union-attr]
    c_id = c.endpoint.peer_id
    start, forwarded = net.clock.now, b.endpoint.counters["forwarded_bytes"]
    payloads = [bytes([i]) * 3000 for i in range(40)]  # 120 kB: six times the burst
    for p in payloads:
        a.endpoint.send(c_id, p, net.clock.now)
    net.flush()
    assert net.run_until(lambda: len(c.messages()) >= 40, timeout=60)
    assert c.messages() == payloads  # dropped packets were sent again: nothing lost, nothing reordered
    assert b.endpoint.counters["drop_forward_rate_limited"] > 0
    carried = b.endpoint.counters["forwarded_bytes"] - forwarded
    # Data from a, ACKs from c: two neighbours and two sources, each with its own bucket.
    assert carried <= 2 * (rate * (net.clock.now - start) + rate)
