"""The pull-based lookup iterator, fed by hand."""

from __future__ import annotations

from coremesh.addr import Address
from coremesh.dht import FINISHED, WAITING_AT_CAPACITY, ClosestPeersIter, Waiting
from coremesh.identity import PeerId

TARGET = PeerId(bytes(32))


def pid(distance: int) -> PeerId:
    return PeerId(distance.to_bytes(32, "big"))


def contact(distance: int) -> tuple[PeerId, Address]:
    return pid(distance), Address("10.0.0.1", distance % 65535 + 1)


def test_alpha_parallelism_then_capacity() -> None:
    it = ClosestPeersIter(TARGET, [contact(d) for d in (50, 40, 30, 20)], k=3, alpha=2)
    first = it.next(0.0)
    second = it.next(0.0)
    assert isinstance(first, Waiting) and first.peer_id == pid(20)
    assert isinstance(second, Waiting) and second.peer_id == pid(30)
    assert it.next(0.0) is WAITING_AT_CAPACITY
    assert it.on_success(pid(20), [contact(5), contact(6)])
    step = it.next(0.0)
    assert isinstance(step, Waiting) and step.peer_id == pid(5)  # closer peers are asked first


def test_finishes_when_k_closest_answered() -> None:
    it = ClosestPeersIter(TARGET, [contact(d) for d in (10, 20, 30, 40)], k=2, alpha=3)
    asked = [it.next(0.0) for _ in range(3)]
    assert all(isinstance(s, Waiting) for s in asked)
    it.on_success(pid(10), [])
    assert it.next(0.0) == Waiting(*contact(40))  # a slot freed up
    assert it.next(0.0) is WAITING_AT_CAPACITY
    it.on_success(pid(20), [])
    assert it.next(0.0) is FINISHED  # the 2 closest answered; 30 is still in flight, no matter
    assert it.closest() == [contact(10), contact(20)]


def test_failures_are_skipped_and_exhaustion_finishes() -> None:
    it = ClosestPeersIter(TARGET, [contact(d) for d in (10, 20)], k=3, alpha=3)
    a, b = it.next(0.0), it.next(0.0)
    assert isinstance(a, Waiting) and isinstance(b, Waiting)
    assert it.next(0.0) is WAITING_AT_CAPACITY
    it.on_failure(pid(10))
    it.on_success(pid(20), [contact(20), contact(10)])  # nothing new
    assert it.next(0.0) is FINISHED
    assert it.closest() == [contact(20)]


def test_hops_and_unexpected_answers() -> None:
    it = ClosestPeersIter(TARGET, [contact(100)], k=1, alpha=1)
    assert it.next(0.0) == Waiting(*contact(100))
    assert not it.on_success(pid(7), [])  # never asked
    it.on_success(pid(100), [contact(50)])
    assert it.next(0.0) == Waiting(*contact(50))
    it.on_success(pid(50), [contact(3)])
    assert it.next(0.0) == Waiting(*contact(3))
    it.on_success(pid(3), [])
    assert it.next(0.0) is FINISHED
    assert it.hops == 3


def test_stalled_lookup_widens_parallelism() -> None:
    seeds = [contact(d) for d in range(10, 20)]
    it = ClosestPeersIter(TARGET, seeds, k=5, alpha=1)
    step = it.next(0.0)
    assert isinstance(step, Waiting)
    it.on_success(step.peer_id, [])  # no progress: alpha (1) answers without progress -> stalled
    assert it.stalled
    waiting = []
    while isinstance(s := it.next(0.0), Waiting):
        waiting.append(s)
    assert len(waiting) == 5  # parallelism is now k


def test_value_mode_stops_on_value_and_excludes_self() -> None:
    me = pid(1)
    it = ClosestPeersIter(TARGET, [contact(1), contact(9), contact(8)], k=3, alpha=3, exclude=me)
    steps = [it.next(0.0), it.next(0.0)]
    assert [s.peer_id for s in steps if isinstance(s, Waiting)] == [pid(8), pid(9)]
    it.on_value(pid(9))
    assert it.next(0.0) is FINISHED
    assert it.value_from == pid(9) and it.hops == 1


def test_candidates_are_bounded() -> None:
    it = ClosestPeersIter(TARGET, [], k=2, alpha=1, max_candidates=4)
    for d in range(100, 0, -1):
        it._insert(pid(d), Address("10.0.0.1", 1), 1)
    assert len(it._entries) == 4
    assert [e.peer_id for e in it._entries] == [pid(1), pid(2), pid(3), pid(4)]


def test_retry_and_late_seeds() -> None:
    it = ClosestPeersIter(TARGET, [contact(10)], k=2, alpha=1)
    assert it.next(0.0) == Waiting(*contact(10))
    assert it.retry(pid(10))  # lost: ask again
    assert it.next(0.0) == Waiting(*contact(10))
    it.add_peers([contact(5)])  # a seed that answered late joins the running lookup
    assert it.next(0.0) is WAITING_AT_CAPACITY
    it.on_success(pid(10), [])
    assert it.next(0.0) == Waiting(*contact(5))
    it.on_success(pid(5), [])
    assert it.next(0.0) is FINISHED
    assert not it.retry(pid(5))


def test_does_not_finish_while_a_closer_peer_is_in_flight() -> None:
    it = ClosestPeersIter(TARGET, [contact(d) for d in (1, 20, 30)], k=2, alpha=3)
    for _ in range(3):
        assert isinstance(it.next(0.0), Waiting)
    it.on_success(pid(20), [])
    it.on_success(pid(30), [])
    assert it.next(0.0) is WAITING_AT_CAPACITY  # 1 is closer and has not answered yet
    it.on_success(pid(1), [])
    assert it.next(0.0) is FINISHED
    assert it.closest() == [contact(1), contact(20)]
