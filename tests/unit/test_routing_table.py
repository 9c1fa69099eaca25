"""RoutingTable: tables wired together in a virtual network (routing_net.VNet), time advanced by hand."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coremesh.identity import PeerId
from coremesh.routing.messages import RouteEntry, RouteUpdate, decode_update, defined_ids, encode_update
from coremesh.routing.overlay import OVERLAY_PREFIX, OverlayType, overlay_packet
from coremesh.routing.records import OriginRecord
from coremesh.routing.table import Route, RoutingConfig, RoutingTable

from .routing_net import MS_COSTS, WALL, VNet, identity


def line(**kw: object) -> VNet:
    net = VNet("ABC", **kw)  # type: ignore[arg-type]
    net.link("A", "B")
    net.link("B", "C")
    net.settle()
    return net


def ring(n: int = 5, **kw: object) -> VNet:
    names = [str(i) for i in range(n)]
    net = VNet(names, **kw)  # type: ignore[arg-type]
    for i in range(n):
        net.link(names[i], names[(i + 1) % n])
    net.settle()
    return net


def test_line_routes_through_the_middle() -> None:
    net = line()
    (route,) = net.tables["A"].routes(net.pid("C"))
    assert route.next_hop == net.pid("B")
    assert route.path == (net.pid("B"), net.pid("C"))
    assert route.destination == net.pid("C")
    assert route.metric == 20  # two links of 10 ms
    assert route.seqno == net.tables["C"].record(net.pid("C")).seqno  # type: ignore[union-attr]
    assert net.path("C", "A") == ["B", "A"]
    assert net.path("A", "B") == ["B"]
    assert net.tables["A"].next_hop(net.pid("C")) == net.pid("B")
    assert net.tables["A"].next_hop(net.pid("A")) is None
    assert sorted(net.tables["B"].neighbours(), key=lambda p: p.key) == sorted(
        [net.pid("A"), net.pid("C")], key=lambda p: p.key
    )
    assert len(net.tables["B"].all_routes()) == 2
    # Nobody routes to itself, no path contains its own node.
    for name, table in net.tables.items():
        for routes in table.all_routes():
            for r in routes:
                assert net.pid(name) not in r.path


def test_a_path_through_oneself_is_never_a_route() -> None:
    net = line()
    b = net.tables["B"]
    assert b.knows_route_of(net.pid("A"), net.pid("C"))  # A told B: "C via B"
    b.link_down(net.pid("C"), net.now)
    assert b.routes(net.pid("C")) == []  # A's advert [A, B, C] is no route for B
    assert b.next_hop(net.pid("C")) is None
    net.tables["C"].link_down(net.pid("B"), net.now)
    net.up.discard(frozenset(("B", "C")))
    net.settle()
    assert net.tables["A"].routes(net.pid("C")) == []
    assert b.counters["drop_path_loop"] == 0


def test_ring_has_a_primary_and_a_backup_via_the_other_side() -> None:
    net = ring()
    primary, backup = net.tables["0"].routes(net.pid("2"))
    assert [net.names[p] for p in primary.path] == ["1", "2"]
    assert [net.names[p] for p in backup.path] == ["4", "3", "2"]
    assert (primary.metric, backup.metric) == (20, 30)


def test_link_down_moves_to_the_backup_at_once_then_converges() -> None:
    net = ring()
    changes = net.tables["0"].counters["route_changes"]
    net.tables["0"].link_down(net.pid("1"), net.now)  # before any message travels
    (route,) = net.tables["0"].routes(net.pid("2"))
    assert route.next_hop == net.pid("4")
    assert net.tables["0"].counters["route_changes"] > changes
    net.tables["1"].link_down(net.pid("0"), net.now)
    net.up.discard(frozenset(("0", "1")))
    own = net.tables["0"].record(net.pid("0"))
    net.run(1.0)  # converged within a second ...
    assert net.walk("1", "0") == ["1", "2", "3", "4", "0"]
    assert net.walk("0", "1") == ["0", "4", "3", "2", "1"]
    # ... and the record still lists the dead link: one that comes back soon changes no record.
    assert net.tables["0"].record(net.pid("0")) == own
    took = net.settle()  # record_hold later, a record without it
    assert 58.0 < took < 62.0
    new = net.tables["0"].record(net.pid("0"))
    assert new is not None and own is not None and net.pid("1") not in new.neighbours
    assert net.pid("1") in own.neighbours
    assert net.walk("1", "0") == ["1", "2", "3", "4", "0"]
    for a in net.tables:
        for b in net.tables:
            if a != b:
                assert net.walk(a, b) is not None
    # The link comes back: the short way is used again.
    net.link("0", "1")
    net.settle()
    assert net.path("0", "1") == ["1"]
    assert net.path("0", "2") == ["1", "2"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_loops_after_random_failures(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(12)]
    net = VNet(names, seed=seed)
    edges = {frozenset((names[i], names[(i + 1) % 12])) for i in range(12)}
    while len(edges) < 24:
        a, b = rng.sample(names, 2)
        edges.add(frozenset((a, b)))
    for edge in sorted(edges, key=sorted):
        a, b = sorted(edge)
        net.link(a, b, rtt=rng.uniform(0.005, 0.05))
    net.settle()
    for _ in range(4):
        for edge in rng.sample(sorted(net.up, key=sorted), 3):
            net.cut(*sorted(edge))
        for edge in rng.sample(sorted(edges - net.up, key=sorted), 2):
            a, b = sorted(edge)
            net.link(a, b, rtt=rng.uniform(0.005, 0.05))
        net.settle()
        comp = net.components()
        for a in names:
            for b in names:
                if a == b:
                    continue
                walked = net.walk(a, b)
                assert (walked is not None) == (b in comp[a])
                for r in net.tables[a].routes(net.pid(b)):
                    assert net.pid(a) not in r.path
                    assert len(set(r.path)) == len(r.path)
        for table in net.tables.values():
            _check_references(table)


def test_drops_are_repaired_by_acks_and_retransmission() -> None:
    names = [str(i) for i in range(6)]
    net = VNet(names, seed=7, drop=0.4)
    for i in range(6):
        net.link(names[i], names[(i + 1) % 6])
    net.link("0", "3")
    net.settle(limit=600)
    retransmitted = sum(t.counters["retransmissions"] for t in net.tables.values())
    assert retransmitted > 0
    clean = VNet(names, seed=7)
    for i in range(6):
        clean.link(names[i], names[(i + 1) % 6])
    clean.link("0", "3")
    clean.settle()
    for a in names:
        for b in names:
            if a != b:  # the same best metrics (equal-cost ties may pick either way)
                assert net.walk(a, b) is not None
                got = net.tables[a].routes(net.pid(b))[0].metric
                assert got == clean.tables[a].routes(clean.pid(b))[0].metric


def test_an_overflowing_retransmission_queue_resends_the_whole_table() -> None:
    net = VNet("ABCDE", config=RoutingConfig(max_unacked=2))
    for x, y in ("AB", "BC", "CD", "DE"):
        net.link(x, y)
    net.settle()
    assert net.path("A", "E") == ["B", "C", "D", "E"]
    net.blocked.add(("B", "A"))  # B's updates to A are lost for a while
    for x, y in ("DE", "CD", "BC"):  # three cuts, each its own batch of updates
        net.cut(x, y)
        net.run(1.0)
    net.link("B", "C")
    net.run(1.0)
    assert net.path("A", "E") == ["B", "C", "D", "E"]  # stale: B's withdrawals were lost
    assert net.tables["B"].counters["full_resends"] >= 1
    net.blocked.clear()
    net.settle()
    assert net.tables["A"].routes(net.pid("E")) == []
    assert net.tables["A"].routes(net.pid("D")) == []
    assert net.path("A", "C") == ["B", "C"]


def test_full_tables_split_into_packets_that_fit() -> None:
    config = RoutingConfig(max_packet=500, max_path=12, max_record_neighbours=8)
    names = [f"{x}{y}" for x in range(6) for y in range(6)]
    net = VNet(names, config=config)
    for x in range(6):
        for y in range(6):
            if x < 5:
                net.link(f"{x}{y}", f"{x + 1}{y}")
            if y < 5:
                net.link(f"{x}{y}", f"{x}{y + 1}")
    net.settle()  # VNet asserts every packet fits max_packet
    assert net.walk("00", "55") is not None
    assert len(net.path("00", "55")) == 10
    assert net.packets["00"] > 10


def _forger_setup(xy_once: list[OriginRecord] | None = None) -> tuple[VNet, RoutingTable]:
    """A-B-C, A-M-X-C, Y-C; then M stops following the protocol (its table leaves the network)
    and lies to A by hand. X and Y are not linked."""
    net = VNet(["A", "B", "C", "M", "X", "Y"])
    net.link("A", "B")
    net.link("B", "C")
    net.link("A", "M")
    net.link("M", "X")
    net.link("X", "C")
    net.link("Y", "C")
    net.settle()
    if xy_once is not None:  # X and Y were linked once: keep their records of that time
        net.link("X", "Y")
        net.settle()
        xy_once += [_own_record(net, "X"), _own_record(net, "Y")]
        net.cut("X", "Y")
        net.link("A", "X")  # A hears X's newer record from X itself (records are not flooded)
        net.settle()
    net.silence("M")
    return net, net.tables["A"]


def _forge(net: VNet, records: list[OriginRecord], hops: list[str], msg_no: int = 1000) -> bytes:
    entry = RouteEntry(tuple(net.pid(h) for h in hops), 5)
    update = RouteUpdate(epoch=0xF00, msg_no=msg_no, records=tuple(records), routes=(entry,))
    # Fresh id indices for each message number: a sender never binds an index twice in an epoch.
    return overlay_packet(OverlayType.ROUTE_UPDATE, encode_update(update, first_index=16 * (msg_no - 1000)))


def _own_record(net: VNet, name: str) -> OriginRecord:
    record = {**net.tables, **net.silenced}[name].record(net.pid(name))
    assert record is not None
    return record


def test_an_advert_through_a_link_that_does_not_exist_is_refused() -> None:
    net, a = _forger_setup()
    before = a.routes(net.pid("Y"))
    assert [net.names[p] for p in before[0].path] == ["B", "C", "Y"]
    # M claims M-X-Y: X and Y's genuine records do not list each other.
    records = [_own_record(net, n) for n in ("M", "X", "Y")]
    net.inject("M", "A", _forge(net, records, ["X", "Y"]))
    assert a.counters["drop_unattested"] == 1
    assert [r.next_hop for r in a.routes(net.pid("Y"))] == [net.pid("B")]
    # The control: the same lie about the metric over real links (M-X-C) is believed.
    net.inject("M", "A", _forge(net, [_own_record(net, "C")], ["X", "C"], msg_no=1001))
    assert a.routes(net.pid("C"))[0].next_hop == net.pid("M")
    assert a.counters["drop_unattested"] == 1


def test_a_record_with_a_bad_signature_is_refused() -> None:
    net, a = _forger_setup()
    # M signs a record "of X" listing Y, and one "of Y" listing X, with its own key.
    fake = [
        OriginRecord.create(net.pid("X"), 2**60, [net.pid("Y"), net.pid("M")], net.idents["M"].sign),
        OriginRecord.create(net.pid("Y"), 2**60, [net.pid("X")], net.idents["M"].sign),
    ]
    net.inject("M", "A", _forge(net, [_own_record(net, "M"), *fake], ["X", "Y"]))
    assert a.counters["drop_bad_signature"] == 2
    assert [r.next_hop for r in a.routes(net.pid("Y"))] == [net.pid("B")]
    assert a.record(net.pid("X")) == _own_record(net, "X")


def test_an_old_record_is_refused() -> None:
    old: list[OriginRecord] = []
    net, a = _forger_setup(old)
    x, y = net.pid("X"), net.pid("Y")
    # X and Y were linked once; the link is gone and X signed newer records since, which A holds.
    newer = a.record(x)
    assert newer is not None and newer.seqno > old[0].seqno and y not in newer.neighbours
    # M replays the old records to claim the dead link X-Y.
    dropped, unattested = a.counters["drop_old_record"], a.counters["drop_unattested"]
    net.inject("M", "A", _forge(net, old, ["X", "Y"]))
    assert a.counters["drop_old_record"] > dropped
    assert a.counters["drop_unattested"] == unattested + 1
    assert a.record(x) == newer
    assert all(r.path != (net.pid("M"), x, y) for r in a.routes(y))
    assert a.routes(y)[0].next_hop == net.pid("B")


def test_acks_wait_a_little_and_go_together() -> None:
    net = VNet(["A", "M"])
    net.link("A", "M")
    net.settle()
    net.silence("M")
    a = net.tables["A"]
    first = RouteUpdate(epoch=7, msg_no=9)  # a new epoch: A sends M its table again, acks aboard
    a.receive(net.pid("M"), encode_update(first), net.now)
    sent = [decode_update(p[len(OVERLAY_PREFIX) + 1 :]) for _, p in a.messages_to_send(net.now)]
    a_epoch, a_msgs = sent[0].epoch, tuple(u.msg_no for u in sent)
    assert sent and 9 in sent[0].acks
    net.now += 0.1
    for i in range(3):  # M acks all of A's messages, and sends three of its own
        update = RouteUpdate(7, 10 + i, a_epoch, a_msgs, routes=(RouteEntry((net.pid("A"),), 1),))
        a.receive(net.pid("M"), encode_update(update), net.now)
        net.now += 0.005
    assert a.messages_to_send(net.now) == []  # within ack_delay of the first
    assert a.get_timer() == pytest.approx(net.now - 0.015 + a.config.ack_delay)
    (dst, packet), *more = a.messages_to_send(net.now - 0.015 + a.config.ack_delay)
    assert dst == net.pid("M") and more == []
    ack = decode_update(packet[len(OVERLAY_PREFIX) + 1 :])
    assert (ack.msg_no, ack.ack_epoch, sorted(ack.acks)) == (0, 7, [10, 11, 12])


def test_incoming_updates_are_rate_limited_per_neighbour() -> None:
    config = RoutingConfig(update_rate=1.0, update_burst=2.0)
    net = VNet(["A", "M"], config=config)
    net.link("A", "M")
    net.settle()
    net.silence("M")
    a = net.tables["A"]
    before = a.counters["drop_rate_limited"]
    for i in range(10):
        net.inject("M", "A", _forge(net, [], ["A"], msg_no=2000 + i))
    dropped = a.counters["drop_rate_limited"] - before
    assert dropped >= 8  # at most the 2-message burst went through
    # Time refills the bucket.
    net.run(5.0)
    received = a.counters["updates_received"]
    net.inject("M", "A", _forge(net, [], ["A"], msg_no=3000))
    assert a.counters["drop_rate_limited"] - before == dropped
    assert a.counters["updates_received"] == received + 1


def test_rate_limited_updates_still_arrive_by_retransmission() -> None:
    config = RoutingConfig(
        update_rate=5.0, update_burst=5.0, max_packet=400, max_path=8, max_record_neighbours=6
    )
    names = [str(i) for i in range(12)]
    net = VNet(names, config=config)
    for i in range(11):
        net.link(names[i], names[i + 1])
    net.settle(limit=900)
    assert sum(t.counters["drop_rate_limited"] for t in net.tables.values()) > 0
    assert net.walk("0", "8") == names[:9]


def _two_ways() -> VNet:
    """A reaches D via B (10 + 10 ms) or via C (11 + 10 ms)."""
    net = VNet("ABCD")
    net.link("A", "B", rtt=0.010)
    net.link("B", "D", rtt=0.010)
    net.link("A", "C", rtt=0.011)
    net.link("C", "D", rtt=0.010)
    net.settle()
    return net


def test_jitter_within_the_band_keeps_the_primary() -> None:
    net = _two_ways()
    a = net.tables["A"]
    assert net.next_hop("A", "D") == "B"
    changes = a.counters["route_changes"]
    for i in range(40):
        net.sample("A", "B", 0.0124 if i % 2 else 0.009)  # up to 24% above 10 ms
        net.run(0.25)
    assert net.next_hop("A", "D") == "B"
    assert a.counters["route_changes"] == changes
    assert a.routes(net.pid("D"))[0].metric == 20


def test_a_lasting_big_change_moves_the_primary_after_the_hold_time() -> None:
    net = _two_ways()
    start = net.now
    net.sample("A", "C", 0.001)
    net.run(0.5)
    assert net.next_hop("A", "D") == "B"  # not yet: the cost moved less than cost_hold ago
    while net.now - start < net.config.cost_hold + 0.5:
        net.sample("A", "C", 0.001)
        net.run(0.25)
    assert net.next_hop("A", "D") == "C"
    assert net.tables["A"].routes(net.pid("D"))[0].metric < 20


def test_a_small_improvement_does_not_switch_the_primary() -> None:
    net = VNet("ABCD")
    net.link("A", "B", rtt=0.010)
    net.link("B", "D", rtt=0.040)
    net.link("A", "C", rtt=0.020)
    net.link("C", "D", rtt=0.040)
    net.settle()
    a = net.tables["A"]
    assert [r.metric for r in a.routes(net.pid("D"))] == [50, 60]
    for _ in range(20):  # C's way: 46, better than 50 but by less than switch_margin
        net.sample("A", "C", 0.006)
        net.run(0.25)
    (b, c) = a.routes(net.pid("D"))
    assert (b.next_hop, c.next_hop) == (net.pid("B"), net.pid("C"))
    assert b.metric == 50 and 50 / 1.1 <= c.metric < 50
    for _ in range(20):  # C's way: 42, better by more than the margin
        net.sample("A", "C", 0.002)
        net.run(0.25)
    (c, b) = a.routes(net.pid("D"))
    assert (c.next_hop, b.next_hop) == (net.pid("C"), net.pid("B"))
    assert c.metric < 50 / 1.1


def test_loss_scales_the_link_cost() -> None:
    net = _two_ways()
    a = net.tables["A"]
    assert a.routes(net.pid("B"))[0].metric == 10
    for _ in range(40):  # 50% loss on A-B, for longer than cost_hold
        net.sample("A", "B", 0.010, loss=0.5)
        net.run(0.25)
    assert 18 <= a.routes(net.pid("B"))[0].metric <= 20  # ETX 1/(1-0.5): about twice 10 ms
    assert net.next_hop("A", "D") == "C"


def test_only_the_neighbours_a_record_lists_carry_routes() -> None:
    net = VNet("ABC", config=RoutingConfig(max_record_neighbours=1))
    net.link("A", "B")
    net.settle()
    net.link("B", "C")  # B's record lists only A, its oldest link
    net.settle()
    b_record = net.tables["B"].record(net.pid("B"))
    assert b_record is not None and b_record.neighbours == (net.pid("A"),)
    assert net.path("B", "C") == ["C"]  # B itself uses the link
    assert net.tables["A"].routes(net.pid("C")) == []  # but cannot prove it to A
    assert net.path("C", "A") == ["B", "A"]  # B-A is listed
    net.cut("A", "B")
    net.link("A", "B")  # now B-C is the oldest link: B's record lists C
    net.settle()
    assert net.path("A", "C") == ["B", "C"]
    assert net.tables["C"].routes(net.pid("A")) == []


def test_set_router_picks_among_the_candidates() -> None:
    net = ring()
    t = net.tables["0"]
    seen: list[tuple[PeerId, list[Route]]] = []

    def prefer_backup(dest: PeerId, routes: list[Route]) -> PeerId | None:
        seen.append((dest, routes))
        return routes[-1].next_hop

    t.set_router(prefer_backup)
    assert t.next_hop(net.pid("2")) == net.pid("4")
    assert seen[-1][0] == net.pid("2") and len(seen[-1][1]) == 2
    t.set_router(lambda dest, routes: identity("nobody").peer_id)
    assert t.next_hop(net.pid("2")) == net.pid("1")
    assert t.counters["router_invalid"] == 1
    t.set_router(lambda dest, routes: None)
    assert t.next_hop(net.pid("2")) == net.pid("1")
    t.set_router(None)
    assert t.next_hop(net.pid("2")) == net.pid("1")
    assert t.counters["router_invalid"] == 1


def test_children_and_knows_route_of_report_the_neighbours_choices() -> None:
    net = line()
    a, b, c = (net.pid(n) for n in "ABC")
    assert net.tables["B"].children(c) == {a}
    assert net.tables["B"].children(a) == {c}
    assert net.tables["C"].children(c) == {b}  # B reaches C directly
    assert net.tables["A"].children(c) == set()
    assert net.tables["A"].knows_route_of(b, c)
    assert net.tables["A"].knows_route_of(b, b)
    assert net.tables["B"].knows_route_of(a, c)
    assert not net.tables["A"].knows_route_of(c, b)  # not a neighbour
    net.cut("B", "C")
    net.settle()
    assert net.tables["B"].children(c) == set()
    assert not net.tables["A"].knows_route_of(b, c)
    assert net.tables["A"].routes(c) == []


def test_a_neighbour_with_a_better_route_gets_no_path_until_it_needs_one() -> None:
    # A-B 10, B-D 10, A-C 10, C-D 25: A reaches D at 20 via B; C at 25 directly. C's route via A
    # could never be better for A than its own, so C tells A only "elsewhere": no path, no records.
    net = VNet("ABCD")
    for a, b, rtt in (("A", "B", 0.010), ("B", "D", 0.010), ("A", "C", 0.010), ("C", "D", 0.025)):
        net.link(a, b, rtt)
    net.settle()
    a, c, d = net.tables["A"], net.pid("C"), net.pid("D")
    assert [net.names[r.next_hop] for r in a.routes(d)] == ["B"]  # nothing via C
    assert a.knows_route_of(c, d) and c not in a.children(d)  # C's choice is known: not via A
    assert [net.names[r.next_hop] for r in net.tables["C"].routes(d)] == ["D", "A"]  # A's goes to C
    # A loses its route: it withdraws, and C's answer is its path.
    net.cut("A", "B")
    net.settle()
    assert net.walk("A", "D") == ["A", "C", "D"]
    assert a.routes(d)[0].metric == 35
    # B comes back: A's route is better than C's again, and C goes back to "elsewhere".
    net.link("A", "B")
    net.settle()
    assert [net.names[r.next_hop] for r in a.routes(d)] == ["B"]
    assert a.knows_route_of(c, d)


def test_a_neighbour_that_restarts_its_view_gets_everything_again() -> None:
    net = line()
    # A drops and re-adds its link to B; B never notices (no link_down at B).
    net.tables["A"].link_down(net.pid("B"), net.now)
    net.tables["A"].link_up(net.pid("B"), net.now)
    net.settle()
    # A kept both ends' ids: same epoch, a new view, and B sends it all again by index.
    assert net.tables["B"].counters["peer_view_changes"] == 1
    assert net.tables["B"].counters["peer_epoch_changes"] == 0
    assert net.path("A", "C") == ["B", "C"]
    assert net.path("C", "A") == ["B", "A"]
    # Without the ids kept, a new epoch does the same.
    net = line(config=dataclasses.replace(MS_COSTS, dictionary_hold=0.0))
    net.tables["A"].link_down(net.pid("B"), net.now)
    net.tables["A"].link_up(net.pid("B"), net.now)
    net.settle()
    assert net.tables["B"].counters["peer_epoch_changes"] == 1
    assert net.path("A", "C") == ["B", "C"]


def test_malformed_and_foreign_input_is_counted() -> None:
    net = line()
    a = net.tables["A"]
    a.receive(net.pid("B"), b"\x01garbage", net.now)
    assert a.counters["drop_malformed"] == 1
    a.receive(identity("stranger").peer_id, b"", net.now)
    assert a.counters["drop_not_neighbour"] == 1
    net.settle()
    assert net.path("A", "C") == ["B", "C"]


def test_get_timer_is_none_when_quiet_and_messages_are_full_overlay_packets() -> None:
    net = line()
    assert all(t.get_timer() is None for t in net.tables.values())
    t = RoutingTable(
        identity("solo").peer_id, identity("solo").sign, RoutingConfig(), rng=random.Random(1), now=5.0
    )
    t.link_up(net.pid("A"), 5.0)
    assert t.get_timer() == 5.0
    (dst, packet), *_ = t.messages_to_send(5.0)
    assert dst == net.pid("A")
    assert packet.startswith(overlay_packet(OverlayType.ROUTE_UPDATE, b""))


def test_record_seqno_grows_from_the_wall_clock() -> None:
    net = line()
    rec = _own_record(net, "A")
    assert rec.seqno >= int(WALL * 1000)
    net.link("A", "C")
    net.settle()
    assert _own_record(net, "A").seqno > rec.seqno
    assert set(_own_record(net, "A").neighbours) == {net.pid("B"), net.pid("C")}


@pytest.mark.parametrize(
    "kw",
    [
        {"max_packet": 200},
        {"min_update_interval": 0},
        {"max_backups": -1},
        {"max_records": 0},
        {"max_path": 300},
        {"rtt_smoothing": 2.0},
        {"min_rto": 5.0, "max_rto": 1.0},
        {"update_rate": float("nan")},
        {"ack_delay": 0.5},
        {"record_ttl": 0},
    ],
)
def test_config_is_validated(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RoutingConfig(**kw)  # type: ignore[arg-type]


_FUZZ_NAMES = ["A", "B", "C", "D", "E"]


@given(st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_updates_from_a_neighbour_never_break_the_table(data: st.DataObject) -> None:
    """Whatever a neighbour sends (valid messages with any paths and records, or mutated bytes),
    the table neither raises nor routes through itself nor over a path with a repeated id."""
    net = VNet(_FUZZ_NAMES)
    net.link("A", "B")
    net.link("B", "C")
    net.link("C", "D")
    net.settle()
    net.silence("B")  # B's messages to A are the test's from now on
    a = net.tables["A"]
    pids = [net.pid(n) for n in _FUZZ_NAMES]
    signers = {net.pid(n): net.idents[n] for n in _FUZZ_NAMES}
    records = [
        OriginRecord.create(p, seq, [q for q in nbrs if q != p], signers[p].sign)
        for p, seq, nbrs in data.draw(
            st.lists(
                st.tuples(
                    st.sampled_from(pids), st.integers(0, 2**63), st.lists(st.sampled_from(pids), max_size=4)
                ),
                max_size=4,
            )
        )
    ]
    for _ in range(data.draw(st.integers(1, 4))):
        entries = data.draw(
            st.lists(
                st.builds(
                    RouteEntry,
                    st.lists(st.sampled_from(pids), min_size=1, max_size=5).map(tuple),
                    st.integers(0, 0xFFFE),
                ),
                max_size=5,
            )
        )
        update = RouteUpdate(
            epoch=data.draw(st.integers(0, 3)),
            msg_no=data.draw(st.integers(1, 50)),
            ack_epoch=data.draw(st.integers(0, 2**32 - 1)),
            acks=tuple(data.draw(st.lists(st.integers(0, 20), max_size=3))),
            records=tuple(data.draw(st.lists(st.sampled_from(records), max_size=3))) if records else (),
            routes=tuple(entries),
            withdrawals=tuple(data.draw(st.lists(st.sampled_from(pids), max_size=2))),
        )
        body = bytearray(encode_update(update))
        if data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(body) - 1))
            body[i] ^= data.draw(st.integers(1, 255))
        a.receive(net.pid("B"), bytes(body), net.now)
        a.messages_to_send(net.now)
    for routes in a.all_routes():
        for r in routes:
            assert net.pid("A") not in r.path
            assert len(set(r.path)) == len(r.path)
            assert r.next_hop == r.path[0] and r.destination == r.path[-1]
            assert r.next_hop in a.neighbours()
    _check_references(a)
    a.link_down(net.pid("B"), net.now)
    _check_references(a)
    net.run(30.0)  # timers and retransmissions on what is left


def _check_references(t: RoutingTable) -> None:
    """The record store's reference counts and its list of unreferenced records agree with the
    adverts, links and waiting adverts the table holds."""
    refs: dict[PeerId, int] = {}
    for link in t._links.values():
        for advert in link.adverts.values():
            for hop in advert.path or ():
                refs[hop] = refs.get(hop, 0) + 1
    assert t._refs == refs
    assert set(t._waiting) <= set(refs)  # an advert waits only while it is stored
    unref = {o for o in t._records if o not in refs and o not in t._links and o not in t._waiting}
    assert set(t._unref) == unref


def test_default_link_costs_follow_rfc_9616() -> None:
    """A hop costs 96; RTTs under 10 ms add nothing (LAN jitter changes no cost), then the penalty
    grows linearly to 150 at 120 ms and stays there; loss multiplies the hop cost (ETX)."""
    table = RoutingTable(
        identity("X").peer_id, identity("X").sign, RoutingConfig(), rng=random.Random(1), now=0.0
    )
    cost = table.link_cost
    assert cost(0.0002, 0.0) == cost(0.009, 0.0) == 96
    assert cost(0.065, 0.0) == 96 + 75
    assert cost(0.120, 0.0) == cost(2.0, 0.0) == 96 + 150
    assert cost(0.001, 0.5) == 192
    assert cost(0.001, 1.0) == 96 * 8  # the ETX factor is capped
    # A path of two LAN hops is always better than one of three, whatever the sub-10 ms jitter.
    assert 2 * cost(0.009, 0.0) < 3 * cost(0.0001, 0.0)
    with pytest.raises(ValueError):
        RoutingConfig(rtt_min=0.2, rtt_max=0.1)


# -- the record store: eviction, usefulness, garbage collection ------------------------------------


class _Solo:
    """One table fed by hand-made updates from neighbours (each with its own message numbers)."""

    def __init__(self, **kw: float) -> None:
        self.me = identity("solo")
        self.table = RoutingTable(
            self.me.peer_id, self.me.sign, RoutingConfig(**kw), rng=random.Random(1), now=0.0
        )
        self.msg_no: dict[str, int] = {}
        self.index: dict[str, int] = {}  # the next id index of each neighbour's epoch

    def up(self, name: str, now: float = 0.0) -> PeerId:
        peer = identity(name).peer_id
        self.table.link_up(peer, now)
        return peer

    def send(
        self,
        name: str,
        now: float,
        records: list[OriginRecord] = (),  # type: ignore[assignment]
        routes: list[tuple[list[str], int]] = (),  # type: ignore[assignment]
        withdrawals: list[str] = (),  # type: ignore[assignment]
    ) -> None:
        no = self.msg_no[name] = self.msg_no.get(name, 0) + 1
        update = RouteUpdate(
            epoch=7,
            msg_no=no,
            records=tuple(records),
            routes=tuple(RouteEntry(tuple(identity(h).peer_id for h in hops), m) for hops, m in routes),
            withdrawals=tuple(identity(w).peer_id for w in withdrawals),
        )
        self.receive(name, update, now)

    def receive(self, name: str, update: RouteUpdate, now: float) -> None:
        """``update`` from ``name``, its ids defined at fresh indices (as a sender does)."""
        first = self.index.get(name, 0)
        self.index[name] = first + len(defined_ids(update, {}))
        self.table.receive(identity(name).peer_id, encode_update(update, first_index=first), now)


def _rec(name: str, seqno: int, *neighbours: str) -> OriginRecord:
    me = identity(name)
    return OriginRecord.create(me.peer_id, seqno, tuple(identity(n).peer_id for n in neighbours), me.sign)


def _star(solo: _Solo, hub: str, leaves: list[str], now: float) -> None:
    """``hub`` (a neighbour of solo) advertises a route to each leaf behind it."""
    solo.send(hub, now, [_rec(hub, 1, "solo", *leaves)])
    for leaf in leaves:
        solo.send(hub, now, [_rec(leaf, 1, hub)], [([leaf], 100)])


def test_a_full_record_store_evicts_the_oldest_unreferenced_record() -> None:
    solo = _Solo(max_records=10)
    t = solo.table
    old_leaves = [f"old{i}" for i in range(9)]
    solo.up("M")
    _star(solo, "M", old_leaves, 1.0)
    assert all(t.next_hop(identity(leaf).peer_id) is not None for leaf in old_leaves)
    assert len(t._records) == 10  # full: M and its nine leaves
    # While M's routes reference them, no record of the store can go: a new origin is refused.
    solo.up("H", 2.0)
    solo.send("H", 2.0, [_rec("H", 1, "solo")])
    assert t.counters["drop_records_full"] == 1
    assert t.record(identity("H").peer_id) is None
    t.link_down(identity("M").peer_id, 3.0)  # M's leaves are referenced by nothing now
    solo.send("H", 4.0, [_rec("H", 2, "solo", "N"), _rec("N", 1, "H")], [(["N"], 100)])
    assert t.next_hop(identity("N").peer_id) == identity("H").peer_id
    assert t.counters["drop_records_full"] == 1
    assert t.counters["records_evicted"] == 2
    # The oldest unreferenced went first (in the order they became so).
    assert t.record(identity("old0").peer_id) is None and t.record(identity("old1").peer_id) is None
    assert t.record(identity("old2").peer_id) is not None and t.record(identity("M").peer_id) is not None
    # Referenced records are never evicted: H's and N's stay while others come and go.
    for i in range(20):
        solo.send(
            "H",
            5.0 + i,
            [_rec("H", 3 + i, "solo", "N", f"new{i}"), _rec(f"new{i}", 1, "H")],
            [([f"new{i}"], 100)],
        )
        solo.send("H", 5.5 + i, [], [])
    assert len(t._records) <= 10
    assert t.next_hop(identity("N").peer_id) == identity("H").peer_id
    _check_references(t)


def test_records_no_path_needs_are_not_kept() -> None:
    solo = _Solo(max_records=10)
    t = solo.table
    solo.up("M")
    # Records of throwaway keys, nine per message, no path naming them: none enters the store.
    for i in range(0, 90, 9):
        solo.send("M", 0.01 * i, [_rec(f"junk{j}", 1) for j in range(i, i + 9)])
    assert len(t._records) == 0
    assert t.counters["drop_unneeded_record"] == 90 - 32  # the last ones wait a little, unverified
    assert t.counters["records_verified"] == 0
    # Useful ones are kept: the neighbour's own, and those of a path in the same message.
    solo.send("M", 1.0, [_rec("M", 1, "solo", "X"), _rec("X", 1, "M")], [(["X"], 100)])
    assert t.next_hop(identity("X").peer_id) == identity("M").peer_id
    assert len(t._records) == 2


def test_records_before_their_path_in_an_earlier_message_still_attest_it() -> None:
    solo = _Solo()
    t = solo.table
    solo.up("M")
    solo.send("M", 0.0, [_rec("M", 1, "solo", "X"), _rec("X", 1, "M", "Y"), _rec("Y", 1, "X")])
    assert t.record(identity("Y").peer_id) is None  # not needed yet
    solo.send("M", 0.1, [], [(["X", "Y"], 100)])
    assert t.next_hop(identity("Y").peer_id) == identity("M").peer_id
    assert t.counters["records_unparked"] == 2
    # A path whose records come in a later message waits for them.
    solo.send("M", 0.2, [], [(["X", "Y", "Z"], 100)])
    assert t.next_hop(identity("Z").peer_id) is None
    solo.send("M", 0.3, [_rec("Y", 2, "X", "Z"), _rec("Z", 1, "Y")])
    assert t.next_hop(identity("Z").peer_id) == identity("M").peer_id


def test_records_unreferenced_for_record_ttl_are_dropped() -> None:
    solo = _Solo(record_ttl=60.0)
    t = solo.table
    solo.up("M")
    solo.send("M", 1.0, [_rec("M", 1, "solo", "X", "Y"), _rec("X", 1, "M"), _rec("Y", 1, "M")])
    solo.send("M", 1.0, [], [(["X"], 100), (["Y"], 100)])
    solo.send("M", 10.0, withdrawals=["X"])  # X's record is referenced by nothing from now on
    t.handle_timer(69.0)
    assert t.record(identity("X").peer_id) is not None
    t.handle_timer(70.0)
    assert t.record(identity("X").peer_id) is None
    assert t.counters["records_expired"] == 1
    # Those a route, a link or a waiting advert references stay, however old.
    t.handle_timer(1000.0)
    assert t.record(identity("Y").peer_id) is not None and t.record(identity("M").peer_id) is not None
    assert t.next_hop(identity("Y").peer_id) == identity("M").peer_id


def test_a_path_that_needs_a_record_we_dropped_pulls_it_again() -> None:
    net = VNet("ABDC", config=dataclasses.replace(MS_COSTS, record_ttl=5.0))
    for a, b in ("AB", "BD", "DC"):
        net.link(a, b)
    net.settle()
    assert net.path("A", "C") == ["B", "D", "C"]
    net.cut("B", "D")
    net.settle()
    assert net.next_hop("A", "C") is None
    net.run(10.0)  # C's record, unchanged (its links are), expires at A; B still holds it
    a = net.tables["A"]
    asked = a.counters["records_asked"]
    net.link("B", "D")
    net.settle()
    assert a.counters["records_expired"] >= 1 and a.counters["records_asked"] > asked
    assert net.path("A", "C") == ["B", "D", "C"]
    for table in net.tables.values():
        _check_references(table)


def test_records_are_pulled_once_not_pushed_with_every_path() -> None:
    # A square: A hears D's path from B and from C; D's record crosses into A once.
    net = VNet("ABCD")
    for a, b in ("AB", "AC", "BD", "CD"):
        net.link(a, b)
    net.settle()
    a = net.tables["A"]
    assert {net.names[r.next_hop] for r in a.routes(net.pid("D"))} == {"B", "C"}
    # Each corner misses only the opposite corner's record, and asks one neighbour for it.
    assert [t.counters["records_asked"] for t in net.tables.values()] == [1, 1, 1, 1]
    assert sum(t.counters["record_wants_received"] for t in net.tables.values()) == 4


def test_a_neighbour_cannot_make_us_ask_or_serve_in_a_loop() -> None:
    solo = _Solo()
    t = solo.table
    solo.up("M")
    asked = []
    for now in (1.0, 1.5, 2.0, 2.9, 3.1, 4.0, 5.2):
        solo.send("M", now, [], [(["junk0"], 100)])  # a path whose records (M's, junk0's) never come
        t.messages_to_send(now)
        asked.append(t.counters["records_asked"])
    assert asked == [2, 2, 2, 2, 4, 4, 6]  # at most one request out per record (2 RTOs of 1 s)
    # Wants beyond the serving budget are counted and dropped, whatever M asks.
    for i in range(30):
        no = solo.msg_no["M"] = solo.msg_no["M"] + 1
        solo.receive("M", RouteUpdate(7, no, wants=(solo.me.peer_id,) * 100), 6.0 + i * 0.001)
    served = t.counters["record_wants_received"] - t.counters["drop_wants_rate_limited"]
    assert t.counters["record_wants_received"] == 3000 and served <= 1000 + 4 * 100 * 0.03 + 1


def test_adverts_that_waited_for_records_pin_nothing_once_gone() -> None:
    solo = _Solo(max_records=10)
    t = solo.table
    solo.up("M")
    # Paths M never attested (its record lists only us): they wait for newer records of their ends.
    fakes = [f"fake{i}" for i in range(12)]
    solo.send(
        "M",
        0.0,
        [_rec("M", 1, "solo"), *(_rec(f, 1, "M") for f in fakes[:8])],
        [([f], 100) for f in fakes[:8]],
    )
    solo.send("M", 0.1, [_rec(f, 1, "M") for f in fakes[8:]], [([f], 100) for f in fakes[8:]])
    assert len(t._records) == 10 and t.counters["drop_records_full"] == 3
    t.link_down(identity("M").peer_id, 1.0)
    assert not t._waiting
    solo.up("H", 2.0)
    solo.send("H", 2.0, [_rec("H", 1, "solo", "N"), _rec("N", 1, "H")], [(["N"], 100)])
    assert t.next_hop(identity("N").peer_id) == identity("H").peer_id
    _check_references(t)


def test_ids_cross_a_link_once_and_survive_a_one_sided_restart() -> None:
    net = VNet("ABCDE")
    for a, b in ("AB", "BC", "CD", "DE"):
        net.link(a, b)
    net.settle()
    a, b = net.tables["A"], net.tables["B"]
    ids_before = len(a._links[net.pid("B")].out_ids)
    assert ids_before >= 1 and len(b._links[net.pid("A")].out_ids) >= 4  # B named C, D, E to A
    # A later change names the known ids by index alone: its message is far smaller than 32 bytes
    # per hop.
    sent = net.bytes["B"]
    net.sample("D", "E", 0.5)
    net.settle()
    per_path = (net.bytes["B"] - sent) / max(1, b.counters["paths_sent"])
    assert per_path < 60
    # B's view of A restarts on B's side only (A never saw the link go): B's new epoch makes A
    # define its ids again, and the tables converge.
    b.link_down(net.pid("A"), net.now)
    b.link_up(net.pid("A"), net.now)
    b.link_sample(net.pid("A"), 0.01, 0.0, net.now)
    net.flush()
    net.settle()
    assert net.walk("A", "E") == ["A", "B", "C", "D", "E"]
    assert net.walk("E", "A") == ["E", "D", "C", "B", "A"]
    malformed = b.counters["drop_malformed"]
    net.sample("D", "E", 0.01)
    net.settle()
    assert b.counters["drop_malformed"] == malformed  # nothing undecodable once it settled


def test_a_route_longer_than_one_packet_of_new_ids_still_crosses_a_link() -> None:
    # A line of 45 (paths up to 44 hops), n0 joining last: n1 then has 43-hop paths to tell it, all
    # of whose ids are new to it (32 bytes each: they do not fit one packet).
    names = [f"n{i}" for i in range(45)]
    net = VNet(names)
    for a, b in itertools.pairwise(names[1:]):
        net.link(a, b)
    net.settle()
    net.link("n0", "n1")
    net.settle()  # VNet asserts every packet fits max_packet
    assert net.walk("n0", "n44") == names
    assert net.walk("n44", "n0") == names[::-1]
    assert len(net.path("n0", "n44")) == 44
    # Each path went out based on the one before it: a new id or two each, never a whole path.
    assert net.tables["n1"].counters["paths_based"] >= 40
    assert sum(t.counters["paths_deferred"] for t in net.tables.values()) == 0


def test_a_path_whose_new_ids_do_not_fit_one_packet_waits_for_their_definitions() -> None:
    # A advertises one destination 45 hops away and nothing on the way: solo cannot base that
    # path on any other, and its 45 new ids (32 bytes each) do not fit one packet to B.
    solo = _Solo()
    line = ["A", *(f"h{i}" for i in range(44))]
    solo.up("A")
    records = [_rec("A", 1, "solo", line[1])]
    for i in range(1, len(line)):
        records.append(_rec(line[i], 1, *line[i - 1 : i + 2 : 2]))
    solo.send("A", 0.0, records, [(line[1:], 100)])
    far = identity(line[-1]).peer_id
    t = solo.table
    assert [r.next_hop for r in t.routes(far)] == [identity("A").peer_id]
    b = solo.up("B", 1.0)
    known: dict[int, PeerId] = {}

    def to_b(now: float) -> list[RouteUpdate]:
        out = []
        for dst, packet in t.messages_to_send(now):
            assert len(packet) <= t.config.max_packet
            if dst != b:
                continue  # acks and our record to A
            update = decode_update(packet[len(OVERLAY_PREFIX) + 1 :], known=known)
            known.update(enumerate(update.defined, update.first_index))
            out.append(update)
        return out

    first = to_b(1.0)
    assert t.counters["paths_deferred"] == 1
    assert far not in {e.destination for u in first for e in u.routes}  # it waits ...
    assert far in {p for u in first for p in u.defined}  # ... while its ids go ahead
    # B acknowledges those messages: the path follows, its ids named by index alone.
    acks = tuple(u.msg_no for u in first)
    solo.receive("B", RouteUpdate(9, 1, first[0].epoch, acks), 1.1)
    then = [e for u in to_b(1.2) for e in u.routes if e.destination == far]
    assert len(then) == 1 and then[0].based and then[0].hops == tuple(identity(h).peer_id for h in line)


def test_a_change_upstream_moves_the_paths_built_on_it_without_sending_them() -> None:
    # A line A-B-C-D-E-F-G: B sends A its paths to D..G based on its path to C, C's on B's
    # direct one. When the C-D link gets slower, B's metrics to D..G all grow by the same amount:
    # B sends A one entry (D's); A derives E, F and G from it.
    net = VNet("ABCDEFG")
    for x, y in itertools.pairwise("ABCDEFG"):
        net.link(x, y)
    net.settle()
    a, b = net.tables["A"], net.tables["B"]
    assert b.counters["paths_based"] >= 4
    sent, derived = b.counters["paths_sent"], a.counters["adverts_derived"]
    before = b.routes(net.pid("G"))[0].metric
    net.sample("C", "D", 0.05)
    net.sample("D", "C", 0.05)
    net.run(5.0)  # past the cost hold: the new cost is used
    net.sample("C", "D", 0.05)
    net.sample("D", "C", 0.05)
    net.settle()
    link_cost = a._links[net.pid("B")].cost
    for dest in "DEFG":
        route = a.routes(net.pid(dest))[0]
        assert route.metric == b.routes(net.pid(dest))[0].metric + link_cost
        assert [net.names[p] for p in route.path] == list("BCDEFG"[: "BCDEFG".index(dest) + 1])
    assert b.routes(net.pid("G"))[0].metric > before  # the slower link is in its metric
    assert b.counters["paths_sent"] - sent <= 2  # D's (and maybe C's re-check), not one per destination
    assert a.counters["adverts_derived"] - derived >= 3  # E, F and G


def test_bases_that_come_back_to_their_destination_are_refused() -> None:
    solo = _Solo()
    solo.up("M")
    _star(solo, "M", ["x", "y"], 1.0)
    t = solo.table
    x, y = identity("x").peer_id, identity("y").peer_id
    assert t.next_hop(x) == t.next_hop(y) == identity("M").peer_id

    def based(*entries: tuple[PeerId, PeerId]) -> None:
        no = solo.msg_no["M"] = solo.msg_no["M"] + 1
        routes = tuple(RouteEntry(pair, 5, True) for pair in entries)
        solo.receive("M", RouteUpdate(7, no, routes=routes), 2.0)

    based((x, y))  # y: M's path to x, then y (x and y list no link: unattested, no route)
    assert t.next_hop(y) is None and t.next_hop(x) is not None
    based((y, x))  # x built on y built on x
    assert t.counters["drop_path_loop"] == 1
    assert t.next_hop(x) is None and t.next_hop(y) is None  # x refused, y derived from nothing
    based((x, x))  # a base that is its own destination: a path with a repeated id
    solo.send("M", 3.0, routes=[(["x"], 100)])  # an honest path again: both come back
    assert t.next_hop(x) == identity("M").peer_id
    assert t.counters["drop_path_loop"] >= 2


def test_a_link_that_comes_back_within_the_hold_changes_no_record() -> None:
    net = ring()
    own = {n: net.tables[n].record(net.pid(n)) for n in net.tables}
    net.cut("0", "1")
    net.run(5.0)
    assert net.walk("0", "1") == ["0", "4", "3", "2", "1"]
    net.link("0", "1")
    net.settle()
    assert net.walk("0", "1") == ["0", "1"]
    assert {n: net.tables[n].record(net.pid(n)) for n in net.tables} == own  # nothing signed again
    # Without the hold, both ends sign a record without the link and again with it.
    net = ring(config=dataclasses.replace(MS_COSTS, record_hold=0.0))
    own = {n: net.tables[n].record(net.pid(n)) for n in net.tables}
    net.cut("0", "1")
    net.run(5.0)
    net.link("0", "1")
    net.settle()
    after = {n: net.tables[n].record(net.pid(n)) for n in net.tables}
    assert [n for n in own if after[n] != own[n]] == ["0", "1"]


def test_a_cut_off_destination_is_withdrawn_without_trying_the_ghosts_of_its_paths() -> None:
    # W, A and B are neighbours of each other; d hangs off B alone. When B-d fails, B withdraws
    # d. W still holds A's path (A, B, d) and A holds W's (W, B, d): stale paths through B, which
    # B itself just withdrew. Neither is tried or advertised on: both withdraw at once.
    net = VNet(["W", "A", "B", "d"])
    for x, y in (("W", "A"), ("W", "B"), ("A", "B"), ("B", "d")):
        net.link(x, y)
    net.settle()
    d = net.pid("d")
    w, a = net.tables["W"], net.tables["A"]
    assert [net.names[p] for p in w.routes(d)[1].path] == ["A", "B", "d"]  # W's backup
    before = {n: dict(t.counters) for n, t in net.tables.items()}
    net.cut("B", "d")
    net.settle()
    assert w.routes(d) == [] and a.routes(d) == []
    for name, t in (("W", w), ("A", a)):
        assert t.counters["route_changes"] - before[name]["route_changes"] == 1  # gone, once
        assert t.counters["paths_sent"] == before[name]["paths_sent"]  # no ghost advertised


def test_a_link_that_comes_back_soon_defines_no_id_again() -> None:
    names = [f"n{i}" for i in range(12)]
    net = VNet(names)
    for x, y in itertools.pairwise(names):
        net.link(x, y)
    net.settle()
    a, b = net.tables["n0"], net.tables["n1"]
    net.cut("n0", "n1")
    net.run(10.0)
    defined, paths = b.counters["ids_defined"], b.counters["paths_sent"]
    net.link("n0", "n1")
    net.settle()
    assert net.walk("n0", "n11") == names
    assert a.counters["links_resumed"] == b.counters["links_resumed"] == 1
    # The whole table again (a route to each of ten nodes), but no 32-byte id among it.
    assert b.counters["ids_defined"] == defined
    assert b.counters["paths_sent"] > paths
    # Beyond dictionary_hold the ids are forgotten: the next comeback defines them again.
    net.cut("n0", "n1")
    net.run(a.config.dictionary_hold + 1.0)
    defined = b.counters["ids_defined"]
    net.link("n0", "n1")
    net.settle()
    assert net.walk("n0", "n11") == names
    assert a.counters["links_resumed"] == 1 and b.counters["ids_defined"] - defined >= 10


def test_a_resumed_link_whose_other_end_forgot_it_starts_again() -> None:
    # n0 keeps its ids of the link; n1 lost them (as after a restart): n0's messages name ids
    # n1 cannot decode until n1's new epoch makes n0 define them all again.
    net = line()
    net.cut("A", "B")
    net.tables["B"]._dormant.clear()
    net.link("A", "B")
    net.settle()
    assert net.tables["A"].counters["links_resumed"] == 1
    assert net.tables["B"].counters["links_resumed"] == 0
    assert net.path("A", "C") == ["B", "C"]
    assert net.path("C", "A") == ["B", "A"]
    malformed = net.tables["B"].counters["drop_malformed"]
    net.sample("B", "C", 0.02)
    net.settle()
    assert net.tables["B"].counters["drop_malformed"] == malformed
    assert net.path("A", "C") == ["B", "C"]


def test_a_neighbour_moving_a_base_again_and_again_is_made_to_wait() -> None:
    solo = _Solo(derive_rate=10.0, derive_burst=100.0)
    solo.up("M")
    t = solo.table
    m, b = identity("M").peer_id, identity("b").peer_id
    leaves = [identity(f"leaf{i}").peer_id for i in range(60)]

    def update(now: float, *routes: RouteEntry) -> None:
        no = solo.msg_no["M"] = solo.msg_no.get("M", 0) + 1
        solo.receive("M", RouteUpdate(7, no, routes=routes), now)

    update(1.0, RouteEntry((b,), 100), *(RouteEntry((b, leaf), 10, True) for leaf in leaves))
    derived = t.counters["adverts_derived"]
    update(1.0, RouteEntry((b,), 200))  # 60 adverts derived again
    update(1.0, RouteEntry((b,), 300))  # 60 more: past the burst of 100
    assert t.counters["adverts_derived"] - derived == 120
    update(1.0, RouteEntry((b,), 400))  # in debt: dropped before any work
    assert t.counters["drop_derive_limited"] == 1
    assert t.counters["adverts_derived"] - derived == 120
    update(5.0, RouteEntry((b,), 500))  # 40 tokens back after 4 s: out of debt, applied
    assert t.counters["adverts_derived"] - derived == 180
    assert t.next_hop(m) == m
