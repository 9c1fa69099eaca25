"""The endpoint's deadline heap (coremesh/endpoint/timers.py): one live deadline per key, earliest
first, stale entries never reported."""

from __future__ import annotations

import random

from coremesh.endpoint.timers import TimerHeap


def test_the_latest_deadline_of_a_key_is_the_only_one_that_counts() -> None:
    heap: TimerHeap[str] = TimerHeap()
    heap.set("a", 5.0)
    heap.set("b", 3.0)
    heap.set("b", 7.0)  # moved later: its 3.0 entry is stale
    assert heap.next_deadline() == 5.0
    heap.set("a", None)
    assert heap.next_deadline() == 7.0 and len(heap) == 1
    heap.set("a", 1.0)
    heap.discard("b")
    assert heap.pop_due(10.0) == ["a"]
    assert heap.next_deadline() is None and heap.pop_due(100.0) == []


def test_pop_due_returns_each_due_key_once_earliest_first() -> None:
    heap: TimerHeap[int] = TimerHeap()
    for key, deadline in ((1, 4.0), (2, 2.0), (3, 9.0), (1, 3.0), (1, 4.0)):
        heap.set(key, deadline)
    assert heap.pop_due(4.0) == [2, 1]
    assert heap.next_deadline() == 9.0


def test_it_agrees_with_a_full_scan_under_random_updates() -> None:
    rng = random.Random(7)
    heap: TimerHeap[int] = TimerHeap()
    truth: dict[int, float] = {}
    now = 0.0
    for _ in range(20_000):
        key = rng.randrange(50)
        roll = rng.random()
        if roll < 0.6:
            deadline = now + rng.choice([0.0, 0.1, 1.0, rng.random() * 5])
            heap.set(key, deadline)
            truth[key] = deadline
        elif roll < 0.7:
            heap.discard(key)
            truth.pop(key, None)
        else:
            now += rng.random() * 0.5
            due = heap.pop_due(now)
            expected = sorted((k for k, d in truth.items() if d <= now), key=lambda k: truth[k])
            assert sorted(due) == sorted(expected)
            assert [truth[k] for k in due] == sorted(truth[k] for k in due)
            for k in due:
                del truth[k]
        assert heap.next_deadline() == (min(truth.values()) if truth else None)
        assert len(heap) == len(truth)
