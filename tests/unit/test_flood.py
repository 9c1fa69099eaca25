"""Broadcast and multicast between Flood cores in memory, over static topologies.

The routing table is faked from the graph: shortest paths by BFS (ties broken by peer key), so a
node's next hop towards D is its BFS parent in the tree grown from D, and its children for an origin
S are the neighbours whose next hop towards S is itself, among those whose choice it knows
(``Net.knows``). With ``unknown=True`` no node knows any neighbour's choice, which turns reverse-path
forwarding into plain flooding.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import ConfigError, MessageTooLarge
from coremesh.identity import Identity, PeerId
from coremesh.routing.flood import Delivery, Flood, FloodConfig, RouteView, TooManyGroups, _SeenCache
from coremesh.routing.flood_messages import (
    Broadcast,
    InvalidGroup,
    MembershipRecord,
    Multicast,
    broadcast_signed_bytes,
    decode_membership,
    encode_membership,
    membership_signed_bytes,
    multicast_signed_bytes,
)
from coremesh.routing.overlay import OVERLAY_PREFIX, OverlayType, overlay_packet, overlay_type

WALL = 1_800_000_000.0  # wall_offset: wall time = now + WALL


def _line(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(n - 1)]


def _ring(n: int) -> list[tuple[int, int]]:
    return [*_line(n), (n - 1, 0)]


def _grid(side: int) -> list[tuple[int, int]]:
    edges = []
    for r in range(side):
        for c in range(side):
            i = r * side + c
            if c + 1 < side:
                edges.append((i, i + 1))
            if r + 1 < side:
                edges.append((i, i + side))
    return edges


TOPOLOGIES = {"line8": (8, _line(8)), "ring9": (9, _ring(9)), "grid16": (16, _grid(4))}


class StaticRoutes:
    """A RouteView over the network's current graph."""

    def __init__(self, net: Net, me: PeerId) -> None:
        self.net = net
        self.me = me

    def neighbours(self) -> list[PeerId]:
        return sorted(self.net.adj[self.me], key=lambda p: p.key)

    def next_hop(self, destination: PeerId) -> PeerId | None:
        return self.net.next_hop(self.me, destination)

    def children(self, origin: PeerId) -> set[PeerId]:
        return {
            n
            for n in self.net.adj[self.me]
            if self.knows_route_of(n, origin) and self.net.next_hop(n, origin) == self.me
        }

    def knows_route_of(self, neighbour: PeerId, origin: PeerId) -> bool:
        number = self.net.number
        return self.net.knows(number[self.me], number[neighbour], number[origin])


class Net:
    def __init__(
        self,
        n: int,
        edges: list[tuple[int, int]],
        *,
        unknown: bool = False,
        knows: Callable[[int, int, int], bool] | None = None,
        config: FloodConfig | None = None,
        seed: int | None = None,
    ) -> None:
        self.idents = [Identity((i + 1).to_bytes(4, "big") * 8) for i in range(n)]
        self.peers = [ident.peer_id for ident in self.idents]
        self.number = {p: i for i, p in enumerate(self.peers)}
        if knows is None:
            knows = (lambda *_: False) if unknown else (lambda *_: True)
        self.knows = knows  # (node, neighbour, origin): node knows the neighbour's choice for origin
        self.now = 0.0
        self.adj: dict[PeerId, set[PeerId]] = {p: set() for p in self.peers}
        self._trees: dict[PeerId, dict[PeerId, PeerId]] = {}
        self.forced: dict[tuple[int, int], int] = {}  # (node, destination): next hop, over BFS
        self.config = config
        self.rng = random.Random(seed) if seed is not None else None
        self.floods = [self._flood(i) for i in range(n)]
        self.received: collections.Counter[tuple[int, int]] = collections.Counter()  # (node, kind)
        self.packets = 0
        self.delivered: list[list[Delivery]] = [[] for _ in range(n)]
        for a, b in edges:
            self.link(a, b, announce=False)

    def _flood(self, i: int) -> Flood:
        routes: RouteView = StaticRoutes(self, self.peers[i])
        return Flood(
            self.peers[i], self.idents[i].sign, routes, now=self.now, wall_offset=WALL, config=self.config
        )

    def restart(self, i: int) -> None:
        self.floods[i] = self._flood(i)

    def parent(self, root: PeerId) -> dict[PeerId, PeerId]:
        """BFS from root: each node's neighbour one hop closer to root (its next hop towards it)."""
        if root not in self._trees:
            tree: dict[PeerId, PeerId] = {}
            seen = {root}
            queue = collections.deque([root])
            while queue:
                x = queue.popleft()
                for y in sorted(self.adj[x], key=lambda p: p.key):
                    if y not in seen:
                        seen.add(y)
                        tree[y] = x
                        queue.append(y)
            self._trees[root] = tree
        return self._trees[root]

    def next_hop(self, node: PeerId, destination: PeerId) -> PeerId | None:
        forced = self.forced.get((self.number[node], self.number[destination]))
        if forced is not None:
            return self.peers[forced]
        return self.parent(destination).get(node)

    def chains(self, origin: int, members: set[int]) -> set[int]:
        """The nodes on the routes from origin to the members (origin excluded)."""
        nodes = set()
        for m in members - {origin}:
            x = self.peers[origin]
            while x != self.peers[m]:
                hop = self.next_hop(x, self.peers[m])
                assert hop is not None
                x = hop
                nodes.add(self.number[x])
        return nodes

    def link(self, a: int, b: int, *, announce: bool = True) -> None:
        pa, pb = self.peers[a], self.peers[b]
        self.adj[pa].add(pb)
        self.adj[pb].add(pa)
        self._trees.clear()
        if announce:
            self.floods[a].link_up(pb, self.now)
            self.floods[b].link_up(pa, self.now)

    def unlink(self, a: int, b: int) -> None:
        self.adj[self.peers[a]].discard(self.peers[b])
        self.adj[self.peers[b]].discard(self.peers[a])
        self._trees.clear()

    def pump(self, *, drop: set[int] | None = None) -> int:
        """Deliver every packet until the network is quiet (in random order when seeded); packets
        from nodes in ``drop`` are lost. Returns the number of packets delivered."""
        inflight: list[tuple[int, PeerId, bytes]] = []
        for i in range(len(self.floods)):
            inflight.extend(self._drain(i, drop))
        count = 0
        while inflight:
            k = self.rng.randrange(len(inflight)) if self.rng is not None else 0
            sender, to, packet = inflight.pop(k)
            j = self.number[to]
            assert to in self.adj[self.peers[sender]], "a message went to a node that is not a neighbour"
            assert len(packet) <= 1100
            kind = overlay_type(packet)
            self.received[(j, kind)] += 1
            self.floods[j].receive(self.peers[sender], kind, packet[len(OVERLAY_PREFIX) + 1 :], self.now)
            count += 1
            inflight.extend(self._drain(j, drop))
        self.packets += count
        for i, flood in enumerate(self.floods):
            while (d := flood.next_delivery()) is not None:
                self.delivered[i].append(d)
        return count

    def _drain(self, i: int, drop: set[int] | None) -> list[tuple[int, PeerId, bytes]]:
        out = self.floods[i].messages_to_send(self.now)
        if drop and i in drop:
            return []
        return [(i, to, packet) for to, packet in out]

    def take(self, i: int) -> list[Delivery]:
        got, self.delivered[i] = self.delivered[i], []
        return got

    def total(self, counter: str) -> int:
        return sum(f.counters[counter] for f in self.floods)


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_broadcast_reaches_every_node_exactly_once_without_duplicates_on_a_consistent_tree(name: str) -> None:
    n, edges = TOPOLOGIES[name]
    net = Net(n, edges)
    for origin in range(n):
        assert net.floods[origin].broadcast(f"from {origin}".encode(), net.now) >= 1
        net.pump()
        for i in range(n):
            got = net.take(i)
            if i == origin:
                assert got == []
            else:
                assert got == [Delivery("broadcast", net.peers[origin], None, f"from {origin}".encode())]
    assert net.total("broadcast_duplicates") == 0
    assert net.total("broadcasts_sent") == n
    assert net.total("broadcasts_delivered") == n * (n - 1)
    # The payload crosses each node once: N-1 copies per broadcast, N broadcasts.
    assert sum(v for (_, kind), v in net.received.items() if kind == OverlayType.BROADCAST) == n * (n - 1)
    assert net.total("drop_bad_signature") == net.total("drop_malformed") == 0


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
@pytest.mark.parametrize("seed", [1, 2])
def test_plain_flooding_when_no_choice_is_known_still_delivers_exactly_once(name: str, seed: int) -> None:
    n, edges = TOPOLOGIES[name]
    net = Net(n, edges, unknown=True, seed=seed)
    for origin in range(n):
        net.floods[origin].broadcast(b"x%d" % origin, net.now)
        net.pump()
        for i in range(n):
            assert [d.data for d in net.take(i)] == ([] if i == origin else [b"x%d" % origin])
    copies = sum(v for (_, kind), v in net.received.items() if kind == OverlayType.BROADCAST)
    duplicates = net.total("broadcast_duplicates")
    assert duplicates == copies - n * (n - 1)  # every copy beyond the first counted
    if name == "line8":
        assert duplicates == 0  # a line is its own tree
    else:
        assert duplicates > 0


def test_forwarding_follows_children_only() -> None:
    # Ring of 9: from node 0 the BFS tree splits both ways; node 4 and 5 meet at the far end. With
    # the tree known, no copy crosses the edge between the two halves.
    net = Net(9, _ring(9))
    net.floods[0].broadcast(b"tree", net.now)
    net.pump()
    assert net.total("broadcast_duplicates") == 0
    assert net.total("broadcasts_forwarded") + net.floods[0].counters["broadcasts_sent"] * 2 == 8


def test_after_a_link_of_the_ring_is_cut_the_new_tree_still_reaches_everyone_once() -> None:
    net = Net(9, _ring(9))
    for i in (3, 4):
        net.floods[i].join("g", net.now)
    net.pump()
    net.unlink(3, 4)  # the routes and trees follow (the fake table recomputes them at once)
    for origin in (0, 3, 4):
        net.floods[origin].broadcast(b"b%d" % origin, net.now)
        net.floods[origin].multicast("g", b"m%d" % origin, net.now)
        net.pump()
        for i in range(9):
            got = sorted(d.data for d in net.take(i))
            expect = [] if i == origin else [b"b%d" % origin]
            if i in (3, 4) and i != origin:
                expect.append(b"m%d" % origin)
            assert got == sorted(expect), (origin, i)
    assert net.total("broadcast_duplicates") == net.total("multicast_duplicates") == 0
    # From 3 to 4 the multicast now goes the long way round: through all 7 other nodes.
    assert net.floods[3].counters["multicasts_sent"] == 1
    assert sum(net.floods[i].counters["multicasts_forwarded"] for i in (0, 1, 2, 5, 6, 7, 8)) >= 7


def test_multicast_reaches_members_only_and_non_members_forward_without_delivering() -> None:
    n, edges = TOPOLOGIES["line8"]
    net = Net(n, edges)
    for i in (2, 5, 7):
        net.floods[i].join("room", net.now)
    net.pump()
    for i in range(n):
        assert net.floods[i].members("room") == sorted((net.peers[k] for k in (2, 5, 7)), key=lambda p: p.key)
    assert net.floods[0].multicast("room", b"hi", net.now) == 1
    net.pump()
    for i in range(n):
        got = net.take(i)
        if i in (2, 5, 7):
            assert got == [Delivery("multicast", net.peers[0], "room", b"hi")]
        else:
            assert got == []
    # 1, 3, 4, 6 carry it without delivering; nothing goes beyond the last member.
    for i in (1, 3, 4, 6):
        assert net.floods[i].counters["multicasts_forwarded"] == 1
        assert net.floods[i].counters["multicasts_delivered"] == 0
    assert net.floods[7].counters["multicasts_forwarded"] == 0
    assert net.total("multicast_duplicates") == 0


@pytest.mark.parametrize("side", [4, 8])
def test_multicast_on_a_grid_travels_the_routes_to_the_members_only(side: int) -> None:
    n, edges = side * side, _grid(side)
    net = Net(n, edges, seed=side)
    members = set(random.Random(side).sample(range(n), 6))
    for i in members:
        net.floods[i].join("g", net.now)
    outsider = min(set(range(n)) - members)
    net.floods[outsider].join("other", net.now)
    net.pump()
    for origin in range(n):
        before = collections.Counter({j: net.received[(j, OverlayType.MULTICAST)] for j in range(n)})
        net.floods[origin].multicast("g", b"m%d" % origin, net.now)
        net.pump()
        for i in range(n):
            expect = [b"m%d" % origin] if i in members and i != origin else []
            assert [d.data for d in net.take(i)] == expect, (origin, i)
        reached = {j for j in range(n) if net.received[(j, OverlayType.MULTICAST)] > before[j]}
        assert reached == net.chains(origin, members), origin  # the routes to the members, nothing else
    assert net.floods[outsider].counters["multicasts_delivered"] == 0
    assert net.total("multicast_duplicates") == 0


def test_where_routes_to_two_members_meet_the_second_copy_serves_the_other_member() -> None:
    # 0 reaches 4 through 1 and 5 through 2; both routes cross 3. Whichever copy reaches 3 first,
    # the other is a duplicate that still has to be passed on towards its own member.
    for seed in (1, 2, 3, 4):
        net = Net(6, [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (3, 5)], seed=seed)
        net.forced[(0, 4)] = 1
        net.forced[(0, 5)] = 2
        net.forced[(3, 0)] = 1
        net.floods[4].join("g", net.now)
        net.floods[5].join("g", net.now)
        net.pump()
        assert net.floods[0].multicast("g", b"both", net.now) == 2
        net.pump()
        assert [d.data for d in net.take(4)] == [b"both"]
        assert [d.data for d in net.take(5)] == [b"both"]
        assert net.floods[3].counters["multicast_duplicates"] == 1
        assert net.floods[3].counters["multicasts_forwarded"] == 2
        assert net.total("multicast_duplicates") == 1


def test_join_after_traffic_and_leave_stops_delivery() -> None:
    net = Net(8, _line(8))
    net.floods[6].join("g", net.now)
    net.pump()
    net.floods[0].multicast("g", b"before", net.now)
    net.pump()
    assert [d.data for d in net.take(6)] == [b"before"]
    assert net.take(3) == []

    net.now += 1
    net.floods[3].join("g", net.now)
    net.pump()
    net.floods[0].multicast("g", b"after join", net.now)
    net.pump()
    assert [d.data for d in net.take(3)] == [b"after join"]
    assert [d.data for d in net.take(6)] == [b"after join"]

    net.now += 1
    net.floods[6].leave("g", net.now)
    net.pump()
    assert net.floods[0].members("g") == [net.peers[3]]
    assert net.floods[6].groups() == []
    net.floods[0].multicast("g", b"after leave", net.now)
    net.pump()
    assert [d.data for d in net.take(3)] == [b"after leave"]
    assert net.take(6) == []
    # Nobody beyond node 3 needs it any more: it goes no further.
    assert net.received[(4, OverlayType.MULTICAST)] == 2  # only the first two messages
    assert net.floods[3].counters["multicasts_forwarded"] == 2


def test_a_multicast_to_a_group_nobody_joined_goes_nowhere() -> None:
    net = Net(4, _line(4))
    assert net.floods[0].multicast("empty", b"x", net.now) == 0
    assert net.pump() == 0


def test_a_late_node_learns_memberships_when_its_link_comes_up() -> None:
    net = Net(6, _line(5))  # node 5 is not connected yet
    net.floods[0].join("a", net.now)
    net.floods[3].join("a", net.now)
    net.floods[3].join("b", net.now)
    net.pump()
    assert net.floods[5].members("a") == []
    net.now += 1
    net.link(5, 2)
    net.pump()
    late = net.floods[5]
    assert late.members("a") == sorted([net.peers[0], net.peers[3]], key=lambda p: p.key)
    assert late.members("b") == [net.peers[3]]
    # And what it joins reaches the others.
    late.join("b", net.now)
    net.pump()
    assert net.floods[0].members("b") == sorted([net.peers[3], net.peers[5]], key=lambda p: p.key)
    net.floods[0].multicast("b", b"to b", net.now)
    net.pump()
    assert [d.data for d in net.take(5)] == [b"to b"]
    assert [d.data for d in net.take(3)] == [b"to b"]


def test_full_sync_is_packed_into_packets_under_the_limit() -> None:
    net = Net(40, _line(39))  # node 39 joins late
    for i in range(39):
        net.floods[i].join(f"group-with-a-rather-long-name-{i % 7}-" + "x" * 20, net.now)
    net.pump()
    net.link(39, 0)
    before = net.received[(39, OverlayType.MEMBERSHIP)]
    net.pump()
    got = net.received[(39, OverlayType.MEMBERSHIP)] - before
    assert 2 <= got < 39  # batched, and more than one packet was needed
    assert (
        sum(len(net.floods[39].members(f"group-with-a-rather-long-name-{k}-" + "x" * 20)) for k in range(7))
        == 39
    )


def test_forged_signatures_are_dropped_and_counted() -> None:
    net = Net(3, _line(3))
    victim = net.peers[0]
    evil = net.idents[2]
    forged = Broadcast(victim, int((net.now + WALL) * 1000), b"forged", evil.sign(b"anything"))
    net.floods[1].receive(net.peers[2], OverlayType.BROADCAST, forged.encode(), net.now)
    assert net.floods[1].counters["drop_bad_signature"] == 1
    assert net.floods[1].next_delivery() is None
    assert net.floods[1].messages_to_send(net.now) == []

    net.floods[0].join("g", net.now)
    net.pump()
    seqno = int((net.now + WALL) * 1000) + 5
    bad = Multicast(
        victim, seqno, "g", b"forged", evil.sign(multicast_signed_bytes(victim, seqno, "g", b"forged"))
    )
    net.floods[1].receive(net.peers[2], OverlayType.MULTICAST, bad.encode(), net.now)
    assert net.floods[1].counters["drop_bad_signature"] == 2
    assert net.floods[1].messages_to_send(net.now) == []

    record = MembershipRecord(victim, seqno, ("g", "h"), evil.sign(b"x"))
    net.floods[1].receive(net.peers[2], OverlayType.MEMBERSHIP, encode_membership([record]), net.now)
    assert net.floods[1].counters["drop_bad_signature"] == 3
    assert net.floods[1].members("h") == []
    # The genuine message with the same origin and seqno as a forged one is still accepted.
    net.floods[0].broadcast(b"real", net.now)
    net.pump()
    assert [d.data for d in net.take(2)] == [b"real"]


def test_replays_are_duplicates_then_too_old() -> None:
    net = Net(3, _line(3))
    net.floods[0].broadcast(b"once", net.now)
    (to, packet), *_ = net.floods[0].messages_to_send(net.now)
    assert to == net.peers[1]
    body = packet[len(OVERLAY_PREFIX) + 1 :]
    net.floods[1].receive(net.peers[0], OverlayType.BROADCAST, body, net.now)
    net.floods[1].receive(net.peers[0], OverlayType.BROADCAST, body, net.now)
    assert net.floods[1].counters["broadcasts_delivered"] == 1
    assert net.floods[1].counters["broadcast_duplicates"] == 1
    net.now += 61  # past max_age: the seen entry may go, and the message is refused as too old
    net.floods[1].handle_timer(net.now)
    net.floods[1].receive(net.peers[0], OverlayType.BROADCAST, body, net.now)
    assert net.floods[1].counters["drop_too_old"] == 1
    assert net.floods[1].counters["broadcasts_delivered"] == 1
    assert net.floods[1].counters["broadcast_duplicates"] == 1


def test_a_message_from_the_far_future_is_refused() -> None:
    net = Net(2, _line(2))
    seqno = int((net.now + WALL + 120) * 1000)
    msg = Broadcast(
        net.peers[0],
        seqno,
        b"",
        net.idents[0].sign(Broadcast(net.peers[0], seqno, b"", bytes(64)).signed_bytes()),
    )
    net.floods[1].receive(net.peers[0], OverlayType.BROADCAST, msg.encode(), net.now)
    assert net.floods[1].counters["drop_too_new"] == 1
    assert net.floods[1].next_delivery() is None


def test_seen_cache_is_bounded_and_an_evicted_message_is_not_admitted_again() -> None:
    net = Net(2, _line(2), config=FloodConfig(max_seen=4))
    bodies = []
    for k in range(6):
        net.floods[0].broadcast(b"%d" % k, net.now)
        for _, packet in net.floods[0].messages_to_send(net.now):
            bodies.append(packet[len(OVERLAY_PREFIX) + 1 :])
    for body in bodies:
        net.floods[1].receive(net.peers[0], OverlayType.BROADCAST, body, net.now)
    assert net.floods[1].counters["broadcasts_delivered"] == 6
    assert len(net.floods[1]._seen) == 4
    net.floods[1].receive(net.peers[0], OverlayType.BROADCAST, bodies[0], net.now)  # evicted: refused
    net.floods[1].receive(net.peers[0], OverlayType.BROADCAST, bodies[5], net.now)  # kept: duplicate
    assert net.floods[1].counters["drop_too_old"] == 1
    assert net.floods[1].counters["broadcast_duplicates"] == 1
    assert net.floods[1].counters["broadcasts_delivered"] == 6


def test_malformed_input_is_dropped_and_counted() -> None:
    net = Net(2, _line(2))
    f = net.floods[1]
    for kind in (OverlayType.BROADCAST, OverlayType.MULTICAST, OverlayType.MEMBERSHIP):
        f.receive(net.peers[0], kind, b"", net.now)
        f.receive(net.peers[0], kind, b"\x01" + bytes(20), net.now)
    f.receive(net.peers[0], 0x77, b"whatever", net.now)
    assert f.counters["drop_malformed"] == 6
    assert f.counters["drop_unknown_kind"] == 1
    assert f.next_delivery() is None and f.messages_to_send(net.now) == []


def test_a_multicast_for_an_unknown_group_is_dropped_and_counted() -> None:
    net = Net(3, _line(3))
    net.floods[0].join("g", net.now)
    net.pump()
    seqno = int((net.now + WALL) * 1000)
    msg = Multicast(
        net.peers[2],
        seqno,
        "nobody",
        b"x",
        net.idents[2].sign(multicast_signed_bytes(net.peers[2], seqno, "nobody", b"x")),
    )
    net.floods[1].receive(net.peers[2], OverlayType.MULTICAST, msg.encode(), net.now)
    assert net.floods[1].counters["drop_unknown_group"] == 1
    assert net.floods[1].messages_to_send(net.now) == []


def test_sizes_and_group_names_are_checked_for_the_api() -> None:
    net = Net(2, _line(2))
    f = net.floods[0]
    data = bytes(f.max_broadcast)
    f.broadcast(data, net.now)
    ((_, packet),) = f.messages_to_send(net.now)
    assert len(packet) == 1100
    with pytest.raises(MessageTooLarge, match=str(f.max_broadcast)):
        f.broadcast(data + b"!", net.now)
    limit = f.max_multicast("g")
    with pytest.raises(MessageTooLarge, match=str(limit)):
        f.multicast("g", bytes(limit + 1), net.now)
    for bad in ("", "x" * 65):
        with pytest.raises(InvalidGroup, match="group name"):
            f.join(bad, net.now)
        with pytest.raises(ValueError, match="group name"):
            f.multicast(bad, b"", net.now)
        with pytest.raises(ValueError, match="group name"):
            f.members(bad)
    with pytest.raises(ConfigError, match="max_packet"):
        Flood(net.peers[0], net.idents[0].sign, StaticRoutes(net, net.peers[0]), now=0.0, max_packet=100)
    with pytest.raises(ConfigError, match="record_refresh"):
        FloodConfig(record_refresh=10.0, record_ttl=5.0)
    for field, value in (("message_rate", 0), ("record_burst", -1.0), ("message_burst", True)):
        with pytest.raises(ConfigError, match=field):
            FloodConfig(**{field: value})
    with pytest.raises(ConfigError, match="max_seen_per_origin"):
        FloodConfig(max_seen_per_origin=0)


def test_group_limits_bound_memory() -> None:
    net = Net(4, _line(4), config=FloodConfig(max_groups_per_member=3, max_members_per_group=2))
    for g in ("a", "b", "c"):
        net.floods[0].join(g, net.now)
    net.floods[0].join("a", net.now)  # already a member: nothing
    with pytest.raises(TooManyGroups, match="at most 3"):
        net.floods[0].join("d", net.now)
    assert net.floods[0].groups() == ["a", "b", "c"]
    for i in (1, 2, 3):
        net.floods[i].join("a", net.now)
    net.pump()
    # Node 3 knows members 0, 1, 2 of "a" but keeps 2 at most (plus itself).
    assert len(net.floods[3].members("a")) == 3
    assert net.floods[3].counters["drop_group_full"] >= 1
    # A record with more groups than allowed is dropped.
    seqno = int((net.now + WALL) * 1000) + 10
    ident = Identity(bytes([99]) * 32)
    groups = ("p", "q", "r", "s")
    from coremesh.routing.flood_messages import membership_signed_bytes

    rec = MembershipRecord(
        ident.peer_id, seqno, groups, ident.sign(membership_signed_bytes(ident.peer_id, seqno, groups))
    )
    net.floods[3].receive(net.peers[2], OverlayType.MEMBERSHIP, encode_membership([rec]), net.now)
    assert net.floods[3].counters["drop_too_many_groups"] == 1


def test_records_are_bounded() -> None:
    net = Net(5, [(0, 4), (1, 4), (2, 4), (3, 4)], config=FloodConfig(max_records=2))
    for i in range(4):
        net.floods[i].join("g", net.now)
    net.pump()
    hub = net.floods[4]
    assert len(hub.members("g")) == 2
    assert hub.counters["drop_records_full"] == 2


def test_a_member_refreshes_its_record_and_a_silent_one_is_forgotten() -> None:
    cfg = FloodConfig(record_ttl=100.0, record_refresh=30.0, prune_interval=45.0)
    net = Net(3, _line(3), config=cfg)
    assert net.floods[0].get_timer() is None
    net.floods[0].join("g", net.now)
    net.floods[2].join("g", net.now)
    net.pump()
    assert net.floods[0].get_timer() == pytest.approx(net.now + 30.0)
    for _ in range(10):  # 300 s: node 0 refreshes, node 2 stays silent (its packets are lost)
        net.now += 30.0
        for f in net.floods:
            if (t := f.get_timer()) is not None and t <= net.now:
                f.handle_timer(net.now)
        net.pump(drop={2})
    assert net.floods[1].members("g") == [net.peers[0]]
    assert net.floods[0].members("g") == sorted([net.peers[0]], key=lambda p: p.key)
    assert net.floods[0].counters["memberships_sent"] >= 10


def test_a_restarted_node_supersedes_its_earlier_record() -> None:
    net = Net(3, _line(3))
    net.floods[2].join("g", net.now)
    net.pump()
    assert net.floods[0].members("g") == [net.peers[2]]
    net.now += 5
    net.restart(2)  # a new incarnation that has joined nothing, and has no storage
    net.floods[1].link_up(net.peers[2], net.now)
    net.floods[2].link_up(net.peers[1], net.now)
    net.pump()
    assert net.floods[0].members("g") == []
    assert net.floods[2].groups() == []
    net.floods[0].multicast("g", b"x", net.now)
    net.pump()
    assert net.take(2) == []


def test_membership_messages_from_link_up_carry_every_record() -> None:
    net = Net(3, _line(3))
    net.floods[0].join("a", net.now)
    net.floods[2].join("b", net.now)
    net.pump()
    net.floods[1].link_up(net.peers[0], net.now)
    out = net.floods[1].messages_to_send(net.now)
    assert [to for to, _ in out] == [net.peers[0]]
    records = decode_membership(out[0][1][len(OVERLAY_PREFIX) + 1 :])
    assert {r.member for r in records} == {net.peers[0], net.peers[2]}  # the neighbour's own too
    assert out[0][1] == overlay_packet(OverlayType.MEMBERSHIP, encode_membership(records))


@st.composite
def _graphs(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A connected graph: a random spanning tree plus random extra edges."""
    n = draw(st.integers(2, 10))
    edges = {(draw(st.integers(0, i - 1)), i) for i in range(1, n)}
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    edges |= set(draw(st.lists(st.sampled_from(pairs), max_size=2 * n)))
    return n, sorted(edges)


@given(graph=_graphs(), seed=st.integers(0, 2**32), known=st.floats(0, 1), members=st.sets(st.integers(0, 9)))
@settings(max_examples=40, deadline=None)
def test_any_graph_any_knowledge_every_node_delivers_exactly_once(
    graph: tuple[int, list[tuple[int, int]]], seed: int, known: float, members: set[int]
) -> None:
    """Whatever a node knows of its neighbours' choices (some, none, all), each broadcast is
    delivered once per node, duplicates are the copies beyond that, and multicast reaches the
    members only."""
    n, edges = graph
    memo: dict[tuple[int, int, int], bool] = {}
    rng = random.Random(seed)

    def knows(node: int, neighbour: int, origin: int) -> bool:
        return memo.setdefault((node, neighbour, origin), rng.random() < known)

    net = Net(n, edges, knows=knows, seed=seed)
    members = {m for m in members if m < n}
    for m in members:
        net.floods[m].join("g", net.now)
    net.pump()
    net.received.clear()
    for origin in range(n):
        net.floods[origin].broadcast(b"b", net.now)
        net.floods[origin].multicast("g", b"m", net.now)
    net.pump()
    for i in range(n):
        got = sorted((d.kind, net.number[d.origin]) for d in net.take(i))
        expect = [("broadcast", o) for o in range(n) if o != i]
        if i in members:
            expect += [("multicast", o) for o in range(n) if o != i]
        assert got == sorted(expect)
    copies = sum(v for (_, kind), v in net.received.items() if kind == OverlayType.BROADCAST)
    assert net.total("broadcast_duplicates") == copies - n * (n - 1)
    if known == 1.0:
        assert net.total("broadcast_duplicates") == 0


def _valid_packets() -> list[tuple[int, bytes]]:
    net = Net(2, _line(2))
    net.floods[0].join("g", net.now)
    net.floods[1].join("g", net.now)
    net.pump()
    net.floods[0].broadcast(b"hello", net.now)
    net.floods[0].multicast("g", b"hello", net.now)
    net.floods[0].link_up(net.peers[1], net.now)
    return [
        (overlay_type(p), p[len(OVERLAY_PREFIX) + 1 :]) for _, p in net.floods[0].messages_to_send(net.now)
    ]


VALID_PACKETS = _valid_packets()


@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_receive_never_raises_on_bad_input(data: st.DataObject) -> None:
    net = Net(2, _line(2))
    net.floods[1].join("g", net.now)
    f = net.floods[1]
    kind, body = data.draw(st.sampled_from(VALID_PACKETS))
    if data.draw(st.booleans()):
        raw = bytearray(body)
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        body = bytes(raw)
    else:
        body = data.draw(st.binary(max_size=300))
    kind = data.draw(st.sampled_from([kind, kind, 0x11, 0x12, 0x13, 0x10, 0xE8, 0]))
    f.receive(net.peers[0], kind, body, net.now)
    f.handle_timer(net.now + 100)
    delivered = []
    while (d := f.next_delivery()) is not None:
        delivered.append(d)
    # Whatever got through was genuine: signed by node 0, unchanged.
    assert all(d.origin == net.peers[0] and d.data == b"hello" for d in delivered)


# -- hostile neighbours: the seen cache, the rate limits, the membership store ---------------------


class _OneLink:
    """A RouteView with neighbours and nothing known of anyone's routes, except ``routable``."""

    def __init__(self, neighbours: list[PeerId], routable: set[PeerId] | None = None) -> None:
        self._neighbours = neighbours
        self.routable = routable if routable is not None else set()

    def neighbours(self) -> list[PeerId]:
        return list(self._neighbours)

    def next_hop(self, destination: PeerId) -> PeerId | None:
        return self._neighbours[0] if destination in self.routable else None

    def children(self, origin: PeerId) -> set[PeerId]:
        return set()

    def knows_route_of(self, neighbour: PeerId, origin: PeerId) -> bool:
        return False


def _signed_broadcast(ident: Identity, seqno: int, data: bytes = b"x") -> bytes:
    sig = ident.sign(broadcast_signed_bytes(ident.peer_id, seqno, data))
    return Broadcast(ident.peer_id, seqno, data, sig).encode()


def _signed_record(ident: Identity, seqno: int, groups: tuple[str, ...]) -> MembershipRecord:
    sig = ident.sign(membership_signed_bytes(ident.peer_id, seqno, groups))
    return MembershipRecord(ident.peer_id, seqno, groups, sig)


def test_one_origin_dating_its_broadcasts_in_the_future_cannot_block_the_others() -> None:
    """The count bound evicts one origin's entries only: its floor moves, nobody else's does."""
    me, attacker, honest = (Identity(bytes([i]) * 32) for i in (1, 2, 3))
    flood = Flood(
        me.peer_id, me.sign, _OneLink([attacker.peer_id]), now=0.0, wall_offset=WALL,
        config=FloodConfig(max_seen=64, max_seen_per_origin=16),
    )  # fmt: skip
    wall_ms = int(WALL * 1000)
    first = _signed_broadcast(honest, wall_ms)
    flood.receive(attacker.peer_id, OverlayType.BROADCAST, first, 0.0)
    for i in range(65):  # more than the whole cache, dated 59 s ahead (max_future is 60 s)
        flood.receive(
            attacker.peer_id, OverlayType.BROADCAST, _signed_broadcast(attacker, wall_ms + 59_000 - i), 0.5
        )
    flood.receive(attacker.peer_id, OverlayType.BROADCAST, first, 0.5)  # the honest entry is kept
    assert flood.counters["broadcast_duplicates"] == 1
    assert flood.counters["broadcasts_delivered"] == 1 + 17  # its quota, then one evicting its lowest
    refused = flood.counters["drop_too_old"]  # its own messages below its floor (47 of them)
    assert refused == 65 - 17
    flood.receive(
        attacker.peer_id, OverlayType.BROADCAST, _signed_broadcast(honest, wall_ms + 10_000, b"real"), 10.0
    )
    assert flood.counters["drop_too_old"] == refused
    assert flood.counters["broadcasts_delivered"] == 1 + 17 + 1
    # The attacker's evicted messages stay refused (its floor): no replay is admitted twice.
    flood.receive(
        attacker.peer_id, OverlayType.BROADCAST, _signed_broadcast(attacker, wall_ms + 59_000 - 16), 10.0
    )
    assert flood.counters["drop_too_old"] == refused + 1
    assert len(flood._seen) == 1 + 16 + 1


def test_many_origins_filling_the_seen_cache_evict_the_largest_origins_first() -> None:
    me, honest = Identity(bytes([1]) * 32), Identity(bytes([3]) * 32)
    keys = [Identity(bytes([10 + i]) * 32) for i in range(4)]
    flood = Flood(
        me.peer_id, me.sign, _OneLink([keys[0].peer_id]), now=0.0, wall_offset=WALL,
        config=FloodConfig(max_seen=32, max_seen_per_origin=12),
    )  # fmt: skip
    wall_ms = int(WALL * 1000)
    first = _signed_broadcast(honest, wall_ms)
    flood.receive(keys[0].peer_id, OverlayType.BROADCAST, first, 0.0)
    for ident in keys:  # 4 x 12 entries, more than the cache holds
        for i in range(12):
            flood.receive(
                keys[0].peer_id, OverlayType.BROADCAST, _signed_broadcast(ident, wall_ms + 50_000 + i), 0.0
            )
    assert len(flood._seen) == 32
    flood.receive(keys[0].peer_id, OverlayType.BROADCAST, first, 0.0)
    assert flood.counters["broadcast_duplicates"] == 1  # still held: a duplicate, not too old


def test_incoming_flood_messages_are_rate_limited_per_neighbour_before_the_signature() -> None:
    me, a, b = (Identity(bytes([i]) * 32) for i in (1, 2, 3))
    checked: list[PeerId] = []

    def verify(peer: PeerId, message: bytes, signature: bytes) -> bool:
        checked.append(peer)
        return False

    cfg = FloodConfig(message_rate=10.0, message_burst=20.0, record_rate=5.0, record_burst=8.0)
    flood = Flood(me.peer_id, me.sign, _OneLink([a.peer_id, b.peer_id]), verify=verify, now=0.0,
                  wall_offset=WALL, config=cfg)  # fmt: skip
    wall_ms = int(WALL * 1000)
    forged = [Broadcast(a.peer_id, wall_ms + i, b"", bytes(64)).encode() for i in range(50)]
    for body in forged:
        flood.receive(a.peer_id, OverlayType.BROADCAST, body, 0.0)
    assert flood.counters["drop_rate_limited"] == 30
    assert len(checked) == 20  # the excess never reached the signature check
    flood.receive(b.peer_id, OverlayType.BROADCAST, forged[0], 0.0)  # another neighbour's own bucket
    assert len(checked) == 21
    flood.receive(a.peer_id, OverlayType.BROADCAST, forged[40], 1.0)  # refilled at 10/s
    assert len(checked) == 22
    records = [MembershipRecord(a.peer_id, wall_ms + i, ("g",), bytes(64)) for i in range(10)]
    flood.receive(b.peer_id, OverlayType.MEMBERSHIP, encode_membership(records), 0.0)  # 10 > 8 records
    assert flood.counters["drop_rate_limited"] == 31
    assert len(checked) == 22


def test_the_default_rate_limits_let_a_full_membership_sync_through() -> None:
    """A neighbour's link_up sends every record it holds at once: the default bucket takes it."""
    me, neighbour = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    flood = Flood(me.peer_id, me.sign, _OneLink([neighbour.peer_id]), now=0.0, wall_offset=WALL)
    idents = [Identity(i.to_bytes(4, "big") * 8) for i in range(1000, 1000 + 300)]
    records = [_signed_record(ident, int(WALL * 1000), ("g",)) for ident in idents]
    for k in range(0, len(records), 10):
        flood.receive(neighbour.peer_id, OverlayType.MEMBERSHIP, encode_membership(records[k : k + 10]), 0.0)
    assert flood.counters["drop_rate_limited"] == 0
    assert len(flood.members("g")) == 300


def test_throwaway_members_are_evicted_for_a_routable_one_and_routable_ones_are_kept() -> None:
    me, attacker, other, honest = (Identity(bytes([i]) * 32) for i in (1, 2, 3, 4))
    routes = _OneLink([attacker.peer_id, other.peer_id], routable={honest.peer_id})
    flood = Flood(me.peer_id, me.sign, routes, now=0.0, wall_offset=WALL, config=FloodConfig(max_records=8))
    seq = int(WALL * 1000)
    throwaway = [Identity(i.to_bytes(4, "big") * 8) for i in range(100, 112)]
    flood.receive(attacker.peer_id, OverlayType.MEMBERSHIP,
                  encode_membership([_signed_record(t, seq, ("x",)) for t in throwaway]), 0.0)  # fmt: skip
    assert len(flood.members("x")) == 8
    flood.receive(
        other.peer_id,
        OverlayType.MEMBERSHIP,
        encode_membership([_signed_record(honest, seq, ("chat",))]),
        1.0,
    )
    assert flood.members("chat") == [honest.peer_id]
    assert flood.counters["records_evicted"] == 4 + 1  # the 9th to 12th throwaway ones, then the honest one
    # A forged record evicts nobody: the signature is checked before the eviction.
    forged = MembershipRecord(Identity(bytes([98]) * 32).peer_id, seq, ("z",), bytes(64))
    flood.receive(other.peer_id, OverlayType.MEMBERSHIP, encode_membership([forged]), 1.0)
    assert flood.counters["drop_bad_signature"] == 1
    assert flood.counters["records_evicted"] == 5
    assert len(flood.members("x")) == 7
    # Once every record held is of a routable member, a new one is refused and none is evicted.
    routes.routable = {t.peer_id for t in throwaway} | {honest.peer_id}
    late = Identity(bytes([99]) * 32)
    evicted = flood.counters["records_evicted"]
    flood.receive(
        other.peer_id, OverlayType.MEMBERSHIP, encode_membership([_signed_record(late, seq, ("y",))]), 2.0
    )
    assert flood.members("y") == []
    assert flood.counters["drop_records_full"] >= 1
    assert flood.counters["records_evicted"] == evicted
    assert flood.members("chat") == [honest.peer_id]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(0, 40)), max_size=120))
def test_seen_cache_bounds_hold_and_an_evicted_key_stays_below_its_origins_floor(
    adds: list[tuple[int, int, int]],
) -> None:
    cache = _SeenCache(10, 4, 6)  # every origin's floor is remembered
    small = _SeenCache(10, 4, 2)  # the floors of two origins only: the least recently evicted go
    evicted: set[tuple[int, bytes, int]] = set()
    for origin, kind, seqno in adds:
        key = (kind, bytes([origin]), seqno)
        if key in cache or seqno <= cache.floor(key[1]):
            continue  # what Flood._admit refuses
        before = set(cache._entries)
        cache.add(key)
        small.add(key)
        assert len(small._floors) <= 2
        evicted |= before - set(cache._entries)
        assert len(cache) <= 10
        assert all(sum(1 for k in cache._entries if k[1] == o) <= 4 for o in {k[1] for k in cache._entries})
        for gone in evicted:  # never admitted again: below its origin's floor
            assert gone not in cache
            assert gone[2] <= cache.floor(gone[1])
    cache.expire(20)
    assert all(k[2] >= 20 for k in cache._entries)
    assert all(cache.floor(o) >= 20 or cache.floor(o) == -1 for o in {bytes([i]) for i in range(6)})
