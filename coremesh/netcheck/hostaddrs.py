"""The host's own addresses: the host candidates of a node that listens on a wildcard.

A socket bound to ``0.0.0.0`` or ``::`` has no address a peer could dial. :func:`interface_addresses`
lists the usable unicast addresses of every interface (Linux: ``SIOCGIFADDR`` per interface for
IPv4, ``/proc/net/if_inet6`` for IPv6; elsewhere, or on any error, the list is empty).
:func:`primary_ip` is the source address the kernel would pick towards a documentation address: a UDP
socket's ``connect()`` does a route lookup and sends nothing, so neither ever leaves the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from typing import Final

from ..addr import Address

SIOCGIFADDR: Final = 0x8915
MAX_ADDRESSES: Final = 8

_V4_PROBE = "192.0.2.1"  # TEST-NET-1: a route lookup only, no packet is sent
_V6_PROBE = "2001:db8::1"  # documentation prefix


def primary_ip(family: socket.AddressFamily) -> str | None:
    """The source address of this family's default route, or None (no route, no address)."""
    probe = _V4_PROBE if family == socket.AF_INET else _V6_PROBE
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            host = str(s.getsockname()[0])
    except OSError:
        return None
    return None if host in ("0.0.0.0", "::") else host


def host_addresses(bound: Address, *, include_loopback: bool = True) -> list[Address]:
    """Dialable addresses for a socket bound to ``bound`` (itself unless it is a wildcard).

    A wildcard yields the primary address of each family it serves first, then the other interface
    addresses, and the loopback addresses first when ``include_loopback`` (peers on the same host)
    or when there is no other address at all."""
    try:
        ip = ipaddress.ip_address(bound.host)
    except ValueError:
        return [bound]
    if not ip.is_unspecified:
        return [bound]
    v6 = ip.version == 6
    hosts = [primary_ip(socket.AF_INET), primary_ip(socket.AF_INET6) if v6 else None]
    hosts += interface_addresses(ipv4=True, ipv6=v6)
    out = [Address(h, bound.port) for h in dict.fromkeys(h for h in hosts if h)][:MAX_ADDRESSES]
    if include_loopback or not out:
        loopback = [Address("127.0.0.1", bound.port)]
        if v6:
            loopback.append(Address("::1", bound.port))
        out = loopback + out
    return out


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
