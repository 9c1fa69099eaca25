"""Received packet numbers, and when to acknowledge them (RFC 9000 §13.2).

``AckTracker`` records every packet number received as ascending inclusive ranges, decides when an
ACK frame is due and encodes it:

* after ``threshold`` ack-eliciting packets, or ``max_ack_delay`` after the first unacknowledged one
  (RFC 9000 §13.2.1, §13.2.2);
* at once when an ack-eliciting packet arrives out of order (a gap below it, or it fills a gap).

Memory is bounded (RFC 9000 §13.2.3, §13.2.4): at most ``MAX_ACK_RANGES`` ranges are kept; the
oldest range goes when a new one would exceed that, and a range below the newest is retired once it
has been reported, unchanged, in ``RETIRE_AFTER_REPORTS`` ACK frames. Packet numbers below the
retired ranges are "old": the caller processes them again (its frames are idempotent), but they are
not acknowledged again, so the peer may retransmit their content.
"""

from __future__ import annotations

import math
from bisect import bisect_right

from coremesh.reliability.frames import MAX_ACK_RANGES, encode_ack

__all__ = ["DUPLICATE", "IN_ORDER", "OLD", "OUT_OF_ORDER", "RETIRE_AFTER_REPORTS", "AckTracker"]

IN_ORDER = 0
OUT_OF_ORDER = 1
DUPLICATE = 2
OLD = 3

RETIRE_AFTER_REPORTS = 4

_NOW = -math.inf  # ``ack_at`` of an ACK due at once
_NEVER = math.inf  # ``ack_at`` with nothing to acknowledge


def _start(entry: list[int]) -> int:
    return entry[0]


class AckTracker:
    """Tracks received packet numbers of one connection and schedules ACK frames."""

    __slots__ = (
        "_eliciting",
        "_floor",
        "_max_ack_delay",
        "_ranges",
        "_threshold",
        "ack_at",
        "largest",
        "largest_time",
        "wants_ack",
    )

    def __init__(self, max_ack_delay: float, threshold: int) -> None:
        self._max_ack_delay = max_ack_delay
        self._threshold = threshold
        # Ascending [smallest, largest, reports since last change] entries.
        self._ranges: list[list[int]] = []
        self._floor = 0
        self._eliciting = 0
        # Plain attributes, read by the stream on every packet it builds:
        self.wants_ack = False
        """Whether an ack-eliciting packet awaits acknowledgement (worth piggybacking an ACK)."""
        self.ack_at = _NEVER
        """When an ACK frame must be sent, alone if nothing else goes out: due once ``now >= ack_at``
        (-inf: at once; +inf: nothing to acknowledge)."""
        self.largest = -1
        self.largest_time = 0.0

    # ----------------------------------------------------------------------------- receiving

    def on_packet(self, pn: int, ack_eliciting: bool, now: float) -> int:
        """Record packet ``pn``; return ``IN_ORDER``, ``OUT_OF_ORDER``, ``DUPLICATE`` or ``OLD``."""
        ranges = self._ranges
        if ranges:
            last = ranges[-1]
            if pn == last[1] + 1:
                last[1] = pn
                last[2] = 0
                self.largest = pn
                self.largest_time = now
                if ack_eliciting:
                    self._on_eliciting(now)
                return IN_ORDER
            status = self._insert(pn)
            if status >= DUPLICATE:
                return status
        else:
            ranges.append([pn, pn, 0])
            status = IN_ORDER if pn == 0 else OUT_OF_ORDER
        if pn > self.largest:
            self.largest = pn
            self.largest_time = now
        if ack_eliciting:
            if status == OUT_OF_ORDER:
                self.ack_at = _NOW
            self._on_eliciting(now)
        return status

    def _on_eliciting(self, now: float) -> None:
        self._eliciting += 1
        self.wants_ack = True
        if self._eliciting >= self._threshold:
            self.ack_at = _NOW
        elif self.ack_at == _NEVER:
            self.ack_at = now + self._max_ack_delay

    def _insert(self, pn: int) -> int:
        if pn < self._floor:
            return OLD
        ranges = self._ranges
        i = bisect_right(ranges, pn, key=_start)
        if i > 0:
            prev = ranges[i - 1]
            if pn <= prev[1]:
                return DUPLICATE
            if pn == prev[1] + 1:
                prev[1] = pn
                prev[2] = 0
                if i < len(ranges) and ranges[i][0] == pn + 1:
                    prev[1] = ranges[i][1]
                    del ranges[i]
                return OUT_OF_ORDER
        if i < len(ranges) and ranges[i][0] == pn + 1:
            ranges[i][0] = pn
            ranges[i][2] = 0
            return OUT_OF_ORDER
        ranges.insert(i, [pn, pn, 0])
        if len(ranges) > MAX_ACK_RANGES:
            self._floor = ranges[0][1] + 1
            del ranges[0]
        return OUT_OF_ORDER

    # ----------------------------------------------------------------------------- acknowledging

    @property
    def deadline(self) -> float | None:
        """When a delayed ACK falls due, or None (also None once it is due at once)."""
        at = self.ack_at
        return None if math.isinf(at) else at  # due at once (-inf) or nothing to acknowledge (+inf)

    def ack_due(self, now: float) -> bool:
        """Whether an ACK frame must be sent now, alone if nothing else goes out (``now >= ack_at``)."""
        return now >= self.ack_at

    def on_timer(self, now: float) -> None:
        """Turn a delayed ACK whose deadline passed into an immediate one."""
        if now >= self.ack_at:
            self.ack_at = _NOW

    def build_ack(self, now: float, max_bytes: int) -> bytes:
        """Encode an ACK frame of at most ``max_bytes`` bytes and mark everything acknowledged."""
        ranges = self._ranges
        desc = [(r[0], r[1]) for r in reversed(ranges)]
        delay_us = int((now - self.largest_time) * 1_000_000)
        if delay_us < 0:
            delay_us = 0
        frame = encode_ack(desc, delay_us)
        while len(frame) > max_bytes and len(desc) > 1:
            del desc[len(desc) // 2 :]
            frame = encode_ack(desc, delay_us)
        self._eliciting = 0
        self.wants_ack = False
        self.ack_at = _NEVER
        # Retire lower ranges once they have been reported enough times (RFC 9000 §13.2.4).
        top = len(ranges) - 1
        for k in range(top):
            ranges[k][2] += 1
        while len(ranges) > 1 and ranges[0][2] >= RETIRE_AFTER_REPORTS:
            self._floor = ranges[0][1] + 1
            del ranges[0]
        return frame

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges currently tracked, ascending (for tests and statistics)."""
        return [(r[0], r[1]) for r in self._ranges]
