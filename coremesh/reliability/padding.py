"""Optional constant-size padding and constant-rate cover traffic of one connection (sans-IO).

Both are off by default (``MeshConfig.padding_buckets`` empty, ``cover_rate`` 0); then nothing in
this module runs: the stream and the peer test one attribute for ``None`` and go on as before.

Size buckets
    With ``padding_buckets`` set (say 128, 256, 512, 1024), every TRANSPORT datagram of the
    connection is padded up to the next bucket; the connection's datagram size (``datagram_size``,
    1200 by default) is always the top bucket, and buckets at or above it are dropped (a routed
    connection's datagrams are smaller). Path MTU discovery is off on a padded connection: its
    probes would have telltale sizes and the top bucket would move. Padding never pushes a packet
    over the datagram size: the buckets end there.

    * Stream packets (``ReliableStream``) are padded where they are built, with the reliability
      layer's PADDING frame (a run of zero bytes, ``frames.py``): any receiver, padded or not,
      already ignores it, and congestion control counts the padded size.
    * Path and overlay packets (``traversal/frames.py``, ``routing/overlay.py``) are not
      length-delimited, so they travel in an *envelope*::

          ENVELOPE_PREFIX (the varint 2^62-3) | inner_len:u16 | inner plaintext | zero bytes

      beside the path (2^62-1) and overlay (2^62-2) prefixes, outside the stream's numbering. A
      plaintext that already has a bucket size goes as it is. One whose envelope would not fit the
      top bucket (a full-size routed packet forwarded through a padded hop) goes unpadded and is
      counted (``Padder.oversize``). :func:`open_envelope` refuses, with ``DecodeError``, a short
      header, a length beyond the packet, non-zero padding and an envelope inside an envelope.

Cover traffic
    With ``cover_rate`` r > 0 (it needs buckets), time is cut into slots of 1/r seconds from the
    moment the connection is up. At the end of a slot in which the connection sent no TRANSPORT
    packet at all, it sends one *cover packet*: an empty envelope padded to the smallest bucket.
    Any real packet (data, ACK, PING, path, overlay) takes the place of the slot's cover packet, so
    while the application sends less than r packets/s the observer sees r packets/s whether it
    sends or not. Real packets are never held back for a slot: above r packets/s the rate rises
    with the traffic (shaping would cap throughput at r x datagram size and delay every message).
    After a pause (a process that slept) the schedule restarts from now instead of bursting.

    Cover packets live outside the reliable stream: they have no packet number, are neither
    acknowledged nor ack-eliciting, and never reach the recovery state. So they cannot cause ACK
    storms (nothing answers them) nor distort RTT samples, loss detection, bytes in flight or the
    congestion window. The receiver counts them and drops them after the AEAD; like any
    authenticated packet they show the peer is alive (no heartbeat PING is needed meanwhile).

    Cover runs while the connection is CONNECTED and stops when it closes. With ``cover_idle`` t > 0
    it also stops after t seconds without an application message in either direction, and resumes
    with the next one (a trade: an observer then sees when the connection is idle); 0 keeps it
    going for as long as the connection lives.

Nothing here reads a clock: time is the ``now`` argument.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Final

from coremesh.errors import DecodeError

__all__ = [
    "ENVELOPE_HEADER_LEN",
    "ENVELOPE_PREFIX",
    "MAX_COVER_RATE",
    "MIN_BUCKET",
    "CoverSchedule",
    "Padder",
    "bucket_sizes",
    "open_envelope",
]

ENVELOPE_PREFIX: Final = b"\xff" * 7 + b"\xfd"
"""The varint 2^62-3: a packet number the stream never reaches, next to the path and overlay ones."""

ENVELOPE_HEADER_LEN: Final = len(ENVELOPE_PREFIX) + 2

MIN_BUCKET: Final = 64
"""Smallest bucket accepted (a transport header, a tag and a few bytes of plaintext)."""

MAX_COVER_RATE: Final = 1000.0
"""Most cover packets per second per connection."""

_OFF_STREAM: Final = 0xFF  # first byte of the path, overlay and envelope prefixes, never of a stream packet


def bucket_sizes(buckets: Iterable[int], top: int) -> tuple[int, ...]:
    """The datagram sizes a connection pads to: the buckets below ``top``, then ``top``."""
    return (*sorted(b for b in set(buckets) if b < top), top)


class Padder:
    """Pads one connection's plaintexts so that every datagram has a bucket size.

    ``overhead`` is what the session adds to a plaintext (header and tag); sizes are datagram sizes.
    """

    __slots__ = ("_exact", "overhead", "oversize", "sent", "sizes", "top")

    def __init__(self, buckets: Iterable[int], top: int, overhead: int) -> None:
        self.sizes = bucket_sizes(buckets, top)
        self.top = top
        self.overhead = overhead
        self._exact = frozenset(self.sizes)
        self.sent = 0  # plaintexts that went through pad(): every TRANSPORT packet of the connection
        self.oversize = 0  # plaintexts too large for their envelope, sent unpadded

    def target(self, size: int) -> int:
        """The bucket a datagram of ``size`` bytes is padded to (``size`` itself above the top)."""
        sizes = self.sizes
        i = bisect_left(sizes, size)
        return sizes[i] if i < len(sizes) else size

    def pad_stream(self, payload: bytes) -> bytes:
        """A stream payload padded with PADDING frames (zero bytes) to its bucket."""
        size = len(payload) + self.overhead
        extra = self.target(size) - size
        return payload + bytes(extra) if extra else payload

    def pad(self, plaintext: bytes) -> bytes:
        """Any TRANSPORT plaintext of the connection, padded to its bucket (and counted)."""
        self.sent += 1
        if len(plaintext) + self.overhead in self._exact:
            return plaintext
        if not plaintext or plaintext[0] != _OFF_STREAM:
            return self.pad_stream(plaintext)
        return self.envelope(plaintext)

    def envelope(self, inner: bytes) -> bytes:
        """``inner`` (a path or overlay plaintext, or nothing: a cover packet) in a padded envelope."""
        need = len(inner) + ENVELOPE_HEADER_LEN + self.overhead
        if need > self.top:
            self.oversize += 1
            return inner
        return ENVELOPE_PREFIX + len(inner).to_bytes(2, "big") + inner + bytes(self.target(need) - need)

    def cover(self) -> bytes:
        """The plaintext of one cover packet: an empty envelope of the smallest bucket."""
        return self.envelope(b"")


def open_envelope(plaintext: bytes) -> bytes:
    """The inner plaintext of an envelope (empty: a cover packet). Hostile input raises
    ``DecodeError`` and nothing else."""
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise DecodeError("an envelope is bytes")
    data = bytes(plaintext)
    if len(data) < ENVELOPE_HEADER_LEN or data[: len(ENVELOPE_PREFIX)] != ENVELOPE_PREFIX:
        raise DecodeError("not a padding envelope")
    start = ENVELOPE_HEADER_LEN
    end = start + int.from_bytes(data[start - 2 : start], "big")
    if end > len(data):
        raise DecodeError(f"envelope of {end - start} bytes in a {len(data)}-byte packet")
    if data[end:].count(0) != len(data) - end:
        raise DecodeError("envelope padding is not zero bytes")
    inner = data[start:end]
    if inner[: len(ENVELOPE_PREFIX)] == ENVELOPE_PREFIX:
        raise DecodeError("an envelope inside an envelope")
    return inner


class CoverSchedule:
    """When one connection sends cover packets: one per slot of ``1/rate`` s with nothing else in it.

    The caller reads :meth:`deadline`, and at that time calls :meth:`on_slot` with the connection's
    count of packets sent (``Padder.sent``) and of application messages (sent plus received); it
    sends one cover packet when the answer is True. :meth:`wake` restarts a schedule that idled.
    """

    __slots__ = ("_active_at", "_messages", "_seen", "covers", "idle", "interval", "next_at")

    def __init__(self, rate: float, idle: float, now: float) -> None:
        if not 0 < rate <= MAX_COVER_RATE:
            raise ValueError(f"cover rate must be in (0, {MAX_COVER_RATE:g}] packets/s, not {rate!r}")
        if idle < 0:
            raise ValueError(f"cover idle time must be >= 0, not {idle!r}")
        self.interval = 1.0 / rate
        self.idle = idle
        self.next_at: float | None = now + self.interval
        self.covers = 0  # cover packets asked for
        self._seen = -1  # packets sent when the slot began (-1: unknown, so the first slot is free)
        self._messages = 0
        self._active_at = now

    def deadline(self) -> float | None:
        """The end of the current slot; None while idle."""
        return self.next_at

    def on_slot(self, now: float, packets_sent: int, messages: int) -> bool:
        """The slot ended (``now >= deadline()``): True to send one cover packet, which the caller
        sends at once (it counts in ``packets_sent`` for the next slot)."""
        due = self.next_at
        if due is None or now < due:
            return False
        if messages != self._messages:
            self._messages = messages
            self._active_at = now
        if self.idle and now - self._active_at >= self.idle:
            self.next_at = None
            return False
        send = self._seen >= 0 and packets_sent == self._seen
        nxt = due + self.interval
        self.next_at = nxt if nxt > now else now + self.interval  # behind: restart, no burst
        self._seen = packets_sent + 1 if send else packets_sent
        if send:
            self.covers += 1
        return send

    def wake(self, now: float, messages: int) -> None:
        """An idle schedule restarts when the message count moved (a message sent or received)."""
        if self.next_at is None and messages != self._messages:
            self._messages = messages
            self._active_at = now
            self._seen = -1
            self.next_at = now + self.interval
