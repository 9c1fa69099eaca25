"""The host's own interface addresses: the host candidates of a node that listens on a wildcard.

Linux only (``SIOCGIFADDR`` per interface for IPv4, ``/proc/net/if_inet6`` for IPv6); elsewhere,
or on any error, the list is empty and the node simply announces fewer candidates.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from typing import Final

SIOCGIFADDR: Final = 0x8915
MAX_ADDRESSES: Final = 8


def interface_addresses(*, ipv4: bool = True, ipv6: bool = True) -> list[str]:
    """Usable unicast addresses of this host: no loopback, no link-local, at most a few."""
    out: list[str] = []
    if ipv4:
        out.extend(_ipv4())
    if ipv6:
        out.extend(_ipv6())
    usable = []
    for text in dict.fromkeys(out):
        ip = ipaddress.ip_address(text)
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            continue
        usable.append(text)
    return usable[:MAX_ADDRESSES]


def _ipv4() -> list[str]:
    out: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return out
    with sock:
        for name in names:
            with contextlib.suppress(OSError):
                request = struct.pack("256s", name.encode()[:15])
                answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
                out.append(socket.inet_ntoa(answer[20:24]))
    return out


def _ipv6() -> list[str]:
    out: list[str] = []
    try:
        with open("/proc/net/if_inet6") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if fields:
            with contextlib.suppress(ValueError):
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return out
