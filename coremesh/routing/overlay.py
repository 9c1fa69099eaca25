"""The overlay's packets: what neighbours exchange inside their hop-by-hop sessions.

An overlay packet travels as the plaintext of a hop-by-hop TRANSPORT packet that starts with
:data:`OVERLAY_PREFIX` (the varint 2^62-2: a packet number the reliable stream never reaches, next
to the path packets' 2^62-1), so it is authenticated by the neighbour's session but neither
acknowledged, retransmitted nor congestion controlled: what must be reliable is made so end to end.
After the prefix comes one type byte (:class:`OverlayType`) and that type's body.

``ROUTED`` (the reserved mesh packet type 0xE8) carries one packet of an end-to-end session (a
handshake or transport packet between source and destination, opaque to every hop) or a route
probe, addressed by PeerId::

    ROUTED  0xE8 | version:1 | hop_limit:1 | flags:1 | destination:32 | source:32
            | [flags & SOURCE_ROUTED: count:1 | hop:32 * count]   (the hops still to take)
            | inner packet

A hop sees the destination, the source, the hop limit and a source route, never the payload: the
inner packet is sealed by the end-to-end session. Every malformation raises ``DecodeError``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from ..errors import DecodeError, InvalidPeerId
from ..identity import PeerId
from ..secure.wire import PROTOCOL_VERSION, PacketType

OVERLAY_PREFIX: Final = b"\xff" * 7 + b"\xfe"
DEFAULT_HOP_LIMIT: Final = 64  # a route has at most 62 hops (RoutingConfig.max_path)
MAX_SOURCE_ROUTE: Final = 16
FLAG_SOURCE_ROUTED: Final = 1
FLAG_PROBE: Final = 2  # the inner packet is a route probe (see :mod:`coremesh.routing.probe`)

_ROUTED_HEAD = struct.Struct("!BBBB32s32s")
ROUTED_HEADER_LEN: Final = _ROUTED_HEAD.size


class OverlayType(enum.IntEnum):
    """The first byte after :data:`OVERLAY_PREFIX`."""

    ROUTED = PacketType.ROUTED  # 0xE8: a packet forwarded by destination PeerId
    ROUTE_UPDATE = 0x10  # route adverts between neighbours (coremesh/routing/messages.py)
    BROADCAST = 0x11  # a mesh-wide broadcast (coremesh/routing/flood.py)
    MULTICAST = 0x12  # a message to a multicast group (coremesh/routing/flood.py)
    MEMBERSHIP = 0x13  # a signed group membership announcement (coremesh/routing/flood.py)


def is_overlay_packet(plaintext: bytes) -> bool:
    return plaintext[:8] == OVERLAY_PREFIX


def overlay_type(plaintext: bytes) -> int:
    """The type byte of an overlay plaintext (prefix included); DecodeError when there is none."""
    if len(plaintext) < 9 or not is_overlay_packet(plaintext):
        raise DecodeError("not an overlay packet")
    return plaintext[8]


@dataclass(frozen=True, slots=True)
class Routed:
    destination: PeerId
    source: PeerId
    hop_limit: int
    inner: bytes
    source_route: tuple[PeerId, ...] = ()
    probe: bool = False


def encode_routed(packet: Routed) -> bytes:
    """The overlay plaintext of a ROUTED packet (prefix included)."""
    if not 0 <= packet.hop_limit <= 255:
        raise ValueError("hop_limit must be 0..255")
    if len(packet.source_route) > MAX_SOURCE_ROUTE:
        raise ValueError(f"a source route has at most {MAX_SOURCE_ROUTE} hops")
    flags = (FLAG_SOURCE_ROUTED if packet.source_route else 0) | (FLAG_PROBE if packet.probe else 0)
    head = _ROUTED_HEAD.pack(
        PacketType.ROUTED,
        PROTOCOL_VERSION,
        packet.hop_limit,
        flags,
        packet.destination.key,
        packet.source.key,
    )
    route = b""
    if packet.source_route:
        route = bytes((len(packet.source_route),)) + b"".join(p.key for p in packet.source_route)
    return OVERLAY_PREFIX + head + route + packet.inner


def decode_routed(plaintext: bytes) -> Routed:
    if overlay_type(plaintext) != OverlayType.ROUTED:
        raise DecodeError("not a ROUTED packet")
    pos = len(OVERLAY_PREFIX)
    if len(plaintext) < pos + ROUTED_HEADER_LEN + 1:
        raise DecodeError("truncated ROUTED packet")
    _, version, hop_limit, flags, dest, src = _ROUTED_HEAD.unpack_from(plaintext, pos)
    if version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported ROUTED version {version}")
    if flags & ~(FLAG_SOURCE_ROUTED | FLAG_PROBE):
        raise DecodeError(f"unknown ROUTED flags {flags:#x}")
    pos += ROUTED_HEADER_LEN
    route: tuple[PeerId, ...] = ()
    if flags & FLAG_SOURCE_ROUTED:
        count = plaintext[pos]
        pos += 1
        if not 0 < count <= MAX_SOURCE_ROUTE or len(plaintext) < pos + 32 * count + 1:
            raise DecodeError("bad ROUTED source route")
        route = tuple(_peer(plaintext[pos + 32 * i : pos + 32 * (i + 1)]) for i in range(count))
        pos += 32 * count
    return Routed(
        destination=_peer(dest),
        source=_peer(src),
        hop_limit=hop_limit,
        inner=plaintext[pos:],
        source_route=route,
        probe=bool(flags & FLAG_PROBE),
    )


def _peer(key: bytes) -> PeerId:
    try:
        return PeerId(bytes(key))
    except InvalidPeerId as exc:
        raise DecodeError(f"bad peer id in overlay packet: {exc}") from None


def overlay_packet(kind: OverlayType, body: bytes) -> bytes:
    """The overlay plaintext of a non-ROUTED message: prefix, type byte, body."""
    return OVERLAY_PREFIX + bytes((kind,)) + body
