"""``ReliableStream``: the sans-IO reliable, ordered message layer of one peer connection.

It sits between the application and the secure session. The application queues messages with
``send_message`` and drains ``next_event()``; the session encrypts each payload of
``payloads_to_send(now)`` into one datagram and hands every authenticated plaintext it receives to
``receive_payload``; the shell runs ``handle_timer(now)`` at ``get_timer()``. No clock, socket or
randomness is used inside: time is always passed in.

Wire format and algorithms (QUIC-inspired):

* payload = packet number (varint, never reused, RFC 9000 §12.3) + frames (``frames.py``);
* messages are ``varint length + bytes`` on one ordered byte stream, cut into STREAM frames and
  reassembled by offset (``sendbuf.py``, ``recvbuf.py``); lost ranges go out again in new packets;
* ACK frames per RFC 9000 §13.2 (``ackrange.py``); loss detection, RTT and PTO per RFC 9002 §5-6
  (``recovery.py``, ``rtt.py``); NewReno per RFC 9002 §7 (``congestion.py``);
* connection flow control per RFC 9000 §4.1: MAX_DATA carries the absolute offset the peer may send
  up to, ``receive_window`` beyond what the application consumed; it is re-advertised when half the
  window was consumed. Before the first MAX_DATA each side may send ``INITIAL_MAX_DATA`` bytes;
* path MTU discovery per RFC 8899 (``pmtu.py``);
* optional padding of every packet to a size bucket with PADDING frames (``padding.py``; path MTU
  discovery is then off).

Flow-control accounting: the application reports what it has read with ``consume(nbytes)`` (message
bytes, as it takes them from its inbox); the length prefixes of delivered messages count as consumed
by themselves. While every delivered message has been consumed, the bytes of the partially received
message count as consumed too, so that a message larger than the window can still arrive: the
receiver then buffers at most one such message plus ``receive_window`` bytes.

Closing: ``close(0, ...)`` (``NO_ERROR``) is graceful: no new message is accepted, the queued ones are
still delivered, and the CLOSE frame goes out once every stream byte is acknowledged, so the peer has
all the messages before it sees CLOSE. ``close(code != 0, ...)`` aborts: queued and unacknowledged
data is dropped and CLOSE goes out at once. Either way CLOSE is retransmitted until acknowledged
(``CloseAcked``). Receiving CLOSE drops our unsent data (the peer no longer reads it).
"""

from __future__ import annotations

import struct
from collections import deque

from coremesh.errors import LocalProtocolError, MessageTooLarge, RemoteProtocolError
from coremesh.reliability.ackrange import DUPLICATE, AckTracker
from coremesh.reliability.codes import ErrorCode
from coremesh.reliability.config import INITIAL_MAX_DATA, ReliabilityConfig
from coremesh.reliability.congestion import NewReno
from coremesh.reliability.events import (
    CloseAcked,
    CloseReceived,
    MessageReceived,
    PathMtuUpdated,
    PongReceived,
    ReliabilityEvent,
    SendReady,
)
from coremesh.reliability.frames import (
    MAX_CLOSE_REASON,
    AckFrame,
    CloseFrame,
    MaxDataFrame,
    PingFrame,
    PongFrame,
    StreamFrame,
    decode_payload,
    encode_frame,
)
from coremesh.reliability.padding import Padder
from coremesh.reliability.pmtu import PmtuSearch, PmtuState
from coremesh.reliability.recovery import F_CLOSE, F_MAX_DATA, F_PING, F_PROBE, Recovery, SentRecord
from coremesh.reliability.recvbuf import ReceiveBuffer
from coremesh.reliability.rtt import RttEstimator
from coremesh.reliability.sendbuf import SendBuffer
from coremesh.reliability.varint import MAX_VARINT, VARINT_FORMS, encode_varint

__all__ = [
    "BLACK_HOLE_LOSSES",
    "INTERNAL_PING_TOKEN",
    "MAX_PENDING_PINGS",
    "MIN_OOO_CHUNKS",
    "PTO_PROBES",
    "ReliableStream",
]

INTERNAL_PING_TOKEN = (1 << 64) - 1
"""PING token of PTO and path MTU probes; ``send_ping`` refuses it, and its PONG is ignored."""

MAX_PENDING_PINGS = 64
"""Most PING tokens awaiting a PONG (older ones are forgotten), and most PONGs queued."""

PTO_PROBES = 2
"""Ack-eliciting packets sent when the probe timeout fires (RFC 9002 §6.2.4)."""

BLACK_HOLE_LOSSES = 10
"""Packets larger than ``base_datagram_size`` lost in a row, none acknowledged, that make the path
MTU fall back to the base size (RFC 8899 §4.3)."""

MIN_OOO_CHUNKS = 4096
"""Out-of-order STREAM chunks are held up to ``max(MIN_OOO_CHUNKS, receive_window // 512)``; beyond
that, a packet that would add one is dropped unacknowledged (the peer sends it again), so that tiny
chunks cannot cost much more memory than the window."""

_PING_FRAME_LEN = 9
_HDR_4_2 = struct.Struct(">BIH").pack  # STREAM type, 4-byte offset varint, 2-byte length varint
_HDR_4_4 = struct.Struct(">BII").pack
_HDR_8_2 = struct.Struct(">BQH").pack
_HDR_8_4 = struct.Struct(">BQI").pack
_INTERNAL_PING = encode_frame(PingFrame(INTERNAL_PING_TOKEN))
_MAX_DATA_FRAME_LEN = 9


class ReliableStream:
    """Reliable, ordered, flow- and congestion-controlled messages over one secure session."""

    def __init__(self, config: ReliabilityConfig, now: float) -> None:
        self._config = config
        self._overhead = config.overhead
        self._max_message_size = config.max_message_size
        self._send_buffer_size = config.send_buffer_size
        self._window = config.receive_window
        self._max_ooo_chunks = max(MIN_OOO_CHUNKS, config.receive_window // 512)
        # Padding (padding.py): every packet padded to a bucket; the datagram size stays the top one.
        self.padder = (
            Padder(config.padding_buckets, config.base_datagram_size, config.overhead)
            if config.padding_buckets
            else None
        )
        self._pmtu = self._new_pmtu()
        self._mds = config.base_datagram_size
        self._base_size = config.base_datagram_size
        self._big_losses = 0  # packets above the base size lost since one was acknowledged
        self._max_payload = self._mds - config.overhead
        self._recovery = Recovery(config.initial_rtt, config.max_ack_delay, self._mds)
        self._acks = AckTracker(config.max_ack_delay, config.ack_eliciting_threshold)
        self._sendbuf = SendBuffer()
        self._recvbuf = ReceiveBuffer(config.max_message_size)
        self._events: deque[ReliabilityEvent] = deque()
        self._next_pn = 0
        # Flow control (RFC 9000 §4.1).
        self._peer_max_data = INITIAL_MAX_DATA
        self._rx_limit = config.receive_window  # the peer may send stream bytes below this offset
        self._rx_last_end = 0  # stream end offset of the last message delivered as an event
        self._rx_prefix_bytes = 0  # length-prefix bytes of the delivered messages
        self._rx_emitted = 0  # message bytes delivered as events
        self._rx_consumed = 0  # message bytes the application consumed (<= _rx_emitted)
        self._rx_credited = 0  # stream offset counted as consumed
        # The first MAX_DATA (the whole window) goes out with the first acknowledgement of stream
        # data: until then the peer uses INITIAL_MAX_DATA, and an idle connection sends nothing.
        self._max_data_pending = False
        self._announce_window = self._rx_limit > INITIAL_MAX_DATA
        # Control frames.
        self._pings: list[int] = []
        self._ping_sent: dict[int, float] = {}
        self._pongs: list[int] = []
        self._close: tuple[int, str] | None = None
        self._close_pending = False
        self._close_waiting = False
        self._close_acked = False
        self._closed = False
        self._remote_closed = False
        self._pto_probes = 0
        self._tx_full = False
        # Statistics.
        self._bytes_sent = 0
        self._bytes_received = 0
        self._packets_sent = 0
        self._packets_lost = 0
        self._packets_received = 0
        self._packets_dropped = 0
        self._messages_sent = 0
        self._messages_received = 0

    # ================================================================================ application

    def send_message(self, data: bytes, now: float) -> None:
        """Queue one message. Never blocks: the buffer may exceed ``send_buffer_size`` by this message
        (check ``can_send()`` first). Raises ``MessageTooLarge`` above ``max_message_size`` and
        ``LocalProtocolError`` once the connection is closed."""
        if self._closed:
            raise LocalProtocolError("cannot send on a closed connection")
        if len(data) > self._max_message_size:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds max_message_size {self._max_message_size}"
            )
        sendbuf = self._sendbuf
        sendbuf.write_message(data)
        self._messages_sent += 1
        if sendbuf.buffered >= self._send_buffer_size:
            self._tx_full = True

    @property
    def send_buffered(self) -> int:
        """Bytes queued to send and not yet acknowledged (what the send buffer holds)."""
        return self._sendbuf.buffered

    def can_send(self) -> bool:
        """Whether ``send_message`` is welcome now: open and the send buffer not full. When False,
        wait for ``SendReady`` (or the connection closing)."""
        return not self._closed and self._sendbuf.buffered < self._send_buffer_size

    def send_ping(self, token: int, now: float) -> None:
        """Queue a PING; the peer's PONG yields ``PongReceived(token, rtt)``. Also a keepalive."""
        if not 0 <= token < INTERNAL_PING_TOKEN:
            raise LocalProtocolError(f"ping token must be in 0..2**64-2, not {token}")
        if len(self._pings) >= MAX_PENDING_PINGS:
            del self._pings[0]
        self._pings.append(token)

    def close(self, code: int, reason: str, now: float) -> None:
        """Close the connection; ``is_closed`` is True from now on and a second call does nothing.

        With ``code`` 0 (``NO_ERROR``) the queued messages are delivered first and CLOSE(code, reason)
        follows once they are all acknowledged; any other code drops them and sends CLOSE at once.
        CLOSE is retransmitted until acknowledged (``CloseAcked``)."""
        if not 0 <= code <= MAX_VARINT:
            raise LocalProtocolError(f"close code must be in 0..2**62-1, not {code}")
        if len(reason.encode("utf-8")) > MAX_CLOSE_REASON:
            raise LocalProtocolError(f"close reason longer than {MAX_CLOSE_REASON} UTF-8 bytes")
        if self._close is not None:
            return
        self._close = (code, reason)
        self._closed = True
        if code == ErrorCode.NO_ERROR and self._sendbuf.has_unacked and not self._remote_closed:
            self._close_waiting = True  # CLOSE follows the last acknowledgement of stream data
        else:
            self._close_pending = True
            self._sendbuf.discard()
        self._wake_senders()

    def _wake_senders(self) -> None:
        if self._tx_full:
            self._tx_full = False
            self._events.append(SendReady())

    def _on_close_received(self, code: int, reason: str) -> None:
        self._remote_closed = True
        self._closed = True
        self._events.append(CloseReceived(code=code, reason=reason))
        self._sendbuf.discard()
        if self._close_waiting:
            self._close_waiting = False
            self._close_pending = True
        self._wake_senders()

    def next_event(self) -> ReliabilityEvent | None:
        """The next event, or None."""
        events = self._events
        return events.popleft() if events else None

    def consume(self, nbytes: int) -> bool:
        """The application has read ``nbytes`` more bytes of received messages: return that much
        receive window to the peer. True if a MAX_DATA update is now queued (call
        ``payloads_to_send``)."""
        if nbytes < 0:
            raise LocalProtocolError(f"cannot consume a negative number of bytes ({nbytes})")
        consumed = self._rx_consumed + nbytes
        self._rx_consumed = consumed if consumed < self._rx_emitted else self._rx_emitted
        return self._update_credit()

    def _update_credit(self) -> bool:
        """Re-advertise the window once half of it was consumed (RFC 9000 §4.2)."""
        if self._rx_consumed >= self._rx_emitted:
            consumed = self._recvbuf.contig
        else:
            consumed = self._rx_prefix_bytes + self._rx_consumed
        if consumed > self._rx_credited:
            self._rx_credited = consumed
        window = self._window
        if self._rx_credited + window - self._rx_limit >= window >> 1:
            self._rx_limit = self._rx_credited + window
            self._max_data_pending = True
            return True
        return False

    # ================================================================================ receiving

    def receive_payload(self, payload: bytes, now: float) -> None:
        """Take one authenticated plaintext payload from the peer.

        Raises ``DecodeError`` for a malformed payload (the state is then unchanged) and
        ``RemoteProtocolError`` (with ``code``) when the peer violates the protocol; the connection
        should then be closed.
        """
        pn, frames = decode_payload(payload)
        # Validate everything before changing any state.
        eliciting = False
        for frame in frames:
            if isinstance(frame, StreamFrame):
                eliciting = True
                end = frame.offset + len(frame.data)
                if end > self._rx_limit:
                    raise RemoteProtocolError(
                        f"peer sent stream bytes up to {end}, beyond the flow control limit {self._rx_limit}",
                        ErrorCode.FLOW_CONTROL_ERROR,
                    )
                recvbuf = self._recvbuf
                if frame.offset > recvbuf.contig and recvbuf.chunks >= self._max_ooo_chunks:
                    self._packets_dropped += 1
                    return  # as if lost: not acknowledged, so the peer sends it again
            elif isinstance(frame, AckFrame):
                if frame.ranges[0][1] >= self._next_pn:
                    raise RemoteProtocolError(
                        f"peer acknowledged packet {frame.ranges[0][1]}, only {self._next_pn} were sent",
                        ErrorCode.PROTOCOL_VIOLATION,
                    )
            elif isinstance(frame, PingFrame | MaxDataFrame | CloseFrame):
                eliciting = True
        status = self._acks.on_packet(pn, eliciting, now)
        self._bytes_received += len(payload) + self._overhead
        if status == DUPLICATE:
            return
        self._packets_received += 1
        for frame in frames:
            if isinstance(frame, StreamFrame):
                if not self._remote_closed:
                    self._on_stream(frame.offset, frame.data)
            elif isinstance(frame, AckFrame):
                self._on_ack(frame.ranges, frame.delay_us, now)
            elif isinstance(frame, PingFrame):
                pongs = self._pongs
                if len(pongs) >= MAX_PENDING_PINGS:
                    del pongs[0]
                pongs.append(frame.token)
            elif isinstance(frame, PongFrame):
                sent = self._ping_sent.pop(frame.token, None)
                if sent is not None:
                    self._events.append(PongReceived(token=frame.token, rtt=max(0.0, now - sent)))
            elif isinstance(frame, MaxDataFrame):
                if frame.limit > self._peer_max_data:
                    self._peer_max_data = frame.limit
            elif isinstance(frame, CloseFrame) and not self._remote_closed:
                self._on_close_received(frame.code, frame.reason)

    def _on_stream(self, offset: int, data: bytes) -> None:
        if self._announce_window:
            self._announce_window = False
            self._max_data_pending = True
        out: list[tuple[bytes, int]] = []
        self._recvbuf.insert(offset, data, out)
        if out:
            events = self._events
            last_end = self._rx_last_end
            prefix = self._rx_prefix_bytes
            emitted = self._rx_emitted
            for message, end in out:
                events.append(MessageReceived(data=message))
                n = len(message)
                prefix += end - last_end - n
                emitted += n
                last_end = end
            self._rx_last_end = last_end
            self._rx_prefix_bytes = prefix
            self._rx_emitted = emitted
            self._messages_received += len(out)
        elif self._rx_consumed >= self._rx_emitted:
            self._update_credit()

    def _on_ack(self, ranges: tuple[tuple[int, int], ...], delay_us: int, now: float) -> None:
        recovery = self._recovery
        had_sample = recovery.rtt.has_sample
        acked, lost, persistent = recovery.on_ack(ranges, delay_us, self._next_pn, now)
        if lost:
            self._on_lost(lost, persistent, now)
        if acked:
            sendbuf = self._sendbuf
            on_acked = sendbuf.on_acked
            big = self._base_size if self._mds > self._base_size else 0
            # Acknowledged packets come in packet-number order within each ACK range, so their
            # stream ranges are mostly contiguous: merge them into as few calls as possible.
            start = end = -1
            for rec in acked:
                stream_ranges = rec[3]
                if stream_ranges is not None:
                    if len(stream_ranges) == 2 and stream_ranges[0] == end:
                        end = stream_ranges[1]
                    else:
                        if end >= 0:
                            on_acked(start, end)
                        if len(stream_ranges) == 2:
                            start, end = stream_ranges
                        else:
                            for i in range(0, len(stream_ranges) - 2, 2):
                                on_acked(stream_ranges[i], stream_ranges[i + 1])
                            start, end = stream_ranges[-2], stream_ranges[-1]
                flags = rec[2]
                if flags:
                    if flags & F_CLOSE and not self._close_acked:
                        self._close_acked = True
                        self._events.append(CloseAcked())
                    if flags & F_PROBE and self._pmtu.on_probe_acked(rec[1], now):
                        self._set_datagram_size(self._pmtu.current)
                if big and rec[1] > big and not flags & F_PROBE:
                    self._big_losses = 0
            if end >= 0:
                on_acked(start, end)
            if self._tx_full and sendbuf.buffered < self._send_buffer_size:
                self._tx_full = False
                self._events.append(SendReady())
            if self._close_waiting and not sendbuf.has_unacked:
                self._close_waiting = False
                self._close_pending = True
            if not had_sample and recovery.rtt.has_sample:
                self._pmtu.on_path_confirmed(now)

    def _on_lost(self, lost: list[tuple[int, SentRecord]], persistent: bool, now: float) -> None:
        sendbuf = self._sendbuf
        for _, rec in lost:
            flags = rec[2]
            if flags & F_PROBE:
                self._pmtu.on_probe_lost(rec[1], now)
                continue
            self._packets_lost += 1
            if rec[1] > self._base_size:
                self._big_losses += 1
            stream_ranges = rec[3]
            if stream_ranges is not None:
                for i in range(0, len(stream_ranges), 2):
                    sendbuf.on_lost(stream_ranges[i], stream_ranges[i + 1])
            if flags & F_MAX_DATA:
                self._max_data_pending = True
            if flags & F_CLOSE and not self._close_acked:
                self._close_pending = True
        # RFC 8899 §4.3 black hole detection: persistent congestion, or BLACK_HOLE_LOSSES packets
        # above the base size lost in a row, while the PLPMTU is above the base size.
        if (persistent or self._big_losses >= BLACK_HOLE_LOSSES) and self._pmtu.on_black_hole(now):
            self._set_datagram_size(self._pmtu.current)
        if self._big_losses >= BLACK_HOLE_LOSSES:
            self._big_losses = 0

    def _set_datagram_size(self, size: int) -> None:
        if size == self._mds:
            return
        self._mds = size
        self._max_payload = size - self._overhead
        self._recovery.cc.set_max_datagram_size(size)
        self._events.append(PathMtuUpdated(size=size))

    # ================================================================================ sending

    def _has_eliciting(self) -> bool:
        return (
            self._close_pending
            or self._max_data_pending
            or bool(self._pings)
            or self._sendbuf.has_pending(self._peer_max_data)
        )

    def payloads_to_send(self, now: float) -> list[bytes]:
        """Plaintext payloads to send now, in order, each at most the current maximum payload.

        Ack-eliciting packets respect the congestion window (except PTO probes) and the peer's flow
        control limit; ACK-only packets do not count against the window.
        """
        out: list[bytes] = []
        recovery = self._recovery
        cc = recovery.cc
        pmtu = self._pmtu
        if pmtu.state is PmtuState.SEARCHING and cc.cwnd - recovery.bytes_in_flight >= pmtu.maximum:
            size = pmtu.next_probe()
            if size is not None:
                out.append(self._build_mtu_probe(size, now))
        while True:
            probing = self._pto_probes > 0
            if not probing and cc.cwnd - recovery.bytes_in_flight < self._mds:
                break
            if self._has_eliciting():
                out.append(self._build_eliciting(now))
            elif probing:
                out.append(self._build_ping_probe(now))
            else:
                break
            if probing:
                self._pto_probes -= 1
        if self._pongs or now >= self._acks.ack_at:  # an ACK due (AckTracker.ack_due)
            parts, _ = self._start_packet(now, self._max_payload)
            out.append(self._finish(parts, now, -1, None))
        return out

    def _start_packet(self, now: float, budget: int) -> tuple[list[bytes | bytearray], int]:
        pn = self._next_pn
        self._next_pn = pn + 1
        tag, used = VARINT_FORMS[pn.bit_length()]  # the shortest varint, without a call
        parts: list[bytes | bytearray] = [(pn | tag).to_bytes(used, "big")]
        acks = self._acks
        if acks.wants_ack or now >= acks.ack_at:  # attributes: no call per packet
            frame = acks.build_ack(now, budget - used)
            parts.append(frame)
            used += len(frame)
        pongs = self._pongs
        while pongs and used + _PING_FRAME_LEN <= budget:
            parts.append(b"\x02" + pongs.pop(0).to_bytes(8, "big"))
            used += _PING_FRAME_LEN
        return parts, used

    def _finish(
        self, parts: list[bytes | bytearray], now: float, flags: int, ranges: tuple[int, ...] | None
    ) -> bytes:
        """Join a packet; track it unless ``flags`` is -1 (not ack-eliciting)."""
        payload = b"".join(parts)
        if self.padder is not None:
            payload = self.padder.pad_stream(payload)
        size = len(payload) + self._overhead
        if flags >= 0:
            self._recovery.on_packet_sent(self._next_pn - 1, (now, size, flags, ranges))
        self._packets_sent += 1
        self._bytes_sent += size
        return payload

    def _build_eliciting(self, now: float) -> bytes:
        budget = self._max_payload
        parts, used = self._start_packet(now, budget)
        flags = 0
        if self._close_pending and self._close is not None:
            frame = encode_frame(CloseFrame(*self._close))
            if used + len(frame) <= budget:
                parts.append(frame)
                used += len(frame)
                flags |= F_CLOSE
                self._close_pending = False
        if self._max_data_pending and used + _MAX_DATA_FRAME_LEN <= budget:
            frame = b"\x05" + encode_varint(self._rx_limit)
            parts.append(frame)
            used += len(frame)
            flags |= F_MAX_DATA
            self._max_data_pending = False
        pings = self._pings
        if pings:
            ping_sent = self._ping_sent
            while pings and used + _PING_FRAME_LEN <= budget:
                token = pings.pop(0)
                parts.append(b"\x01" + token.to_bytes(8, "big"))
                used += _PING_FRAME_LEN
                if len(ping_sent) >= MAX_PENDING_PINGS:
                    del ping_sent[next(iter(ping_sent))]
                ping_sent[token] = now
                flags |= F_PING
        ranges: tuple[int, ...] | None = None
        sendbuf = self._sendbuf
        if sendbuf.next_offset < sendbuf.write_offset or sendbuf.has_lost:
            limit = self._peer_max_data
            # Fixed-width offset and length varints (RFC 9000 §16 allows non-minimal encodings):
            # one struct.pack per frame instead of two variable encodings.
            if sendbuf.write_offset < 1 << 30:
                if budget < 1 << 14:
                    pack, header, tags = _HDR_4_2, 7, (0x8000_0000, 0x4000)
                else:
                    pack, header, tags = _HDR_4_4, 9, (0x8000_0000, 0x8000_0000)
            elif budget < 1 << 14:
                pack, header, tags = _HDR_8_2, 11, (0xC000_0000_0000_0000, 0x4000)
            else:
                pack, header, tags = _HDR_8_4, 13, (0xC000_0000_0000_0000, 0x8000_0000)
            offset_tag, length_tag = tags
            take = sendbuf.take
            while True:
                room = budget - used - header
                if room <= 0:
                    break
                chunk = take(room, limit)
                if chunk is None:
                    break
                offset, data = chunk
                n = len(data)
                parts.append(pack(4, offset | offset_tag, n | length_tag))
                parts.append(data)
                used += header + n
                ranges = (offset, offset + n) if ranges is None else (*ranges, offset, offset + n)
        if flags == 0 and ranges is None:
            # Nothing ack-eliciting fitted (not expected with the minimum payload size); stay
            # ack-eliciting so that the packet is tracked.
            parts.append(_INTERNAL_PING)
            flags = F_PING
        return self._finish(parts, now, flags, ranges)

    def _build_ping_probe(self, now: float) -> bytes:
        parts, _ = self._start_packet(now, self._max_payload)
        parts.append(_INTERNAL_PING)
        return self._finish(parts, now, F_PING, None)

    def _build_mtu_probe(self, size: int, now: float) -> bytes:
        """A PING padded to ``size`` UDP payload bytes (RFC 8899 §4.1: probes carry no data)."""
        head = encode_varint(self._next_pn)
        self._next_pn += 1
        padding = size - self._overhead - len(head) - len(_INTERNAL_PING)
        return self._finish([head, _INTERNAL_PING, bytes(padding)], now, F_PROBE, None)

    # ================================================================================ timers

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next (loss, PTO, delayed ACK or path MTU raise timer)."""
        timer = self._recovery.timer()
        ack = self._acks.deadline
        if ack is not None and (timer is None or ack < timer):
            timer = ack
        raise_timer = self._pmtu.timer
        if raise_timer is not None and (timer is None or raise_timer < timer):
            timer = raise_timer
        return timer

    def handle_timer(self, now: float) -> None:
        """Run whatever timer is due; then call ``payloads_to_send``."""
        self._acks.on_timer(now)
        lost, persistent, pto = self._recovery.on_timeout(now)
        if lost:
            self._on_lost(lost, persistent, now)
        if pto:
            self._pto_probes = PTO_PROBES
        self._pmtu.on_timer(now)

    def on_datagram_too_big(self, size: int, now: float) -> None:
        """A datagram of ``size`` UDP payload bytes (plaintext + ``overhead``) failed with EMSGSIZE.

        Lowers the path MTU if needed (``PathMtuUpdated``) and resends, in smaller packets, the data
        of every packet in flight that was that large."""
        if self._pmtu.on_too_big(size, now):
            self._set_datagram_size(self._pmtu.current)
        lost = self._recovery.remove_larger_than(size)
        if lost:
            self._on_lost(lost, False, now)

    def on_path_changed(self, now: float) -> None:
        """The connection now sends on another path (RFC 9000 §9.4): RTT, congestion window and path
        MTU learned on the old one do not hold, nor does its first RTT sample (losses on the new path
        count towards persistent congestion only once it has one). What was in flight there goes
        again on the new path (as lost, without a congestion signal); offsets and order of the stream
        are unaffected, so the receiver delivers every message exactly once, in order."""
        cfg = self._config
        self._pmtu = self._new_pmtu()
        self._set_datagram_size(cfg.base_datagram_size)
        self._big_losses = 0
        recovery = self._recovery
        lost = recovery.remove_larger_than(0)
        if lost:
            self._on_lost(lost, False, now)
        recovery.on_path_changed(RttEstimator(cfg.initial_rtt, cfg.max_ack_delay), NewReno(self._mds))

    def _new_pmtu(self) -> PmtuSearch:
        cfg = self._config
        probing = cfg.pmtu_discovery and self.padder is None  # probes would have telltale sizes
        return PmtuSearch(cfg.base_datagram_size, cfg.max_datagram_size, probing)

    def oldest_unacked_sent_at(self) -> float | None:
        """When the oldest ack-eliciting packet still unacknowledged was sent (None: nothing is)."""
        return self._recovery.oldest_sent_time()

    @property
    def largest_acked(self) -> int:
        return self._recovery.largest_acked

    # ================================================================================ statistics

    @property
    def smoothed_rtt(self) -> float:
        return self._recovery.rtt.smoothed_rtt

    @property
    def min_rtt(self) -> float:
        """The smallest RTT sample; 0.0 before the first one."""
        return self._recovery.rtt.min_rtt

    @property
    def cwnd(self) -> int:
        return self._recovery.cc.cwnd

    @property
    def bytes_in_flight(self) -> int:
        return self._recovery.bytes_in_flight

    @property
    def max_datagram_size(self) -> int:
        """The current path MTU as a UDP payload size (plaintext budget + ``overhead``)."""
        return self._mds

    @property
    def bytes_sent(self) -> int:
        """UDP payload bytes sent (plaintext + ``overhead`` per datagram)."""
        return self._bytes_sent

    @property
    def bytes_received(self) -> int:
        """UDP payload bytes received (plaintext + ``overhead`` per datagram)."""
        return self._bytes_received

    @property
    def packets_sent(self) -> int:
        return self._packets_sent

    @property
    def packets_lost(self) -> int:
        """Packets declared lost (path MTU probes excluded)."""
        return self._packets_lost

    @property
    def packets_received(self) -> int:
        """Payloads accepted (duplicates excluded)."""
        return self._packets_received

    @property
    def messages_sent(self) -> int:
        return self._messages_sent

    @property
    def messages_received(self) -> int:
        return self._messages_received

    @property
    def is_closed(self) -> bool:
        """True once ``close()`` was called or the peer's CLOSE arrived."""
        return self._closed

    @property
    def has_unacked_data(self) -> bool:
        """Whether message bytes or our CLOSE still await the peer's acknowledgement."""
        return self._sendbuf.has_unacked or (self._close is not None and not self._close_acked)
