"""Routed connections through the endpoint core, on the virtual-time network: no sockets, no clock.

Nodes reach only their neighbours (every other pair is partitioned); a connection to a farther
node is an end-to-end session whose packets the nodes between forward as ROUTED packets.
"""

from __future__ import annotations

import pytest

from coremesh.addr import Address
from coremesh.endpoint import events as ev
from coremesh.endpoint.paths import RoutedAddress
from coremesh.endpoint.states import PeerState
from coremesh.routing import overlay as ov
from coremesh.sim import LinkProfile, SimNetwork

from .test_endpoint import Node, make


def _address(i: int) -> Address:
    return Address(f"192.0.2.{i + 1}", 1000 + i)


def mesh(count: int, links: list[tuple[int, int]], seed: int = 3) -> tuple[SimNetwork, list[Node]]:
    """``count`` endpoints; only the listed pairs can reach each other; each link connected."""
    net = SimNetwork(seed, LinkProfile(latency=0.005))
    nodes = [make(seed * 10 + i, 100 + i, idle_timeout=15.0, heartbeat_interval=5.0) for i in range(count)]
    for i, node in enumerate(nodes):
        net.attach(_address(i), node)
    linked = {frozenset(link) for link in links}
    for i in range(count):
        for j in range(i + 1, count):
            if frozenset((i, j)) not in linked:
                net.partition(_address(i), _address(j))
    for i, j in links:
        nodes[i].endpoint.connect(nodes[j].endpoint.peer_id, _address(j), net.clock.now)
    net.flush()
    assert net.run_until(
        lambda: all(
            nodes[i].endpoint.state_of(nodes[j].endpoint.peer_id) is PeerState.CONNECTED
            and nodes[j].endpoint.state_of(nodes[i].endpoint.peer_id) is PeerState.CONNECTED
            for i, j in links
        ),
        timeout=10,
    )
    return net, nodes


def has_route(node: Node, other: Node) -> bool:
    return node.endpoint.overlay.next_hop(other.endpoint.peer_id) is not None


def routed_connect(net: SimNetwork, a: Node, c: Node) -> None:
    c_id = c.endpoint.peer_id
    assert net.run_until(lambda: has_route(a, c) and has_route(c, a), timeout=10)
    a.endpoint.connect(c_id, RoutedAddress(c_id), net.clock.now)
    net.flush()
    assert net.run_until(lambda: a.endpoint.state_of(c_id) is PeerState.CONNECTED, timeout=10), (
        a.endpoint.counters
    )


def test_a_line_carries_an_end_to_end_connection_through_the_middle() -> None:
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    routed_connect(net, a, c)
    c_id, a_id = c.endpoint.peer_id, a.endpoint.peer_id
    snap = a.endpoint.snapshot(c_id)
    assert snap is not None and snap.path == "routed"
    assert a.endpoint.overlay.hops(c_id) == (b.endpoint.peer_id,)
    payloads = [bytes([i]) * 3000 for i in range(20)]  # several packets each
    for p in payloads:
        a.endpoint.send(c_id, p, net.clock.now)
    net.flush()
    assert net.run_until(lambda: len([m for m in c.messages()]) >= 20, timeout=20)
    got = [e.data for e in c.of(ev.MessageReceived) if e.peer_id == a_id]
    assert got == payloads
    assert b.endpoint.counters["forwarded_packets"] > 0
    assert not [e for e in b.of(ev.MessageReceived) if e.peer_id in (a_id, c_id) and len(e.data) == 3000]


def test_the_middle_node_cannot_read_what_it_forwards() -> None:
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    routed_connect(net, a, c)
    secret = b"the payload only c may read" * 10
    a.endpoint.send(c.endpoint.peer_id, secret, net.clock.now)
    net.flush()
    assert net.run_until(lambda: secret in c.messages(), timeout=10)
    # What b sent on includes every forwarded packet: the payload never appears in clear there.
    assert all(secret[:27] not in packet for packet in b.sent)


def test_a_ring_moves_to_the_backup_when_a_link_dies_with_nothing_lost() -> None:
    net, nodes = mesh(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)])
    a, b, c, _d, e = nodes
    c_id, a_id = c.endpoint.peer_id, a.endpoint.peer_id
    routed_connect(net, a, c)
    assert a.endpoint.overlay.next_hop(c_id) == b.endpoint.peer_id
    # A primary through b, and a backup through e once the adverts have come round the other side.
    assert net.run_until(lambda: len(a.endpoint.overlay.routes(c_id)) >= 2, timeout=10)
    sent: list[bytes] = []
    for i in range(60):
        sent.append(f"m{i:03d}".encode())
        a.endpoint.send(c_id, sent[-1], net.clock.now)
        net.flush()
        net.run_for(0.05)
        if i == 20:
            net.partition(_address(0), _address(1))  # a-b dies silently, mid-transfer
    assert net.run_until(
        lambda: len([m for m in c.of(ev.MessageReceived) if m.peer_id == a_id]) >= 60, timeout=30
    ), (a.endpoint.counters, [r.path for r in a.endpoint.overlay.routes(c_id)])
    assert [m.data for m in c.of(ev.MessageReceived) if m.peer_id == a_id] == sent
    assert a.endpoint.overlay.next_hop(c_id) == e.endpoint.peer_id
    assert a.endpoint.state_of(c_id) is PeerState.CONNECTED  # the end-to-end session survived
    # The stream saw the new path and resent at once instead of waiting out its backed-off PTO.
    assert a.endpoint.counters["routed_path_changes"] >= 1


def test_a_routed_initiation_must_come_from_its_named_source() -> None:
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    assert net.run_until(lambda: has_route(a, c), timeout=10)
    # An initiation by x (a node of its own), carried as if it came from a: c authenticates x
    # from the handshake itself and refuses a session whose named source is another peer.
    c_id = c.endpoint.peer_id
    x = make(99, 199)
    x.endpoint.connect(c_id, RoutedAddress(c_id), net.clock.now)
    conn = x.endpoint.connections()[c_id]
    assert conn.handshake is not None
    forged = ov.encode_routed(
        ov.Routed(destination=c_id, source=a.endpoint.peer_id, hop_limit=4, inner=conn.handshake.packet)
    )
    # Delivered as b's hop session delivers an overlay packet to c.
    c.endpoint.overlay.on_packet(c.endpoint.connections()[b.endpoint.peer_id], forged, net.clock.now)
    assert c.endpoint.counters["drop_routed_source_mismatch"] == 1


@pytest.mark.parametrize(
    "garbage", [ov.OVERLAY_PREFIX, ov.OVERLAY_PREFIX + b"\xe8", ov.OVERLAY_PREFIX + b"\x77xx"]
)
def test_malformed_overlay_packets_are_counted(garbage: bytes) -> None:
    net, (a, b) = mesh(2, [(0, 1)])
    conn = b.endpoint.connections()[a.endpoint.peer_id]
    b.endpoint.overlay.on_packet(conn, garbage, net.clock.now)
    counters = b.endpoint.counters
    assert counters["drop_overlay_malformed"] + counters["drop_overlay_unknown_type"] == 1


def test_a_source_route_fixes_the_hops_whatever_the_table_prefers() -> None:
    net, nodes = mesh(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)])
    a, b, c, d, e = nodes
    c_id = c.endpoint.peer_id
    assert net.run_until(lambda: has_route(a, c) and has_route(c, a), timeout=10)
    assert a.endpoint.overlay.next_hop(c_id) == b.endpoint.peer_id  # the table's choice: the short way
    route = (e.endpoint.peer_id, d.endpoint.peer_id, c_id)  # the sender's choice: the long way
    a.endpoint.connect(c_id, RoutedAddress(c_id, route), net.clock.now)
    net.flush()
    assert net.run_until(lambda: a.endpoint.state_of(c_id) is PeerState.CONNECTED, timeout=10)
    before = e.endpoint.counters["forwarded_packets"], d.endpoint.counters["forwarded_packets"]
    a.endpoint.send(c_id, b"the long way round", net.clock.now)
    net.flush()
    assert net.run_until(lambda: b"the long way round" in c.messages(), timeout=10)
    # e and d carried it (the table alone would have sent it through b; c's answers go by c's table).
    after = e.endpoint.counters["forwarded_packets"], d.endpoint.counters["forwarded_packets"]
    assert after[0] > before[0] and after[1] > before[1]
    # A source route whose first hop is not a neighbour goes nowhere (counted).
    far = RoutedAddress(c_id, (d.endpoint.peer_id, c_id))
    assert a.endpoint.overlay.wrap(b"x", far) is False
    assert a.endpoint.counters["drop_no_route"] >= 1


def test_a_hop_rewriting_the_source_cannot_steer_a_routed_connection() -> None:
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    routed_connect(net, a, c)
    a_id, c_id = a.endpoint.peer_id, c.endpoint.peer_id
    x = make(98, 198).endpoint.peer_id  # a peer id that is not on this connection
    # b forwards a's next packet to c with its source rewritten to x.
    overlay_b = b.endpoint.overlay
    original = overlay_b._on_routed

    def rewrite(neighbour: object, packet: ov.Routed, size: int, now: float) -> None:
        if packet.destination == c_id and packet.source == a_id and not packet.probe:
            packet = ov.Routed(packet.destination, x, packet.hop_limit, packet.inner)
        original(neighbour, packet, size, now)  # type: ignore[arg-type]

    overlay_b._on_routed = rewrite  # type: ignore[method-assign]
    a.endpoint.send(c_id, b"steer me", net.clock.now)
    net.flush()
    net.run_for(0.5)
    assert c.endpoint.counters["drop_routed_source_mismatch"] >= 1
    assert c.endpoint.snapshot(a_id) is not None
    assert c.endpoint.connections()[a_id].address == RoutedAddress(a_id)  # not moved to x


def test_a_source_route_that_revisits_a_node_is_dropped_and_hop_limits_are_clamped() -> None:
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    assert net.run_until(lambda: has_route(a, c), timeout=10)
    a_id, b_id, c_id = (n.endpoint.peer_id for n in (a, b, c))
    link = b.endpoint.connections()[a_id]
    looping = ov.Routed(
        destination=a_id, source=c_id, hop_limit=255, inner=b"x", source_route=(c_id, b_id) * 4
    )
    b.endpoint.overlay.on_packet(link, ov.encode_routed(looping), net.clock.now)
    assert b.endpoint.counters["drop_bad_source_route"] == 1
    assert b.endpoint.counters["forwarded_packets"] == 0
    # An honest packet with an inflated hop limit leaves with at most the default.
    sent_before = len(b.sent)
    b.endpoint.overlay.on_packet(
        link, ov.encode_routed(ov.Routed(c_id, a_id, 255, b"\x00probe", probe=False)), net.clock.now
    )
    assert b.endpoint.counters["forwarded_packets"] == 1
    net.flush()
    assert len(b.sent) > sent_before


def test_spoofed_probe_sources_leave_no_state_behind() -> None:
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    assert net.run_until(lambda: has_route(a, c), timeout=10)
    link = c.endpoint.connections()[b.endpoint.peer_id]
    for i in range(200):
        spoofed = make(1000 + i, 2000 + i).endpoint.peer_id
        probe = ov.Routed(c.endpoint.peer_id, spoofed, 4, bytes(10), probe=True)
        c.endpoint.overlay.on_packet(link, ov.encode_routed(probe), net.clock.now)
    assert len(c.endpoint.overlay.hops_in_use) == 0  # answers to strangers are not remembered


def test_a_router_function_that_raises_is_counted_and_the_table_decides() -> None:
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    assert net.run_until(lambda: has_route(a, c), timeout=10)

    def broken(destination: object, routes: object) -> None:
        raise KeyError("boom")

    a.endpoint.overlay.set_router(broken)  # type: ignore[arg-type]
    assert a.endpoint.overlay.next_hop(c.endpoint.peer_id) == b.endpoint.peer_id
    assert a.endpoint.counters["router_failed"] >= 1
    # An over-long source route is a counted drop, not an exception in the send path.
    too_long = RoutedAddress(c.endpoint.peer_id, (b.endpoint.peer_id,) * 20 + (c.endpoint.peer_id,))
    assert a.endpoint.overlay.wrap(b"x", too_long) is False
    assert a.endpoint.counters["drop_unencodable_route"] == 1
