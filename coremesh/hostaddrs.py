"""The concrete addresses a node bound to a wildcard can be reached at: its host candidates.

A socket bound to ``0.0.0.0`` or ``::`` has no address a peer could dial. The primary address of each
family is the source address the kernel would pick towards a documentation address: a UDP socket's
``connect()`` does a route lookup and sends nothing, so this never leaves the host.
"""

from __future__ import annotations

import ipaddress
import socket

from .addr import Address

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

    A wildcard yields the primary address of each family it serves, and the loopback addresses when
    ``include_loopback`` (peers on the same host) or when there is no other address at all."""
    try:
        ip = ipaddress.ip_address(bound.host)
    except ValueError:
        return [bound]
    if not ip.is_unspecified:
        return [bound]
    out: list[Address] = []
    v4 = primary_ip(socket.AF_INET)
    if v4:
        out.append(Address(v4, bound.port))
    if ip.version == 6:
        v6 = primary_ip(socket.AF_INET6)
        if v6:
            out.append(Address(v6, bound.port))
    if include_loopback or not out:
        loopback = [Address("127.0.0.1", bound.port)]
        if ip.version == 6:
            loopback.append(Address("::1", bound.port))
        out = loopback + out
    return out
