"""A small in-memory network of RoutingTables for the routing tests: virtual time, seeded drops.

Every table is driven like the endpoint drives it: messages_to_send after every input, timers fired
when get_timer says so. Packets travel only over links that are up, after ``delay``, and are lost
with probability ``drop``; every packet is checked against ``max_packet``.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Iterable

from coremesh.identity import Identity, PeerId
from coremesh.routing.overlay import OVERLAY_PREFIX, OverlayType, overlay_type
from coremesh.routing.table import RoutingConfig, RoutingTable

WALL = 1.7e9


def identity(name: str) -> Identity:
    return Identity(hashlib.sha256(b"routing-test " + name.encode()).digest())


class VNet:
    def __init__(
        self,
        names: Iterable[str],
        *,
        seed: int = 1,
        config: RoutingConfig | None = None,
        drop: float = 0.0,
        delay: float = 0.01,
    ) -> None:
        self.config = config or RoutingConfig()
        self.now = 0.0
        self.rng = random.Random(seed)
        self.drop = drop
        self.delay = delay
        self.idents = {n: identity(n) for n in names}
        self.ids = {n: i.peer_id for n, i in self.idents.items()}
        self.names = {pid: n for n, pid in self.ids.items()}
        self.tables = {
            n: RoutingTable(
                self.ids[n],
                self.idents[n].sign,
                self.config,
                rng=random.Random(f"{seed}-{n}"),
                now=0.0,
                wall_offset=WALL,
            )
            for n in self.idents
        }
        self.silenced: dict[str, RoutingTable] = {}
        self.blocked: set[tuple[str, str]] = set()  # (src, dst): every packet that way is lost
        self.up: set[frozenset[str]] = set()
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._seq = 0
        self.delivered = 0
        self.packets: dict[str, int] = dict.fromkeys(self.idents, 0)
        self.bytes: dict[str, int] = dict.fromkeys(self.idents, 0)

    # -- topology --------------------------------------------------------------------------------

    def link(self, a: str, b: str, rtt: float | None = 0.01) -> None:
        self.up.add(frozenset((a, b)))
        for x, y in ((a, b), (b, a)):
            self.tables[x].link_up(self.ids[y], self.now)
            if rtt is not None:
                self.tables[x].link_sample(self.ids[y], rtt, 0.0, self.now)
        self.flush()

    def cut(self, a: str, b: str) -> None:
        self.up.discard(frozenset((a, b)))
        self.tables[a].link_down(self.ids[b], self.now)
        self.tables[b].link_down(self.ids[a], self.now)
        self.flush()

    def sample(self, a: str, b: str, rtt: float, loss: float = 0.0) -> None:
        self.tables[a].link_sample(self.ids[b], rtt, loss, self.now)
        self.flush()

    # -- moving packets --------------------------------------------------------------------------

    def flush(self) -> None:
        """Collect every table's outgoing messages into the network."""
        for name, table in self.tables.items():
            for dst, packet in table.messages_to_send(self.now):
                assert len(packet) <= self.config.max_packet, (len(packet), self.config.max_packet)
                assert overlay_type(packet) == OverlayType.ROUTE_UPDATE
                self.packets[name] += 1
                self.bytes[name] += len(packet)
                to = self.names[dst]
                if (name, to) in self.blocked:
                    continue
                if frozenset((name, to)) in self.up and self.rng.random() >= self.drop:
                    self._seq += 1
                    heapq.heappush(self._queue, (self.now + self.delay, self._seq, name, to, packet))

    def silence(self, name: str) -> None:
        """``name``'s table leaves the network (its links stay up at the other ends): a forger's."""
        self.silenced[name] = self.tables.pop(name)

    def inject(self, src: str, dst: str, packet: bytes) -> None:
        """Deliver a hand-made packet now (a forger's)."""
        self.tables[dst].receive(self.ids[src], packet[len(OVERLAY_PREFIX) + 1 :], self.now)
        self.flush()

    def _next_event(self) -> float | None:
        times = [self._queue[0][0]] if self._queue else []
        for table in self.tables.values():
            t = table.get_timer()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def run(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until(self, until: float, *, stop_when_quiet: bool = False) -> bool:
        """Advance virtual time to ``until``; True if the network went quiet (with stop_when_quiet)."""
        same_time = 0
        while True:
            self.flush()
            nxt = self._next_event()
            if nxt is None and stop_when_quiet:
                return True
            if nxt is None or nxt > until:
                self.now = max(self.now, until)
                return False
            if nxt <= self.now:
                same_time += 1
                assert same_time < 10_000, "a timer that never clears"
            else:
                same_time = 0
            self.now = max(self.now, nxt)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, src, dst, packet = heapq.heappop(self._queue)
                if frozenset((src, dst)) in self.up and dst in self.tables:
                    self.delivered += 1
                    self.tables[dst].receive(self.ids[src], packet[len(OVERLAY_PREFIX) + 1 :], self.now)
            for table in self.tables.values():
                t = table.get_timer()
                if t is not None and t <= self.now:
                    table.handle_timer(self.now)

    def settle(self, limit: float = 120.0) -> float:
        """Run until nothing is in flight and no table has work; returns the time it took."""
        start = self.now
        assert self.run_until(self.now + limit, stop_when_quiet=True), "the tables did not converge"
        return self.now - start

    # -- looking -------------------------------------------------------------------------------

    def path(self, a: str, b: str) -> list[str]:
        """The names on ``a``'s primary route to ``b``."""
        routes = self.tables[a].routes(self.ids[b])
        return [self.names[p] for p in routes[0].path] if routes else []

    def next_hop(self, a: str, b: str) -> str | None:
        hop = self.tables[a].next_hop(self.ids[b])
        return None if hop is None else self.names[hop]

    def walk(self, a: str, b: str) -> list[str] | None:
        """Follow next hops from ``a`` to ``b``; None if some node has no route. Fails on a loop."""
        seen = [a]
        while seen[-1] != b:
            hop = self.next_hop(seen[-1], b)
            if hop is None:
                return None
            assert hop not in seen, f"routing loop {[*seen, hop]}"
            assert frozenset((seen[-1], hop)) in self.up, "next hop over a link that is down"
            seen.append(hop)
        return seen

    def components(self) -> dict[str, set[str]]:
        comp: dict[str, set[str]] = {}
        for start in self.tables:
            if start in comp:
                continue
            group = {start}
            todo = [start]
            while todo:
                x = todo.pop()
                for edge in self.up:
                    if x in edge:
                        (y,) = edge - {x}
                        if y not in group:
                            group.add(y)
                            todo.append(y)
            for x in group:
                comp[x] = group
        return comp

    def pid(self, name: str) -> PeerId:
        return self.ids[name]
