"""Datagram Packetization Layer Path MTU Discovery (DPLPMTUD, RFC 8899).

Sizes are UDP payload sizes. The search starts at ``base`` (BASE_PLPMTU, assumed to always work) once
the path has answered once (the first RTT sample, RFC 8899 §5.2 "BASE" state), and looks for the
largest size up to ``maximum`` (MAX_PLPMTU) that the path carries:

* the first probe tries ``maximum`` itself (the common case: the configured bound works), then a
  binary search between the largest confirmed size and the smallest refuted one, until they are
  closer than ``GRANULARITY`` bytes;
* a probe is a padded PING in its own packet, so probing never risks application data; an
  acknowledged probe raises the PLPMTU (§5.3.1); ``MAX_PROBES`` (3) lost probes of one size refute
  it (§5.1.2); a lost probe is not a congestion signal (RFC 9000 §14.4);
* a local "datagram too big" error (EMSGSIZE, the PTB of §4.6) caps the search below that size and
  falls back to ``base`` if the current size is affected;
* persistent congestion at a size above ``base`` is taken as a black hole (§4.3): fall back to
  ``base`` and search again;
* after ``RAISE_TIMER`` seconds in SEARCH_COMPLETE, search again for a larger size (§5.1.1).

The states and the events that move between them are the table ``TRANSITIONS``.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["GRANULARITY", "MAX_PROBES", "RAISE_TIMER", "TRANSITIONS", "PmtuSearch", "PmtuState"]

MAX_PROBES = 3
RAISE_TIMER = 600.0
GRANULARITY = 16


class PmtuState(Enum):
    """The DPLPMTUD states of RFC 8899 §5.2 that this implementation uses."""

    DISABLED = "disabled"
    BASE = "base"
    SEARCHING = "searching"
    SEARCH_COMPLETE = "search_complete"


TRANSITIONS: dict[tuple[PmtuState, str], PmtuState] = {
    (PmtuState.BASE, "path_confirmed"): PmtuState.SEARCHING,
    (PmtuState.BASE, "too_big"): PmtuState.BASE,
    (PmtuState.SEARCHING, "converged"): PmtuState.SEARCH_COMPLETE,
    (PmtuState.SEARCHING, "too_big"): PmtuState.SEARCHING,
    (PmtuState.SEARCHING, "black_hole"): PmtuState.SEARCHING,
    (PmtuState.SEARCH_COMPLETE, "raise_timer"): PmtuState.SEARCHING,
    (PmtuState.SEARCH_COMPLETE, "too_big"): PmtuState.SEARCHING,
    (PmtuState.SEARCH_COMPLETE, "black_hole"): PmtuState.SEARCHING,
}
"""``(state, event) -> next state``; an event missing for a state is ignored in that state."""


class PmtuSearch:
    """The PLPMTU of one path and the probing that raises it."""

    __slots__ = ("_fails", "_hi", "_probe", "_tried_max", "base", "current", "maximum", "state", "timer")

    def __init__(self, base: int, maximum: int, enabled: bool) -> None:
        self.base = base
        self.maximum = maximum
        self.current = base
        self.state = PmtuState.BASE if enabled and maximum > base else PmtuState.DISABLED
        self._hi = maximum  # largest size not yet refuted
        self._probe = 0  # size of the probe in flight, 0 if none
        self._fails = 0  # lost probes of the candidate size
        self._tried_max = False
        self.timer: float | None = None  # when SEARCH_COMPLETE turns to SEARCHING again

    def _event(self, event: str) -> bool:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            return False
        self.state = new
        return True

    def _candidate(self) -> int:
        lo, hi = self.current, self._hi
        if not self._tried_max:
            return hi
        return (lo + hi + 1) // 2

    def _check_converged(self, now: float) -> None:
        if self.state is PmtuState.SEARCHING and self._hi - self.current < GRANULARITY:
            self._event("converged")
            self.timer = now + RAISE_TIMER if self.current < self.maximum else None

    def on_path_confirmed(self, now: float) -> None:
        """The first RTT sample: the path works at ``base``; start searching."""
        if self._event("path_confirmed"):
            self._check_converged(now)

    def next_probe(self) -> int | None:
        """The size of the probe to send now, or None. The caller sends it and reports back."""
        if self.state is not PmtuState.SEARCHING or self._probe:
            return None
        size = self._candidate()
        if size <= self.current:
            return None
        self._probe = size
        return size

    def on_probe_acked(self, size: int, now: float) -> bool:
        """A probe of ``size`` was acknowledged; return whether ``current`` grew."""
        if size == self._probe:
            self._probe = 0
            self._fails = 0
            self._tried_max = True
        if size <= self.current or size > self._hi:
            return False
        self.current = size
        self._check_converged(now)
        return True

    def on_probe_lost(self, size: int, now: float) -> None:
        """A probe of ``size`` was declared lost."""
        if size != self._probe:
            return
        self._probe = 0
        self._fails += 1
        if self._fails >= MAX_PROBES:
            self._fails = 0
            self._tried_max = True
            if size - 1 < self._hi:
                self._hi = size - 1
            self._check_converged(now)

    def on_too_big(self, size: int, now: float) -> bool:
        """A datagram of ``size`` bytes could not be sent (EMSGSIZE); return whether ``current``
        dropped."""
        if size > self._hi:
            return False  # larger than anything this search sends: nothing learnt
        new_hi = max(self.base, size - 1)
        if new_hi < self._hi:
            self._hi = new_hi
        self._tried_max = True
        if self._probe >= size:
            self._probe = 0
            self._fails = 0
        dropped = self.current >= size and self.current > self.base
        if dropped:
            self.current = self.base
        if self._event("too_big") and self.state is PmtuState.SEARCHING:
            self.timer = None
            self._check_converged(now)
        return dropped

    def on_black_hole(self, now: float) -> bool:
        """Persistent congestion at the current size: return whether ``current`` fell to ``base``."""
        if self.current <= self.base or not self._event("black_hole"):
            return False
        self._hi = self.current - 1
        self.current = self.base
        self._probe = 0
        self._fails = 0
        self._tried_max = True
        self.timer = None
        self._check_converged(now)
        return True

    def on_timer(self, now: float) -> None:
        """The raise timer: search again for a larger size."""
        if self.timer is not None and now >= self.timer:
            self.timer = None
            if self._event("raise_timer"):
                self._hi = self.maximum
                self._tried_max = False
                self._fails = 0
