"""Overlay routing simulator: the routing and flooding cores of every node on a virtual-time network.

    .venv/bin/python benchmarks/routing_sim.py --nodes 100 --duration 300
    .venv/bin/python benchmarks/routing_sim.py --nodes 1000 --duration 300 --cpu-budget 540 --progress

One :class:`~coremesh.routing.table.RoutingTable` and one :class:`~coremesh.routing.flood.Flood`
per node (the same sans-IO cores as in the node, real Ed25519 signatures), exchanging the overlay
plaintexts their ``messages_to_send`` return over the links of a random geometric graph: nodes
uniform in the unit square, linked when closer than a radius picked for a mean degree of
``--degree``, stragglers moved until the graph is connected. A link's one-way delay grows with its
length (``--min-delay`` for a zero-length link, ``--max-delay`` at the radius); each end feeds the
measured RTT (with 5% jitter) to its table with ``link_sample`` when the link comes up and every
``--sample-interval`` seconds. One event heap in virtual time: deliveries, core timers, link
failures, probes and broadcasts. Phases:

1. bootstrap: every link comes up at t=0 (``link_up`` on both ends), or with ``--join-rate`` the
   nodes join one after the other (breadth first, each bringing up its links to the nodes already
   there); the phase ends when every node has a route to every other node (the time is reported,
   after the last join) or after ``--bootstrap-timeout``;
2. churn for ``--duration`` virtual seconds: every link fails independently (Poisson) and comes back
   after an exponential down time of mean ``--down-time``, so that ``--fail-fraction`` of the links
   are down on average (a failure is seen at once: ``link_down`` on both ends; packets in flight on
   the link are lost). With ``--start stationary`` (the default) the phase starts in the steady
   state: each link is taken down at its start with probability ``--fail-fraction`` (memoryless, its
   remaining down time is exponential of mean ``--down-time``), the others are up until their first
   failure; ``--start all-up`` starts with every link up (then a short run stays below the target
   fraction); ``--start boot-down`` draws the links down at the start before the bootstrap, which
   then runs without them (its "all routes" are those the remaining graph allows), so churn starts
   in its steady state with no burst at all (at 1,000 nodes, 200 links failing at once cost more
   CPU than the whole measured window; the links down then come back without the ids a link that
   was up keeps, so their link-up exchanges cost a little more than in a long-running mesh). The
   first ``--warmup`` seconds (at most half the phase) absorb the burst of those first
   failures: the figures below marked "measured window" count only after them (the warmup's traffic
   is reported apart), and the failures whose convergence is measured are picked after them.
   Meanwhile ``--probe-rate`` data probes a second (after the warmup) from random sources to random
   reachable destinations, forwarded hop by hop along ``next_hop`` with the links' delays, and a
   broadcast from a random node every ``1/--broadcast-rate`` seconds;
3. isolated failures: every link back up, then ``--isolated`` single link failures one at a time,
   ``--isolated-gap`` seconds apart, on links that carry routes.

Measured (a table is printed; ``--json`` prints the figures as JSON instead):

* delivery ratio of the probes (measured window), and the reasons of the losses;
* path stretch: the cost of the path a delivered probe took over the cost of the shortest path (Dijkstra
  on the same link costs, computed when the probe left);
* convergence after a failure: for sampled (source, destination) pairs whose forwarding path crossed
  the failed link, the time until every pair's hop-by-hop path reaches its destination again
  ("repair"; polled every ``--poll`` s), and for isolated failures also the time of the last route
  change anywhere ("quiet");
* the fraction of links down (time average over the measured window), and the link events (failures
  and recoveries) a second in it;
* routing traffic per node over the measured window: overlay plaintext bytes a second (route
  updates; broadcasts apart), its p99 node and worst 10 s, and an on-the-wire estimate (+29 bytes of
  hop session header and tag, +28 of UDP/IPv4 per packet); the same over the warmup; routing bytes
  (network-wide) per link event, which compares runs of different churn; and the bytes and packets
  by kind, from the head of each ROUTE_UPDATE body (``version | epoch | msg_no``): pure acks
  (``msg_no`` 0), retransmissions (a ``msg_no`` not above the highest the sender already sent the
  receiver in that epoch: numbers increase within an epoch), link-up exchanges (the rest of what is
  sent on a link in the 2 s after it came up), updates (the rest);
* broadcast redundancy: copies received per node and per broadcast (1.0 is the floor), coverage;
* memory per route: the Python objects reachable from one node's table (shared objects excluded),
  per destination and per route held (primary and backups);
* crypto: signatures made and verified. Every node has a real key; the verifier is shared and
  memoised (a pure-function cache: a (key, message, signature) triple verified once for the whole
  network), so the CPU time shown for verification is what one node would pay for each distinct
  signature, and the call count is what nodes asked for.

Not part of CI (tests/unit/test_routing_sim.py runs a 30-node network). ``--cpu-budget`` cuts the
phases short when the process has used that much CPU, and the table says so (NOTE lines).

Scale (measured on the shared 2-core box, December 2026, default options): 100 nodes run in ~40 s of
CPU (bootstrap 6 s, 300 virtual s of churn 28 s); 200 nodes in ~100 s (bootstrap 34 s, 120 s of
churn 60 s); 500 nodes in ~11 min; 1,000 nodes in over an hour (bootstrap 1,560 s of CPU, 6.5 GB
resident; churn ~60 s of CPU per virtual second, at 13.6 link events a second):

    .venv/bin/python benchmarks/routing_sim.py --nodes 1000 --duration 40 --warmup 5 \\
        --start boot-down --cpu-budget 3600 --progress

What limits it is the volume of path vectors: every node must hear every destination from at
least the neighbours that may use it (N * degree * N / 2 entries at start-up: "elsewhere" spares
the others their path), with its whole path (paths average ~14 hops at 1,000 nodes, 2 bytes a hop
once the ids crossed the link), and CPython decodes, checks and re-encodes them at a few MB a second.
The 1,000-node graph of mean degree 8 has a hop diameter of 39: with routes of at most 30 hops (the
limit until paths could send their ids ahead; it is 62 now) about 1 % of its pairs had no route and
the bootstrap ended at ``--bootstrap-timeout`` with 99.1 % of the routes.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import random
import statistics
import struct
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from coremesh.identity import Identity, PeerId, verify_signature
from coremesh.routing.overlay import DEFAULT_HOP_LIMIT, OVERLAY_PREFIX, OverlayType
from coremesh.secure.wire import TRANSPORT_OVERHEAD

WALL = 1_700_000_000.0
UDP_IP_OVERHEAD = 28
PROBE_HOP_LIMIT = 255  # the simulator's own limit: paths longer than DEFAULT_HOP_LIMIT are counted apart
_PREFIX_LEN = len(OVERLAY_PREFIX)
_ROUTE_UPDATE = int(OverlayType.ROUTE_UPDATE)
_FLOOD_TYPES = frozenset(
    (int(OverlayType.BROADCAST), int(OverlayType.MULTICAST), int(OverlayType.MEMBERSHIP))
)
# The head of a ROUTE_UPDATE body (coremesh/routing/messages.py): version:1 | epoch:4 | msg_no:4.
_UPDATE_HEAD = struct.Struct("!BII")
_UPDATE_HEAD_END = _PREFIX_LEN + 1 + _UPDATE_HEAD.size
# Kinds of routing traffic (``RoutingSim.kind_bytes``): pure acks (msg_no 0), retransmissions (a
# msg_no of the link's epoch sent before), link-up exchanges (within LINK_UP_WINDOW s of the link
# coming up), the rest (incremental updates).
TRAFFIC_KINDS = ("ack", "retransmission", "link_up", "update")
_ACK, _RTX, _LINK_UP, _UPDATE = range(4)
LINK_UP_WINDOW = 2.0
STARTS = ("stationary", "all-up", "boot-down")


# ----------------------------------------------------------------------------------------- topology


@dataclass
class Topology:
    positions: list[tuple[float, float]]
    radius: float
    delay: dict[tuple[int, int], float]  # one-way delay of each link (i < j), seconds
    adj: list[list[int]]
    moved: int  # nodes moved to connect the graph

    @property
    def links(self) -> list[tuple[int, int]]:
        return sorted(self.delay)

    def mean_degree(self) -> float:
        return 2 * len(self.delay) / len(self.positions)


def _link_pairs(positions: list[tuple[float, float]], radius: float) -> list[tuple[int, int, float]]:
    """(i, j, distance) for every pair closer than ``radius``, found through a grid of cells."""
    cell = max(radius, 1e-9)
    grid: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (x, y) in enumerate(positions):
        grid[(int(x / cell), int(y / cell))].append(i)
    pairs = []
    r2 = radius * radius
    for (cx, cy), members in grid.items():
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                other = grid.get((cx + dx, cy + dy))
                if other is None:
                    continue
                for i in members:
                    xi, yi = positions[i]
                    for j in other:
                        if j <= i:
                            continue
                        xj, yj = positions[j]
                        d2 = (xi - xj) ** 2 + (yi - yj) ** 2
                        if d2 < r2:
                            pairs.append((i, j, math.sqrt(d2)))
    return pairs


def _radius_for_degree(positions: list[tuple[float, float]], degree: float) -> float:
    """The radius giving a mean degree of ``degree``: the (degree*n/2)-th shortest pairwise distance,
    searched among the pairs closer than twice the textbook estimate (boundary effects included)."""
    n = len(positions)
    want = max(1, round(degree * n / 2))
    guess = math.sqrt(degree / (math.pi * n))
    while True:
        pairs = _link_pairs(positions, 2 * guess)
        if len(pairs) > want or 2 * guess > 1.5:
            break
        guess *= 2
    dists = sorted(d for _, _, d in pairs)
    return dists[min(want, len(dists) - 1)] if dists else 2 * guess


def _components(n: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    adj: list[list[int]] = [[] for _ in range(n)]
    for i, j, _ in pairs:
        adj[i].append(j)
        adj[j].append(i)
    seen = [False] * n
    comps = []
    for s in range(n):
        if seen[s]:
            continue
        seen[s] = True
        comp, stack = [s], [s]
        while stack:
            x = stack.pop()
            for y in adj[x]:
                if not seen[y]:
                    seen[y] = True
                    comp.append(y)
                    stack.append(y)
        comps.append(comp)
    return comps


def build_topology(
    n: int, degree: float, rng: random.Random, *, min_delay: float, max_delay: float
) -> Topology:
    """A connected random geometric graph of ``n`` nodes in the unit square, mean degree ~``degree``.

    The radius is picked for the degree; nodes outside the largest component are moved to fresh
    random places (and the radius picked again) until the graph is connected."""
    if n < 2:
        raise ValueError("a topology needs at least 2 nodes")
    positions = [(rng.random(), rng.random()) for _ in range(n)]
    moved = 0
    for _ in range(1000):
        radius = _radius_for_degree(positions, min(degree, n - 1))
        pairs = _link_pairs(positions, radius)
        comps = _components(n, pairs)
        if len(comps) == 1:
            break
        largest = max(comps, key=len)
        keep = set(largest)
        for i in range(n):
            if i not in keep:
                positions[i] = (rng.random(), rng.random())
                moved += 1
    else:
        raise RuntimeError("could not connect the random geometric graph")
    delay = {(i, j): min_delay + (max_delay - min_delay) * min(1.0, d / radius) for i, j, d in pairs}
    adj: list[list[int]] = [[] for _ in range(n)]
    for i, j in delay:
        adj[i].append(j)
        adj[j].append(i)
    for a in adj:
        a.sort()
    return Topology(positions, radius, delay, adj, moved)


def link_cost(rtt: float) -> int:
    """The cost the tables give a lossless link of round-trip time ``rtt`` (max(1, round(rtt_ms)))."""
    return max(1, round(rtt * 1000))


def dijkstra(
    adj: list[list[int]], cost: Callable[[int, int], int], up: Callable[[int, int], bool], src: int, dst: int
) -> int | None:
    """The cost of the shortest path from ``src`` to ``dst`` over the links that are up."""
    dist = {src: 0}
    heap = [(0, src)]
    done: set[int] = set()
    while heap:
        d, x = heapq.heappop(heap)
        if x == dst:
            return d
        if x in done:
            continue
        done.add(x)
        for y in adj[x]:
            if y in done or not up(x, y):
                continue
            nd = d + cost(x, y)
            if nd < dist.get(y, 1 << 60):
                dist[y] = nd
                heapq.heappush(heap, (nd, y))
    return None


# ----------------------------------------------------------------------------------------- the cores


class TableLike(Protocol):
    counters: Counter[str]

    def link_up(self, neighbour: PeerId, now: float) -> None: ...
    def link_down(self, neighbour: PeerId, now: float) -> None: ...
    def link_sample(self, neighbour: PeerId, rtt: float | None, loss: float, now: float) -> None: ...
    def receive(self, neighbour: PeerId, body: bytes, now: float) -> None: ...
    def messages_to_send(self, now: float) -> list[tuple[PeerId, bytes]]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_hop(self, destination: PeerId) -> PeerId | None: ...
    def all_routes(self) -> list[Any]: ...


class FloodLike(Protocol):
    counters: Counter[str]

    def broadcast(self, data: bytes, now: float) -> int: ...
    def link_up(self, neighbour: PeerId, now: float) -> None: ...
    def receive(self, neighbour: PeerId, kind: int, body: bytes, now: float) -> None: ...
    def messages_to_send(self, now: float) -> list[tuple[PeerId, bytes]]: ...
    def next_delivery(self) -> Any: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


Verify = Callable[[PeerId, bytes, bytes], bool]
Sign = Callable[[bytes], bytes]
TableFactory = Callable[[PeerId, Sign, Verify, random.Random, float], TableLike]
FloodFactory = Callable[[PeerId, Sign, TableLike, Verify, float], FloodLike | None]


def real_table(peer_id: PeerId, sign: Sign, verify: Verify, rng: random.Random, now: float) -> TableLike:
    from coremesh.routing.table import RoutingConfig, RoutingTable

    table: TableLike = RoutingTable(  # type: ignore[assignment]
        peer_id, sign, RoutingConfig(), verify=verify, rng=rng, now=now, wall_offset=WALL
    )
    return table


def real_flood(peer_id: PeerId, sign: Sign, table: TableLike, verify: Verify, now: float) -> FloodLike:
    from coremesh.routing.flood import Flood

    flood: FloodLike = Flood(peer_id, sign, table, verify=verify, now=now, wall_offset=WALL)  # type: ignore[arg-type, assignment]
    return flood


class MemoVerifier:
    """``verify_signature`` behind a cache shared by every node: same answers, each distinct
    (key, message, signature) verified once. Counts the calls and the time of the real checks."""

    def __init__(self, verify: Verify = verify_signature) -> None:
        self._verify = verify
        self._cache: dict[tuple[bytes, bytes, bytes], bool] = {}
        self.calls = 0
        self.checks = 0
        self.seconds = 0.0

    def __call__(self, peer: PeerId, message: bytes, signature: bytes) -> bool:
        self.calls += 1
        key = (peer.key, bytes(message), bytes(signature))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        t = time.perf_counter()
        ok = self._verify(peer, message, signature)
        self.seconds += time.perf_counter() - t
        self.checks += 1
        self._cache[key] = ok
        return ok


class Signer:
    """A node's ``sign``, counted (count and time shared by all nodes)."""

    stats: dict[str, float]

    def __init__(self, identity: Identity, stats: dict[str, float]) -> None:
        self._identity = identity
        self.stats = stats

    def __call__(self, message: bytes) -> bytes:
        t = time.perf_counter()
        sig = self._identity.sign(message)
        self.stats["seconds"] += time.perf_counter() - t
        self.stats["count"] += 1
        return sig


# ----------------------------------------------------------------------------------------- simulator


@dataclass
class SimParams:
    nodes: int = 1000
    degree: float = 8.0
    fail_fraction: float = 0.05
    down_time: float = 30.0
    duration: float = 300.0  # virtual seconds of churn, the warmup included
    start: str = "stationary"  # churn starts with fail_fraction of the links down, or "all-up"
    warmup: float = 10.0  # first seconds of churn left out of the measured figures
    seed: int = 1
    min_delay: float = 0.002
    max_delay: float = 0.030
    sample_interval: float = 5.0
    bootstrap_timeout: float = 600.0
    join_rate: float = 0.0  # nodes joining per virtual second (0: every link up at t=0)
    probe_rate: float = 10.0
    broadcast_rate: float = 0.2
    poll: float = 0.05
    repair_pairs: int = 6  # sampled (source, destination) pairs per measured failure
    measured_failures: int = 60  # churn failures whose convergence is measured (evenly spread)
    isolated: int = 10
    isolated_gap: float = 20.0
    memory: bool = True
    cpu_budget: float = 0.0  # process CPU seconds after which the phases are cut short (0: none)
    progress: bool = False  # a line on stderr every virtual 10 s


@dataclass
class Node:
    index: int
    peer_id: PeerId
    table: TableLike
    flood: FloodLike | None
    timer: float | None = None  # the time of this node's pending timer event


@dataclass
class Repair:
    """A failure whose convergence is being measured."""

    started: float
    pairs: list[tuple[int, int]]
    kind: str  # "churn" or "isolated"
    repaired: float | None = None
    quiet_check: bool = False


@dataclass
class Metrics:
    probes: Counter[str] = field(default_factory=Counter)
    stretch: list[float] = field(default_factory=list)
    hops: list[int] = field(default_factory=list)
    repairs: list[Repair] = field(default_factory=list)
    quiet: list[float] = field(default_factory=list)
    broadcasts: dict[int, dict[str, Any]] = field(default_factory=dict)
    broadcast_packets: int = 0
    delivery_counts: Counter[int] = field(default_factory=Counter)


# event kinds
_DELIVER, _TIMER, _CALL = 0, 1, 2


class RoutingSim:
    def __init__(
        self,
        params: SimParams,
        *,
        make_table: TableFactory = real_table,
        make_flood: FloodFactory | None = real_flood,
    ) -> None:
        if params.start not in STARTS:
            raise ValueError(f"start is one of {', '.join(STARTS)}, not {params.start!r}")
        self.p = params
        self.make_table = make_table
        self.rng = random.Random(params.seed)
        # The churn schedule, probes, broadcasts and measured failures draw from streams of their
        # own: two versions of the tables whose bootstraps take different times (and so draw
        # different numbers of jitter samples) still meet the same failures and the same probes.
        self.schedule_rng = random.Random(f"{params.seed}/schedule")
        self.boot_down: set[tuple[int, int]] = set()  # links down from the start (--start boot-down)
        self._possible: list[int] | None = None
        self.event_rng = random.Random(f"{params.seed}/events")
        self.topo = build_topology(
            params.nodes, params.degree, self.rng, min_delay=params.min_delay, max_delay=params.max_delay
        )
        self.now = 0.0
        self.heap: list[tuple[float, int, int, int, int, Any]] = []
        self.seq = 0
        self.verifier = MemoVerifier()
        self.sign_stats: dict[str, float] = {"count": 0, "seconds": 0.0}
        self.up: set[tuple[int, int]] = set()
        self.up_since: dict[tuple[int, int], float] = {}  # when each link last came up
        self.link_events = 0  # failures and recoveries (bring_up / take_down)
        self.down_integral = 0.0  # link-seconds spent down, up to down_integral_at
        self.down_integral_at = 0.0
        self.kind_bytes = [0] * len(TRAFFIC_KINDS)  # route updates by kind (TRAFFIC_KINDS), network-wide
        self.kind_packets = [0] * len(TRAFFIC_KINDS)
        self._msg_hw: dict[tuple[int, int, int], int] = {}  # (sender, receiver, epoch) -> highest msg_no
        self.window: dict[str, Any] = {}  # the counters at the start of the measured churn window
        self.bytes_sent = [0] * params.nodes  # route updates, plaintext
        self.packets_sent = [0] * params.nodes
        self.flood_bytes = 0
        self.flood_packets = 0
        self.drops: Counter[str] = Counter()
        self.metrics = Metrics()
        self.last_route_change = 0.0
        self._last_timer = (-1, -1.0, 0)
        self.cpu0 = time.process_time()
        self.notes: list[str] = []  # what was cut short, and why
        self.down_fraction = 0.0
        self.last_join = 0.0
        self.churn_over = False
        self.sent_each_second: list[int] = []  # total update bytes sent, each second of churn
        self.nodes: list[Node] = []
        self.index: dict[PeerId, int] = {}
        for i in range(params.nodes):
            ident = Identity.generate(self.rng.randbytes)
            sign = Signer(ident, self.sign_stats)
            table = make_table(
                ident.peer_id, sign, self.verifier, random.Random(self.rng.getrandbits(64)), 0.0
            )
            flood = make_flood(ident.peer_id, sign, table, self.verifier, 0.0) if make_flood else None
            self.nodes.append(Node(i, ident.peer_id, table, flood))
            self.index[ident.peer_id] = i

    # ---- the event loop

    def push(self, t: float, kind: int, a: int, b: int, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b, data))

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.push(t, _CALL, 0, 0, fn)

    def is_up(self, a: int, b: int) -> bool:
        return (a, b) in self.up if a < b else (b, a) in self.up

    def delay(self, a: int, b: int) -> float:
        return self.topo.delay[(a, b) if a < b else (b, a)]

    def cost(self, a: int, b: int) -> int:
        return link_cost(2 * self.delay(a, b))

    def flush(self, i: int) -> None:
        """Send what node ``i``'s cores want to send and (re)arm its timer."""
        node = self.nodes[i]
        now = self.now
        out = node.table.messages_to_send(now)
        flood_out = node.flood.messages_to_send(now) if node.flood is not None else []
        for msgs, is_flood in ((out, False), (flood_out, True)):
            for peer, data in msgs:
                j = self.index.get(peer)
                if j is None or not self.is_up(i, j):
                    self.drops["sent_on_down_link"] += 1
                    continue
                if is_flood:
                    self.flood_bytes += len(data)
                    self.flood_packets += 1
                else:
                    self.bytes_sent[i] += len(data)
                    self.packets_sent[i] += 1
                    k = self.traffic_kind(i, j, data)
                    self.kind_bytes[k] += len(data)
                    self.kind_packets[k] += 1
                self.push(now + self.delay(i, j), _DELIVER, j, i, data)
        timers = [
            t
            for t in (node.table.get_timer(), node.flood.get_timer() if node.flood else None)
            if t is not None
        ]
        if timers:
            t = max(min(timers), now)
            if node.timer is None or t < node.timer:
                node.timer = t
                self.push(t, _TIMER, i, 0, None)

    def traffic_kind(self, i: int, j: int, data: bytes) -> int:
        """The kind (an index of TRAFFIC_KINDS) of a route update ``i`` sends ``j`` now. Message
        numbers of an epoch increase, so one sent before is one not above the link's high-water mark."""
        if len(data) < _UPDATE_HEAD_END or data[_PREFIX_LEN] != _ROUTE_UPDATE:
            return _UPDATE
        _, epoch, msg_no = _UPDATE_HEAD.unpack_from(data, _PREFIX_LEN + 1)
        if msg_no == 0:
            return _ACK
        key = (i, j, epoch)
        if msg_no <= self._msg_hw.get(key, 0):
            return _RTX
        self._msg_hw[key] = msg_no
        since = self.up_since.get((i, j) if i < j else (j, i), -math.inf)
        return _LINK_UP if self.now - since < LINK_UP_WINDOW else _UPDATE

    def account_links(self) -> None:
        """Bring the integral of the links down up to now (before the set of links up changes)."""
        self.down_integral += (len(self.topo.delay) - len(self.up)) * (self.now - self.down_integral_at)
        self.down_integral_at = self.now

    def deliver(self, j: int, i: int, data: bytes) -> None:
        if not self.is_up(i, j):
            self.drops["lost_in_flight"] += 1
            return
        node = self.nodes[j]
        peer = self.nodes[i].peer_id
        if len(data) <= _PREFIX_LEN or data[:_PREFIX_LEN] != OVERLAY_PREFIX:
            self.drops["not_overlay"] += 1
            return
        kind = data[_PREFIX_LEN]
        if kind == _ROUTE_UPDATE:
            node.table.receive(peer, data[_PREFIX_LEN + 1 :], self.now)
        elif kind in _FLOOD_TYPES and node.flood is not None:
            if kind == OverlayType.BROADCAST:
                self.metrics.broadcast_packets += 1
            node.flood.receive(peer, kind, data[_PREFIX_LEN + 1 :], self.now)
            self.drain_deliveries(j)
        else:
            self.drops[f"unknown_type_{kind:#x}"] += 1
            return
        self.flush(j)

    def timer(self, i: int, t: float) -> None:
        node = self.nodes[i]
        if node.timer != t:
            return  # superseded
        node.timer = None
        if self._last_timer[:2] == (i, t):
            self._last_timer = (i, t, self._last_timer[2] + 1)
            if self._last_timer[2] > 10_000:
                raise RuntimeError(f"node {i}'s timer fires again and again at t={t}: livelock")
        else:
            self._last_timer = (i, t, 0)
        tt = node.table.get_timer()
        if tt is not None and tt <= self.now:
            node.table.handle_timer(self.now)
        if node.flood is not None:
            ft = node.flood.get_timer()
            if ft is not None and ft <= self.now:
                node.flood.handle_timer(self.now)
                self.drain_deliveries(i)
        self.flush(i)

    def run_until(self, end: float) -> bool:
        """Run the events due up to ``end`` (then the clock is at ``end``). False when the CPU
        budget ran out first (then the clock is at the last event run)."""
        heap = self.heap
        budget = self.p.cpu_budget
        count = 0
        while heap and heap[0][0] <= end:
            t, _, kind, a, b, data = heapq.heappop(heap)
            self.now = t
            if kind == _DELIVER:
                self.deliver(a, b, data)
            elif kind == _TIMER:
                self.timer(a, t)
            else:
                data()
            count += 1
            if budget > 0 and count % 1024 == 0 and self.cpu() > budget:
                return False
        self.now = end
        return True

    # ---- links

    def sample(self, a: int, b: int) -> None:
        """Both ends measure the link's RTT (5% jitter)."""
        rtt = 2 * self.delay(a, b)
        for x, y in ((a, b), (b, a)):
            self.nodes[x].table.link_sample(
                self.nodes[y].peer_id, rtt * self.rng.uniform(0.95, 1.05), 0.0, self.now
            )
            self.flush(x)

    def bring_up(self, a: int, b: int) -> None:
        self.account_links()
        self.link_events += 1
        self.up.add((a, b))
        self.up_since[(a, b)] = self.now
        for x, y in ((a, b), (b, a)):
            peer = self.nodes[y].peer_id
            node = self.nodes[x]
            node.table.link_up(peer, self.now)
            if node.flood is not None:
                node.flood.link_up(peer, self.now)
        self.sample(a, b)

    def take_down(self, a: int, b: int) -> None:
        self.account_links()
        self.link_events += 1
        self.up.discard((a, b))
        for x, y in ((a, b), (b, a)):
            self.nodes[x].table.link_down(self.nodes[y].peer_id, self.now)
            self.flush(x)

    def sampler(self, a: int, b: int) -> None:
        if self.is_up(a, b):
            self.sample(a, b)
        self.at(self.now + self.p.sample_interval, lambda: self.sampler(a, b))

    # ---- routes

    def walk(self, src: int, dst: int, limit: int = PROBE_HOP_LIMIT) -> list[int] | None:
        """The hop-by-hop path from ``src`` to ``dst`` as the tables stand now (over links up)."""
        path = [src]
        x = src
        target = self.nodes[dst].peer_id
        while x != dst:
            if len(path) > limit:
                return None
            nh = self.nodes[x].table.next_hop(target)
            if nh is None:
                return None
            y = self.index.get(nh)
            if y is None or not self.is_up(x, y):
                return None
            path.append(y)
            x = y
        return path

    def route_count(self, i: int) -> int:
        return len(self.nodes[i].table.all_routes())

    def total_route_changes(self) -> int:
        return sum(n.table.counters["route_changes"] for n in self.nodes)

    def reachable(self, src: int) -> set[int]:
        seen = {src}
        stack = [src]
        while stack:
            x = stack.pop()
            for y in self.topo.adj[x]:
                if y not in seen and self.is_up(x, y):
                    seen.add(y)
                    stack.append(y)
        return seen

    # ---- probes

    def start_probe(self) -> None:
        n = self.p.nodes
        src = self.event_rng.randrange(n)
        dst = self.event_rng.randrange(n - 1)
        dst += dst >= src
        best = dijkstra(self.topo.adj, self.cost, self.is_up, src, dst)
        if best is None:
            self.metrics.probes["partitioned"] += 1
            return
        self.metrics.probes["sent"] += 1
        self.probe_hop(src, dst, 0, 0, best)

    def probe_hop(self, x: int, dst: int, hops: int, cost: int, best: int) -> None:
        m = self.metrics
        if x == dst:
            m.probes["delivered"] += 1
            m.stretch.append(cost / best)
            m.hops.append(hops)
            return
        if hops >= PROBE_HOP_LIMIT:
            m.probes["drop_hop_limit"] += 1
            return
        nh = self.nodes[x].table.next_hop(self.nodes[dst].peer_id)
        y = self.index.get(nh) if nh is not None else None
        if y is None:
            m.probes["drop_no_route"] += 1
            return
        if not self.is_up(x, y):
            m.probes["drop_link_down"] += 1
            return
        d = self.delay(x, y)

        def arrive() -> None:
            if not self.is_up(x, y):
                m.probes["drop_lost_in_flight"] += 1
                return
            self.probe_hop(y, dst, hops + 1, cost + self.cost(x, y), best)

        self.at(self.now + d, arrive)

    # ---- broadcasts

    def start_broadcast(self) -> None:
        origin = self.event_rng.randrange(self.p.nodes)
        flood = self.nodes[origin].flood
        if flood is None:
            return
        bid = len(self.metrics.broadcasts)
        reach = self.reachable(origin)  # the origin is not counted: it does not deliver to itself
        self.metrics.broadcasts[bid] = {
            "origin": origin,
            "reach": len(reach) - 1,
            "delivered": set(),
            "dups": 0,
        }
        flood.broadcast(b"sim-broadcast:%d" % bid, self.now)
        self.drain_deliveries(origin)
        self.flush(origin)

    def drain_deliveries(self, i: int) -> None:
        flood = self.nodes[i].flood
        if flood is None:
            return
        while (d := flood.next_delivery()) is not None:
            if d.kind != "broadcast" or not d.data.startswith(b"sim-broadcast:"):
                continue
            b = self.metrics.broadcasts.get(int(d.data.split(b":")[1]))
            if b is None:
                continue
            if i in b["delivered"]:
                b["dups"] += 1
            if i != b["origin"]:
                b["delivered"].add(i)

    # ---- convergence

    def affected_pairs(self, a: int, b: int) -> list[tuple[int, int]]:
        """Up to ``repair_pairs`` (source, destination) pairs whose forwarding path uses link a-b now."""
        pairs: list[tuple[int, int]] = []
        for x, y in ((a, b), (b, a)):
            peer_y = self.nodes[y].peer_id
            dests = [
                self.index[r[0].destination]
                for r in self.nodes[x].table.all_routes()
                if r and r[0].next_hop == peer_y and r[0].destination in self.index
            ]
            self.event_rng.shuffle(dests)
            for dst in dests[:2]:
                # sources whose path to dst goes through x then y
                srcs = [
                    s for s in self.event_rng.sample(range(self.p.nodes), min(60, self.p.nodes)) if s != dst
                ]
                for s in srcs:
                    path = self.walk(s, dst)
                    if path is not None and any(
                        path[k] == x and path[k + 1] == y for k in range(len(path) - 1)
                    ):
                        pairs.append((s, dst))
                        if len(pairs) >= self.p.repair_pairs:
                            return pairs
                pairs.append((x, dst))
        return pairs[: self.p.repair_pairs]

    def measure_failure(self, a: int, b: int, kind: str) -> None:
        """Take link a-b down now and follow the repair of the pairs that used it."""
        pairs = self.affected_pairs(a, b)
        self.take_down(a, b)
        reach = {s: self.reachable(s) for s in {s for s, _ in pairs}}
        pairs = [(s, d) for s, d in pairs if d in reach[s]]
        rep = Repair(self.now, pairs, kind)
        self.metrics.repairs.append(rep)
        self.poll_repair(rep)

    def poll_repair(self, rep: Repair) -> None:
        if rep.repaired is not None:
            return
        if all(self.walk(s, d) is not None for s, d in rep.pairs):
            rep.repaired = self.now
            return
        if self.now - rep.started > 120.0:
            return  # never repaired: reported as such
        self.at(self.now + self.p.poll, lambda: self.poll_repair(rep))

    # ---- phases

    def cpu(self) -> float:
        return time.process_time() - self.cpu0

    def over_budget(self, phase: str) -> bool:
        if self.p.cpu_budget <= 0 or self.cpu() <= self.p.cpu_budget:
            return False
        self.notes.append(
            f"{phase} cut short at virtual t={self.now:.1f} s: CPU budget of {self.p.cpu_budget:.0f} s spent"
        )
        return True

    def progress(self, phase: str, last: list[float]) -> None:
        """A line on stderr every virtual 10 s or CPU 30 s (``last``: [virtual, CPU] of the last)."""
        cpu = self.cpu()
        if self.p.progress and (self.now >= last[0] + 10 or cpu >= last[1] + 30):
            last[:] = [self.now, cpu]
            sent = sum(self.bytes_sent) / 1e6
            routes = f", routes {self.route_coverage():.1%}" if phase == "bootstrap" else ""
            print(
                f"# {phase} t={self.now:.1f} s, {sent:.1f} MB of updates sent{routes}, CPU {cpu:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def route_coverage(self) -> float:
        """Routes known over routes possible (every node to every other node it is connected to)."""
        n = self.p.nodes
        return sum(self.route_count(i) for i in range(n)) / max(1, sum(self.routes_possible()))

    def routes_possible(self) -> list[int]:
        """Per node, the nodes it can reach over the links brought up at bootstrap (n - 1 when the
        bootstrap brings every link up)."""
        if not self.boot_down:
            return [self.p.nodes - 1] * self.p.nodes
        if self._possible is None:
            component: dict[int, int] = {}  # node -> size of its component without those links
            for root in range(self.p.nodes):
                if root in component:
                    continue
                seen, stack = {root}, [root]
                while stack:
                    x = stack.pop()
                    for y in self.topo.adj[x]:
                        if y not in seen and (min(x, y), max(x, y)) not in self.boot_down:
                            seen.add(y)
                            stack.append(y)
                component.update(dict.fromkeys(seen, len(seen)))
            self._possible = [component[i] - 1 for i in range(self.p.nodes)]
        return self._possible

    def join(self, i: int, joined: set[int]) -> None:
        """Node ``i`` joins: its links to the nodes already there come up."""
        joined.add(i)
        for j in self.topo.adj[i]:
            if j in joined and j != i:
                a, b = min(i, j), max(i, j)
                self.bring_up(a, b)
                if (a, b) in self.boot_down:
                    # It went down just now: its ends' records list it (as after any failure,
                    # for record_hold), so its recovery is like any other's, not a new link's.
                    self.take_down(a, b)
                self.at(
                    self.now + self.rng.uniform(0, self.p.sample_interval),
                    lambda a=a, b=b: self.sampler(a, b),
                )

    def bootstrap(self) -> float | None:
        """Every link up at t=0 (``join_rate`` 0), or nodes joining one after the other in
        breadth-first order from a random node. Returns the time all routes were known, counted
        from the last join, or None."""
        n = self.p.nodes
        joined: set[int] = set()
        if self.p.start == "boot-down" and self.p.fail_fraction > 0:
            # The links down when churn starts go down as the bootstrap starts, before any route
            # exists: churn then starts in its stationary state with no burst of failures (5 % of
            # 4,000 links failing at once is a storm that costs the 1,000-node run more CPU than
            # its whole measured window).
            self.boot_down = {
                link for link in self.topo.links if self.schedule_rng.random() < self.p.fail_fraction
            }
        if self.p.join_rate > 0:
            root = self.rng.randrange(n)
            order, seen = [root], {root}
            for x in order:
                for y in self.topo.adj[x]:
                    if y not in seen:
                        seen.add(y)
                        order.append(y)
            for k, i in enumerate(order):
                self.at(k / self.p.join_rate, lambda i=i: self.join(i, joined))
            self.last_join = (n - 1) / self.p.join_rate
        else:
            for i in range(n):
                self.join(i, joined)
            self.last_join = 0.0
        want = self.routes_possible()
        pending = list(range(n))
        step = 0.5
        last = [0.0, 0.0]
        while self.now < self.last_join + self.p.bootstrap_timeout:
            self.run_until(self.now + step)
            if self.now >= self.last_join:
                pending = [i for i in pending if self.route_count(i) < want[i]]
                if not pending:
                    return self.now - self.last_join
            self.progress("bootstrap", last)
            if self.over_budget("bootstrap"):
                break
        return None

    def churn(self) -> None:
        """Links fail and recover from ``t0`` to ``t0 + duration``; the figures are measured after the
        first ``warmup`` seconds (``self.window`` holds the counters at the start of that window)."""
        p = self.p
        t0 = self.now
        self.window = {}
        if self.over_budget("churn"):
            return
        end = t0 + p.duration
        warm_end = t0 + self.warmup()
        if self.warmup() < p.warmup:
            self.notes.append(f"warmup cut to {self.warmup():g} s: half the {p.duration:g} s of churn")
        links = self.topo.links
        if p.fail_fraction > 0:
            mean_up = p.down_time * (1 - p.fail_fraction) / p.fail_fraction
            stationary = p.start == "stationary"
            failures = []
            for a, b in links:
                # stationary: down at t0 with probability fail_fraction (memoryless: its remaining
                # down time is exponential of mean down_time), else up until its first failure;
                # boot-down: the links drawn then are down already, and come back first
                down_first = stationary and self.schedule_rng.random() < p.fail_fraction
                t = t0 if down_first else t0 + self.schedule_rng.expovariate(1 / mean_up)
                if (a, b) in self.boot_down:
                    t = t0 + self.schedule_rng.expovariate(1 / p.down_time)
                    failures.append((t, -1 - a, b))  # recovery marker
                    t += self.schedule_rng.expovariate(1 / mean_up)
                while t < end:
                    failures.append((t, a, b))
                    t += self.schedule_rng.expovariate(1 / p.down_time)  # down
                    failures.append((t, -1 - a, b))  # recovery marker
                    t += self.schedule_rng.expovariate(1 / mean_up)
            downs = sorted(f for f in failures if f[1] >= 0 and f[0] >= warm_end and f[0] > t0)
            step = max(1, len(downs) // max(1, p.measured_failures))
            measured = {(t, a, b) for t, a, b in downs[::step]}
            for t, a, b in failures:
                if a >= 0:
                    if (t, a, b) in measured:
                        self.at(t, lambda a=a, b=b: self.measure_failure(a, b, "churn"))
                    else:
                        self.at(t, lambda a=a, b=b: self.take_down(a, b))
                else:
                    self.at(t, lambda a=-1 - a, b=b: self.recover(a, b))
        if p.probe_rate > 0:
            t = warm_end
            while (
                t := t + self.schedule_rng.expovariate(p.probe_rate)
            ) < end - 2.0:  # all arrive in the phase
                self.at(t, self.start_probe)
        if p.broadcast_rate > 0:
            t = t0
            while (t := t + 1 / p.broadcast_rate) < end:
                self.at(t, self.start_broadcast)
        shown = [self.now, self.cpu()]
        self.window_counters("warmup", t0)
        if warm_end <= t0:  # no warmup: the measured window starts now
            self.window_counters("start", t0)
            self.sent_each_second = [sum(self.bytes_sent)]
        while self.now < end:  # the run, by steps of a second (the warmup's end is a step's end)
            step_end = min(end, self.now + 1.0)
            if self.now < warm_end:
                step_end = min(step_end, warm_end)
            self.run_until(step_end)
            if "start" not in self.window and self.now >= warm_end:
                self.window_counters("start", self.now)
                self.sent_each_second = [sum(self.bytes_sent)]
            elif "start" in self.window:
                self.sent_each_second.append(sum(self.bytes_sent))
            self.progress("churn", shown)
            if self.now < end and self.over_budget("churn"):
                break
        if "start" not in self.window:  # cut short in the warmup: an empty measured window
            self.window_counters("start", self.now)
            self.sent_each_second = [sum(self.bytes_sent)]
        self.window_counters("end", self.now)
        start, stop = self.window["start"], self.window["end"]
        self.down_fraction = (stop["down_integral"] - start["down_integral"]) / max(
            1e-9, (stop["t"] - start["t"]) * len(links)
        )

    def warmup(self) -> float:
        """The warmup actually used: ``--warmup``, at most half the churn phase."""
        return max(0.0, min(self.p.warmup, self.p.duration / 2))

    def window_counters(self, name: str, t: float) -> None:
        """Record the running totals at virtual time ``t`` (now) as ``self.window[name]``."""
        self.account_links()
        self.window[name] = {
            "t": t,
            "bytes": list(self.bytes_sent),
            "packets": sum(self.packets_sent),
            "kind_bytes": list(self.kind_bytes),
            "kind_packets": list(self.kind_packets),
            "link_events": self.link_events,
            "down_integral": self.down_integral,
        }

    def recover(self, a: int, b: int) -> None:
        """A churn failure ends (unless the churn phase is over: every link came back then)."""
        if not self.churn_over and not self.is_up(a, b):
            self.bring_up(a, b)

    def isolated_failures(self) -> None:
        """Every link back up, settle, then single failures one at a time."""
        p = self.p
        self.churn_over = True
        if p.isolated <= 0 or self.over_budget("isolated failures"):
            return
        for a, b in self.topo.links:
            if not self.is_up(a, b):
                self.bring_up(a, b)
        self.run_until(self.now + p.isolated_gap)
        links = self.topo.links
        for _ in range(p.isolated):
            if self.over_budget("isolated failures"):
                break
            a, b = links[self.event_rng.randrange(len(links))]
            changes = self.total_route_changes()
            self.measure_failure(a, b, "isolated")
            self.last_route_change = self.now
            started = self.now
            # follow the last route change anywhere (polled)
            end = self.now + p.isolated_gap
            while self.now < end:
                self.run_until(min(end, self.now + p.poll * 4))
                c = self.total_route_changes()
                if c != changes:
                    changes = c
                    self.last_route_change = self.now
            self.metrics.quiet.append(self.last_route_change - started)
            self.bring_up(a, b)
            self.run_until(self.now + p.isolated_gap)


# ----------------------------------------------------------------------------------------- memory


def deep_size(root: object, stop: set[int]) -> int:
    """Bytes of the objects reachable from ``root`` (sys.getsizeof), not entering ``stop`` ids,
    classes, modules or functions."""
    import types

    seen = set(stop)
    todo = [root]
    size = 0
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        todo.extend(gc.get_referents(obj))
    return size


def table_memory(sim: RoutingSim, samples: int = 5) -> dict[str, float]:
    """Bytes per destination and per route held (primary and backups) of a few nodes' tables: the
    size of the table minus that of a fresh one (so the fixed part, its rng and config, is left out),
    shared objects (the verifier, the signer, the other nodes) excluded."""
    stop = {id(sim.verifier), id(sim), id(sim.sign_stats)}
    for n in sim.nodes:
        stop.add(id(n))
        if n.flood is not None:
            stop.add(id(n.flood))
    ident = Identity.generate(sim.rng.randbytes)
    empty = sim.make_table(
        ident.peer_id, Signer(ident, {"count": 0, "seconds": 0.0}), sim.verifier, random.Random(0), 0.0
    )
    base = deep_size(empty, stop)
    per_dest, per_route = [], []
    for i in sim.rng.sample(range(len(sim.nodes)), min(samples, len(sim.nodes))):
        table = sim.nodes[i].table
        routes = table.all_routes()
        dests = len(routes)
        held = sum(len(r) for r in routes)
        size = deep_size(table, stop) - base
        if dests:
            per_dest.append(size / dests)
            per_route.append(size / max(1, held))
    return {
        "bytes_per_destination": round(statistics.mean(per_dest)) if per_dest else 0,
        "bytes_per_route": round(statistics.mean(per_route)) if per_route else 0,
        "table_bytes_fixed": base,
    }


# ----------------------------------------------------------------------------------------- report


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def run(params: SimParams, **factories: Any) -> dict[str, Any]:
    real0 = time.process_time()
    sim = RoutingSim(params, **factories)
    setup_s = time.process_time() - real0
    boot_bytes0 = sum(sim.bytes_sent)
    boot = sim.bootstrap()
    boot_end = sim.now
    coverage = sim.route_coverage()
    boot_bytes = sum(sim.bytes_sent) - boot_bytes0
    boot_real = time.process_time() - real0
    churn_t0 = sim.now
    sim.churn()
    churn_s = sim.now - churn_t0
    n = params.nodes
    win = sim.window or {k: _counters(sim, sim.now) for k in ("warmup", "start", "end")}
    w0, w1, w2 = win["warmup"], win["start"], win["end"]
    warm_s, measured_s = w1["t"] - w0["t"], w2["t"] - w1["t"]
    churn_bytes = sum(w2["bytes"]) - sum(w1["bytes"])  # the measured window, after the warmup
    churn_packets = w2["packets"] - w1["packets"]
    per_node = sorted((x - y) / max(1e-9, measured_s) for x, y in zip(w2["bytes"], w1["bytes"], strict=True))
    warm_bytes, warm_packets = sum(w1["bytes"]) - sum(w0["bytes"]), w1["packets"] - w0["packets"]
    events = w2["link_events"] - w1["link_events"]
    per_node_s = max(1e-9, measured_s) * n
    breakdown = {
        kind: round((w2["kind_bytes"][k] - w1["kind_bytes"][k]) / per_node_s, 1)
        for k, kind in enumerate(TRAFFIC_KINDS)
    }
    breakdown_packets = {
        kind: round((w2["kind_packets"][k] - w1["kind_packets"][k]) / per_node_s, 3)
        for k, kind in enumerate(TRAFFIC_KINDS)
    }
    churn_real = time.process_time() - real0 - boot_real
    repairs_churn = [r for r in sim.metrics.repairs if r.kind == "churn"]
    sim.isolated_failures()
    repairs_iso = [r for r in sim.metrics.repairs if r.kind == "isolated"]
    m = sim.metrics
    rate = churn_bytes / per_node_s
    wire = (churn_bytes + churn_packets * (TRANSPORT_OVERHEAD + UDP_IP_OVERHEAD)) / per_node_s
    bcasts = list(m.broadcasts.values())
    delivered = sum(len(b["delivered"]) for b in bcasts)
    reach = sum(b["reach"] for b in bcasts)
    flood_counters: Counter[str] = Counter()
    table_counters: Counter[str] = Counter()
    for node in sim.nodes:
        table_counters.update(node.table.counters)
        if node.flood is not None:
            flood_counters.update(node.flood.counters)

    def times(reps: list[Repair]) -> list[float]:
        return [r.repaired - r.started for r in reps if r.repaired is not None and r.pairs]

    out: dict[str, Any] = {
        "nodes": n,
        "links": len(sim.topo.delay),
        "mean_degree": round(sim.topo.mean_degree(), 2),
        "radius": round(sim.topo.radius, 4),
        "moved_to_connect": sim.topo.moved,
        "link_delay_ms": [params.min_delay * 1000, params.max_delay * 1000],
        "bootstrap_converged_s": None if boot is None else round(boot, 2),
        "bootstrap_virtual_s": round(boot_end, 2),
        "join_rate": params.join_rate,
        "last_join_s": round(sim.last_join, 2),
        "bootstrap_bytes_per_node": round(boot_bytes / n),
        "bootstrap_route_coverage": round(coverage, 4),
        "churn_virtual_s": churn_s,
        "churn_start": params.start,
        "warmup_s": round(warm_s, 2),
        "measured_virtual_s": round(measured_s, 2),
        "fail_fraction_target": params.fail_fraction,
        "fail_fraction_measured": round(getattr(sim, "down_fraction", 0.0), 4),
        "probes": dict(m.probes),
        "delivery_ratio": round(m.probes["delivered"] / max(1, m.probes["sent"]), 4),
        "stretch_min": round(min(m.stretch), 3) if m.stretch else None,
        "stretch_mean": round(statistics.mean(m.stretch), 3) if m.stretch else None,
        "stretch_p95": round(pct(m.stretch, 0.95) or 0, 3) if m.stretch else None,
        "stretch_max": round(max(m.stretch), 3) if m.stretch else None,
        "hops_mean": round(statistics.mean(m.hops), 2) if m.hops else None,
        "hops_max": max(m.hops) if m.hops else None,
        "hops_over_default_limit": sum(1 for h in m.hops if h > DEFAULT_HOP_LIMIT),
        "repair_churn_s": _summary(times(repairs_churn)),
        "repair_churn_unrepaired": sum(1 for r in repairs_churn if r.pairs and r.repaired is None),
        "repair_isolated_s": _summary(times(repairs_iso)),
        "repair_isolated_unrepaired": sum(1 for r in repairs_iso if r.pairs and r.repaired is None),
        "quiet_isolated_s": _summary(m.quiet),
        "routing_bytes_per_node_s": round(rate, 1),
        "routing_wire_bytes_per_node_s": round(wire, 1),
        "routing_bytes_per_node_s_p99": round(pct(per_node, 0.99) or 0, 1),
        "routing_bytes_per_node_s_peak_10s": round(_peak(sim.sent_each_second, 10) / n, 1),
        "routing_packets_per_node_s": round(churn_packets / per_node_s, 2),
        "routing_bytes_breakdown": breakdown,
        "routing_packets_breakdown": breakdown_packets,
        "warmup_routing_bytes_per_node_s": round(warm_bytes / max(1e-9, warm_s) / n, 1),
        "warmup_routing_packets_per_node_s": round(warm_packets / max(1e-9, warm_s) / n, 2),
        "link_events": events,
        "link_events_per_s": round(events / max(1e-9, measured_s), 3),
        "routing_bytes_per_link_event": round(churn_bytes / events) if events else None,
        "broadcasts": len(bcasts),
        "broadcast_coverage": round(delivered / max(1, reach), 4),
        "broadcast_copies_per_node": round(m.broadcast_packets / max(1, delivered), 3),
        "broadcast_duplicate_deliveries": sum(b["dups"] for b in bcasts),
        "flood_bytes_per_node_s": round(sim.flood_bytes / max(1e-9, sim.now) / n, 1),
        "sim_drops": dict(sim.drops),
        "table_counters": dict(table_counters),
        "flood_counters": dict(flood_counters),
        "signatures_made": int(sim.sign_stats["count"]),
        "sign_cpu_s": round(sim.sign_stats["seconds"], 3),
        "verify_calls": sim.verifier.calls,
        "verify_distinct": sim.verifier.checks,
        "verify_cpu_s": round(sim.verifier.seconds, 3),
        "verify_calls_per_node": round(sim.verifier.calls / n, 1),
        "verify_cpu_per_node_s": round(
            sim.verifier.calls / n * sim.verifier.seconds / max(1, sim.verifier.checks), 3
        ),
        "cpu_s_setup": round(setup_s, 1),
        "cpu_s_bootstrap": round(boot_real - setup_s, 1),
        "cpu_s_churn": round(churn_real, 1),
    }
    if params.memory:
        out.update(table_memory(sim))
    out["cpu_s_total"] = round(time.process_time() - real0, 1)
    out["notes"] = sim.notes
    return out


def _counters(sim: RoutingSim, t: float) -> dict[str, Any]:
    """The running totals of ``sim`` now, as ``RoutingSim.window_counters`` records them."""
    sim.window_counters("now", t)
    return sim.window.pop("now")


def _peak(totals: list[int], window: int) -> float:
    """The highest rate over ``window`` consecutive seconds of a running total sampled each second."""
    if len(totals) <= window:
        return (totals[-1] - totals[0]) / max(1, len(totals) - 1) if len(totals) > 1 else 0.0
    return max(totals[i + window] - totals[i] for i in range(len(totals) - window)) / window


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 3),
        "p95": round(pct(values, 0.95) or 0, 3),
        "max": round(max(values), 3),
    }


def format_table(r: dict[str, Any]) -> str:
    def s(x: dict[str, Any]) -> str:
        if not x["n"]:
            return "n/a"
        return f"p50 {x['p50']:.2f} s, p95 {x['p95']:.2f} s, max {x['max']:.2f} s (n={x['n']})"

    boot = (
        f"not converged by {r['bootstrap_virtual_s']:.1f} s "
        f"({r['bootstrap_route_coverage']:.1%} of the routes)"
        if r["bootstrap_converged_s"] is None
        else f"{r['bootstrap_converged_s']:.1f} s"
    )
    if r["join_rate"] > 0:
        boot = f"{r['join_rate']:g} joins/s, last at {r['last_join_s']:.0f} s; all routes " + (
            boot if r["bootstrap_converged_s"] is None else f"{boot} after it"
        )
    else:
        up = (
            "links up at 0 s but those down at the start of churn"
            if r["churn_start"] == "boot-down"
            else ("all links up at 0 s")
        )
        boot = f"{up}; all routes " + boot
    rows = [
        ("topology", f"{r['nodes']} nodes, {r['links']} links, mean degree {r['mean_degree']}", ""),
        (
            "links down (time average)",
            f"{r['fail_fraction_measured']:.1%} over {r['measured_virtual_s']:.0f} s "
            f"(start {r['churn_start']}, after a {r['warmup_s']:g} s warmup)",
            f"{r['fail_fraction_target']:.0%}",
        ),
        (
            "link events (measured)",
            f"{r['link_events_per_s']:.2f}/s (failures and recoveries), "
            + (
                f"{r['routing_bytes_per_link_event'] / 1000:.1f} KB of routing traffic per event"
                if r["routing_bytes_per_link_event"] is not None
                else "no event"
            ),
            "",
        ),
        ("bootstrap", f"{boot}, {r['bootstrap_bytes_per_node'] / 1000:.0f} KB/node sent", ""),
        ("delivery ratio (probes)", f"{r['delivery_ratio']:.4f} of {r['probes'].get('sent', 0)}", "1.0"),
        (
            "path stretch (cost)",
            f"mean {r['stretch_mean']}, p95 {r['stretch_p95']}, max {r['stretch_max']}",
            ">= 1.0, low",
        ),
        (
            "hops (delivered probes)",
            f"mean {r['hops_mean']}, max {r['hops_max']}, "
            f"{r['hops_over_default_limit']} over {DEFAULT_HOP_LIMIT}",
            "",
        ),
        (
            "convergence, churn failures",
            s(r["repair_churn_s"])
            + (f", {r['repair_churn_unrepaired']} unrepaired" if r["repair_churn_unrepaired"] else ""),
            "< 30 s (aim < 5 s)",
        ),
        ("convergence, isolated failure", s(r["repair_isolated_s"]), "< 30 s (aim < 5 s)"),
        ("last route change after it", s(r["quiet_isolated_s"]), ""),
        (
            "routing traffic per node",
            f"{r['routing_bytes_per_node_s']:.0f} B/s plaintext, "
            f"{r['routing_wire_bytes_per_node_s']:.0f} B/s wire, "
            f"p99 node {r['routing_bytes_per_node_s_p99']:.0f} B/s, "
            f"worst 10 s {r['routing_bytes_per_node_s_peak_10s']:.0f} B/s",
            "< 10 KB/s (aim < 2 KB/s)",
        ),
        (
            "  by kind (B/s, packets/s)",
            ", ".join(
                f"{k} {r['routing_bytes_breakdown'][k]:.0f} ({r['routing_packets_breakdown'][k]:.2f})"
                for k in TRAFFIC_KINDS
            ),
            "",
        ),
        (
            "  in the warmup",
            f"{r['warmup_routing_bytes_per_node_s']:.0f} B/s plaintext, "
            f"{r['warmup_routing_packets_per_node_s']:.2f} packets/s (first {r['warmup_s']:g} s of churn)",
            "",
        ),
        (
            "broadcast copies per node",
            f"{r['broadcast_copies_per_node']:.2f} ({r['broadcasts']} broadcasts, coverage "
            f"{r['broadcast_coverage']:.4f}, {r['broadcast_duplicate_deliveries']} double deliveries)",
            "< 4 (gossipsub D=8), 1.0 ideal",
        ),
    ]
    if "bytes_per_route" in r:
        rows.append(
            (
                "memory per route",
                f"{r['bytes_per_route']} B per route held, {r['bytes_per_destination']} B per destination",
                "",
            )
        )
    rows += [
        (
            "signatures",
            f"{r['signatures_made']} made ({r['sign_cpu_s']:.2f} s CPU), {r['verify_calls']} verify calls, "
            f"{r['verify_distinct']} distinct ({r['verify_cpu_s']:.2f} s CPU)",
            "",
        ),
        (
            "verification per node",
            f"{r['verify_calls_per_node']} calls, ~{r['verify_cpu_per_node_s']:.2f} s CPU uncached",
            "",
        ),
        (
            "CPU (process)",
            f"total {r['cpu_s_total']} s: setup {r['cpu_s_setup']}, bootstrap {r['cpu_s_bootstrap']}, "
            f"churn {r['cpu_s_churn']}",
            "",
        ),
    ]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    lines = [f"{'metric':<{w0}}  {'measured':<{w1}}  target", "-" * (w0 + w1 + 30)]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    lines += [f"NOTE: {note}" for note in r.get("notes", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SimParams()
    ap.add_argument("--nodes", type=int, default=d.nodes)
    ap.add_argument("--degree", type=float, default=d.degree, help="target mean degree")
    ap.add_argument("--fail-fraction", type=float, default=d.fail_fraction, help="links down on average")
    ap.add_argument(
        "--down-time", type=float, default=d.down_time, help="mean down time of a failed link (s)"
    )
    ap.add_argument(
        "--duration", type=float, default=d.duration, help="virtual seconds of churn (warmup included)"
    )
    ap.add_argument(
        "--start",
        choices=STARTS,
        default=d.start,
        help="churn starts with --fail-fraction of the links down (stationary) or every link up",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        help="first virtual seconds of churn left out of the measured figures (at most half of it)",
    )
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument(
        "--min-delay", type=float, default=d.min_delay, help="one-way delay of a zero-length link (s)"
    )
    ap.add_argument("--max-delay", type=float, default=d.max_delay, help="one-way delay at the radius (s)")
    ap.add_argument("--sample-interval", type=float, default=d.sample_interval)
    ap.add_argument("--probe-rate", type=float, default=d.probe_rate, help="data probes per virtual second")
    ap.add_argument(
        "--broadcast-rate", type=float, default=d.broadcast_rate, help="broadcasts per virtual second"
    )
    ap.add_argument("--isolated", type=int, default=d.isolated, help="isolated failures measured at the end")
    ap.add_argument("--isolated-gap", type=float, default=d.isolated_gap, help="seconds between them")
    ap.add_argument("--bootstrap-timeout", type=float, default=d.bootstrap_timeout)
    ap.add_argument(
        "--join-rate",
        type=float,
        default=d.join_rate,
        help="nodes joining per second (0: all links up at t=0)",
    )
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument(
        "--cpu-budget", type=float, default=0.0, help="CPU seconds after which phases are cut short"
    )
    ap.add_argument("--progress", action="store_true", help="progress lines on stderr")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args(argv)
    params = SimParams(
        nodes=a.nodes,
        degree=a.degree,
        fail_fraction=a.fail_fraction,
        down_time=a.down_time,
        duration=a.duration,
        start=a.start,
        warmup=a.warmup,
        seed=a.seed,
        min_delay=a.min_delay,
        max_delay=a.max_delay,
        sample_interval=a.sample_interval,
        probe_rate=a.probe_rate,
        broadcast_rate=a.broadcast_rate,
        isolated=a.isolated,
        isolated_gap=a.isolated_gap,
        bootstrap_timeout=a.bootstrap_timeout,
        join_rate=a.join_rate,
        memory=not a.no_memory,
        cpu_budget=a.cpu_budget,
        progress=a.progress,
    )
    result = run(params)
    if a.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(format_table(result))


if __name__ == "__main__":
    main()
