"""A virtual clock: time that moves only when the simulator (or a test) says so."""

from __future__ import annotations

import math


class VirtualClock:
    """Monotonic virtual time in seconds. It never goes backwards and never reads a real clock.

    Calling the clock returns ``now``, so it can stand in for ``loop.time`` or ``time.monotonic``.
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"VirtualClock start must be a finite number, got {start!r}")
        self._now = float(start)

    @property
    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance_to(self, t: float) -> None:
        """Move to absolute time ``t``. Moving to the current time is a no-op; backwards is an error."""
        if not t >= self._now:  # also refuses NaN
            raise ValueError(f"virtual time cannot go backwards: now={self._now!r}, asked for {t!r}")
        if t == math.inf:
            raise ValueError("virtual time cannot advance to infinity")
        self._now = float(t)

    def advance(self, dt: float) -> None:
        """Move forward by ``dt`` seconds (``dt >= 0``)."""
        if not dt >= 0:
            raise ValueError(f"virtual time cannot go backwards: advance({dt!r})")
        self.advance_to(self._now + dt)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r})"
