"""The keyed mesh relay: a relay path addressed by PeerId, over TCP or WebSocket (optionally TLS).

For networks where UDP is blocked or TURN is not enough. A node registers at the relay by signing
the relay's challenge with its identity; the relay then forwards the node's end-to-end encrypted
mesh packets (it never sees plaintext) to other registered nodes, by PeerId, with per-peer rate
limits. The protocol is sans-IO (spec in ``docs/keyed-relay.md``), one room per concern:

- :mod:`.frames`: frame types, close codes and the pure codec;
- :mod:`.framing`: how frames travel (raw TCP preamble and length prefix, WebSocket path);
- :mod:`.limits`: :class:`RelayLimits` and the cap on unregistered connections;
- :mod:`.server`: :class:`RelayCore`, every session of a relay;
- :mod:`.client`: :class:`ClientSession`, one client connection;
- :mod:`.url`: relay URLs.

The asyncio client is :mod:`coremesh.aio.keyedrelay`; the server's asyncio shell lives in the relay
service (``coremesh_relay.keyed``).
"""

from __future__ import annotations

from ..ratelimit import TokenBucket
from .client import ClientSession, PacketTooLarge, RelayNotRegistered
from .frames import MAX_FRAME, MAX_PACKET, PROTOCOL_VERSION, CloseCode, FrameType, decode_frame, encode_frame
from .framing import MAGIC, WS_PATH
from .limits import RelayLimits
from .server import RelayCore
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
