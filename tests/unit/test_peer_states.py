"""The peer connection's state table (coremesh/endpoint/states.py): every transition it allows happens
through the public API of two endpoints in memory, and nothing else is allowed."""

from __future__ import annotations

import itertools
import logging

import pytest

from coremesh.addr import Address
from coremesh.endpoint import events as ev
from coremesh.endpoint.states import INITIAL, TRANSITIONS, ConnState, check_transition, mermaid_diagram
from coremesh.errors import LocalProtocolError
from coremesh.sim import LinkProfile

from .test_endpoint import A_ADDR, B_ADDR, connect, pair

Edge = tuple[ConnState | None, ConnState]


def _edges(caplog: pytest.LogCaptureFixture) -> set[Edge]:
    """The state changes the one logging place reported (None: a connection created there)."""
    seen: set[Edge] = set()
    for record in caplog.records:
        if record.name != "coremesh.endpoint.peer":
            continue
        args = record.args
        assert isinstance(args, tuple)
        if "->" in record.msg:
            seen.add((ConnState[str(args[1])], ConnState[str(args[2])]))
        else:
            seen.add((None, ConnState[str(args[1])]))
    return seen


def _connected_and_closed_by_one_side() -> None:
    net, a, b = pair()
    connect(net, a, b)  # A: DIALING -> CONNECTED; B: CONFIRMING -> CONNECTED
    a.endpoint.close(b.endpoint.peer_id, net.clock.now, "bye")  # A: CLOSING; B: DRAINING
    net.flush()
    assert net.run_until(
        lambda: bool(a.of(ev.PeerDisconnected)) and bool(b.of(ev.PeerDisconnected)), timeout=3
    )
    net.run_for(3.0)  # A: the ack arrives -> CLOSED; B: the linger ends -> CLOSED
    assert a.endpoint.snapshots() == [] and b.endpoint.snapshots() == []


def _closed_by_both_at_once() -> None:
    net, a, b = pair(profile=LinkProfile(latency=0.05))
    connect(net, a, b)
    a.endpoint.close(b.endpoint.peer_id, net.clock.now)  # both CLOSING, each CLOSE crosses the other
    b.endpoint.close(a.endpoint.peer_id, net.clock.now)
    net.flush()
    net.run_for(5.0)  # CROSSED, then the linger ends: CLOSED, and only then the application hears
    for node in (a, b):
        (gone,) = node.of(ev.PeerDisconnected)
        assert gone.clean and gone.reason == "closed by peer"


def _simultaneous_open() -> None:
    net, a, b = pair(profile=LinkProfile(latency=0.02))
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, 0.0)  # the higher PeerId's dial yields: CONFIRMING
    b.endpoint.connect(a.endpoint.peer_id, A_ADDR, 0.0)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.PeerConnected)) and bool(b.of(ev.PeerConnected)), timeout=5)


def _connect_timeout() -> None:
    net, a, b = pair(connect_timeout=2.0)
    a.endpoint.connect(b.endpoint.peer_id, Address("192.0.2.77", 7), net.clock.now)  # DIALING -> CLOSED
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.ConnectFailed)), timeout=5)


def _never_confirmed() -> None:
    net, a, b = pair(connect_timeout=2.0)
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now)
    net.flush()
    net.set_link(B_ADDR, A_ADDR, LinkProfile(loss=1.0))  # B's responses never arrive
    net.run_for(5.0)  # B: CONFIRMING -> CLOSED
    assert b.endpoint.counters["handshakes_unconfirmed"] >= 1


def _idle_timeout() -> None:
    net, a, b = pair()
    connect(net, a, b)
    net.partition(A_ADDR, B_ADDR)
    net.partition(B_ADDR, A_ADDR)
    assert net.run_until(lambda: bool(a.of(ev.PeerDisconnected)), timeout=10)  # CONNECTED -> CLOSED


def test_every_transition_in_the_table_happens_through_the_public_api(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="coremesh.endpoint.peer")
    for scenario in (
        _connected_and_closed_by_one_side,
        _closed_by_both_at_once,
        _simultaneous_open,
        _connect_timeout,
        _never_confirmed,
        _idle_timeout,
    ):
        scenario()
    expected: set[Edge] = {(None, state) for state in INITIAL} | set(TRANSITIONS)
    assert _edges(caplog) == expected


def test_a_transition_outside_the_table_is_a_local_error() -> None:
    for old, new in itertools.product(ConnState, ConnState):
        if (old, new) in TRANSITIONS:
            check_transition(old, new)
        else:
            with pytest.raises(LocalProtocolError, match=f"{old.name} -> {new.name}"):
                check_transition(old, new)


def test_closed_is_final_and_every_state_can_end() -> None:
    assert not [new for old, new in TRANSITIONS if old is ConnState.CLOSED]
    assert {old for old in ConnState if old is not ConnState.CLOSED} == {
        old for old, new in TRANSITIONS if new is ConnState.CLOSED
    }


def test_the_diagram_is_drawn_from_the_table() -> None:
    diagram = mermaid_diagram()
    assert diagram.startswith("```mermaid\nstateDiagram-v2\n") and diagram.endswith("```\n")
    for (old, new), cause in TRANSITIONS.items():
        assert f"    {old.name} --> {new.name}: {cause}\n" in diagram
    for state, cause in INITIAL.items():
        assert f"    [*] --> {state.name}: {cause}\n" in diagram
    assert "    CLOSED --> [*]\n" in diagram


def test_the_architecture_doc_shows_the_diagram_of_the_table() -> None:
    from tests import gendocs

    text = gendocs.ARCHITECTURE.read_text(encoding="utf-8")
    _, changed = gendocs.render_peer_states(text)
    assert not changed, "docs/architecture.md: the peer state diagram is stale; run: python -m tests.gendocs"
    assert mermaid_diagram() in text
    with pytest.raises(ValueError, match="markers are missing"):
        gendocs.render_peer_states("# no markers here\n")
