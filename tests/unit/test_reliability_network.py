"""Two ReliableStreams over a seeded, simulated adverse network (loss, duplication, reordering,
delay, a path MTU), in virtual time advanced to the next delivery or timer."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from coremesh.reliability import (
    CloseReceived,
    MessageReceived,
    PathMtuUpdated,
    ReliabilityConfig,
    ReliabilityEvent,
    ReliableStream,
)
from coremesh.reliability.frames import PaddingFrame, PingFrame, decode_payload
from coremesh.reliability.pmtu import PmtuState


@dataclass
class Link:
    """One direction of the path."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.02
    jitter: float = 0.0  # uniform extra delay: reorders packets sent closer than this
    path_mtu: int = 65527  # larger datagrams are dropped silently...
    emsgsize_above: int = 65527  # ...or refused at once, like a local EMSGSIZE


@dataclass
class Peer:
    stream: ReliableStream
    outbox: list[bytes]  # messages still to queue
    expected: list[bytes]  # messages the other side queues for us, in order
    received: list[bytes] = field(default_factory=list)
    events: list[ReliabilityEvent] = field(default_factory=list)
    read_pause_until: float = 0.0  # the application does not read before this
    close_when_queued: bool = False  # close gracefully once every message is queued
    closed_locally: bool = False


class Net:
    def __init__(self, rng: random.Random, a: Peer, b: Peer, ab: Link, ba: Link, overhead: int) -> None:
        self.rng = rng
        self.peers = (a, b)
        self.links = (ab, ba)
        self.overhead = overhead
        self.now = 0.0
        self.queue: list[tuple[float, int, int, bytes]] = []  # (time, seq, destination, payload)
        self.seq = 0
        self.steps = 0
        self.dropped_oversized: tuple[list[bytes], list[bytes]] = ([], [])  # per sender
        self.delivered = 0

    def send(self, index: int) -> None:
        peer = self.peers[index]
        link = self.links[index]
        stream = peer.stream
        rng = self.rng
        while peer.outbox and stream.can_send():
            stream.send_message(peer.outbox.pop(0), self.now)
        if peer.close_when_queued and not peer.outbox and not stream.is_closed:
            stream.close(0, "done", self.now)
            peer.closed_locally = True
        refused = True
        while refused:  # after an EMSGSIZE the shell asks again: the data goes out in smaller packets
            refused = False
            for payload in stream.payloads_to_send(self.now):
                size = len(payload) + self.overhead
                if size > link.emsgsize_above:
                    self.dropped_oversized[index].append(payload)
                    stream.on_datagram_too_big(size, self.now)
                    refused = True
                    continue
                if size > link.path_mtu:
                    self.dropped_oversized[index].append(payload)
                    continue
                copies = 2 if rng.random() < link.duplicate else 1
                for _ in range(copies):
                    if rng.random() < link.loss:
                        continue
                    when = self.now + link.delay + rng.random() * link.jitter
                    self.seq += 1
                    heapq.heappush(self.queue, (when, self.seq, 1 - index, payload))

    def read(self, index: int) -> None:
        peer = self.peers[index]
        if self.now < peer.read_pause_until:
            return
        stream = peer.stream
        while (event := stream.next_event()) is not None:
            peer.events.append(event)
            if isinstance(event, MessageReceived):
                peer.received.append(event.data)
                stream.consume(len(event.data))
        if self.rng.random() < 0.01:  # now and then the application stops reading for a while
            peer.read_pause_until = self.now + self.rng.random() * 0.5

    def done(self) -> bool:
        for peer, other in ((self.peers[0], self.peers[1]), (self.peers[1], self.peers[0])):
            stream = peer.stream
            if stream.has_unacked_data or (peer.outbox and not stream.is_closed):
                return False
            # CLOSE ends both directions: once the peer has our CLOSE it drops what it had not sent
            # yet, so a closing peer may get only a prefix of the other's messages.
            cut = peer.close_when_queued and other.stream.is_closed and not self.queue
            if len(peer.received) < len(peer.expected) and not cut:
                return False
        return True

    def next_time(self) -> float | None:
        times = [t for t in (p.stream.get_timer() for p in self.peers) if t is not None]
        times += [p.read_pause_until for p in self.peers if p.read_pause_until > self.now]
        if self.queue:
            times.append(self.queue[0][0])
        return min(times) if times else None

    def run(
        self, max_time: float = 600.0, max_steps: int = 300_000, until: Callable[[], bool] | None = None
    ) -> None:
        """Run until everything is delivered and acknowledged (and ``until()`` holds)."""
        for index in (0, 1):
            self.send(index)
        while not (self.done() and (until is None or until())):
            self.steps += 1
            assert self.steps < max_steps, "step limit"
            when = self.next_time()
            assert when is not None, "deadlock: nothing scheduled"
            self.now = max(self.now, when)
            assert self.now < max_time, "virtual time limit"
            while self.queue and self.queue[0][0] <= self.now:
                _, _, dest, payload = heapq.heappop(self.queue)
                self.peers[dest].stream.receive_payload(payload, self.now)
                self.delivered += 1
            for index in (0, 1):
                stream = self.peers[index].stream
                timer = stream.get_timer()
                if timer is not None and timer <= self.now:
                    stream.handle_timer(self.now)
                self.read(index)
                self.send(index)
        for peer in self.peers:  # the events still queued (an application pause may be running)
            peer.read_pause_until = 0.0
            self.read(self.peers.index(peer))
        for peer, other in zip(self.peers, self.peers[::-1], strict=True):
            if peer.close_when_queued:
                assert peer.received == peer.expected[: len(peer.received)]
            else:
                assert peer.received == peer.expected
            if other.closed_locally:
                # The graceful CLOSE arrives after the last message, and exactly once.
                closes = [i for i, e in enumerate(peer.events) if isinstance(e, CloseReceived)]
                messages = [i for i, e in enumerate(peer.events) if isinstance(e, MessageReceived)]
                assert len(closes) == 1 and (not messages or messages[-1] < closes[0])


def random_messages(rng: random.Random, count: int, max_size: int = 20_000) -> list[bytes]:
    out = []
    for i in range(count):
        size = rng.choice((0, 1, rng.randrange(0, 200), rng.randrange(0, max_size + 1), max_size))
        out.append(i.to_bytes(4, "big")[: min(size, 4)] + rng.randbytes(max(0, size - 4)))
    return out


def make_pair(
    rng: random.Random, config: ReliabilityConfig, count_ab: int, count_ba: int
) -> tuple[Peer, Peer]:
    to_b = random_messages(rng, count_ab)
    to_a = random_messages(rng, count_ba)
    a = Peer(ReliableStream(config, 0.0), list(to_b), to_a)
    b = Peer(ReliableStream(config, 0.0), list(to_a), to_b)
    return a, b


@pytest.mark.parametrize("seed", range(50))
def test_adverse_network_delivers_everything_exactly_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    config = ReliabilityConfig(
        send_buffer_size=rng.choice((8_000, 30_000, 200_000)),
        receive_window=rng.choice((16_384, 40_000, 1 << 20)),
        max_ack_delay=rng.choice((0.0, 0.005, 0.025)),
        ack_eliciting_threshold=rng.choice((1, 2, 5)),
        initial_rtt=rng.choice((0.05, 0.3)),
    )
    loss = rng.choice((0.0, 0.05, 0.15, 0.3))

    def link() -> Link:
        return Link(
            loss=loss,
            duplicate=rng.choice((0.0, 0.05, 0.2)),
            delay=rng.uniform(0.001, 0.05),
            jitter=rng.choice((0.0, 0.01, 0.05)),
        )

    a, b = make_pair(rng, config, rng.randrange(10, 40), rng.randrange(0, 15))
    a.close_when_queued = rng.random() < 0.3
    net = Net(rng, a, b, link(), link(), config.overhead)
    net.run()
    assert not a.stream.has_unacked_data and not b.stream.has_unacked_data
    if loss:
        assert a.stream.packets_lost > 0 or b.stream.packets_lost > 0 or net.delivered < 100


def test_lossless_transfer_is_quick_and_grows_the_window() -> None:
    rng = random.Random(1)
    config = ReliabilityConfig()
    a = Peer(ReliableStream(config, 0.0), [b"x" * 10_000] * 200, [])
    b = Peer(ReliableStream(config, 0.0), [], [b"x" * 10_000] * 200)
    net = Net(rng, a, b, Link(delay=0.01), Link(delay=0.01), config.overhead)
    net.run()
    assert a.stream.packets_lost == 0
    assert a.stream.cwnd > 12_000 * 4
    assert a.stream.min_rtt == pytest.approx(0.02, abs=0.006)
    assert net.now < 1.0  # 2 MB at 20 ms RTT from a 12 kB initial window: a handful of RTTs


def test_close_over_lossy_network() -> None:
    rng = random.Random(5)
    config = ReliabilityConfig()
    a = Peer(ReliableStream(config, 0.0), [], [])
    b = Peer(ReliableStream(config, 0.0), [], [])
    net = Net(rng, a, b, Link(loss=0.5, delay=0.02), Link(loss=0.5, delay=0.02), config.overhead)
    a.stream.close(7, "done", 0.0)
    net.run()
    assert [e for e in b.events if isinstance(e, CloseReceived)] == [CloseReceived(code=7, reason="done")]
    assert b.stream.is_closed and not a.stream.has_unacked_data


# ------------------------------------------------------------------------------------ path MTU discovery

PMTU_CONFIG = ReliabilityConfig(base_datagram_size=1200, max_datagram_size=1500, pmtu_discovery=True)


def is_probe(payload: bytes) -> bool:
    _, frames = decode_payload(payload)
    return all(isinstance(f, PingFrame | PaddingFrame) for f in frames)


def search_complete(peer: Peer) -> bool:
    return peer.stream._pmtu.state is PmtuState.SEARCH_COMPLETE


def mtu_events(peer: Peer) -> list[int]:
    return [e.size for e in peer.events if isinstance(e, PathMtuUpdated)]


@pytest.mark.parametrize("path_mtu", [1200, 1280, 1400, 1472, 1500, 9000])
@pytest.mark.parametrize("seed", range(3))
def test_pmtu_discovery_converges_without_losing_data(path_mtu: int, seed: int) -> None:
    rng = random.Random(seed)
    a, b = make_pair(rng, PMTU_CONFIG, 60, 5)
    link = Link(delay=0.01, jitter=0.005, loss=0.02 * seed, path_mtu=path_mtu)
    net = Net(rng, a, b, link, Link(delay=0.01, loss=0.02 * seed, path_mtu=path_mtu), PMTU_CONFIG.overhead)
    net.run(until=lambda: search_complete(a))
    best = min(path_mtu, 1500)
    size = a.stream.max_datagram_size
    assert best - 16 < size <= best, (size, best)
    assert mtu_events(a)[-1:] == ([size] if size > 1200 else [])
    # Data never exceeded the path MTU: only probes were dropped, at most 3 for each probed size.
    for dropped in net.dropped_oversized:
        assert all(is_probe(p) for p in dropped)
    assert len(net.dropped_oversized[0]) <= 3 * 6


def test_pmtu_emsgsize_lowers_the_size() -> None:
    rng = random.Random(11)
    a, b = make_pair(rng, PMTU_CONFIG, 40, 0)
    ab = Link(delay=0.01)
    net = Net(rng, a, b, ab, Link(delay=0.01), PMTU_CONFIG.overhead)
    net.run()
    assert a.stream.max_datagram_size == 1500
    # The local interface MTU drops: sends above 1300 fail with EMSGSIZE.
    ab.emsgsize_above = 1300
    ab.path_mtu = 1300
    more = random_messages(rng, 40)
    a.outbox.extend(more)
    b.expected.extend(more)
    net.run(until=lambda: search_complete(a))
    assert 1300 - 16 < a.stream.max_datagram_size <= 1300
    sizes = mtu_events(a)
    assert sizes[:2] == [1500, 1200]  # fell back to the base size, then searched again
    assert sizes[2:] == sorted(sizes[2:]) and sizes[-1] == a.stream.max_datagram_size


def test_pmtu_black_hole_falls_back_to_base() -> None:
    rng = random.Random(12)
    a, b = make_pair(rng, PMTU_CONFIG, 30, 0)
    ab = Link(delay=0.01)
    net = Net(rng, a, b, ab, Link(delay=0.01), PMTU_CONFIG.overhead)
    net.run()
    assert a.stream.max_datagram_size == 1500
    ab.path_mtu = 1350  # silently: no ICMP, no EMSGSIZE
    more = random_messages(rng, 30)
    a.outbox.extend(more)
    b.expected.extend(more)
    net.run()
    assert 1200 in mtu_events(a)
    assert a.stream.max_datagram_size <= 1350


def test_pmtu_off_stays_at_base() -> None:
    rng = random.Random(3)
    config = ReliabilityConfig(base_datagram_size=1200, max_datagram_size=1500, pmtu_discovery=False)
    a, b = make_pair(rng, config, 20, 0)
    net = Net(rng, a, b, Link(), Link(), config.overhead)
    net.run()
    assert a.stream.max_datagram_size == 1200 and mtu_events(a) == []
    assert net.dropped_oversized == ([], [])
