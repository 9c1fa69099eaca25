"""NewReno congestion control in bytes (RFC 9002 §7, pseudocode in Appendix B).

``cwnd`` starts at ``10 * max_datagram_size`` and never drops below ``2 * max_datagram_size``.
Slow start grows the window by the bytes acknowledged; congestion avoidance by one
``max_datagram_size`` per window acknowledged (RFC 9002 §7.3.3); a loss halves the window once per
recovery period (§7.3.2); persistent congestion collapses it to the minimum (§7.6).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coremesh.reliability.recovery import SentRecord

__all__ = ["INITIAL_WINDOW_PACKETS", "LOSS_REDUCTION_FACTOR", "MINIMUM_WINDOW_PACKETS", "NewReno"]

INITIAL_WINDOW_PACKETS = 10
MINIMUM_WINDOW_PACKETS = 2
LOSS_REDUCTION_FACTOR = 0.5


class NewReno:
    """The window arithmetic of NewReno; ``bytes_in_flight`` is tracked by the caller."""

    __slots__ = ("_ca_acked", "cwnd", "max_datagram_size", "recovery_start", "ssthresh")

    def __init__(self, max_datagram_size: int) -> None:
        self.max_datagram_size = max_datagram_size
        self.cwnd = INITIAL_WINDOW_PACKETS * max_datagram_size
        self.ssthresh: float = float("inf")
        self.recovery_start: float | None = None
        self._ca_acked = 0

    @property
    def minimum_window(self) -> int:
        return MINIMUM_WINDOW_PACKETS * self.max_datagram_size

    def in_recovery(self, time_sent: float) -> bool:
        """Whether a packet sent at ``time_sent`` was sent during the current recovery period."""
        return self.recovery_start is not None and time_sent <= self.recovery_start

    def on_packets_acked(self, acked: Iterable[SentRecord], app_limited: bool = False) -> None:
        """Grow the window for newly acknowledged packets, those sent after the recovery period
        started (RFC 9002 §7.3.2); not at all when ``app_limited`` (§7.8: the window was not fully
        used)."""
        if app_limited:
            return
        recovery_start = self.recovery_start
        nbytes = 0
        if recovery_start is None:
            for rec in acked:
                nbytes += rec[1]
        else:
            for rec in acked:
                if rec[0] > recovery_start:
                    nbytes += rec[1]
        if nbytes:
            self.on_bytes_acked(nbytes)

    def on_bytes_acked(self, nbytes: int) -> None:
        """Grow the window for ``nbytes`` acknowledged, all sent outside the recovery period.

        Slow start adds them; congestion avoidance adds one ``max_datagram_size`` per window of
        acknowledged bytes (RFC 9002 §7.3.3)."""
        if self.cwnd < self.ssthresh:
            self.cwnd += nbytes
            return
        acked = self._ca_acked + nbytes
        cwnd = self.cwnd
        while acked >= cwnd:
            acked -= cwnd
            cwnd += self.max_datagram_size
        self.cwnd = cwnd
        self._ca_acked = acked

    def on_congestion_event(self, time_sent: float, now: float) -> None:
        """React to a loss of a packet sent at ``time_sent`` (RFC 9002 §7.3.2, §B.6)."""
        if self.in_recovery(time_sent):
            return
        self.recovery_start = now
        self.cwnd = max(int(self.cwnd * LOSS_REDUCTION_FACTOR), self.minimum_window)
        self.ssthresh = self.cwnd
        self._ca_acked = 0

    def on_persistent_congestion(self) -> None:
        """Collapse the window (RFC 9002 §7.6.2)."""
        self.cwnd = self.minimum_window
        self.recovery_start = None
        self._ca_acked = 0

    def set_max_datagram_size(self, size: int) -> None:
        """Follow a path MTU change; the window stays at least the new minimum."""
        self.max_datagram_size = size
        if self.cwnd < self.minimum_window:
            self.cwnd = self.minimum_window
