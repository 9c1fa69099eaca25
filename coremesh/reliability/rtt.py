"""Round-trip time estimation (RFC 9002 §5)."""

from __future__ import annotations

__all__ = ["GRANULARITY", "RttEstimator"]

GRANULARITY = 0.001
"""kGranularity of RFC 9002 §6.1.2: the timer granularity, in seconds."""


class RttEstimator:
    """Keeps ``latest_rtt``, ``min_rtt``, ``smoothed_rtt`` and ``rttvar`` (RFC 9002 §5.3).

    Before the first sample ``smoothed_rtt`` is ``initial_rtt`` and ``rttvar`` half of it
    (RFC 9002 §5.3, §6.2.2); ``min_rtt`` and ``latest_rtt`` are 0.0 until then. ``max_ack_delay``
    is the peer's: both peers of a connection share one ``ReliabilityConfig``.
    """

    __slots__ = ("has_sample", "latest_rtt", "max_ack_delay", "min_rtt", "pto", "rttvar", "smoothed_rtt")

    def __init__(self, initial_rtt: float, max_ack_delay: float) -> None:
        self.max_ack_delay = max_ack_delay
        self.has_sample = False
        self.latest_rtt = 0.0
        self.min_rtt = 0.0
        self.smoothed_rtt = initial_rtt
        self.rttvar = initial_rtt / 2
        self.pto = self.pto_base()  # cached: read for every timer query

    def update(self, latest_rtt: float, ack_delay: float) -> None:
        """Take one RTT sample; ``ack_delay`` is the delay the peer reported, in seconds."""
        self.latest_rtt = latest_rtt
        if not self.has_sample:
            # RFC 9002 §5.3: the first sample initialises the estimator.
            self.has_sample = True
            self.min_rtt = latest_rtt
            self.smoothed_rtt = latest_rtt
            self.rttvar = latest_rtt / 2
            self.pto = self.pto_base()
            return
        if latest_rtt < self.min_rtt:
            self.min_rtt = latest_rtt
        # The reported delay is capped at the peer's max_ack_delay, and only subtracted when that
        # does not take the sample below min_rtt (RFC 9002 §5.3).
        if ack_delay > self.max_ack_delay:
            ack_delay = self.max_ack_delay
        adjusted = latest_rtt
        if latest_rtt >= self.min_rtt + ack_delay:
            adjusted = latest_rtt - ack_delay
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.smoothed_rtt - adjusted)
        self.smoothed_rtt = 0.875 * self.smoothed_rtt + 0.125 * adjusted
        self.pto = self.pto_base()

    def pto_base(self) -> float:
        """The probe timeout before backoff: smoothed_rtt + max(4*rttvar, kGranularity) + max_ack_delay
        (RFC 9002 §6.2.1)."""
        return self.smoothed_rtt + max(4 * self.rttvar, GRANULARITY) + self.max_ack_delay

    def loss_delay(self) -> float:
        """The time threshold of RFC 9002 §6.1.2: 9/8 * max(smoothed_rtt, latest_rtt), at least
        kGranularity."""
        delay = 1.125 * max(self.latest_rtt, self.smoothed_rtt)
        return delay if delay > GRANULARITY else GRANULARITY
