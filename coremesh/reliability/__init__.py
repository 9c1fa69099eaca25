"""The sans-IO reliable, ordered message layer of one peer connection.

See ``stream.py`` for the design; ``ReliableStream`` and ``ReliabilityConfig`` are the entry points.
"""

from __future__ import annotations

from coremesh.reliability.codes import ErrorCode
from coremesh.reliability.config import INITIAL_MAX_DATA, ReliabilityConfig
from coremesh.reliability.events import (
    CloseAcked,
    CloseReceived,
    MessageReceived,
    PathMtuUpdated,
    PongReceived,
    ReliabilityEvent,
    SendReady,
)
from coremesh.reliability.stream import INTERNAL_PING_TOKEN, ReliableStream

__all__ = [
    "INITIAL_MAX_DATA",
    "INTERNAL_PING_TOKEN",
    "CloseAcked",
    "CloseReceived",
    "ErrorCode",
    "MessageReceived",
    "PathMtuUpdated",
    "PongReceived",
    "ReliabilityConfig",
    "ReliabilityEvent",
    "ReliableStream",
    "SendReady",
]
