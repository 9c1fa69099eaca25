"""Events a ``ReliableStream`` hands to its owner through ``next_event()``.

Frozen keyword-only dataclasses, one per thing that happened. Constructing one with an out-of-range
field raises ``ValueError`` (``MessageReceived`` is built once per message and skips the check).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CloseAcked",
    "CloseReceived",
    "MessageReceived",
    "PathMtuUpdated",
    "PongReceived",
    "ReliabilityEvent",
    "SendReady",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageReceived:
    """A whole message from the peer, delivered once and in order."""

    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class PongReceived:
    """The peer answered our PING ``token``; ``rtt`` is seconds since that PING was sent."""

    token: int
    rtt: float

    def __post_init__(self) -> None:
        if not 0 <= self.token < 1 << 64:
            raise ValueError(f"token must be a u64, not {self.token}")
        if self.rtt < 0:
            raise ValueError(f"rtt must be >= 0, not {self.rtt}")


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseReceived:
    """The peer closed the connection with a wire ``code`` and a ``reason``."""

    code: int
    reason: str

    def __post_init__(self) -> None:
        if self.code < 0:
            raise ValueError(f"code must be >= 0, not {self.code}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SendReady:
    """The send buffer was full and has room again: ``can_send()`` is True."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PathMtuUpdated:
    """The largest UDP payload the path carries changed to ``size`` bytes."""

    size: int

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be > 0, not {self.size}")


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseAcked:
    """The peer acknowledged our CLOSE frame."""


ReliabilityEvent = MessageReceived | PongReceived | CloseReceived | SendReady | PathMtuUpdated | CloseAcked
