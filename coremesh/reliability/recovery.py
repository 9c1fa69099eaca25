"""Sent-packet tracking, loss detection and the probe timeout (RFC 9002 §6, Appendix A).

Only ack-eliciting packets are tracked (ACK-only packets are neither retransmitted nor counted in
flight, RFC 9002 §2), so the sent-packet map holds at most a congestion window of packets plus the
PTO probes. A record is a plain tuple, to keep the per-packet cost low::

    (time_sent, sent_bytes, flags, stream_ranges)

``flags`` says which retransmittable frames the packet carried (``F_*``); ``stream_ranges`` is a
flat tuple ``(start0, end0, start1, end1, ...)`` of the stream bytes it carried, or None.

Loss detection declares a packet lost when a later one is acknowledged and either
``kPacketThreshold`` (3) packets or ``kTimeThreshold`` (9/8) RTTs separate them (§6.1). When no loss
time is pending and ack-eliciting packets are in flight, the probe timeout (§6.2) fires
``pto * 2**pto_count`` (at most ``MAX_PTO_PERIOD``) after the last ack-eliciting packet was sent.
This module also owns the NewReno controller and feeds it acknowledgements, losses and persistent
congestion (§7.6).
"""

from __future__ import annotations

from coremesh.errors import RemoteProtocolError
from coremesh.reliability.codes import ErrorCode
from coremesh.reliability.congestion import NewReno
from coremesh.reliability.rtt import RttEstimator

__all__ = [
    "F_CLOSE",
    "F_MAX_DATA",
    "F_PING",
    "F_PROBE",
    "MAX_PTO_PERIOD",
    "PACKET_THRESHOLD",
    "PERSISTENT_CONGESTION_THRESHOLD",
    "Recovery",
    "SentRecord",
]

PACKET_THRESHOLD = 3
PERSISTENT_CONGESTION_THRESHOLD = 3
MAX_PTO_PERIOD = 10.0
"""The backed-off probe timeout never exceeds this many seconds (unless the base PTO does): during a
long outage the path is still probed every 10 s. RFC 9002 leaves the cap to the idle timeout, which
the connection layer enforces."""

F_MAX_DATA = 1
F_CLOSE = 2
F_PROBE = 4  # a path MTU probe: its loss is not a congestion signal (RFC 9000 §14.4)
F_PING = 8

SentRecord = tuple[float, int, int, tuple[int, ...] | None]

_EMPTY: list[tuple[int, SentRecord]] = []


class Recovery:
    """Tracks packets in flight; turns ACK frames and timeouts into acknowledged and lost records."""

    __slots__ = (
        "_first",
        "_first_sample_time",
        "bytes_in_flight",
        "cc",
        "largest_acked",
        "last_eliciting_time",
        "loss_time",
        "pto_count",
        "rtt",
        "sent",
    )

    def __init__(self, initial_rtt: float, max_ack_delay: float, max_datagram_size: int) -> None:
        self.rtt = RttEstimator(initial_rtt, max_ack_delay)
        self.cc = NewReno(max_datagram_size)
        self.sent: dict[int, SentRecord] = {}
        # No key of ``sent`` is below ``_first``. (Iterating a dict from its start is O(deleted
        # entries) in CPython, so the oldest packet is found by walking packet numbers instead.)
        self._first = 0
        self.bytes_in_flight = 0
        self.largest_acked = -1
        self.loss_time: float | None = None
        self.pto_count = 0
        self.last_eliciting_time = 0.0
        self._first_sample_time: float | None = None

    def on_path_changed(self, rtt: RttEstimator, cc: NewReno) -> None:
        """The connection moved to another path (RFC 9000 §9.4): a fresh RTT estimator and congestion
        controller. The new path has no RTT sample yet, so no loss on it counts towards persistent
        congestion until it has one (RFC 9002 §7.6.2)."""
        self.rtt = rtt
        self.cc = cc
        self.pto_count = 0
        self.loss_time = None
        self._first_sample_time = None

    def on_packet_sent(self, pn: int, record: SentRecord) -> None:
        """Track an ack-eliciting packet (it counts in flight)."""
        self.sent[pn] = record
        self.bytes_in_flight += record[1]
        self.last_eliciting_time = record[0]

    # -------------------------------------------------------------------------------- ACKs

    def on_ack(
        self,
        ranges: tuple[tuple[int, int], ...],
        delay_us: int,
        next_pn: int,
        now: float,
    ) -> tuple[list[SentRecord], list[tuple[int, SentRecord]], bool]:
        """Process an ACK frame (RFC 9002 §A.7).

        Returns ``(acked, lost, persistent_congestion)``: the newly acknowledged records, the records
        this ACK made lost (with their packet numbers) and whether those losses amount to persistent
        congestion. Raises ``RemoteProtocolError`` if the peer acknowledges a packet never sent.
        """
        largest = ranges[0][1]
        if largest >= next_pn:
            raise RemoteProtocolError(
                f"peer acknowledged packet {largest}, but only {next_pn} were sent",
                ErrorCode.PROTOCOL_VIOLATION,
            )
        sent = self.sent
        prev_largest = self.largest_acked
        if largest > prev_largest:
            self.largest_acked = largest
        if not sent:
            return [], _EMPTY, False
        first = self._first
        while first not in sent:
            first += 1
        self._first = first
        pop = sent.pop
        top = sent.get(largest)
        acked: list[SentRecord] = []
        append = acked.append
        for lo, hi in ranges:
            if hi < first:
                break
            if lo < first:
                lo = first
            for pn in range(lo, hi + 1):
                rec = pop(pn, None)
                if rec is not None:
                    append(rec)
        if not acked:
            return acked, _EMPTY, False
        rtt = self.rtt
        if top is not None:
            # RFC 9002 §5.1: a sample when the largest acknowledged is newly acknowledged (all
            # tracked packets are ack-eliciting).
            rtt.update(now - top[0], delay_us / 1_000_000)
            if self._first_sample_time is None:
                self._first_sample_time = now
        cc = self.cc
        in_flight_before = self.bytes_in_flight
        acked_bytes = 0
        for rec in acked:
            acked_bytes += rec[1]
        recovery_start = cc.recovery_start
        # Loss detection only has work when a packet below the largest acknowledged is unacked.
        if sent and (self.loss_time is not None or self._oldest() < self.largest_acked):
            lost = self._detect_lost(now)
        else:
            lost = _EMPTY
        persistent = self._on_lost(lost, now, ranges, prev_largest) if lost else False
        self.bytes_in_flight -= acked_bytes
        # Losses that started (or, persistent, ended) a recovery period came after the acknowledged
        # packets were sent: those do not grow the window.
        if cc.recovery_start == recovery_start:
            cc.on_packets_acked(acked, app_limited=in_flight_before * 2 < cc.cwnd)
        self.pto_count = 0
        return acked, lost, persistent

    def _oldest(self) -> int:
        """The smallest packet number in flight (``sent`` must not be empty)."""
        first = self._first
        sent = self.sent
        while first not in sent:
            first += 1
        self._first = first
        return first

    # -------------------------------------------------------------------------------- losses

    def _detect_lost(self, now: float) -> list[tuple[int, SentRecord]]:
        """Remove and return packets lost by the packet or time threshold (RFC 9002 §6.1, §A.10)."""
        largest = self.largest_acked
        self.loss_time = None
        if largest < 0:
            return _EMPTY
        loss_delay = self.rtt.loss_delay()
        lost: list[tuple[int, SentRecord]] = []
        sent = self.sent
        if not sent:
            return lost
        get = sent.get
        for pn in range(self._oldest(), largest + 1):
            rec = get(pn)
            if rec is None:
                continue
            # time_sent + loss_delay <= now, written as the loss time is computed, so that a timer
            # set to that loss time always finds the packet lost (no float rounding gap).
            loss_time = rec[0] + loss_delay
            if loss_time <= now or largest >= pn + PACKET_THRESHOLD:
                lost.append((pn, rec))
            else:
                # Later packets were sent later and have larger numbers: none of them is lost yet.
                self.loss_time = loss_time
                break
        for pn, _ in lost:
            del sent[pn]
        return lost

    def _on_lost(
        self,
        lost: list[tuple[int, SentRecord]],
        now: float,
        ranges: tuple[tuple[int, int], ...],
        prev_largest: int,
    ) -> bool:
        """Take lost packets out of flight and tell the controller (RFC 9002 §B.8).
        Returns whether this is persistent congestion."""
        latest_sent: float | None = None
        candidates: list[tuple[int, float]] = []
        first_sample = self._first_sample_time
        for pn, rec in lost:
            self.bytes_in_flight -= rec[1]
            if rec[2] & F_PROBE:
                continue
            if latest_sent is None or rec[0] > latest_sent:
                latest_sent = rec[0]
            if first_sample is not None and rec[0] > first_sample and pn > prev_largest:
                candidates.append((pn, rec[0]))
        if latest_sent is None:
            return False
        self.cc.on_congestion_event(latest_sent, now)
        if len(candidates) >= 2 and self._persistent(candidates, ranges):
            self.cc.on_persistent_congestion()
            return True
        return False

    def _persistent(self, lost: list[tuple[int, float]], ranges: tuple[tuple[int, int], ...]) -> bool:
        """RFC 9002 §7.6.2: two lost ack-eliciting packets, sent after the first RTT sample, more than
        the persistent congestion duration apart, with no packet between them acknowledged.

        ``lost`` holds only packets above the largest number acknowledged before this ACK, so only
        this ACK's ``ranges`` can acknowledge a packet between two of them.
        """
        rtt = self.rtt
        duration = rtt.pto * PERSISTENT_CONGESTION_THRESHOLD
        start_pn, start_time = lost[0]
        for pn, time_sent in lost[1:]:
            if any(lo < pn and hi > start_pn for lo, hi in ranges):
                start_pn, start_time = pn, time_sent
                continue
            if time_sent - start_time > duration:
                return True
        return False

    def oldest_sent_time(self) -> float | None:
        """Send time of the oldest packet in flight (packet numbers grow with time)."""
        sent = self.sent
        if not sent:
            return None
        first = self._first
        while first not in sent:
            first += 1
        self._first = first
        return sent[first][0]

    def remove_larger_than(self, size: int) -> list[tuple[int, SentRecord]]:
        """Remove and return in-flight packets of at least ``size`` bytes: they could not be sent
        (EMSGSIZE). Not a congestion signal."""
        lost = [(pn, rec) for pn, rec in self.sent.items() if rec[1] >= size]
        for pn, rec in lost:
            del self.sent[pn]
            self.bytes_in_flight -= rec[1]
        if lost:
            self._detect_lost_timer_only()
        return lost

    def _detect_lost_timer_only(self) -> None:
        """Recompute ``loss_time`` after packets were removed out of band."""
        self.loss_time = None
        largest = self.largest_acked
        if largest < 0 or not self.sent:
            return
        first = self._oldest()
        if first <= largest:
            self.loss_time = self.sent[first][0] + self.rtt.loss_delay()

    # -------------------------------------------------------------------------------- timers

    def timer(self) -> float | None:
        """The loss detection timer: the earliest loss time, else the PTO deadline (RFC 9002 §A.8)."""
        if self.loss_time is not None:
            return self.loss_time
        if not self.sent:
            return None
        base = self.rtt.pto
        if not self.pto_count:
            return self.last_eliciting_time + base
        period = base * (1 << min(self.pto_count, 30))
        if period > MAX_PTO_PERIOD:
            period = base if base > MAX_PTO_PERIOD else MAX_PTO_PERIOD
        return self.last_eliciting_time + period

    def on_timeout(self, now: float) -> tuple[list[tuple[int, SentRecord]], bool, bool]:
        """Run the loss detection timer if due. Returns ``(lost, persistent, pto_fired)``."""
        if self.loss_time is not None:
            if now < self.loss_time:
                return _EMPTY, False, False
            lost = self._detect_lost(now)
            persistent = self._on_lost(lost, now, (), self.largest_acked) if lost else False
            return lost, persistent, False
        deadline = self.timer()
        if deadline is None or now < deadline:
            return _EMPTY, False, False
        self.pto_count += 1
        return _EMPTY, False, True
