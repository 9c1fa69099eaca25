"""Two ReliableStreams in memory, time advanced by hand, through the public API only."""

from __future__ import annotations

import pytest

from coremesh.errors import ConfigError, DecodeError, LocalProtocolError, MessageTooLarge, RemoteProtocolError
from coremesh.reliability import (
    INITIAL_MAX_DATA,
    CloseAcked,
    CloseReceived,
    ErrorCode,
    MessageReceived,
    PongReceived,
    ReliabilityConfig,
    ReliabilityEvent,
    ReliableStream,
    SendReady,
)
from coremesh.reliability.frames import AckFrame, StreamFrame, encode_payload
from coremesh.reliability.varint import encode_varint

CONFIG = ReliabilityConfig()
MAX_PAYLOAD = CONFIG.base_datagram_size - CONFIG.overhead


def events(stream: ReliableStream, consume: bool = True) -> list[ReliabilityEvent]:
    out = []
    while (event := stream.next_event()) is not None:
        if consume and isinstance(event, MessageReceived):
            stream.consume(len(event.data))
        out.append(event)
    return out


def messages(evs: list[ReliabilityEvent]) -> list[bytes]:
    return [e.data for e in evs if isinstance(e, MessageReceived)]


def deliver(payloads: list[bytes], to: ReliableStream, now: float) -> None:
    for payload in payloads:
        to.receive_payload(payload, now)


def exchange(a: ReliableStream, b: ReliableStream, now: float, consume: bool = True) -> list[bytes]:
    """Move payloads both ways (no delay, no loss) until both are quiet; return b's messages."""
    got: list[bytes] = []
    for _ in range(10_000):
        pa = a.payloads_to_send(now)
        deliver(pa, b, now)
        got += messages(events(b, consume))
        pb = b.payloads_to_send(now)
        deliver(pb, a, now)
        if not pa and not pb:
            return got
    raise AssertionError("no quiescence")


def pair(**overrides: object) -> tuple[ReliableStream, ReliableStream]:
    config = ReliabilityConfig(**overrides)  # type: ignore[arg-type]
    return ReliableStream(config, 0.0), ReliableStream(config, 0.0)


# ------------------------------------------------------------------------------------ basics


def test_fragmentation_and_reassembly() -> None:
    a, b = pair()
    message = bytes(range(256)) * 20  # 5120 bytes: 5 payloads
    a.send_message(message, 0.0)
    payloads = a.payloads_to_send(0.0)
    assert len(payloads) == 5
    assert all(len(p) <= MAX_PAYLOAD for p in payloads)
    assert all(len(p) == MAX_PAYLOAD for p in payloads[:4])
    deliver(payloads[:4], b, 0.0)
    assert events(b) == []
    deliver(payloads[4:], b, 0.0)
    assert events(b) == [MessageReceived(data=message)]
    assert (a.messages_sent, b.messages_received, a.packets_sent, b.packets_received) == (1, 1, 5, 5)
    assert a.bytes_sent == sum(len(p) + 29 for p in payloads) == b.bytes_received


def test_reassembly_in_reverse_order_and_duplicates() -> None:
    a, b = pair()
    message = b"m" * 10_000
    a.send_message(message, 0.0)
    payloads = a.payloads_to_send(0.0)
    for payload in reversed(payloads):
        b.receive_payload(payload, 0.0)
        b.receive_payload(payload, 0.0)
    assert messages(events(b)) == [message]
    assert b.packets_received == len(payloads)


def test_small_messages_share_a_packet_and_keep_order() -> None:
    a, b = pair()
    sent = [b"", b"one", b"two" * 10, b""] + [bytes([i]) * i for i in range(50)]
    for m in sent:
        a.send_message(m, 0.0)
    payloads = a.payloads_to_send(0.0)
    assert len(payloads) == 2
    assert exchange(a, b, 0.0) == [] and messages(events(b)) == []
    deliver(payloads, b, 0.0)
    assert messages(events(b)) == sent


def test_everything_acknowledged() -> None:
    a, b = pair()
    for i in range(30):
        a.send_message(b"%d" % i * 500, 0.0)
    assert a.has_unacked_data
    got = exchange(a, b, 0.0)
    assert got == [b"%d" % i * 500 for i in range(30)]
    assert not a.has_unacked_data and a.bytes_in_flight == 0


def test_message_too_large() -> None:
    a, _ = pair(max_message_size=1000)
    a.send_message(b"x" * 1000, 0.0)
    with pytest.raises(MessageTooLarge):
        a.send_message(b"x" * 1001, 0.0)
    assert a.messages_sent == 1


def test_oversized_message_from_peer() -> None:
    _, b = pair(max_message_size=1000)
    payload = encode_payload(0, [StreamFrame(0, encode_varint(1001) + b"x")])
    with pytest.raises(RemoteProtocolError) as info:
        b.receive_payload(payload, 0.0)
    assert info.value.code == ErrorCode.MESSAGE_TOO_LARGE


# ------------------------------------------------------------------------------------ ACKs and timers


def test_exact_timers() -> None:
    a, b = pair(receive_window=INITIAL_MAX_DATA)  # no MAX_DATA to announce: a pure delayed ACK
    a.send_message(b"hello", 1.0)
    [payload] = a.payloads_to_send(1.0)
    assert a.get_timer() == pytest.approx(1.0 + 0.1 + 4 * 0.05 + 0.005)  # PTO from initial_rtt
    assert b.get_timer() is None
    b.receive_payload(payload, 1.01)
    assert b.get_timer() == pytest.approx(1.015)  # max_ack_delay after one ack-eliciting packet
    assert b.payloads_to_send(1.012) == []  # the delayed ACK is not due yet
    b.handle_timer(1.015)
    [ack] = b.payloads_to_send(1.015)
    assert b.get_timer() is None
    a.receive_payload(ack, 1.03)
    # RTT sample 0.03 s (the 5 ms ACK delay is not subtracted from the first sample).
    assert a.smoothed_rtt == pytest.approx(0.03) and a.min_rtt == pytest.approx(0.03)
    assert a.get_timer() is None and not a.has_unacked_data
    assert a.cwnd == 12000  # app-limited: one small packet does not grow the window


def test_ack_every_second_packet() -> None:
    a, b = pair(receive_window=INITIAL_MAX_DATA)
    a.send_message(b"z" * 5000, 0.0)
    payloads = a.payloads_to_send(0.0)
    b.receive_payload(payloads[0], 0.0)
    assert b.payloads_to_send(0.0) == []
    b.receive_payload(payloads[1], 0.0)
    assert len(b.payloads_to_send(0.0)) == 1
    b.receive_payload(payloads[3], 0.0)  # out of order: acknowledged at once
    assert len(b.payloads_to_send(0.0)) == 1


def test_ack_only_packets_are_not_congestion_controlled_nor_acknowledged() -> None:
    a, b = pair(receive_window=INITIAL_MAX_DATA)
    a.send_message(b"q" * 2400, 0.0)
    deliver(a.payloads_to_send(0.0), b, 0.0)
    [ack] = b.payloads_to_send(0.0)
    assert b.bytes_in_flight == 0 and b.get_timer() is None
    a.receive_payload(ack, 0.0)
    assert a.payloads_to_send(10.0) == [] and a.get_timer() is None


def test_peer_acking_unsent_packet() -> None:
    a, _ = pair()
    a.send_message(b"x", 0.0)
    a.payloads_to_send(0.0)
    with pytest.raises(RemoteProtocolError) as info:
        a.receive_payload(encode_payload(0, [AckFrame(((0, 1),), 0)]), 0.0)
    assert info.value.code == ErrorCode.PROTOCOL_VIOLATION


def test_tail_loss_recovered_by_pto() -> None:
    a, b = pair()
    a.send_message(b"t" * 3000, 0.0)
    payloads = a.payloads_to_send(0.0)
    assert len(payloads) == 3
    deliver(payloads[:2], b, 0.01)  # the last packet is lost
    deliver(b.payloads_to_send(0.01), a, 0.02)
    assert a.smoothed_rtt == pytest.approx(0.02)
    # b's ACK carried a MAX_DATA (ack-eliciting): a's delayed ACK is due first.
    assert a.get_timer() == pytest.approx(0.025)
    a.handle_timer(0.025)
    deliver(a.payloads_to_send(0.025), b, 0.035)
    pto = 0.0 + 0.02 + 4 * 0.01 + 0.005  # from the last ack-eliciting packet sent
    assert a.get_timer() == pytest.approx(pto)
    a.handle_timer(pto)
    probes = a.payloads_to_send(pto)
    assert len(probes) == 2  # two PING probes: nothing new to send, the loss is not known yet
    deliver(probes, b, pto + 0.01)
    deliver(b.payloads_to_send(pto + 0.01), a, pto + 0.02)  # the ACK reveals packet 2 as lost
    assert a.packets_lost == 1
    assert exchange(a, b, pto + 0.02) == [b"t" * 3000]
    ack_at = b.get_timer()  # the delayed ACK of the retransmission
    assert ack_at is not None and ack_at == pytest.approx(pto + 0.025)
    b.handle_timer(ack_at)
    deliver(b.payloads_to_send(ack_at), a, ack_at + 0.01)
    assert not a.has_unacked_data


def test_losses_on_a_new_path_before_its_first_rtt_sample_are_not_persistent_congestion() -> None:
    # RFC 9002 §7.6.2: persistent congestion needs an RTT sample of the path. A path change resets
    # the RTT estimate, so losses on the new path before its first sample cannot qualify, however
    # long they span. (A stale first-sample time from the old path made them qualify.)
    a, b = pair()
    a.send_message(b"old path", 0.0)
    deliver(a.payloads_to_send(0.0), b, 0.05)
    assert messages(events(b)) == [b"old path"]
    ack_at = b.get_timer()
    assert ack_at is not None
    b.handle_timer(ack_at)
    deliver(b.payloads_to_send(ack_at), a, ack_at + 0.05)
    assert a.min_rtt > 0  # the old path has its RTT sample
    a.on_path_changed(1.0)
    initial = a.cwnd
    a.send_message(b"new path", 1.0)
    assert len(a.payloads_to_send(1.0)) == 1  # lost
    first_pto = a.get_timer()
    assert first_pto is not None and first_pto == pytest.approx(1.0 + 0.1 + 4 * 0.05 + 0.005)
    a.handle_timer(first_pto)
    assert a.payloads_to_send(first_pto)  # the probes, lost too
    second_pto = a.get_timer()
    assert second_pto is not None
    a.handle_timer(second_pto)
    probes = a.payloads_to_send(second_pto)
    deliver(probes, b, second_pto + 0.01)  # these arrive: the first RTT sample of the new path
    deliver(b.payloads_to_send(second_pto + 0.01), a, second_pto + 0.02)
    assert a.packets_lost >= 2  # lost over more than three PTOs of the new path's RTT
    assert a.cwnd == initial // 2  # one congestion event, not a collapse to the minimum window
    assert exchange(a, b, second_pto + 0.02) == [b"new path"]


# ------------------------------------------------------------------------------------ decoding errors


def test_decode_error_leaves_state_unchanged() -> None:
    a, b = pair()
    a.send_message(b"payload", 0.0)
    [good] = a.payloads_to_send(0.0)
    with pytest.raises(DecodeError):
        b.receive_payload(good + b"\xee", 0.0)  # a valid STREAM frame, then garbage
    with pytest.raises(DecodeError):
        b.receive_payload(b"", 0.0)
    assert events(b) == [] and b.packets_received == 0 and b.get_timer() is None
    b.receive_payload(good, 0.0)  # the same packet number is still accepted
    assert messages(events(b)) == [b"payload"]


# ------------------------------------------------------------------------------------ back-pressure


def test_send_buffer_back_pressure() -> None:
    a, b = pair(send_buffer_size=10_000)
    sent = 0
    while a.can_send():
        a.send_message(b"b" * 3000, 0.0)
        sent += 1
    assert sent == 4  # the fourth message takes the buffer past its limit
    assert events(a) == []
    got = exchange(a, b, 0.0)
    assert len(got) == 4
    assert events(a) == [SendReady()]
    assert a.can_send()


def test_send_buffer_event_on_close() -> None:
    a, _ = pair(send_buffer_size=1000)
    a.send_message(b"x" * 2000, 0.0)
    assert not a.can_send()
    a.close(0, "", 0.0)
    assert events(a) == [SendReady()]
    assert not a.can_send()


# ------------------------------------------------------------------------------------ flow control


def test_peer_flow_control_window() -> None:
    window = INITIAL_MAX_DATA  # no initial MAX_DATA: the implicit window is the real one
    a, b = pair(receive_window=window)
    for i in range(100):
        a.send_message(bytes([i]) * 998, 0.0)  # 1000 stream bytes each
    received = exchange(a, b, 0.0, consume=False)
    assert len(received) == window // 1000  # 16 whole messages in the first 16384 bytes
    assert a.payloads_to_send(1.0) == [] and a.has_unacked_data  # blocked by flow control
    for m in received:
        b.consume(len(m))
    got = received + exchange(a, b, 1.0)
    assert got == [bytes([i]) * 998 for i in range(100)]
    assert not a.has_unacked_data


def test_max_data_update_after_half_the_window() -> None:
    a, b = pair(receive_window=100_000)
    for _ in range(60):
        a.send_message(b"w" * 1998, 0.0)
    # The first ACK of stream data carries a MAX_DATA for the whole window.
    got = exchange(a, b, 0.0, consume=False)
    assert len(got) == 50  # 100_000 bytes
    assert not b.consume(49_000)  # less than half the window
    assert b.consume(2_000)  # now more than half: a MAX_DATA update is queued
    assert len(got) + len(exchange(a, b, 0.0)) == 60


def test_stream_data_beyond_the_window_is_a_violation() -> None:
    _, b = pair(receive_window=INITIAL_MAX_DATA)
    payload = encode_payload(0, [StreamFrame(INITIAL_MAX_DATA - 1, b"ab")])
    with pytest.raises(RemoteProtocolError) as info:
        b.receive_payload(payload, 0.0)
    assert info.value.code == ErrorCode.FLOW_CONTROL_ERROR
    assert b.packets_received == 0  # state unchanged
    b.receive_payload(encode_payload(0, [StreamFrame(INITIAL_MAX_DATA - 1, b"a")]), 0.0)


def test_message_larger_than_the_window() -> None:
    a, b = pair(receive_window=INITIAL_MAX_DATA)
    big = bytes(range(256)) * 400  # 102400 bytes, six windows
    a.send_message(big, 0.0)
    a.send_message(b"next", 0.0)
    assert exchange(a, b, 0.0) == [big, b"next"]


def test_consume_validation() -> None:
    _, b = pair()
    with pytest.raises(LocalProtocolError):
        b.consume(-1)
    assert not b.consume(10**9)  # more than was delivered: clamped


# ------------------------------------------------------------------------------------ ping / close


def test_ping_pong() -> None:
    a, b = pair()
    a.send_ping(7, 1.0)
    a.send_ping(2**64 - 2, 1.0)
    [ping] = a.payloads_to_send(1.0)
    b.receive_payload(ping, 1.05)
    [pong] = b.payloads_to_send(1.05)  # answered at once, with the ACK
    a.receive_payload(pong, 1.1)
    pongs = events(a)
    assert [e.token for e in pongs if isinstance(e, PongReceived)] == [7, 2**64 - 2]
    assert all(isinstance(e, PongReceived) and e.rtt == pytest.approx(0.1) for e in pongs)
    a.receive_payload(pong, 1.2)  # a duplicate changes nothing
    assert events(a) == []
    assert events(b) == []


@pytest.mark.parametrize("token", [-1, 2**64 - 1, 2**64])
def test_ping_token_range(token: int) -> None:
    a, _ = pair()
    with pytest.raises(LocalProtocolError):
        a.send_ping(token, 0.0)


def test_close_both_ways() -> None:
    a, b = pair()
    a.send_message(b"before", 0.0)
    exchange(a, b, 0.0)
    a.close(0x42, "bye ✓", 1.0)
    assert a.is_closed and a.has_unacked_data
    with pytest.raises(LocalProtocolError):
        a.send_message(b"after", 1.0)
    a.close(1, "again", 1.0)  # no effect
    deliver(a.payloads_to_send(1.0), b, 1.0)
    assert events(b) == [CloseReceived(code=0x42, reason="bye ✓")]
    assert b.is_closed
    with pytest.raises(LocalProtocolError):
        b.send_message(b"late", 1.0)
    b.close(0, "", 1.0)  # close back
    deliver(b.payloads_to_send(1.0), a, 1.0)
    assert events(a) == [CloseAcked(), CloseReceived(code=0, reason="")]
    assert a.payloads_to_send(1.0) == []  # one ack-eliciting packet: a delayed ACK
    assert a.get_timer() == pytest.approx(1.005)
    a.handle_timer(1.005)
    deliver(a.payloads_to_send(1.005), b, 1.005)
    assert events(b) == [CloseAcked()]
    assert not a.has_unacked_data and not b.has_unacked_data


def test_close_is_retransmitted_until_acknowledged() -> None:
    a, b = pair()
    a.close(3, "lost once", 0.0)
    a.payloads_to_send(0.0)  # lost
    now = 0.0
    for _ in range(20):
        timer = a.get_timer()
        assert timer is not None
        now = timer
        a.handle_timer(now)
        deliver(a.payloads_to_send(now), b, now)
        b.handle_timer(now + 0.005)
        deliver(b.payloads_to_send(now + 0.005), a, now + 0.01)
        now += 0.01
        deliver(a.payloads_to_send(now), b, now)
        if not a.has_unacked_data:
            break
    assert CloseReceived(code=3, reason="lost once") in events(b)
    assert CloseAcked() in events(a)


@pytest.mark.parametrize(("code", "reason"), [(-1, ""), (2**62, ""), (0, "x" * 257)])
def test_close_validation(code: int, reason: str) -> None:
    a, _ = pair()
    with pytest.raises(LocalProtocolError):
        a.close(code, reason, 0.0)


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base_datagram_size", 100),
        ("base_datagram_size", 70000),
        ("max_datagram_size", 1000),
        ("overhead", -1),
        ("overhead", 1000),
        ("send_buffer_size", 0),
        ("receive_window", 1000),
        ("max_message_size", 0),
        ("initial_rtt", 0),
        ("max_ack_delay", -0.1),
        ("ack_eliciting_threshold", 0),
        ("pmtu_discovery", 1),
        ("base_datagram_size", 1200.0),
    ],
)
def test_config_validation(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ReliabilityConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ReliabilityConfig(**{field: value})  # type: ignore[arg-type]


def test_stats_defaults() -> None:
    a = ReliableStream(CONFIG, 0.0)
    assert (a.cwnd, a.bytes_in_flight, a.max_datagram_size, a.min_rtt, a.smoothed_rtt) == (
        12000,
        0,
        1200,
        0.0,
        0.1,
    )
    assert (a.packets_sent, a.packets_lost, a.packets_received, a.bytes_sent, a.bytes_received) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert not a.is_closed and not a.has_unacked_data and a.can_send()


def test_graceful_close_delivers_queued_messages_first() -> None:
    a, b = pair()
    sent = [b"last", b"words" * 1000]
    for m in sent:
        a.send_message(m, 0.0)
    a.close(0, "bye", 0.0)
    assert a.is_closed and not a.can_send()
    first = a.payloads_to_send(0.0)
    deliver(first, b, 0.01)
    got = events(b)
    assert messages(got) == sent and not any(isinstance(e, CloseReceived) for e in got)  # data only
    deliver(b.payloads_to_send(0.01), a, 0.02)  # every stream byte acknowledged: now CLOSE
    deliver(a.payloads_to_send(0.02), b, 0.03)
    assert events(b) == [CloseReceived(code=0, reason="bye")]


def test_abortive_close_drops_queued_messages() -> None:
    a, b = pair()
    a.send_message(b"never", 0.0)
    a.close(5, "error", 0.0)
    assert not a.has_unacked_data or a.has_unacked_data  # CLOSE itself is unacknowledged
    deliver(a.payloads_to_send(0.0), b, 0.0)
    assert events(b) == [CloseReceived(code=5, reason="error")]


def test_graceful_close_when_the_peer_closes_first() -> None:
    a, b = pair(receive_window=INITIAL_MAX_DATA)
    for _ in range(40):
        a.send_message(b"x" * 998, 0.0)  # more than the peer's window: some stays unsent
    deliver(a.payloads_to_send(0.0), b, 0.0)
    a.close(0, "", 0.0)
    b.close(9, "going away", 0.0)
    deliver(b.payloads_to_send(0.0), a, 0.0)
    assert CloseReceived(code=9, reason="going away") in events(a)
    deliver(a.payloads_to_send(0.0), b, 0.0)  # our CLOSE now goes out at once
    assert CloseReceived(code=0, reason="") in events(b, consume=False)


def test_out_of_order_chunks_are_bounded() -> None:
    _, b = pair(receive_window=INITIAL_MAX_DATA)
    stream = encode_varint(8000) + bytes(8000)
    for pn, offset in enumerate(range(2, 8002, 2)):  # 4000 one-byte chunks, all out of order
        b.receive_payload(encode_payload(pn, [StreamFrame(offset, stream[offset : offset + 1])]), 0.0)
    for pn in range(4000, 4200):
        b.receive_payload(encode_payload(pn, [StreamFrame(8100 + 2 * (pn - 4000), b"\x00")]), 0.0)
    assert b.packets_received == 4096  # 4096 chunks held: later ones are dropped, unacknowledged
    b.receive_payload(encode_payload(6000, [StreamFrame(0, stream)]), 0.0)  # in order: always taken
    assert messages(events(b)) == [bytes(8000)]
