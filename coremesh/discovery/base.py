"""The discovery plugin interface: a source of (PeerId, addresses) pairs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..addr import Address
from ..identity import PeerId

MAX_ADDRESSES = 16
"""Addresses kept per discovered peer: a hostile announcement cannot make a node dial hundreds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveredPeer:
    """A peer some source claims to know. The claim is not trusted: connecting authenticates the
    PeerId (the Noise handshake), so a wrong address costs one failed attempt, nothing more."""

    peer_id: PeerId
    addresses: tuple[Address, ...]
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.peer_id, PeerId):
            raise TypeError("DiscoveredPeer.peer_id must be a PeerId")
        addresses = tuple(dict.fromkeys(self.addresses))[:MAX_ADDRESSES]
        if not all(isinstance(a, Address) for a in addresses):
            raise TypeError("DiscoveredPeer.addresses must be Address values")
        object.__setattr__(self, "addresses", addresses)


class DiscoveryHost(Protocol):
    """What a discovery service may ask of the node it serves (a ``MeshNode`` is one): who it is
    and where its socket is bound, to advertise them."""

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def local_address(self) -> Address: ...


@runtime_checkable
class DiscoveryService(Protocol):
    """A discovery plugin. ``name`` identifies it (``"mdns"``, ``"dht"``, ``"static"``) and is the
    ``source`` of what it finds. ``start`` is called once the node's socket is bound, ``stop``
    before it closes; ``discover_peers`` returns what the service knows now (quickly: the node
    bounds the call) and never raises for a hostile or malformed announcement."""

    @property
    def name(self) -> str: ...

    async def start(self, node: DiscoveryHost) -> None: ...

    async def discover_peers(self) -> list[DiscoveredPeer]: ...

    async def stop(self) -> None: ...


class StaticDiscovery:
    """A fixed table of peers: for tests, and for deployments that know their peers' addresses."""

    name = "static"

    def __init__(self, peers: Iterable[tuple[PeerId, Iterable[Address]]] = ()) -> None:
        self._peers = {
            pid: DiscoveredPeer(peer_id=pid, addresses=tuple(a), source=self.name) for pid, a in peers
        }

    def add(self, peer_id: PeerId, *addresses: Address) -> None:
        self._peers[peer_id] = DiscoveredPeer(peer_id=peer_id, addresses=addresses, source=self.name)

    async def start(self, node: DiscoveryHost) -> None:
        return None

    async def discover_peers(self) -> list[DiscoveredPeer]:
        return list(self._peers.values())

    async def stop(self) -> None:
        return None
