"""Configuration of the reliability layer."""

from __future__ import annotations

from dataclasses import dataclass

from coremesh.errors import ConfigError
from coremesh.reliability.padding import MIN_BUCKET
from coremesh.reliability.varint import MAX_VARINT

__all__ = ["INITIAL_MAX_DATA", "MAX_UDP_PAYLOAD", "MIN_DATAGRAM_SIZE", "ReliabilityConfig"]

INITIAL_MAX_DATA = 16 * 1024
"""Stream bytes each peer may send before it hears the other's first MAX_DATA (a protocol constant,
so no handshake parameter is needed). ``receive_window`` must be at least this."""

MIN_DATAGRAM_SIZE = 512
"""Smallest ``base_datagram_size`` accepted."""

MAX_UDP_PAYLOAD = 65527
"""Largest UDP payload over IPv4 (65535 - 8-byte UDP header)."""

_MIN_PAYLOAD = 320  # a packet number, an ACK header and a CLOSE frame with its longest reason


@dataclass(frozen=True, kw_only=True)
class ReliabilityConfig:
    """Parameters of one peer connection's reliability layer. Both peers must use the same
    ``max_ack_delay`` (it bounds the delay subtracted from RTT samples, RFC 9002 §5.3).

    Sizes are UDP payload bytes; ``overhead`` is what the session layer adds to each plaintext
    payload, so a payload may carry ``datagram size - overhead`` bytes. Invalid values raise
    ``ConfigError`` (a ``ValueError``) naming the field.
    """

    base_datagram_size: int = 1200
    """UDP payload size used until path MTU discovery finds a larger one."""
    max_datagram_size: int = 1200
    """Upper bound for path MTU probing."""
    pmtu_discovery: bool = False
    """Probe for datagram sizes above ``base_datagram_size`` (RFC 8899)."""
    overhead: int = 29
    """Bytes the session adds per datagram (13-byte header + 16-byte AEAD tag)."""
    send_buffer_size: int = 4 * 1024 * 1024
    """Bytes of unsent plus unacknowledged data above which ``can_send()`` is False."""
    receive_window: int = 4 * 1024 * 1024
    """Stream bytes the peer may send beyond what the application has read."""
    max_message_size: int = 16 * 1024 * 1024
    """Largest message, either direction."""
    initial_rtt: float = 0.1
    """RTT assumed before the first sample, in seconds."""
    max_ack_delay: float = 0.005
    """Longest time an ACK is delayed, in seconds."""
    ack_eliciting_threshold: int = 2
    """Acknowledge after this many ack-eliciting packets."""
    padding_buckets: tuple[int, ...] = ()
    """Datagram sizes every packet is padded up to, below ``base_datagram_size`` (always the top
    bucket); empty: no padding. Padding turns path MTU discovery off (``padding.py``)."""

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"ReliabilityConfig.{field} must be {what}, not {getattr(self, field)!r}")

        def integer(field: str) -> None:
            value = getattr(self, field)
            need(isinstance(value, int) and not isinstance(value, bool), field, "an int")

        for field in (
            "base_datagram_size",
            "max_datagram_size",
            "overhead",
            "send_buffer_size",
            "receive_window",
            "max_message_size",
            "ack_eliciting_threshold",
        ):
            integer(field)
        need(isinstance(self.pmtu_discovery, bool), "pmtu_discovery", "a bool")
        need(0 <= self.overhead <= 256, "overhead", "in 0..256")
        need(
            MIN_DATAGRAM_SIZE <= self.base_datagram_size <= MAX_UDP_PAYLOAD,
            "base_datagram_size",
            f"in {MIN_DATAGRAM_SIZE}..{MAX_UDP_PAYLOAD}",
        )
        need(
            self.base_datagram_size - self.overhead >= _MIN_PAYLOAD,
            "base_datagram_size",
            f"at least overhead + {_MIN_PAYLOAD} = {self.overhead + _MIN_PAYLOAD}",
        )
        need(
            self.base_datagram_size <= self.max_datagram_size <= MAX_UDP_PAYLOAD,
            "max_datagram_size",
            f"in base_datagram_size..{MAX_UDP_PAYLOAD} = {self.base_datagram_size}..{MAX_UDP_PAYLOAD}",
        )
        need(self.send_buffer_size >= 1, "send_buffer_size", ">= 1")
        need(
            INITIAL_MAX_DATA <= self.receive_window <= MAX_VARINT // 4,
            "receive_window",
            f"at least {INITIAL_MAX_DATA} (INITIAL_MAX_DATA)",
        )
        need(1 <= self.max_message_size <= MAX_VARINT // 4, "max_message_size", f"in 1..{MAX_VARINT // 4}")
        for field in ("initial_rtt", "max_ack_delay"):
            value = getattr(self, field)
            need(isinstance(value, int | float) and not isinstance(value, bool), field, "a number")
        need(0 < self.initial_rtt <= 60, "initial_rtt", "in (0, 60] seconds")
        need(0 <= self.max_ack_delay <= 1, "max_ack_delay", "in [0, 1] seconds")
        need(1 <= self.ack_eliciting_threshold <= 1000, "ack_eliciting_threshold", "in 1..1000")
        buckets = self.padding_buckets
        need(
            isinstance(buckets, tuple)
            and all(type(b) is int and MIN_BUCKET <= b <= MAX_UDP_PAYLOAD for b in buckets)
            and list(buckets) == sorted(set(buckets)),
            "padding_buckets",
            f"a tuple of increasing sizes in {MIN_BUCKET}..{MAX_UDP_PAYLOAD}",
        )
