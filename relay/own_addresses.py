"""The relay's own addresses: where relayed addresses are bound, and where relayed data must never go.

A TURN relay that sent a client's data to one of its own listeners would talk to itself: a loop a
client could use to multiply its traffic, or to reach a listener the peer policy otherwise guards.
The TURN core refuses such peers when they are in ``TurnServer.server_addresses`` or among the peer
policy's own IPs; :class:`OwnAddresses` fills both for one relay. A concrete listen address is just
itself; a wildcard one (``0.0.0.0``, ``::``) receives on every address of the host, so it is expanded
to all of them (:func:`~coremesh.netcheck.hostaddrs.all_local_ips`: loopback, link-local and
secondary addresses included, which the node's candidate list leaves out on purpose), and any
loopback address on its ports counts too (:class:`ServerAddresses`). Expansion happens once, at
start; addresses the host gains later are not picked up.

Relayed addresses (:func:`relay_ip`) are bound on the listen IP, or, behind a wildcard, on the source
address the host routes from (:func:`~coremesh.netcheck.hostaddrs.primary_ip`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Final

from coremesh.addr import Address
from coremesh.netcheck.hostaddrs import all_local_ips, primary_ip

WILDCARDS: Final = ("0.0.0.0", "::")
_V4_LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")


def relay_ip(listen_host: str, version: int) -> str | None:
    """The IP relayed addresses of that IP version are bound on: the listen IP when it is concrete;
    for a wildcard listen address, the source address the host would route from (a UDP ``connect``
    to a documentation address sends nothing); ``None`` when there is none (Allocate then gets 440).
    """
    if listen_host not in WILDCARDS:
        return listen_host if (":" in listen_host) == (version == 6) else None
    if listen_host == "0.0.0.0" and version == 6:
        return None
    return primary_ip(socket.AF_INET if version == 4 else socket.AF_INET6)


def own_ips(listen_host: str, local_ips: Iterable[str] | None) -> list[str]:
    """The IPs a listener on ``listen_host`` receives on: the host itself when concrete; for
    ``0.0.0.0`` the host's IPv4 addresses, for ``::`` (dual-stack) all of them. ``local_ips`` is
    :func:`~coremesh.netcheck.hostaddrs.all_local_ips`; when it is ``None`` the :func:`relay_ip`
    addresses stand in."""
    if listen_host not in WILDCARDS:
        return [listen_host]
    if local_ips is None:
        found = [relay_ip(listen_host, 4), relay_ip(listen_host, 6)]
        return [ip for ip in found if ip is not None]
    return [ip for ip in local_ips if listen_host == "::" or ":" not in ip]


class ServerAddresses(set[Address]):
    """``TurnServer.server_addresses`` (what relayed data must never be sent to) that also knows the
    wildcard listeners: all of 127.0.0.0/8 reaches a ``0.0.0.0`` (or dual-stack ``::``) listener,
    and that range is too big to list."""

    def __init__(self) -> None:
        super().__init__()
        self.loopback_ports: set[int] = set()

    def __contains__(self, item: object) -> bool:
        if super().__contains__(item):
            return True
        if not isinstance(item, Address) or item.port not in self.loopback_ports:
            return False
        try:
            return ipaddress.ip_address(item.host) in _V4_LOOPBACK
        except ValueError:
            return False


class OwnAddresses:
    """One relay's own addresses, found when it starts listening on ``listen_host``.

    ``relay_ipv4``/``relay_ipv6`` are where its relayed addresses are bound; :meth:`own_ips` is what
    the peer policy refuses; :attr:`server_addresses` (handed to the TURN core) grows with
    :meth:`add_listeners` as the relay's sockets, and its other services', are known.
    """

    def __init__(self, listen_host: str) -> None:
        self.listen_host = listen_host
        self._local_ips = all_local_ips() if listen_host in WILDCARDS else None
        self.relay_ipv4 = relay_ip(listen_host, 4)
        self.relay_ipv6 = relay_ip(listen_host, 6)
        self.server_addresses = ServerAddresses()

    def own_ips(self, alt_address: str | None = None, external_ip: str | None = None) -> list[str]:
        """The IPs the peer policy must refuse: what the listener receives on, the RFC 5780 alternate
        address, the external (public) IP relayed addresses are advertised with, and the relayed
        addresses' IPs."""
        out = own_ips(self.listen_host, self._local_ips)
        out.extend(ip for ip in (alt_address, external_ip) if ip is not None)
        out.extend(ip for ip in (self.relay_ipv4, self.relay_ipv6) if ip is not None)
        return out

    def add_listeners(self, addresses: Iterable[Address]) -> None:
        """Addresses the relay (or another service of it) listens on: relayed data never goes to
        them. A wildcard host stands for every address of the host, on that port."""
        table = self.server_addresses
        for addr in addresses:
            if addr.host not in WILDCARDS:
                table.add(addr)
                continue
            if self._local_ips is None:
                self._local_ips = all_local_ips()
            ips = own_ips(addr.host, self._local_ips)
            relay_ips = (relay_ip(addr.host, 4), relay_ip(addr.host, 6))
            for ip in dict.fromkeys([*ips, *(ip for ip in relay_ips if ip is not None)]):
                table.add(Address(ip, addr.port))
            table.loopback_ports.add(addr.port)
