"""The virtual-time network simulator, driven with tiny toy sans-IO endpoints."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.sim import (
    DatagramEndpoint,
    Fate,
    LinkProfile,
    SimNetwork,
    SimulationError,
    VirtualClock,
)

A = Address("10.0.0.1", 4000)
B = Address("10.0.0.2", 4000)
C = Address("10.0.0.3", 4000)

TraceRecord = tuple[float, Address, Address, int, Fate]


# ---- toy endpoints --------------------------------------------------------------------------------


class Recorder:
    """Sends what it is told to, records what it receives."""

    def __init__(self) -> None:
        self.outbox: list[tuple[bytes, Address]] = []
        self.received: list[tuple[float, bytes, Address]] = []

    def send(self, data: bytes, dst: Address) -> None:
        self.outbox.append((data, dst))

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.received.append((now, data, addr))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.outbox = self.outbox, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    @property
    def payloads(self) -> list[bytes]:
        return [data for _, data, _ in self.received]


class Echo(Recorder):
    """Sends every datagram back to its sender."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        super().receive_datagram(data, addr, now)
        self.outbox.append((data, addr))


class Ticker(Recorder):
    """Sends ``count`` numbered datagrams of ``size`` bytes to ``dst``, one every ``interval``."""

    def __init__(self, dst: Address, *, count: int, interval: float, start: float = 0.0, size: int = 8):
        super().__init__()
        self.dst = dst
        self.count = count
        self.interval = interval
        self.size = size
        self.sent_at: list[float] = []
        self.next: float | None = start if count else None

    def get_timer(self) -> float | None:
        return self.next

    def handle_timer(self, now: float) -> None:
        if self.next is None or now < self.next:
            return
        n = len(self.sent_at)
        self.outbox.append((n.to_bytes(4, "big").ljust(self.size, b"."), self.dst))
        self.sent_at.append(now)
        self.next = now + self.interval if n + 1 < self.count else None


class PastTimer(Recorder):
    """A buggy core: its timer is always in the past and handling it changes nothing."""

    def get_timer(self) -> float | None:
        return 0.0


def seq_of(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


def test_toy_endpoints_satisfy_the_protocol() -> None:
    endpoints: list[DatagramEndpoint] = [Recorder(), Echo(), Ticker(A, count=1, interval=1), PastTimer()]
    assert len(endpoints) == 4


# ---- clock and profile ---------------------------------------------------------------------------


def test_virtual_clock_moves_forward_only() -> None:
    clock = VirtualClock()
    assert clock.now == 0.0 == clock()
    clock.advance_to(1.5)
    clock.advance_to(1.5)
    clock.advance(0.5)
    assert clock.now == 2.0
    with pytest.raises(ValueError, match="backwards"):
        clock.advance_to(1.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-0.1)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance_to(math.nan)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"latency": -0.1}, "latency"),
        ({"latency": math.inf}, "latency"),
        ({"jitter": math.nan}, "jitter"),
        ({"loss": 1.5}, "loss"),
        ({"loss": -0.01}, "loss"),
        ({"duplicate": 2}, "duplicate"),
        ({"reorder": math.nan}, "reorder"),
        ({"reorder_delay": -1}, "reorder_delay"),
        ({"corrupt": 1.01}, "corrupt"),
        ({"bandwidth_bps": 0}, "bandwidth_bps"),
        ({"bandwidth_bps": -5.0}, "bandwidth_bps"),
        ({"queue_limit": 0}, "queue_limit"),
        ({"queue_limit": 1.5}, "queue_limit"),
        ({"mtu": 0}, "mtu"),
        ({"mtu": True}, "mtu"),
    ],
)
def test_link_profile_validates_ranges(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"LinkProfile.{field} "):
        LinkProfile(**kwargs)  # type: ignore[arg-type]


def test_link_profile_is_frozen_and_keyword_only() -> None:
    profile = LinkProfile(latency=0.1, loss=1.0, mtu=1200, bandwidth_bps=1e6)
    with pytest.raises(AttributeError):
        profile.latency = 0.2  # type: ignore[misc]
    with pytest.raises(TypeError):
        LinkProfile(0.1)  # type: ignore[call-arg]


# ---- latency, jitter, timers ---------------------------------------------------------------------


def test_latency_is_applied_exactly() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(latency=0.05))
    a, b = Recorder(), Echo()
    net.attach(A, a)
    net.attach(B, b)
    a.send(b"ping", B)
    assert net.run_until(lambda: bool(a.received), timeout=1.0)
    assert b.received == [(0.05, b"ping", A)]
    assert a.received == [(0.05 + 0.05, b"ping", B)]
    assert net.clock.now == 0.1
    assert net.stats.sent == 2 and net.stats.delivered == 2


def test_timer_driven_sender_delivers_at_send_time_plus_latency() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(latency=0.03))
    ticker, sink = Ticker(B, count=10, interval=0.1, start=0.25), Recorder()
    net.attach(A, ticker)
    net.attach(B, sink)
    net.run_for(5.0)
    assert net.clock.now == 5.0
    assert ticker.sent_at[0] == 0.25 and len(ticker.sent_at) == 10
    assert [t for t, _, _ in sink.received] == [t + 0.03 for t in ticker.sent_at]
    assert [seq_of(p) for p in sink.payloads] == list(range(10))
    assert net.stats.timers == 10


def test_directional_link_overrides_default() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(latency=0.01))
    net.set_link(A, B, LinkProfile(latency=0.2))
    a, b = Recorder(), Echo()
    net.attach(A, a)
    net.attach(B, b)
    a.send(b"x", B)
    net.run_for(1.0)
    assert b.received[0][0] == 0.2
    assert a.received[0][0] == 0.2 + 0.01
    assert net.link(A, B).latency == 0.2 and net.link(B, A).latency == 0.01


def test_jitter_stays_within_bounds() -> None:
    net = SimNetwork(seed=3, default=LinkProfile(latency=0.01, jitter=0.02))
    ticker, sink = Ticker(B, count=2000, interval=0.001), Recorder()
    net.attach(A, ticker)
    net.attach(B, sink)
    net.run_for(10.0)
    seqs = [seq_of(p) for p in sink.payloads]
    assert sorted(seqs) == list(range(2000))
    delays = [t - ticker.sent_at[seq] for (t, _, _), seq in zip(sink.received, seqs, strict=True)]
    assert all(0.01 - 1e-12 <= d < 0.03 + 1e-12 for d in delays)
    assert max(delays) - min(delays) > 0.018  # actually spread over the range
    assert seqs != sorted(seqs)  # jitter larger than the send interval reorders


# ---- random impairments --------------------------------------------------------------------------


def test_loss_rate_is_near_configured_value() -> None:
    net = SimNetwork(seed=7, default=LinkProfile(latency=0.001, loss=0.1))
    ticker, sink = Ticker(B, count=20_000, interval=0.0001), Recorder()
    net.attach(A, ticker)
    net.attach(B, sink)
    net.run_for(10.0)
    assert net.stats.sent == 20_000
    assert net.stats.lost + net.stats.delivered == 20_000
    assert len(sink.received) == net.stats.delivered
    assert 0.09 < net.stats.lost / 20_000 < 0.11


def test_total_loss_and_no_loss() -> None:
    net = SimNetwork(seed=1)
    net.set_link(A, B, LinkProfile(loss=1.0))
    a, b = Echo(), Echo()
    net.attach(A, a)
    net.attach(B, b)
    a.send(b"x", B)
    b.send(b"y", A)
    net.run_for(1.0)
    assert b.received == [] and a.payloads == [b"y"]
    assert net.stats.lost == 2  # x, and a's echo of y
    assert net.stats.delivered == 1


def test_duplication_is_counted_and_visible() -> None:
    net = SimNetwork(seed=2, default=LinkProfile(latency=0.01, duplicate=1.0))
    ticker, sink = Ticker(B, count=50, interval=0.1), Recorder()
    net.attach(A, ticker)
    net.attach(B, sink)
    net.run_for(10.0)
    assert net.stats.duplicated == 50
    assert net.stats.delivered == 100
    assert sorted(seq_of(p) for p in sink.payloads) == sorted(list(range(50)) * 2)


def test_partial_duplication_rate() -> None:
    net = SimNetwork(seed=5, default=LinkProfile(latency=0.01, duplicate=0.25))
    ticker, sink = Ticker(B, count=4000, interval=0.001), Recorder()
    net.attach(A, ticker)
    net.attach(B, sink)
    net.run_for(10.0)
    assert len(sink.received) == 4000 + net.stats.duplicated
    assert 0.22 < net.stats.duplicated / 4000 < 0.28


def test_corruption_flips_one_to_three_bytes() -> None:
    net = SimNetwork(seed=11, default=LinkProfile(latency=0.01, corrupt=1.0))
    sender, sink = Recorder(), Recorder()
    net.attach(A, sender)
    net.attach(B, sink)
    original = [bytes([i]) * 32 for i in range(200)]
    for payload in original:
        sender.send(payload, B)
    net.run_for(1.0)
    assert net.stats.corrupted == 200
    flipped = []
    for sent, (_, got, _) in zip(original, sink.received, strict=True):
        assert len(got) == len(sent)
        flipped.append(sum(x != y for x, y in zip(sent, got, strict=True)))
    assert set(flipped) == {1, 2, 3}


def test_empty_datagram_is_delivered_but_cannot_be_corrupted() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(corrupt=1.0))
    sender, sink = Recorder(), Recorder()
    net.attach(A, sender)
    net.attach(B, sink)
    sender.send(b"", B)
    net.run_for(1.0)
    assert sink.payloads == [b""] and net.stats.corrupted == 0


def test_reorder_delays_some_packets_past_later_ones() -> None:
    net = SimNetwork(seed=4, default=LinkProfile(latency=0.01, reorder=0.2, reorder_delay=0.5))
    ticker, sink = Ticker(B, count=500, interval=0.01), Recorder()
    net.attach(A, ticker)
    net.attach(B, sink)
    net.run_for(20.0)
    seqs = [seq_of(p) for p in sink.payloads]
    assert sorted(seqs) == list(range(500))
    late = [t - ticker.sent_at[s] for (t, _, _), s in zip(sink.received, seqs, strict=True)]
    held_back = sum(1 for d in late if d > 0.4)
    assert held_back == net.stats.reordered
    assert 0.15 < held_back / 500 < 0.25
    assert seqs != sorted(seqs)


# ---- determinism ---------------------------------------------------------------------------------

NASTY = LinkProfile(
    latency=0.02,
    jitter=0.01,
    loss=0.1,
    duplicate=0.05,
    reorder=0.05,
    reorder_delay=0.05,
    corrupt=0.05,
    bandwidth_bps=1_000_000,
    queue_limit=4_000,
)


def traced_run(seed: int) -> tuple[list[TraceRecord], list[bytes]]:
    trace: list[TraceRecord] = []
    net = SimNetwork(seed=seed, default=NASTY, trace=lambda *rec: trace.append(rec))
    ticker, echo = Ticker(B, count=300, interval=0.002, size=200), Echo()
    net.attach(A, ticker)
    net.attach(B, echo)
    net.run_for(5.0)
    return trace, ticker.payloads


def test_same_seed_replays_the_identical_trace() -> None:
    first, second = traced_run(42), traced_run(42)
    assert first == second
    fates = {record[4] for record in first[0]}
    assert {Fate.SENT, Fate.DELIVERED, Fate.LOST, Fate.DUPLICATED, Fate.CORRUPTED} <= fates


def test_different_seed_gives_a_different_trace() -> None:
    assert traced_run(42)[0] != traced_run(43)[0]


def test_ties_are_broken_by_send_order() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(latency=0.1))
    sender, sink = Recorder(), Recorder()
    net.attach(A, sender)
    net.attach(B, sink)
    for i in range(100):
        sender.send(bytes([i]), B)
    net.run_for(1.0)
    assert sink.payloads == [bytes([i]) for i in range(100)]
    assert {t for t, _, _ in sink.received} == {0.1}


# ---- bandwidth and mtu ---------------------------------------------------------------------------


def test_bandwidth_serializes_packets_and_tail_drops() -> None:
    # 8000 bit/s = 1000 bytes/s: a 100-byte packet takes 0.1 s on the wire.
    profile = LinkProfile(latency=0.01, bandwidth_bps=8000, queue_limit=300)
    trace: list[TraceRecord] = []
    net = SimNetwork(seed=1, default=profile, trace=lambda *rec: trace.append(rec))
    sender, sink = Recorder(), Recorder()
    net.attach(A, sender)
    net.attach(B, sink)
    for i in range(5):
        sender.send(bytes([i]) * 100, B)
    net.run_for(1.0)
    assert [p[0] for p in sink.payloads] == [0, 1, 2]
    assert [t for t, _, _ in sink.received] == pytest.approx([0.11, 0.21, 0.31])
    assert net.stats.queue_dropped == 2
    assert [rec[4] for rec in trace if rec[4] == Fate.QUEUE_DROPPED] == [Fate.QUEUE_DROPPED] * 2

    # Once the queue has drained, the link accepts packets again, starting immediately.
    sender.send(b"z" * 100, B)
    net.run_for(1.0)
    assert sink.received[-1][0] == pytest.approx(1.0 + 0.1 + 0.01)


def test_bandwidth_queue_frees_space_as_packets_finish() -> None:
    profile = LinkProfile(bandwidth_bps=8000, queue_limit=200)  # room for two 100-byte packets
    net = SimNetwork(seed=1, default=profile)
    ticker, sink = Ticker(B, count=20, interval=0.05, size=100), Recorder()
    net.attach(A, ticker)
    net.attach(B, sink)
    net.run_for(5.0)
    # Offered at 2000 B/s into a 1000 B/s link: about half gets through, in order, evenly spaced.
    seqs = [seq_of(p) for p in sink.payloads]
    assert seqs == sorted(seqs)
    assert net.stats.queue_dropped + len(seqs) == 20
    assert 9 <= len(seqs) <= 12
    gaps = [b[0] - a[0] for a, b in zip(sink.received, sink.received[1:], strict=False)]
    assert all(g >= 0.1 - 1e-9 for g in gaps)


def test_bandwidth_is_per_direction() -> None:
    net = SimNetwork(seed=1)
    net.set_link(A, B, LinkProfile(bandwidth_bps=8000))
    a, b = Recorder(), Recorder()
    net.attach(A, a)
    net.attach(B, b)
    a.send(b"x" * 100, B)
    b.send(b"y" * 100, A)
    net.run_for(1.0)
    assert b.received[0][0] == pytest.approx(0.1)
    assert a.received[0][0] == 0.0


def test_mtu_drops_larger_datagrams() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(mtu=1200))
    sender, sink = Recorder(), Recorder()
    net.attach(A, sender)
    net.attach(B, sink)
    for size in (1, 1199, 1200, 1201, 9000):
        sender.send(b"m" * size, B)
    net.run_for(1.0)
    assert [len(p) for p in sink.payloads] == [1, 1199, 1200]
    assert net.stats.mtu_dropped == 2


# ---- partitions, detaching -----------------------------------------------------------------------


def test_partition_and_heal() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(latency=0.1))
    a, b, c = Recorder(), Recorder(), Recorder()
    net.attach(A, a)
    net.attach(B, b)
    net.attach(C, c)
    net.partition(A, B)
    assert net.is_partitioned(B, A)
    a.send(b"1", B)
    b.send(b"2", A)
    a.send(b"3", C)
    net.run_for(1.0)
    assert a.received == [] and b.received == [] and c.payloads == [b"3"]
    assert net.stats.partitioned == 2

    net.heal(A, B)
    a.send(b"4", B)
    net.run_for(1.0)
    assert b.payloads == [b"4"]


def test_partition_drops_datagrams_in_flight() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(latency=0.5))
    a, b = Recorder(), Recorder()
    net.attach(A, a)
    net.attach(B, b)
    a.send(b"in flight", B)
    net.run_for(0.1)
    net.partition(A, B)
    net.run_for(1.0)
    assert b.received == [] and net.stats.partitioned == 1


def test_undeliverable_and_detach() -> None:
    trace: list[TraceRecord] = []
    net = SimNetwork(seed=1, default=LinkProfile(latency=0.1), trace=lambda *rec: trace.append(rec))
    a, b = Recorder(), Recorder()
    net.attach(A, a)
    net.attach(B, b)
    a.send(b"nobody", C)
    a.send(b"gone", B)
    net.run_for(0.05)
    assert net.detach(B) is b
    net.run_for(1.0)
    assert b.received == []
    assert net.stats.undeliverable == 2
    assert [rec[2] for rec in trace if rec[4] == Fate.UNDELIVERABLE] == [C, B]
    with pytest.raises(SimulationError, match="no endpoint"):
        net.detach(B)
    net.attach(B, b)
    with pytest.raises(SimulationError, match="already attached"):
        net.attach(B, b)


def test_detached_endpoint_timers_do_not_fire() -> None:
    net = SimNetwork(seed=1)
    ticker = Ticker(B, count=5, interval=1.0, start=1.0)
    net.attach(A, ticker)
    net.run_for(2.5)
    net.detach(A)
    net.run_for(10.0)
    assert len(ticker.sent_at) == 2


# ---- driving -------------------------------------------------------------------------------------


def test_run_until_returns_false_on_timeout_and_leaves_clock_at_deadline() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(latency=1.0))
    a, b = Recorder(), Recorder()
    net.attach(A, a)
    net.attach(B, b)
    a.send(b"slow", B)
    assert net.run_until(lambda: bool(b.received), timeout=0.5) is False
    assert net.clock.now == 0.5
    assert net.run_until(lambda: bool(b.received), timeout=0.5) is True
    assert net.clock.now == 1.0
    assert net.run_until(lambda: False, timeout=2.0) is False  # idle network: time still passes
    assert net.clock.now == 3.0


def test_run_until_max_steps() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(latency=0.01))
    a, b = Echo(), Echo()
    net.attach(A, a)
    net.attach(B, b)
    a.send(b"ball", B)
    with pytest.raises(SimulationError, match="100 events"):
        net.run_until(lambda: False, timeout=1e9, max_steps=100)


def test_step_picks_up_outside_changes() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(latency=0.2))
    a, b = Recorder(), Recorder()
    net.attach(A, a)
    net.attach(B, b)
    assert net.step() is False
    assert net.next_event_time() is None
    a.send(b"x", B)
    assert net.step() is True  # flushes a, then delivers at 0.2
    assert b.received == [(0.2, b"x", A)]
    assert net.step() is False


def test_timer_rearm_and_infinite_timer() -> None:
    class Rearming(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.timer: float | None = 1.0
            self.fired: list[float] = []

        def get_timer(self) -> float | None:
            return self.timer

        def handle_timer(self, now: float) -> None:
            self.fired.append(now)
            self.timer = math.inf

    net = SimNetwork(seed=1)
    ep = Rearming()
    net.attach(A, ep)
    ep.timer = 2.0  # moved from outside: the stale 1.0 entry must not fire
    net.flush()
    assert net.next_event_time() == 2.0
    net.run_for(5.0)
    assert ep.fired == [2.0]
    assert net.next_event_time() is None  # an infinite timer means "no timer"
    assert net.step() is False


def test_livelock_from_timer_in_the_past_raises() -> None:
    net = SimNetwork(seed=1, clock=VirtualClock(5.0), stall_limit=500)
    net.attach(A, PastTimer())
    with pytest.raises(SimulationError, match=r"livelock.*5\.0.*timer of 10\.0\.0\.1:4000.*returned 0\.0"):
        net.run_for(1.0)
    assert net.stats.timers == 500  # stall_limit events ran, the next one raised


def test_livelock_from_zero_latency_ping_pong_raises() -> None:
    net = SimNetwork(seed=1, stall_limit=1000)
    a, b = Echo(), Echo()
    net.attach(A, a)
    net.attach(B, b)
    a.send(b"ball", B)
    with pytest.raises(SimulationError, match="livelock"):
        net.run_until(lambda: False, timeout=1.0)


def test_many_endpoints_in_a_ring() -> None:
    addrs = [Address(f"10.1.0.{i}", 1) for i in range(100)]
    net = SimNetwork(seed=9, default=LinkProfile(latency=0.005, jitter=0.001))
    tickers = [Ticker(addrs[(i + 1) % 100], count=50, interval=0.01) for i in range(100)]
    for addr, ticker in zip(addrs, tickers, strict=True):
        net.attach(addr, ticker)
    net.run_for(2.0)
    assert net.stats.sent == net.stats.delivered == 5000
    assert all(len(t.received) == 50 for t in tickers)


# ---- invariant -----------------------------------------------------------------------------------

probabilities = st.sampled_from([0.0, 0.1, 0.5, 1.0])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    latency=st.sampled_from([0.0, 0.001, 0.05]),
    jitter=st.sampled_from([0.0, 0.02]),
    loss=probabilities,
    duplicate=probabilities,
    reorder=probabilities,
    corrupt=probabilities,
    bandwidth=st.sampled_from([None, 50_000.0]),
    mtu=st.sampled_from([None, 100]),
)
def test_every_datagram_is_accounted_for(
    seed: int,
    latency: float,
    jitter: float,
    loss: float,
    duplicate: float,
    reorder: float,
    corrupt: float,
    bandwidth: float | None,
    mtu: int | None,
) -> None:
    profile = LinkProfile(
        latency=latency,
        jitter=jitter,
        loss=loss,
        duplicate=duplicate,
        reorder=reorder,
        reorder_delay=0.03,
        corrupt=corrupt,
        bandwidth_bps=bandwidth,
        queue_limit=1000,
        mtu=mtu,
    )
    net = SimNetwork(seed=seed, default=profile)
    senders = [Ticker(B, count=40, interval=0.003, size=60 + 20 * i) for i in range(2)]
    sink = Recorder()
    net.attach(A, senders[0])
    net.attach(C, senders[1])
    net.attach(B, sink)
    net.run_for(10.0)
    s = net.stats
    assert s.sent == 80
    dropped = s.lost + s.mtu_dropped + s.queue_dropped + s.partitioned + s.undeliverable
    assert s.sent + s.duplicated == s.delivered + dropped
    assert len(sink.received) == s.delivered
    times = [t for t, _, _ in sink.received]
    assert times == sorted(times)
    assert net.next_event_time() is None
