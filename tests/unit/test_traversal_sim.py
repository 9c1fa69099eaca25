"""Endpoints behind simulated RFC 4787 NATs go from the relay to a direct path, deterministically."""

from __future__ import annotations

import pytest

from coremesh import events as ev
from coremesh.addr import Address
from coremesh.sim import nat as N
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
        (N.PORT_RESTRICTED, N.SYMMETRIC_RANDOM, "keyed"),
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
        assert w.net.run_until(lambda: both_direct(w), timeout=5.0)
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
