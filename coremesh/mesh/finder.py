"""``PeerFinder``: where a node looks for a peer it knows only by its PeerId.

Two kinds of source answer "where is PEERID?": the registered discovery services (mDNS, static
tables; started and stopped with the node) and the Kademlia DHT (a signed record of candidates).
The dialer asks here when ``connect`` is given a bare PeerId; the node's ``lookup``, ``resolve``
and ``discovered_peers`` answer from here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING

from ..addr import Address, parse_address
from ..config import MeshConfig
from ..errors import InvalidAddress, MeshError, PeerNotFound
from ..identity import PeerId
from .parts import NodeParts

if TYPE_CHECKING:
    from ..dht.events import LookupFinished
    from ..dht.records import PeerRecord
    from ..discovery.base import DiscoveredPeer, DiscoveryHost, DiscoveryService

log = logging.getLogger("coremesh.node")

DISCOVERY_TIMEOUT = 3.0  # per discovery service asked


class PeerFinder:
    """The discovery services registered on a node, and its DHT lookups."""

    def __init__(self, parts: NodeParts, config: MeshConfig, own_id: PeerId) -> None:
        self._parts = parts
        self._config = config
        self._own_id = own_id
        self.services: list[DiscoveryService] = []

    # -- discovery services ---------------------------------------------------------------------

    def add(self, service: DiscoveryService) -> None:
        if service not in self.services:
            self.services.append(service)

    async def discovered_peers(self) -> list[DiscoveredPeer]:
        """Every peer the services currently know (other than this node); a failing or slow
        service is logged and skipped."""
        found: list[DiscoveredPeer] = []
        for service in list(self.services):
            try:
                peers = await asyncio.wait_for(service.discover_peers(), DISCOVERY_TIMEOUT)
            except (MeshError, OSError, TimeoutError) as exc:
                log.warning("discovery failed", extra={"service": service.name, "error": str(exc)})
                continue
            found.extend(p for p in peers if p.peer_id != self._own_id)
        return found

    async def discovered_addresses(self, peer_id: PeerId) -> list[Address]:
        """Addresses the discovery services give for ``peer_id``, best first, those this socket
        can reach only."""
        runtime, _ = self._parts.require_running()
        out: list[Address] = []
        for peer in await self.discovered_peers():
            if peer.peer_id != peer_id:
                continue
            for address in peer.addresses:
                if address not in out and runtime.unreachable_reason(address) is None:
                    out.append(address)
        return out

    async def start_services(self, host: DiscoveryHost) -> None:
        """Start every service (an mDNS one first registered if ``MeshConfig.mdns`` asks for it);
        one that fails to start is logged and left out, never stops the node."""
        if self._config.mdns and not any(s.name == "mdns" for s in self.services):
            from ..discovery.mdns import MdnsDiscovery

            self.services.append(MdnsDiscovery(interfaces=self._config.mdns_interfaces))
        for service in list(self.services):
            try:
                await service.start(host)
            except (MeshError, OSError) as exc:
                log.warning(
                    "discovery service did not start", extra={"service": service.name, "error": str(exc)}
                )

    async def stop_services(self) -> None:
        for service in list(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("discovery service %s failed to stop", service.name)

    # -- the DHT -------------------------------------------------------------------------------

    @property
    def has_dht(self) -> bool:
        return self._parts.dht is not None

    async def lookup(self, peer: PeerId | str, timeout: float | None) -> LookupFinished:
        self._parts.require_running()
        peer_id = PeerId.from_text(peer) if isinstance(peer, str) else peer
        if self._parts.dht is None:
            raise PeerNotFound(f"cannot look {peer_id} up: the DHT is off (MeshConfig.dht)")
        return await self._parts.dht.lookup(peer_id, timeout=timeout)

    async def record(self, peer: PeerId | str, timeout: float | None) -> PeerRecord:
        result = await self.lookup(peer, timeout)
        if result.record is None:
            raise PeerNotFound(f"no live record of {result.target} in the network")
        return result.record

    async def resolve(self, peer: PeerId | str, timeout: float | None = None) -> list[Address]:
        """Addresses to try for ``peer``: its record's candidates, and where the DHT has seen it.

        Loopback candidates come only when this node is on loopback itself or the peer offers
        nothing else: a loopback address names a different host for every node that reads it."""
        result = await self.lookup(peer, timeout)
        found: list[Address] = []
        if result.record is not None:
            for kind, text in result.record.addresses:
                if kind in ("host", "srflx", "relay") and "://" not in text:
                    with contextlib.suppress(InvalidAddress):
                        found.append(parse_address(text, allow_names=False))
        found.extend(addr for pid, addr in result.closest if pid == result.target)
        if not found:
            raise PeerNotFound(f"no live record of {result.target} in the network")
        unique = list(dict.fromkeys(found))
        runtime = self._parts.runtime
        local = runtime is not None and _is_loopback(runtime.local_address)
        remote = [a for a in unique if not _is_loopback(a)]
        if local or not remote:
            return unique
        return remote


def _is_loopback(address: Address) -> bool:
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False
