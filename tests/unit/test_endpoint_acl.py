"""Allow and deny lists in the endpoint core, on the virtual-time network (docs/access.md).

A refused peer's initiation is dropped after the Noise message names it and before any response or
per-peer state; a refused peer is never dialed; a run-time change closes what it now refuses; and a
closed mesh is closed through the overlay too (routed handshakes, forwarding, broadcasts).
"""

from __future__ import annotations

import pytest

from coremesh.access.acl import NOT_ALLOWED, PeerNotAllowed
from coremesh.endpoint import events as ev
from coremesh.endpoint.paths import RoutedAddress
from coremesh.endpoint.states import PeerState

from .test_endpoint import B_ADDR, connect, make, pair
from .test_endpoint_overlay import has_route, mesh, routed_connect


def test_a_closed_responder_refuses_a_peer_not_on_its_allow_list_without_state() -> None:
    net, a, b = pair()
    b.endpoint.acl.allow(b.endpoint.peer_id)  # closed: nobody else
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now, timeout=3.0)
    net.flush()
    net.run_for(5.0)
    assert b.endpoint.counters["drop_acl_not_allowed"] >= 2  # every retry refused
    assert b.endpoint.counters["handshake_responses_sent"] == 0
    assert b.endpoint.connections() == {} and b.endpoint._indexes == {} and b.endpoint._timestamps == {}
    assert not b.events
    assert a.endpoint.state_of(b.endpoint.peer_id) is None  # the connect timed out


def test_the_allow_list_from_the_configuration_closes_the_mesh() -> None:
    outsider = make(9, 9).endpoint.peer_id.to_text()
    net, a, b = pair(allow_peers=(outsider,))  # both allow only the outsider
    assert a.endpoint.acl.lists.closed and not a.endpoint.acl.permits(b.endpoint.peer_id)
    with pytest.raises(PeerNotAllowed, match="not on the allow-list"):
        a.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now)
    _, c, d = pair(seed=2, deny_peers=(outsider,))  # a deny-list alone leaves the mesh open
    assert not c.endpoint.acl.lists.closed and c.endpoint.acl.permits(d.endpoint.peer_id)


def test_an_initiator_never_dials_a_refused_peer() -> None:
    net, a, b = pair()
    a.endpoint.acl.deny(b.endpoint.peer_id)
    with pytest.raises(PeerNotAllowed, match="deny-list"):
        a.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now)
    assert a.endpoint.counters["acl_connects_refused"] == 1 and a.endpoint.connections() == {}
    net.flush()
    assert not a.sent  # not one packet left


def test_deny_at_run_time_closes_the_connection_and_refuses_the_reconnect() -> None:
    net, a, b = pair()
    connect(net, a, b)
    a_id, b_id = a.endpoint.peer_id, b.endpoint.peer_id
    b.endpoint.acl.deny(a_id)
    assert b.endpoint.apply_acl(net.clock.now) == 1
    net.flush()
    assert net.run_until(lambda: a.endpoint.state_of(b_id) is None, timeout=10)
    (gone,) = a.of(ev.PeerDisconnected)
    assert "access list" in gone.reason
    assert b.endpoint.counters["acl_connections_closed"] == 1
    a.endpoint.connect(b_id, B_ADDR, net.clock.now, timeout=2.0)
    net.flush()
    net.run_for(3.0)
    assert b.endpoint.counters["drop_acl_denied"] >= 1
    assert b.endpoint.state_of(a_id) is None


def test_allow_at_run_time_lets_the_peer_in() -> None:
    net, a, b = pair()
    a_id = a.endpoint.peer_id
    b.endpoint.acl.allow(b.endpoint.peer_id)  # closed
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now, timeout=20.0)
    net.flush()
    net.run_for(1.0)
    assert b.endpoint.counters["drop_acl_not_allowed"] >= 1
    b.endpoint.acl.allow(a_id)
    assert b.endpoint.apply_acl(net.clock.now) == 0
    assert net.run_until(lambda: b.endpoint.state_of(a_id) is PeerState.CONNECTED, timeout=10)
    assert b.endpoint.acl.counters["allow_listed"] >= 1 and b.endpoint.acl.counters[NOT_ALLOWED] >= 1


def test_a_closed_middle_node_carries_nothing_for_a_peer_it_does_not_allow() -> None:
    # a - b - d - c: b allows a and d only, so c is no more reachable from a through b (c is not
    # b's neighbour: only b's forwarding can refuse it), nor b from c.
    net, (a, b, d, c) = mesh(4, [(0, 1), (1, 2), (2, 3)])
    assert net.run_until(lambda: has_route(a, c) and has_route(c, a), timeout=10)
    for peer in (a, d):
        b.endpoint.acl.allow(peer.endpoint.peer_id)
    assert b.endpoint.apply_acl(net.clock.now) == 0  # its neighbours are both allowed
    net.flush()
    c_id, b_id = c.endpoint.peer_id, b.endpoint.peer_id
    a.endpoint.connect(c_id, RoutedAddress(c_id), net.clock.now, timeout=5.0)
    net.flush()
    net.run_for(6.0)
    assert a.endpoint.state_of(c_id) is None and c.endpoint.state_of(a.endpoint.peer_id) is None
    assert b.endpoint.counters["drop_acl_forward"] >= 1
    assert d.endpoint.counters["forwarded_packets"] == 0  # nothing of it got past b
    # c's routed handshake to b itself is refused before any Diffie-Hellman.
    c.endpoint.connect(b_id, RoutedAddress(b_id), net.clock.now, timeout=3.0)
    net.flush()
    net.run_for(4.0)
    assert b.endpoint.counters["drop_acl_routed"] >= 1
    assert b.endpoint.state_of(c_id) is None and c.endpoint.state_of(b_id) is None


def test_the_same_line_with_an_open_middle_node_connects() -> None:
    # The control for the test above: the same line, b open.
    net, (a, _b, _d, c) = mesh(4, [(0, 1), (1, 2), (2, 3)])
    routed_connect(net, a, c)


def test_a_denied_neighbour_stops_being_a_neighbour_and_its_routes_go() -> None:
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    routed_connect(net, a, c)
    c_id = c.endpoint.peer_id
    b.endpoint.acl.deny(c_id)
    assert b.endpoint.apply_acl(net.clock.now) == 1
    net.flush()
    assert net.run_until(lambda: c_id not in b.endpoint.overlay.neighbours, timeout=5)
    assert net.run_until(lambda: not has_route(a, c), timeout=10)


def test_broadcasts_from_a_refused_origin_are_neither_delivered_nor_passed_on() -> None:
    net, (a, b, c) = mesh(3, [(0, 1), (1, 2)])
    assert net.run_until(lambda: has_route(a, c) and has_route(c, a), timeout=10)
    c.endpoint.acl.deny(a.endpoint.peer_id)  # a is not c's neighbour: only its messages are barred
    assert c.endpoint.apply_acl(net.clock.now) == 0
    a.endpoint.overlay.flood.broadcast(b"from a", net.clock.now)
    a.endpoint.overlay.touch()
    net.flush()
    net.run_for(2.0)
    delivered = [[e.delivery.data for e in n.of(ev.OverlayDelivered)] for n in (b, c)]
    assert delivered == [[b"from a"], []]
    assert c.endpoint.counters["drop_acl_flood"] == 1
    c.endpoint.overlay.flood.broadcast(b"from c", net.clock.now)  # the other way is c's to allow
    c.endpoint.overlay.touch()
    net.flush()
    net.run_for(2.0)
    assert [e.delivery.data for e in a.of(ev.OverlayDelivered)] == [b"from c"]
