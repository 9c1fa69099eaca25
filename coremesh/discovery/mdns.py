"""mDNS / DNS-SD discovery on the local network, through the ``zeroconf`` library.

Each node advertises ``PEERID._coremesh._udp.local.``: SRV gives its mesh UDP port, A/AAAA its
addresses, and the TXT record ``id=PEERID`` (``v=1``). It browses the same type and keeps what it
resolves: at most ``max_peers`` peers of at most 16 addresses each; a malformed or foreign
announcement is counted in :attr:`MdnsDiscovery.counters` and dropped. An announcement is only a
hint: connecting runs the Noise handshake, which proves the PeerId.

Off by default (``MeshConfig.mdns``): multicast leaves the host on every interface, and inside
containers or Kubernetes pods it either does not work or reaches the wrong neighbours. Where it is
on, ``mdns_interfaces`` (IP addresses of this host's interfaces) limits it to those interfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from ..addr import Address
from ..errors import InvalidPeerId, MeshError
from ..identity import PeerId
from .base import MAX_ADDRESSES, DiscoveredPeer, DiscoveryHost

log = logging.getLogger("coremesh.discovery.mdns")

SERVICE_TYPE: Final = "_coremesh._udp.local."
TXT_VERSION: Final = "1"
MAX_PEERS: Final = 256
MAX_PENDING: Final = 32  # resolutions in flight
RESOLVE_TIMEOUT_MS: Final = 3000


class MdnsError(MeshError):
    """mDNS could not start (no usable interface, multicast refused)."""


class MdnsDiscovery:
    """Advertise this node and find others on the local network (see the module doc)."""

    name = "mdns"

    def __init__(self, *, interfaces: Sequence[str] = (), max_peers: int = MAX_PEERS) -> None:
        for ip in interfaces:
            ipaddress.ip_address(ip)  # ValueError names a bad entry; MeshConfig checks it first
        self.interfaces = tuple(interfaces)
        self.max_peers = max_peers
        self.counters: Counter[str] = Counter()
        self._peers: dict[str, DiscoveredPeer] = {}  # by service name
        self._own_id: PeerId | None = None
        self._zc: Any = None
        self._browser: Any = None
        self._info: Any = None
        self._pending: set[asyncio.Task[None]] = set()
        self._state_change: Any = None

    async def start(self, node: DiscoveryHost) -> None:
        from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        self._own_id = node.peer_id
        self._state_change = ServiceStateChange
        port = node.local_address.port
        addresses = self._advertised_ips(node)
        families = {ipaddress.ip_address(ip).version for ip in self.interfaces}
        version = (
            IPVersion.V4Only if families == {4} else IPVersion.V6Only if families == {6} else IPVersion.All
        )
        try:
            self._zc = AsyncZeroconf(
                interfaces=list(self.interfaces) or InterfaceChoice.All, ip_version=version
            )
        except (OSError, ValueError) as exc:
            raise MdnsError(f"mdns: cannot open the multicast sockets: {exc}") from None
        text = node.peer_id.to_text()
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{text}.{SERVICE_TYPE}",
            port=port,
            properties={"id": text, "v": TXT_VERSION},
            server=f"{text.lower()}.local.",
            parsed_addresses=addresses,
        )
        try:
            await self._zc.async_register_service(self._info, allow_name_change=False)
        except Exception as exc:  # zeroconf's NonUniqueNameException, or a socket error
            await self._zc.async_close()
            self._zc = None
            raise MdnsError(f"mdns: cannot advertise {text}: {exc}") from None
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        log.info("mdns started", extra={"addresses": addresses, "port": port})

    def _advertised_ips(self, node: DiscoveryHost) -> list[str]:
        """The node's addresses to publish: its bound IP, or for a wildcard bind the interface IPs
        (those of ``interfaces``, else every non-link-local IP of the host)."""
        bound = node.local_address.host
        if bound not in ("0.0.0.0", "::"):
            return [bound]
        ips: list[str] = list(self.interfaces)
        if not ips:
            import ifaddr  # a dependency of zeroconf

            for adapter in ifaddr.get_adapters():
                for entry in adapter.ips:
                    ips.append(entry.ip if isinstance(entry.ip, str) else entry.ip[0])
        out = []
        for text in ips:
            parsed = ipaddress.ip_address(text)
            if parsed.is_link_local or (bound == "0.0.0.0" and parsed.version == 6):
                continue
            if not parsed.is_loopback or self.interfaces:
                out.append(parsed.compressed)
        return out[:MAX_ADDRESSES]

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change is self._state_change.Removed:
            if self._peers.pop(name, None) is not None:
                self.counters["removed"] += 1
            return
        if len(self._pending) >= MAX_PENDING:
            self.counters["drop_busy"] += 1
            return
        task = asyncio.ensure_future(self._resolve(service_type, name))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        try:
            found = await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS)
        except Exception:
            self.counters["drop_resolve_error"] += 1
            return
        if not found:
            self.counters["drop_unresolved"] += 1
            return
        peer = self._parse(info)
        if peer is None:
            return
        if peer.peer_id == self._own_id:
            return
        if name not in self._peers and len(self._peers) >= self.max_peers:
            self.counters["drop_full"] += 1
            return
        self._peers[name] = peer
        self.counters["resolved"] += 1

    def _parse(self, info: Any) -> DiscoveredPeer | None:
        """An announcement as a DiscoveredPeer, or None (counted) if it is not one of ours."""
        props = info.decoded_properties or {}
        text = props.get("id")
        if not isinstance(text, str):
            self.counters["drop_no_id"] += 1
            return None
        try:
            peer_id = PeerId.from_text(text)
        except InvalidPeerId:
            self.counters["drop_bad_id"] += 1
            return None
        port = info.port
        if not isinstance(port, int) or not 0 < port < 65536:
            self.counters["drop_bad_port"] += 1
            return None
        addresses = []
        for ip in info.parsed_scoped_addresses():
            if "%" in ip:
                continue  # link-local: needs a scope this node may not share
            addresses.append(Address(ip, port))
        if not addresses:
            self.counters["drop_no_address"] += 1
            return None
        return DiscoveredPeer(peer_id=peer_id, addresses=tuple(addresses[:MAX_ADDRESSES]), source=self.name)

    async def discover_peers(self) -> list[DiscoveredPeer]:
        return list(self._peers.values())

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        zc, self._zc = self._zc, None
        if zc is None:
            return
        with contextlib.suppress(Exception):
            await self._browser.async_cancel()
        with contextlib.suppress(Exception):
            await zc.async_unregister_all_services()
        await zc.async_close()
