"""A connect's deadline is the caller's, also across a redirect to another path (virtual time)."""

from __future__ import annotations

from coremesh.addr import Address
from coremesh.endpoint import events as ev

from .test_endpoint import pair


def test_a_redirect_keeps_the_callers_deadline_to_the_instant() -> None:
    net, a, b = pair(connect_timeout=60.0)
    dead, also_dead = Address("192.0.2.77", 7), Address("192.0.2.78", 8)
    start = net.clock.now
    a.endpoint.connect(b.endpoint.peer_id, dead, start, timeout=3.0)
    net.flush()
    net.run_for(1.0)
    assert a.endpoint.redirect(b.endpoint.peer_id, also_dead, net.clock.now, deadline=start + 3.0)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.ConnectFailed)), timeout=120.0)
    assert net.clock.now == start + 3.0  # not 1 + connect_timeout (61 s) after the start
    assert a.endpoint.state_of(b.endpoint.peer_id) is None


def test_without_a_deadline_a_redirect_still_restarts_connect_timeout() -> None:
    net, a, b = pair(connect_timeout=5.0)
    dead, also_dead = Address("192.0.2.77", 7), Address("192.0.2.78", 8)
    start = net.clock.now
    a.endpoint.connect(b.endpoint.peer_id, dead, start, timeout=3.0)
    net.flush()
    net.run_for(1.0)
    assert a.endpoint.redirect(b.endpoint.peer_id, also_dead, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.ConnectFailed)), timeout=120.0)
    assert net.clock.now == start + 1.0 + 5.0


def test_a_failed_connect_names_the_time_it_was_given() -> None:
    """The reason every on_connection callback sees says how long the connect really waited."""
    net, a, b = pair(connect_timeout=5.0)
    start = net.clock.now
    a.endpoint.connect(b.endpoint.peer_id, Address("192.0.2.77", 7), start, timeout=0.5)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.ConnectFailed)), timeout=120.0)
    (failed,) = a.of(ev.ConnectFailed)
    assert "no handshake response from 192.0.2.77:7 within 0.5s " in failed.reason, failed.reason
