"""The birthday approach through RFC 4787 NAT tables: a random-port symmetric NAT with many probe
sockets behind it against a cone NAT spraying random ports, with a virtual clock."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

import pytest

from coremesh.addr import Address
from coremesh.sim import nat as N
from coremesh.sim.nat import (
    ADDRESS_RESTRICTED,
    FULL_CONE,
    PORT_RESTRICTED,
    SYMMETRIC_RANDOM,
    Behaviour,
    Nat,
)
from coremesh.traversal import TraversalConfig
from coremesh.traversal.birthday import (
    BirthdayAttempt,
    BirthdayConfig,
    CloseSockets,
    OpenSockets,
    Role,
    SendProbe,
    birthday_role,
    success_probability,
)

from .traversal_sim import both_direct, connect_via_relay, path, world

RELAY = Address("192.0.2.1", 3478)
S_PRIV_MAIN = Address("10.0.0.2", 4000)
C_PRIV = Address("10.1.0.2", 5000)
DELAY = 0.02  # one way, each side to the internet


@dataclass
class Outcome:
    connected: bool
    time: float  # until both sides saw the other's packet
    packets: int  # probes and answers, both sides
    max_sockets: int  # probe sockets open at once
    open_after: int  # probe sockets still open at the end


def run(seed: int, config: BirthdayConfig, cone: Behaviour = PORT_RESTRICTED) -> Outcome:
    """One attempt, both sides started when their candidates cross (the sprayer a little later)."""
    rng = random.Random(seed)
    s_nat = Nat("198.51.100.2", SYMMETRIC_RANDOM, random.Random(rng.random()))
    c_nat = Nat("192.0.2.3", cone, random.Random(rng.random()))
    # Both learned their server-reflexive address from the relay before.
    s_srflx = s_nat.outbound(S_PRIV_MAIN, RELAY, 0.0)
    c_srflx = c_nat.outbound(C_PRIV, RELAY, 0.0)
    opener = BirthdayAttempt(config, Role.OPENER, c_srflx, random.Random(rng.random()), 0.0)
    sprayer = BirthdayAttempt(config, Role.SPRAYER, s_srflx, random.Random(rng.random()), 0.01)
    sockets: dict[int, Address] = {}
    max_sockets = 0
    packets = 0
    # (arrival time, seq, destination side, public destination, public source)
    queue: list[tuple[float, int, str, Address, Address]] = []
    seq = 0
    s_hit_at: float | None = None
    c_hit_at: float | None = None

    def send_from_s(priv: Address, dst: Address, now: float) -> None:
        nonlocal seq, packets
        packets += 1
        src = s_nat.outbound(priv, dst, now)
        seq += 1
        heapq.heappush(queue, (now + 2 * DELAY, seq, "C", dst, src))

    def send_from_c(dst: Address, now: float) -> None:
        nonlocal seq, packets
        packets += 1
        src = c_nat.outbound(C_PRIV, dst, now)
        seq += 1
        heapq.heappush(queue, (now + 2 * DELAY, seq, "S", dst, src))

    def drain(now: float) -> None:
        nonlocal max_sockets
        while (a := opener.next_action()) is not None:
            if isinstance(a, OpenSockets):
                for i in range(a.count):
                    sockets[i] = Address("10.0.0.2", 40000 + i)
                max_sockets = max(max_sockets, len(sockets))
            elif isinstance(a, SendProbe):
                assert a.socket is not None and a.socket in sockets
                send_from_s(sockets[a.socket], a.address, now)
            elif isinstance(a, CloseSockets):
                for i in list(sockets):
                    if i != a.keep:
                        del sockets[i]
        while (a := sprayer.next_action()) is not None:
            assert isinstance(a, SendProbe) and a.socket is None
            send_from_c(a.address, now)

    now = 0.0
    while True:
        timers = [t for t in (opener.get_timer(), sprayer.get_timer()) if t is not None]
        upcoming = [*timers, queue[0][0]] if queue else timers
        if not upcoming or (s_hit_at is not None and c_hit_at is not None):
            break
        now = min(upcoming)
        if queue and queue[0][0] == now:
            _, _, side, dst, src = heapq.heappop(queue)
            if side == "S":
                priv = s_nat.inbound(src, dst.port, now)
                by_port = {a: i for i, a in sockets.items()}
                if priv is None or priv not in by_port:
                    continue  # dropped by the NAT, or for a probe socket already closed
                i = by_port[priv]
                if s_hit_at is None:
                    s_hit_at = now
                    opener.on_hit(i, src, now)
                send_from_s(priv, src, now)  # the answer, back through the same socket
            else:
                if c_nat.inbound(src, dst.port, now) is None:
                    continue
                if c_hit_at is None:
                    c_hit_at = now
                    sprayer.on_hit(None, src, now)
                    send_from_c(src, now)  # the answer to a probe that came through first
        else:
            if opener.get_timer() == now:
                opener.handle_timer(now)
            if sprayer.get_timer() == now:
                sprayer.handle_timer(now)
        drain(now)
    # Whatever happened, the attempts end by their deadline and close their sockets.
    for attempt in (opener, sprayer):
        if not attempt.done:
            attempt.handle_timer(attempt.deadline)
    drain(now)
    connected = s_hit_at is not None and c_hit_at is not None
    return Outcome(connected, max(s_hit_at or 0.0, c_hit_at or 0.0), packets, max_sockets, len(sockets))


def test_roles_follow_the_nat_types() -> None:
    assert birthday_role("symmetric (random)", "port-restricted cone") is Role.OPENER
    assert birthday_role("port-restricted cone", "symmetric (random)") is Role.SPRAYER
    assert birthday_role("full cone", "symmetric (random)") is Role.SPRAYER
    assert birthday_role("symmetric (random)", "symmetric (random)") is None
    assert birthday_role("symmetric (sequential)", "port-restricted cone") is None  # prediction does it
    assert birthday_role("port-restricted cone", "full cone") is None
    assert birthday_role("", "symmetric (random)") is None


def test_success_rate_and_bounds_over_many_seeds() -> None:
    config = BirthdayConfig()
    outcomes = [run(seed, config) for seed in range(60)]
    rate = sum(o.connected for o in outcomes) / len(outcomes)
    expected = success_probability(config.sockets, config.ports)
    assert expected > 0.999
    assert rate >= 0.97, rate
    for o in outcomes:
        assert o.packets <= config.sockets + config.ports + 2  # every probe once, plus answers
        assert o.max_sockets <= config.sockets
        assert o.open_after <= 1  # all probe sockets closed but the one that carries the path
        if o.connected:
            assert o.time <= config.timeout
            assert o.open_after == 1
        else:
            assert o.open_after == 0


def test_smaller_budget_matches_the_birthday_estimate() -> None:
    config = BirthdayConfig(sockets=64, ports=256, spray_interval=0.001, open_interval=0.001)
    outcomes = [run(seed, config) for seed in range(200)]
    rate = sum(o.connected for o in outcomes) / len(outcomes)
    expected = success_probability(64, 256)  # ~0.23
    assert abs(rate - expected) < 0.1, (rate, expected)


@pytest.mark.parametrize("cone", [FULL_CONE, ADDRESS_RESTRICTED, PORT_RESTRICTED])
def test_every_cone_filter(cone: Behaviour) -> None:
    outcomes = [run(seed, BirthdayConfig(), cone) for seed in range(10)]
    assert sum(o.connected for o in outcomes) >= 8


def test_no_probe_after_the_deadline_and_cancel_closes() -> None:
    config = BirthdayConfig(sockets=4, ports=4, timeout=1.0)
    attempt = BirthdayAttempt(config, Role.OPENER, Address("192.0.2.3", 5000), random.Random(1), 0.0)
    assert attempt.next_action() == OpenSockets(4)
    attempt.handle_timer(10.0)  # a very late timer: the attempt is over, nothing is sent
    assert attempt.done and not attempt.succeeded
    assert attempt.next_action() == CloseSockets(None)
    assert attempt.next_action() is None and attempt.get_timer() is None
    sprayer = BirthdayAttempt(config, Role.SPRAYER, Address("198.51.100.2", 1), random.Random(1), 0.0)
    sprayer.handle_timer(0.0)
    assert sum(1 for _ in iter(sprayer.next_action, None)) == 1  # paced
    sprayer.handle_timer(0.9)
    assert sum(1 for _ in iter(sprayer.next_action, None)) == 3  # the rest of the budget, no more
    assert sprayer.probes_left == 0
    sprayer.cancel()
    assert sprayer.done and sprayer.get_timer() is None


def test_config_is_validated() -> None:
    for bad in ({"sockets": 0}, {"ports": 70000}, {"timeout": 0}, {"retry_max": 1.0}):
        with pytest.raises(ValueError):
            BirthdayConfig(**bad)  # type: ignore[arg-type]


# -- the same, end to end: two endpoints behind simulated NATs, connected through the relay ------


def _endpoint_run(seed: int, swap: bool, config: TraversalConfig, timeout: float) -> tuple[bool, int, int]:
    """(went direct, most probe sockets open at once, probe sockets open at the end)."""
    nats = (N.SYMMETRIC_RANDOM, N.PORT_RESTRICTED)
    w = world(*(nats[::-1] if swap else nats), seed=seed, config=config)
    connect_via_relay(w)
    most = 0

    def done() -> bool:
        nonlocal most
        most = max(most, w.a.probe_sockets_open() + w.b.probe_sockets_open())
        return both_direct(w)

    direct = w.net.run_until(done, timeout=timeout)
    w.net.run_for(config.birthday.timeout)  # whatever was still running ends
    if direct:
        w.a.endpoint.send(w.b.peer_id, b"over the probe socket", w.net.clock.now)
        w.net.flush()
        assert w.net.run_until(lambda: w.b.messages() == [b"over the probe socket"], timeout=2.0)
    return direct, most, w.a.probe_sockets_open() + w.b.probe_sockets_open()


def test_endpoints_go_direct_through_a_random_symmetric_nat() -> None:
    config = TraversalConfig()
    runs = [_endpoint_run(seed, seed % 2 == 1, config, 12.0) for seed in range(1, 9)]
    assert all(direct for direct, _, _ in runs), runs
    for _direct, most, left in runs:
        assert most <= config.birthday.sockets  # one attempt, on the symmetric side only
        assert left == 1  # the probe socket that carries the connection, nothing else


def test_a_failed_attempt_is_bounded_explained_and_backed_off() -> None:
    small = BirthdayConfig(sockets=2, ports=4, timeout=1.0, retry_initial=20.0)
    config = TraversalConfig(birthday=small)
    w = world(N.PORT_RESTRICTED, N.SYMMETRIC_RANDOM, config=config)
    connect_via_relay(w)
    w.net.run_for(45.0)
    assert path(w.a, w.b) == path(w.b, w.a) == "keyed"
    for node, other in ((w.a, w.b), (w.b, w.a)):
        conn = node.endpoint._peers[other.peer_id]
        assert conn.paths.agent is not None
        assert 1 <= conn.paths.agent.birthday_attempts <= 2  # 20 s, then 40 s between attempts
        assert node.probe_sockets_open() == 0
    snap = w.a.endpoint.snapshot(w.b.peer_id)
    assert snap is not None and snap.path_reason is not None
    assert "birthday attempt" in snap.path_reason and "found no path" in snap.path_reason
    sprayed = w.a.endpoint.counters["path_challenges_sent"]
    assert sprayed < 200  # ordinary checks plus 4 sprayed ports per attempt


def test_not_tried_without_the_nat_types_or_when_disabled() -> None:
    for kwargs, config in (
        ({"tell_nat_types": False}, TraversalConfig()),
        ({}, TraversalConfig(enable_birthday=False)),
    ):
        w = world(N.PORT_RESTRICTED, N.SYMMETRIC_RANDOM, config=config, **kwargs)  # type: ignore[arg-type]
        connect_via_relay(w)
        w.net.run_for(8.0)
        assert path(w.a, w.b) == "keyed"
        assert w.b.endpoint.counters["birthday_attempts"] == 0
