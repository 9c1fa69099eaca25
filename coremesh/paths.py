"""Where a peer's packets go: a UDP address, or a keyed mesh relay addressed by PeerId.

The endpoint core treats both as opaque, hashable destinations; the asyncio runtime routes a
:class:`RelayAddress` to the relay client, and an :class:`~coremesh.addr.Address` to the UDP socket
(directly, or wrapped for a TURN server when the runtime has a TURN route for it).
"""

from __future__ import annotations

from typing import NamedTuple

from .addr import Address
from .identity import PeerId


class RelayAddress(NamedTuple):
    """A peer reached through the keyed mesh relay at ``relay`` (its URL)."""

    relay: str
    peer: PeerId

    @property
    def is_ipv6(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"{self.relay}#{self.peer.short()}"


PathAddress = Address | RelayAddress


def path_kind(address: PathAddress) -> str:
    return "relay" if isinstance(address, RelayAddress) else "direct"
