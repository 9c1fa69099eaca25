"""A heap of deadlines, one per key, so that an endpoint with many connections finds its next timer
in O(log n) and visits only the connections that are due.

Changing a key's deadline pushes a new entry and leaves the old one in the heap (lazy invalidation):
an entry counts only while it is the key's latest. Stale entries are dropped when they reach the
top, and the heap is rebuilt when they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_COMPACT_FACTOR: Final = 4  # rebuild once the heap is this many times the live keys (plus slack)
_COMPACT_SLACK: Final = 64


class TimerHeap(Generic[K]):
    """At most one deadline per key; the earliest is at hand."""

    __slots__ = ("_heap", "_latest", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._latest: dict[K, tuple[float, int]] = {}  # key -> (deadline, seq) of its live entry
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._latest)

    def set(self, key: K, deadline: float | None) -> None:
        """``key`` is due at ``deadline`` from now on (None: not at all)."""
        if deadline is None:
            self._latest.pop(key, None)
            return
        latest = self._latest.get(key)
        if latest is not None and latest[0] == deadline:
            return
        seq = next(self._seq)
        self._latest[key] = (deadline, seq)
        heapq.heappush(self._heap, (deadline, seq, key))
        if len(self._heap) > _COMPACT_FACTOR * len(self._latest) + _COMPACT_SLACK:
            self._heap = [(d, s, k) for k, (d, s) in self._latest.items()]
            heapq.heapify(self._heap)

    def discard(self, key: K) -> None:
        self._latest.pop(key, None)

    def next_deadline(self) -> float | None:
        """The earliest deadline of any key."""
        heap, latest = self._heap, self._latest
        while heap:
            deadline, seq, key = heap[0]
            live = latest.get(key)
            if live is not None and live[1] == seq:
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[K]:
        """The keys due at ``now`` (deadline <= now), earliest first; they leave the heap."""
        heap, latest = self._heap, self._latest
        due: list[K] = []
        while heap and heap[0][0] <= now:
            _deadline, seq, key = heapq.heappop(heap)
            live = latest.get(key)
            if live is not None and live[1] == seq:
                del latest[key]
                due.append(key)
        return due
