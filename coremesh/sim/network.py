"""A deterministic virtual-time network for sans-IO datagram endpoints.

Endpoints are the protocol cores themselves (anything shaped like :class:`DatagramEndpoint`), attached
at an :class:`~coremesh.addr.Address`. The simulator collects what they want to send, passes each
datagram through the profile of its directional link (MTU, partition, loss, bandwidth queue, latency,
jitter, reordering, corruption, duplication), and delivers it at its virtual arrival time. Endpoint
timers are events too. Everything happens in one event heap ordered by ``(time, sequence)``, and all
randomness comes from one ``random.Random(seed)``, so a run is a pure function of the seed, the
topology and the endpoints: the same seed replays the same trace.

Typical use::

    net = SimNetwork(seed=1, default=LinkProfile(latency=0.02))
    net.attach(Address("10.0.0.1", 1), a)
    net.attach(Address("10.0.0.2", 1), b)
    a.connect(...)            # drive an endpoint from outside...
    net.run_until(lambda: b.is_connected, timeout=5.0)   # ...then let the network run

When an endpoint is driven from outside the simulator between runs, its new output and timer are
picked up by the next ``flush()``; ``step()``, ``run_until()`` and ``run_for()`` flush every endpoint
before they start, then only the endpoint that acted after each event.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from random import Random
from typing import Protocol

from ..addr import Address
from ..errors import ConfigError, MeshError
from .clock import VirtualClock
from .nat import Nat

__all__ = [
    "DatagramEndpoint",
    "Fate",
    "LinkProfile",
    "SimNetwork",
    "SimStats",
    "SimulationError",
    "TraceHook",
]


class SimulationError(MeshError):
    """The simulation cannot go on: livelock, step budget exhausted, or misuse of the network."""


class DatagramEndpoint(Protocol):
    """The sans-IO datagram interface every protocol core exposes (aioquic-style)."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Handle ``data`` received from ``addr`` (the sender) at virtual time ``now``."""
        ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Drain outgoing datagrams as ``(payload, destination)`` pairs."""
        ...

    def get_timer(self) -> float | None:
        """Absolute virtual time at which ``handle_timer`` must be called, or None."""
        ...

    def handle_timer(self, now: float) -> None:
        """The timer returned by ``get_timer`` has expired."""
        ...


class Fate(StrEnum):
    """What happened to a datagram, as reported to the trace hook."""

    SENT = "sent"  # collected from the sender (at send time)
    DELIVERED = "delivered"  # handed to the receiver (at arrival time)
    LOST = "lost"  # random loss (at send time)
    PARTITIONED = "partitioned"  # the link is cut (at send time, or at arrival if cut in flight)
    MTU_DROPPED = "mtu_dropped"  # larger than the link MTU (at send time)
    QUEUE_DROPPED = "queue_dropped"  # tail-dropped by a full bandwidth queue (at send time)
    UNDELIVERABLE = "undeliverable"  # nobody attached at the destination (at arrival time)
    DUPLICATED = "duplicated"  # a second copy was scheduled (at send time)
    REORDERED = "reordered"  # a copy got the extra reorder delay (at send time)
    CORRUPTED = "corrupted"  # a copy had bytes flipped (at send time)


TraceHook = Callable[[float, Address, Address, int, Fate], None]
"""``trace(time, src, dst, size, fate)``, called for every datagram event, in order."""


def _check_probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"LinkProfile.{name} must be a probability between 0 and 1, got {value!r}")


def _check_duration(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0.0 <= value < math.inf):
        raise ConfigError(f"LinkProfile.{name} must be a finite number of seconds >= 0, got {value!r}")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"LinkProfile.{name} must be a whole number of bytes > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkProfile:
    """How one direction of a link treats datagrams. The default is a perfect, instant link.

    - ``latency``: fixed one-way delay in seconds.
    - ``jitter``: extra delay drawn uniformly from ``[0, jitter)`` per datagram (may reorder).
    - ``loss``: probability a datagram is dropped.
    - ``duplicate``: probability a second copy is delivered (with its own jitter).
    - ``reorder`` / ``reorder_delay``: probability a copy is held back by ``reorder_delay`` seconds.
    - ``corrupt``: probability a copy has 1 to 3 random bytes flipped.
    - ``bandwidth_bps``: None for unlimited; otherwise datagrams are serialized one after the other
      at this rate (bits per second), waiting in a FIFO queue that holds at most ``queue_limit``
      bytes not yet fully serialized (the one on the wire included); a datagram that does not fit is
      tail-dropped.
    - ``mtu``: None, or the largest datagram carried; larger ones are dropped and counted.
    """

    latency: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.0
    corrupt: float = 0.0
    bandwidth_bps: float | None = None
    queue_limit: int = 65_536
    mtu: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency", "jitter", "reorder_delay"):
            _check_duration(name, getattr(self, name))
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            _check_probability(name, getattr(self, name))
        bw = self.bandwidth_bps
        if bw is not None and (
            isinstance(bw, bool) or not isinstance(bw, int | float) or not (0.0 < bw < math.inf)
        ):
            raise ConfigError(
                f"LinkProfile.bandwidth_bps must be None (unlimited) or a finite number > 0, got {bw!r}"
            )
        _check_positive_int("queue_limit", self.queue_limit)
        if self.mtu is not None:
            _check_positive_int("mtu", self.mtu)


@dataclass(slots=True)
class SimStats:
    """Datagram counters. ``sent + duplicated`` equals ``delivered`` plus every drop counter plus
    what is still in flight. ``reordered`` and ``corrupted`` count copies that were delivered late or
    damaged (they are not drops)."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    mtu_dropped: int = 0
    queue_dropped: int = 0
    partitioned: int = 0
    undeliverable: int = 0
    nat_filtered: int = 0
    blocked: int = 0
    timers: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _LinkQueue:
    """Serialization state of one bandwidth-limited directional link."""

    __slots__ = ("free_at", "pending", "queued_bytes")

    def __init__(self) -> None:
        self.free_at = 0.0  # when the wire is free again
        self.pending: deque[tuple[float, int]] = deque()  # (serialized at, size) not yet finished
        self.queued_bytes = 0


# A heap entry: (time, seq, src, dst, data). data None marks a timer of the endpoint at dst.
_Event = tuple[float, int, Address, Address, bytes | None]

_PERFECT = LinkProfile()


class SimNetwork:
    """A seeded, deterministic virtual-time network connecting sans-IO endpoints."""

    def __init__(
        self,
        seed: int,
        default: LinkProfile = _PERFECT,
        *,
        clock: VirtualClock | None = None,
        trace: TraceHook | None = None,
        stall_limit: int = 10_000,
    ) -> None:
        if stall_limit < 1:
            raise ValueError(f"stall_limit must be >= 1, got {stall_limit!r}")
        self.seed = seed
        self.rng = Random(seed)
        self.clock = clock if clock is not None else VirtualClock()
        self.default = default
        self.trace: TraceHook | None = trace
        self.stats = SimStats()
        self.stall_limit = stall_limit
        self._endpoints: dict[Address, DatagramEndpoint] = {}
        self._links: dict[tuple[Address, Address], LinkProfile] = {}
        self._queues: dict[tuple[Address, Address], _LinkQueue] = {}
        self._cut: set[tuple[Address, Address]] = set()
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        self._timer_at: dict[Address, tuple[float, int]] = {}  # the live timer entry of each endpoint
        self._stalled = 0  # consecutive events that did not advance virtual time
        self._nat_of_host: dict[str, Nat] = {}  # private host -> its NAT
        self._nat_public: dict[str, Nat] = {}  # public IP -> NAT
        # A firewall hook: datagrams (source as sent on the wire, destination) for which it returns
        # True are dropped, as an iptables DROP rule would (tests cut one path, not a whole host).
        self.block: Callable[[Address, Address], bool] | None = None

    # ---- topology -------------------------------------------------------------------------------

    def attach(self, addr: Address, endpoint: DatagramEndpoint) -> None:
        """Attach ``endpoint`` at ``addr`` and pick up its pending output and timer."""
        if addr in self._endpoints:
            raise SimulationError(f"an endpoint is already attached at {addr}")
        self._endpoints[addr] = endpoint
        self._flush_one(addr, endpoint, self.clock.now)

    def detach(self, addr: Address) -> DatagramEndpoint:
        """Remove the endpoint at ``addr``. Datagrams still in flight to it become undeliverable."""
        try:
            endpoint = self._endpoints.pop(addr)
        except KeyError:
            raise SimulationError(f"no endpoint is attached at {addr}") from None
        self._timer_at.pop(addr, None)
        return endpoint

    def endpoint(self, addr: Address) -> DatagramEndpoint:
        try:
            return self._endpoints[addr]
        except KeyError:
            raise SimulationError(f"no endpoint is attached at {addr}") from None

    @property
    def addresses(self) -> list[Address]:
        return list(self._endpoints)

    def add_nat(self, nat: Nat, private_hosts: list[str]) -> None:
        """Put ``private_hosts`` behind ``nat``: their packets leave from its public IP, and only
        what its filtering lets in reaches them (hairpinning is not modelled)."""
        self._nat_public[nat.public_ip] = nat
        for host in private_hosts:
            self._nat_of_host[host] = nat

    def set_link(self, a: Address, b: Address, profile: LinkProfile) -> None:
        """Use ``profile`` for datagrams from ``a`` to ``b`` (one direction)."""
        self._links[(a, b)] = profile

    def set_link_both(self, a: Address, b: Address, profile: LinkProfile) -> None:
        """Use ``profile`` in both directions between ``a`` and ``b``."""
        self._links[(a, b)] = profile
        self._links[(b, a)] = profile

    def link(self, a: Address, b: Address) -> LinkProfile:
        """The profile in force from ``a`` to ``b``."""
        return self._links.get((a, b), self.default)

    def partition(self, a: Address, b: Address) -> None:
        """Cut both directions between ``a`` and ``b``; datagrams in flight are dropped on arrival."""
        self._cut.add((a, b))
        self._cut.add((b, a))

    def heal(self, a: Address, b: Address) -> None:
        """Undo :meth:`partition` between ``a`` and ``b``."""
        self._cut.discard((a, b))
        self._cut.discard((b, a))

    def is_partitioned(self, a: Address, b: Address) -> bool:
        return (a, b) in self._cut

    # ---- driving --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Collect output and timers from every attached endpoint (after driving them from outside)."""
        now = self.clock.now
        for addr, endpoint in list(self._endpoints.items()):
            if self._endpoints.get(addr) is endpoint:
                self._flush_one(addr, endpoint, now)

    def flush_at(self, addr: Address) -> None:
        """Collect output and timer from the endpoint at ``addr`` (one that another endpoint drives)."""
        endpoint = self._endpoints.get(addr)
        if endpoint is not None:
            self._flush_one(addr, endpoint, self.clock.now)

    def send_from(self, addr: Address, data: bytes, dst: Address) -> None:
        """Send ``data`` now as if from ``addr`` (through its NAT): a host with several sockets."""
        now = self.clock.now
        nat = self._nat_of_host.get(addr.host) if self._nat_of_host else None
        self._send(nat.outbound(addr, dst, now) if nat is not None else addr, data, dst, now)

    def next_event_time(self) -> float | None:
        """Virtual time of the next delivery or timer, or None if the network is idle."""
        heap = self._heap
        timer_at = self._timer_at
        while heap:
            t, seq, _src, dst, data = heap[0]
            if data is not None or timer_at.get(dst) == (t, seq):
                return t if t > self.clock.now else self.clock.now
            heapq.heappop(heap)  # a timer that was re-armed, cancelled or detached
        return None

    def step(self) -> bool:
        """Flush all endpoints, then run the next event. False if there was nothing to run."""
        self.flush()
        return self._step()

    def run_until(self, predicate: Callable[[], bool], *, timeout: float, max_steps: int = 1_000_000) -> bool:
        """Run events until ``predicate()`` is true (True) or ``timeout`` virtual seconds pass (False).

        On timeout the clock is left at the deadline. Raises :class:`SimulationError` if more than
        ``max_steps`` events run first, or on livelock.
        """
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        deadline = self.clock.now + timeout
        self.flush()
        steps = 0
        while not predicate():
            t = self.next_event_time()
            if t is None or t > deadline:
                self.clock.advance_to(deadline)
                return predicate()
            if steps >= max_steps:
                raise SimulationError(
                    f"run_until: {max_steps} events ran without the predicate becoming true "
                    f"(virtual time {self.clock.now!r}, deadline {deadline!r})"
                )
            self._step()
            steps += 1
        return True

    def run_for(self, duration: float, *, max_steps: int = 100_000_000) -> int:
        """Run every event due within ``duration`` virtual seconds, then move the clock to the end.

        Returns the number of events run.
        """
        if not duration >= 0:
            raise ValueError(f"duration must be >= 0, got {duration!r}")
        deadline = self.clock.now + duration
        self.flush()
        steps = 0
        next_time = self.next_event_time
        run = self._step
        while True:
            t = next_time()
            if t is None or t > deadline:
                break
            if steps >= max_steps:
                raise SimulationError(f"run_for: more than {max_steps} events before {deadline!r}")
            run()
            steps += 1
        self.clock.advance_to(deadline)
        return steps

    # ---- internals ------------------------------------------------------------------------------

    def _step(self) -> bool:
        heap = self._heap
        timer_at = self._timer_at
        clock = self.clock
        while heap:
            t, seq, src, dst, data = heapq.heappop(heap)
            if data is None and timer_at.get(dst) != (t, seq):
                continue  # stale timer entry
            now = clock.now
            if t > now:
                clock.advance_to(t)
                now = t
                self._stalled = 0
            else:
                self._stalled += 1
                if self._stalled > self.stall_limit:
                    self._raise_livelock(now, dst, data is None, t)
            if data is None:
                del timer_at[dst]
                endpoint = self._endpoints[dst]
                self.stats.timers += 1
                endpoint.handle_timer(now)
            else:
                trace = self.trace
                if self._cut and (src, dst) in self._cut:
                    self.stats.partitioned += 1
                    if trace is not None:
                        trace(now, src, dst, len(data), Fate.PARTITIONED)
                    return True
                if self._nat_public and dst.host in self._nat_public:
                    inside = self._nat_public[dst.host].inbound(src, dst.port, now)
                    if inside is None:
                        self.stats.nat_filtered += 1
                        return True
                    dst = inside
                elif self._nat_of_host and dst.host in self._nat_of_host:
                    self.stats.nat_filtered += 1  # a private address is not routed from outside
                    return True
                maybe = self._endpoints.get(dst)
                if maybe is None:
                    self.stats.undeliverable += 1
                    if trace is not None:
                        trace(now, src, dst, len(data), Fate.UNDELIVERABLE)
                    return True
                endpoint = maybe
                self.stats.delivered += 1
                if trace is not None:
                    trace(now, src, dst, len(data), Fate.DELIVERED)
                endpoint.receive_datagram(data, src, now)
            if self._endpoints.get(dst) is endpoint:  # the endpoint may have detached itself
                self._flush_one(dst, endpoint, now)
            return True
        return False

    def _raise_livelock(self, now: float, addr: Address, is_timer: bool, t: float) -> None:
        if is_timer:
            last = f"the timer of {addr} (get_timer() returned {t!r}, not after now)"
        else:
            last = f"a zero-delay delivery to {addr}"
        raise SimulationError(
            f"livelock: {self._stalled} consecutive events at virtual time {now!r} without time "
            f"advancing; the last was {last}. An endpoint keeps returning a timer in the past, or "
            f"endpoints exchange datagrams over zero-latency links forever."
        )

    def _flush_one(self, addr: Address, endpoint: DatagramEndpoint, now: float) -> None:
        nat = self._nat_of_host.get(addr.host) if self._nat_of_host else None
        for data, dst in endpoint.datagrams_to_send(now):
            src = nat.outbound(addr, dst, now) if nat is not None else addr
            self._send(src, data, dst, now)
        t = endpoint.get_timer()
        current = self._timer_at.get(addr)
        if t is None or t == math.inf:
            if current is not None:
                del self._timer_at[addr]
        elif current is None or current[0] != t:
            if t != t:  # NaN would never fire and never compare equal
                raise SimulationError(f"endpoint at {addr} returned a NaN timer")
            seq = next(self._seq)
            self._timer_at[addr] = (t, seq)
            heapq.heappush(self._heap, (t, seq, addr, addr, None))

    def _send(self, src: Address, data: bytes, dst: Address, now: float) -> None:
        stats = self.stats
        trace = self.trace
        size = len(data)
        stats.sent += 1
        if trace is not None:
            trace(now, src, dst, size, Fate.SENT)
        profile = self._links.get((src, dst), self.default) if self._links else self.default
        if profile.mtu is not None and size > profile.mtu:
            stats.mtu_dropped += 1
            if trace is not None:
                trace(now, src, dst, size, Fate.MTU_DROPPED)
            return
        if self._cut and (src, dst) in self._cut:
            stats.partitioned += 1
            if trace is not None:
                trace(now, src, dst, size, Fate.PARTITIONED)
            return
        if self.block is not None and self.block(src, dst):
            stats.blocked += 1
            return
        rng = self.rng
        if profile.loss and rng.random() < profile.loss:
            stats.lost += 1
            if trace is not None:
                trace(now, src, dst, size, Fate.LOST)
            return
        depart = now
        if profile.bandwidth_bps is not None:
            key = (src, dst)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _LinkQueue()
            pending = queue.pending
            while pending and pending[0][0] <= now:
                queue.queued_bytes -= pending.popleft()[1]
            if queue.queued_bytes + size > profile.queue_limit:
                stats.queue_dropped += 1
                if trace is not None:
                    trace(now, src, dst, size, Fate.QUEUE_DROPPED)
                return
            start = queue.free_at if queue.free_at > now else now
            depart = queue.free_at = start + size * 8 / profile.bandwidth_bps
            pending.append((depart, size))
            queue.queued_bytes += size
        arrival = depart + profile.latency
        if profile.jitter or profile.reorder or profile.corrupt:
            self._schedule_copy(src, dst, data, arrival, profile, now)
        else:
            heapq.heappush(self._heap, (arrival, next(self._seq), src, dst, data))
        if profile.duplicate and rng.random() < profile.duplicate:
            stats.duplicated += 1
            if trace is not None:
                trace(now, src, dst, size, Fate.DUPLICATED)
            self._schedule_copy(src, dst, data, arrival, profile, now)

    def _schedule_copy(
        self, src: Address, dst: Address, data: bytes, arrival: float, profile: LinkProfile, now: float
    ) -> None:
        rng = self.rng
        trace = self.trace
        if profile.jitter:
            arrival += rng.random() * profile.jitter
        if profile.reorder and rng.random() < profile.reorder:
            arrival += profile.reorder_delay
            self.stats.reordered += 1
            if trace is not None:
                trace(now, src, dst, len(data), Fate.REORDERED)
        if profile.corrupt and data and rng.random() < profile.corrupt:
            damaged = bytearray(data)
            count = min(len(damaged), rng.randint(1, 3))
            for index in rng.sample(range(len(damaged)), count):
                damaged[index] ^= rng.randrange(1, 256)
            data = bytes(damaged)
            self.stats.corrupted += 1
            if trace is not None:
                trace(now, src, dst, len(data), Fate.CORRUPTED)
        heapq.heappush(self._heap, (arrival, next(self._seq), src, dst, data))
