"""The keyed mesh relay: a relay path addressed by PeerId, over TCP or WebSocket (optionally TLS).

For networks where UDP is blocked or TURN is not enough. A node registers at the relay by signing
the relay's challenge with its identity; the relay then forwards the node's end-to-end encrypted
mesh packets (it never sees plaintext) to other registered nodes, by PeerId, with per-peer rate
limits. The protocol is :mod:`coremesh.keyedrelay.protocol` (sans-IO; spec in
``docs/keyed-relay.md``), URLs :mod:`coremesh.keyedrelay.url`, the asyncio client
:mod:`coremesh.aio.keyedrelay`; the server lives in the relay service (``coremesh_relay.keyed``).
"""

from __future__ import annotations

from ..ratelimit import TokenBucket
from .protocol import (
    MAGIC,
    MAX_FRAME,
    MAX_PACKET,
    PROTOCOL_VERSION,
    WS_PATH,
    ClientSession,
    CloseCode,
    FrameType,
    PacketTooLarge,
    RelayCore,
    RelayLimits,
    RelayNotRegistered,
    decode_frame,
    encode_frame,
)
from .url import RelayUrl, parse_relay_url

__all__ = [
    "MAGIC",
    "MAX_FRAME",
    "MAX_PACKET",
    "PROTOCOL_VERSION",
    "WS_PATH",
    "ClientSession",
    "CloseCode",
    "FrameType",
    "PacketTooLarge",
    "RelayCore",
    "RelayLimits",
    "RelayNotRegistered",
    "RelayUrl",
    "TokenBucket",
    "decode_frame",
    "encode_frame",
    "parse_relay_url",
]
