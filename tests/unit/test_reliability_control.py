"""RTT estimation, NewReno, loss detection and ACK generation, with exact expected values."""

from __future__ import annotations

import pytest

from coremesh.errors import RemoteProtocolError
from coremesh.reliability.ackrange import (
    DUPLICATE,
    IN_ORDER,
    OLD,
    OUT_OF_ORDER,
    RETIRE_AFTER_REPORTS,
    AckTracker,
)
from coremesh.reliability.codes import ErrorCode
from coremesh.reliability.congestion import NewReno
from coremesh.reliability.frames import MAX_ACK_RANGES, AckFrame, decode_payload
from coremesh.reliability.recovery import F_PROBE, Recovery, SentRecord
from coremesh.reliability.rtt import GRANULARITY, RttEstimator

approx = pytest.approx

# ------------------------------------------------------------------------------------ RTT (RFC 9002 §5)


def test_rtt_before_any_sample() -> None:
    rtt = RttEstimator(initial_rtt=0.1, max_ack_delay=0.005)
    assert (rtt.smoothed_rtt, rtt.rttvar, rtt.min_rtt, rtt.latest_rtt) == (0.1, 0.05, 0.0, 0.0)
    assert not rtt.has_sample
    assert rtt.pto_base() == approx(0.1 + 4 * 0.05 + 0.005)
    assert rtt.loss_delay() == approx(9 / 8 * 0.1)


def test_rtt_first_sample_ignores_ack_delay() -> None:
    rtt = RttEstimator(0.1, 0.005)
    rtt.update(0.2, ack_delay=0.003)
    assert (rtt.smoothed_rtt, rtt.rttvar, rtt.min_rtt, rtt.latest_rtt) == (0.2, 0.1, 0.2, 0.2)


def test_rtt_later_samples_subtract_ack_delay() -> None:
    rtt = RttEstimator(0.1, 0.005)
    rtt.update(0.2, 0.0)
    rtt.update(0.3, 0.004)
    # adjusted = 0.3 - 0.004; rttvar = 3/4 * 0.1 + 1/4 * |0.2 - 0.296|; srtt = 7/8 * 0.2 + 1/8 * 0.296
    assert rtt.rttvar == approx(0.099)
    assert rtt.smoothed_rtt == approx(0.212)
    assert rtt.min_rtt == 0.2
    assert rtt.latest_rtt == 0.3


def test_rtt_ack_delay_capped_at_max_ack_delay() -> None:
    rtt = RttEstimator(0.1, 0.005)
    rtt.update(0.2, 0.0)
    rtt.update(0.21, 0.05)  # only 0.005 may be subtracted
    assert rtt.smoothed_rtt == approx(0.875 * 0.2 + 0.125 * 0.205)
    assert rtt.rttvar == approx(0.75 * 0.1 + 0.25 * 0.005)


def test_rtt_ack_delay_not_subtracted_below_min_rtt() -> None:
    rtt = RttEstimator(0.1, 0.005)
    rtt.update(0.2, 0.0)
    rtt.update(0.202, 0.004)  # 0.202 < min_rtt + ack_delay: use 0.202 as is
    assert rtt.smoothed_rtt == approx(0.875 * 0.2 + 0.125 * 0.202)


def test_rtt_min_rtt_tracks_smallest_sample_without_ack_delay() -> None:
    rtt = RttEstimator(0.1, 0.005)
    rtt.update(0.05, 0.0)
    rtt.update(0.04, 0.004)
    assert rtt.min_rtt == 0.04
    assert rtt.smoothed_rtt == approx(0.875 * 0.05 + 0.125 * 0.04)


def test_rtt_pto_and_loss_delay_formulas() -> None:
    rtt = RttEstimator(0.1, 0.025)
    rtt.update(0.0001, 0.0)
    assert rtt.pto_base() == approx(0.0001 + GRANULARITY + 0.025)  # 4 * rttvar < kGranularity
    assert rtt.loss_delay() == GRANULARITY
    rtt.update(0.4, 0.0)
    assert rtt.loss_delay() == approx(9 / 8 * 0.4)  # latest_rtt above smoothed_rtt


# ------------------------------------------------------------------------------------ NewReno (RFC 9002 §7)


def record(time_sent: float, size: int = 1200, flags: int = 0) -> SentRecord:
    return (time_sent, size, flags, None)


def test_newreno_initial_and_minimum_window() -> None:
    cc = NewReno(1200)
    assert cc.cwnd == 12000
    assert cc.minimum_window == 2400
    assert cc.ssthresh == float("inf")


def test_newreno_slow_start_grows_by_acked_bytes() -> None:
    cc = NewReno(1200)
    cc.on_packets_acked([record(1.0), record(1.0), record(1.0, 1000)])
    assert cc.cwnd == 15400


def test_newreno_app_limited_does_not_grow() -> None:
    cc = NewReno(1200)
    cc.on_packets_acked([record(1.0)], app_limited=True)
    assert cc.cwnd == 12000


def test_newreno_loss_halves_once_per_recovery_period() -> None:
    cc = NewReno(1200)
    cc.on_packets_acked([record(1.0)] * 3)
    assert cc.cwnd == 15600
    cc.on_congestion_event(time_sent=1.5, now=2.0)
    assert (cc.cwnd, cc.ssthresh, cc.recovery_start) == (7800, 7800, 2.0)
    cc.on_congestion_event(time_sent=1.9, now=2.1)  # sent before recovery started: same event
    assert cc.cwnd == 7800
    cc.on_packets_acked([record(1.8)])  # sent before recovery: no growth
    assert cc.cwnd == 7800
    cc.on_congestion_event(time_sent=2.5, now=3.0)  # a new loss after recovery: halve again
    assert (cc.cwnd, cc.ssthresh) == (3900, 3900)


def test_newreno_congestion_avoidance_one_datagram_per_window() -> None:
    cc = NewReno(1200)
    cc.on_packets_acked([record(0.0)] * 3)  # 15600
    cc.on_congestion_event(1.0, now=2.0)  # 7800
    cc.on_packets_acked([record(2.5)] * 6)  # 7200 acked < cwnd
    assert cc.cwnd == 7800
    cc.on_packets_acked([record(2.5)])  # 8400 >= 7800: +1200, 600 carried over
    assert cc.cwnd == 9000
    cc.on_packets_acked([record(2.5)] * 7)  # 600 + 8400 = 9000 >= 9000
    assert cc.cwnd == 10200


def test_newreno_never_below_minimum_and_persistent_congestion() -> None:
    cc = NewReno(1200)
    for i in range(10):
        cc.on_congestion_event(time_sent=float(i) + 0.5, now=float(i + 1))
    assert cc.cwnd == 2400
    cc.on_packets_acked([record(20.0)] * 4)
    cc.on_persistent_congestion()
    assert (cc.cwnd, cc.recovery_start) == (2400, None)
    cc.on_packets_acked([record(0.0)])  # no recovery period any more: grows (ssthresh 2400: CA)
    assert cc.cwnd == 2400


def test_newreno_datagram_size_change_keeps_minimum() -> None:
    cc = NewReno(1200)
    cc.on_persistent_congestion()
    cc.set_max_datagram_size(1400)
    assert (cc.minimum_window, cc.cwnd) == (2800, 2800)


# ---------------------------------------------------------------- loss detection (RFC 9002 §6)


def sent_recovery(times: list[float]) -> Recovery:
    rec = Recovery(initial_rtt=0.1, max_ack_delay=0.005, max_datagram_size=1200)
    for pn, t in enumerate(times):
        rec.on_packet_sent(pn, record(t))
    return rec


def test_packet_threshold_and_time_threshold() -> None:
    rec = sent_recovery([0.0, 0.0, 0.1, 0.1, 0.1])
    assert rec.bytes_in_flight == 6000
    acked, lost, persistent = rec.on_ack(((4, 4),), 0, next_pn=5, now=0.15)
    assert [r[0] for r in acked] == [0.1]
    assert [pn for pn, _ in lost] == [0, 1]  # 4 >= pn + 3
    assert not persistent
    assert rec.rtt.latest_rtt == approx(0.05)
    # Packet 2 waits for the time threshold: 9/8 * max(latest 0.05, srtt 0.05) after it was sent.
    assert rec.loss_time == approx(0.1 + 9 / 8 * 0.05)
    assert rec.timer() == rec.loss_time
    assert rec.bytes_in_flight == 2400
    lost2, _, pto = rec.on_timeout(rec.loss_time)  # type: ignore[arg-type]
    assert [pn for pn, _ in lost2] == [2, 3] and not pto
    assert rec.loss_time is None and rec.bytes_in_flight == 0
    assert rec.timer() is None  # nothing in flight: no PTO


def test_loss_halves_cwnd_once() -> None:
    rec = sent_recovery([0.0, 0.0, 0.1, 0.1, 0.1])
    rec.on_ack(((4, 4),), 0, next_pn=5, now=0.15)
    assert rec.cc.cwnd == 6000 and rec.cc.recovery_start == 0.15


def test_probe_loss_is_not_congestion() -> None:
    rec = Recovery(0.1, 0.005, 1200)
    rec.on_packet_sent(0, record(0.0, 1400, F_PROBE))
    for pn in range(1, 4):
        rec.on_packet_sent(pn, record(0.0))
    _, lost, _ = rec.on_ack(((1, 3),), 0, next_pn=4, now=0.05)
    assert [pn for pn, _ in lost] == [0]
    assert rec.cc.cwnd == 12000 and rec.cc.recovery_start is None  # no reduction
    assert rec.bytes_in_flight == 0


def test_pto_deadline_and_backoff() -> None:
    rec = sent_recovery([1.0])
    base = 0.1 + 4 * 0.05 + 0.005
    assert rec.timer() == approx(1.0 + base)
    assert rec.on_timeout(1.0 + base - 1e-6) == ([], False, False)
    assert rec.on_timeout(1.0 + base)[2] is True
    assert rec.pto_count == 1
    assert rec.timer() == approx(1.0 + 2 * base)
    rec.on_timeout(1.0 + 2 * base)
    assert rec.timer() == approx(1.0 + 4 * base)
    rec.on_packet_sent(1, record(2.0))
    rec.on_ack(((1, 1),), 0, next_pn=2, now=2.05)  # an ACK resets the backoff
    assert rec.pto_count == 0


def test_ack_of_unsent_packet_is_a_protocol_violation() -> None:
    rec = sent_recovery([0.0])
    with pytest.raises(RemoteProtocolError) as info:
        rec.on_ack(((0, 1),), 0, next_pn=1, now=0.1)
    assert info.value.code == ErrorCode.PROTOCOL_VIOLATION


def test_duplicate_and_stale_acks_are_ignored() -> None:
    rec = sent_recovery([0.0, 0.0])
    acked, _, _ = rec.on_ack(((0, 1),), 0, next_pn=2, now=0.1)
    assert len(acked) == 2
    assert rec.on_ack(((0, 1),), 0, next_pn=2, now=0.2)[0] == []
    assert rec.rtt.latest_rtt == approx(0.1)


def test_persistent_congestion() -> None:
    rec = Recovery(0.1, 0.005, 1200)
    rec.on_packet_sent(0, record(0.0))
    rec.on_ack(((0, 0),), 0, next_pn=1, now=0.1)  # first RTT sample: srtt 0.1, rttvar 0.05
    duration = (0.1 + 4 * 0.05 + 0.005) * 3
    for pn in range(1, 11):
        rec.on_packet_sent(pn, record(0.2 + (pn - 1) * duration / 8))  # spans > duration
    rec.on_packet_sent(11, record(2.0))
    _, lost, persistent = rec.on_ack(((11, 11),), 0, next_pn=12, now=2.1)
    assert len(lost) == 10 and persistent
    # Collapsed to the minimum window, then packet 11's acknowledgement grows it (slow start).
    assert rec.cc.cwnd == 2400 + 1200 and rec.cc.recovery_start is None


def test_no_persistent_congestion_when_a_packet_between_was_acked() -> None:
    rec = Recovery(0.1, 0.005, 1200)
    rec.on_packet_sent(0, record(0.0))
    rec.on_ack(((0, 0),), 0, next_pn=1, now=0.1)
    for pn in range(1, 12):
        rec.on_packet_sent(pn, record(0.2 + pn * 0.2))
    # 6 and 11 acknowledged: the losses 1..5 and 7..8 are separate spans, each shorter than needed.
    _, lost, persistent = rec.on_ack(((11, 11), (6, 6)), 0, next_pn=12, now=3.0)
    assert [pn for pn, _ in lost] == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert not persistent


def test_remove_larger_than() -> None:
    rec = Recovery(0.1, 0.005, 1200)
    rec.on_packet_sent(0, record(0.0, 1200))
    rec.on_packet_sent(1, record(0.0, 1500))
    removed = rec.remove_larger_than(1400)
    assert [pn for pn, _ in removed] == [1]
    assert rec.bytes_in_flight == 1200 and rec.cc.cwnd == 12000


# ---------------------------------------------------------------- ACK generation (RFC 9000 §13.2)


def ack_of(tracker: AckTracker, now: float, max_bytes: int = 1000) -> AckFrame:
    frame = decode_payload(b"\x00" + tracker.build_ack(now, max_bytes))[1][0]
    assert isinstance(frame, AckFrame)
    return frame


def test_ack_after_threshold_or_delay() -> None:
    t = AckTracker(max_ack_delay=0.005, threshold=2)
    assert t.on_packet(0, True, 1.0) == IN_ORDER
    assert not t.ack_due(1.0) and t.deadline == 1.005 and t.wants_ack
    assert t.ack_due(1.005)
    assert t.on_packet(1, True, 1.001) == IN_ORDER
    assert t.ack_due(1.001) and t.deadline is None
    frame = ack_of(t, 1.003)
    assert frame == AckFrame(((0, 1),), 2000)
    assert not t.ack_due(2.0) and not t.wants_ack and t.deadline is None


def test_ack_timer_makes_ack_immediate() -> None:
    t = AckTracker(0.005, 2)
    t.on_packet(0, True, 1.0)
    t.on_timer(1.004)
    assert t.deadline == 1.005
    t.on_timer(1.005)
    assert t.deadline is None and t.ack_due(1.005)


def test_non_eliciting_packets_never_trigger_acks() -> None:
    t = AckTracker(0.005, 2)
    for pn in range(5):
        t.on_packet(pn, False, 1.0)
    assert not t.ack_due(10.0) and not t.wants_ack and t.deadline is None
    assert t.ranges() == [(0, 4)]


def test_out_of_order_acks_at_once() -> None:
    t = AckTracker(0.005, 10)
    t.on_packet(0, True, 0.0)
    ack_of(t, 0.0)
    assert t.on_packet(2, True, 0.0) == OUT_OF_ORDER  # gap below
    assert t.ack_due(0.0)
    assert ack_of(t, 0.0).ranges == ((2, 2), (0, 0))
    assert t.on_packet(1, True, 0.0) == OUT_OF_ORDER  # fills the gap
    assert t.ack_due(0.0)
    assert t.ranges() == [(0, 2)]
    assert t.on_packet(1, True, 0.0) == DUPLICATE
    assert t.on_packet(3, True, 0.0) == IN_ORDER


def test_first_packet_out_of_order() -> None:
    t = AckTracker(0.005, 10)
    assert t.on_packet(3, True, 0.0) == OUT_OF_ORDER
    assert t.ack_due(0.0)


def test_ack_ranges_are_bounded() -> None:
    t = AckTracker(0.005, 2)
    for i in range(MAX_ACK_RANGES + 10):
        t.on_packet(2 * i, False, 0.0)
    ranges = t.ranges()
    assert len(ranges) == MAX_ACK_RANGES
    assert ranges[0] == (20, 20)
    assert t.on_packet(1, True, 0.0) == OLD  # below the forgotten ranges
    assert t.on_packet(17, True, 0.0) == OLD
    assert t.on_packet(19, True, 0.0) == OUT_OF_ORDER  # above the forgotten ranges
    assert t.ranges()[0] == (19, 20)


def test_ack_ranges_retire_after_reports() -> None:
    t = AckTracker(0.005, 1)
    t.on_packet(0, True, 0.0)
    t.on_packet(2, True, 0.0)
    for i in range(RETIRE_AFTER_REPORTS):
        assert ack_of(t, 0.0).ranges == ((2, 2 + i), (0, 0))
        t.on_packet(3 + i, True, 0.0)
    assert ack_of(t, 0.0).ranges == ((2, 2 + RETIRE_AFTER_REPORTS),)
    assert t.on_packet(0, True, 0.0) == OLD


def test_ack_truncated_to_budget() -> None:
    t = AckTracker(0.005, 2)
    for i in range(40):
        t.on_packet(1000 * i, True, 0.0)
    full = t.build_ack(0.0, 10_000)
    for i in range(40, 50):
        t.on_packet(1000 * i, True, 0.0)
    small = t.build_ack(0.0, len(full) // 3)
    assert len(small) <= len(full) // 3
    frame = decode_payload(b"\x00" + small)[1][0]
    assert isinstance(frame, AckFrame) and frame.largest == 49_000


def test_ack_delay_reported_in_microseconds() -> None:
    t = AckTracker(0.025, 2)
    t.on_packet(0, True, 5.0)
    assert ack_of(t, 5.0125).delay_us == 12500
