"""The token bucket every rate limit in the package uses, sans-IO: time is passed in.

The TURN server limits each allocation's bandwidth, the keyed relay each peer's bytes and packets
(and its PEER_UNKNOWN notices), the DHT node the requests it answers per source. They all need the
same arithmetic, exact against a hand-driven clock, so it is written once here.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` banked; starts full.

    A ``now`` earlier than one already seen adds nothing (the clock is trusted to be monotonic, and
    a step back must not mint tokens); the bucket then waits until time passes its latest ``now``.
    """

    __slots__ = ("_last", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if not rate > 0 or not capacity > 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._tokens = float(capacity)
        self._last = now

    def tokens(self, now: float) -> float:
        """The tokens banked at ``now``."""
        self._refill(now)
        return self._tokens

    def consume(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are that many; otherwise take nothing and say False."""
        self._refill(now)
        if amount <= self._tokens:
            self._tokens -= amount
            return True
        return False

    def charge(self, amount: float, now: float) -> None:
        """Take ``amount`` tokens, into debt if need be: for work already done, paid afterwards
        (the bucket has no tokens, and :meth:`consume` refuses, until the debt is repaid)."""
        self._refill(now)
        self._tokens -= amount

    def idle_full(self, now: float) -> bool:
        """Whether nothing touched the bucket for a whole refill (``capacity / rate`` seconds).

        It is then full, exactly like a new bucket: a table of buckets per source may forget it
        without changing any decision.
        """
        return now - self._last >= self.capacity / self.rate

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
