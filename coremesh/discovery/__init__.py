"""Ways a node learns other nodes' addresses by PeerId: the :class:`DiscoveryService` plugins.

``MeshNode.with_discovery(service)`` registers one; the node starts and stops it with itself and
asks it for addresses when told to connect to a PeerId it has no address for. Shipped here:
:class:`~coremesh.discovery.mdns.MdnsDiscovery` (the local network, off by default).
"""

from .base import DiscoveredPeer, DiscoveryHost, DiscoveryService, StaticDiscovery

__all__ = ["DiscoveredPeer", "DiscoveryHost", "DiscoveryService", "StaticDiscovery"]
