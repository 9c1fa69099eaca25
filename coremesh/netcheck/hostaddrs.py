"""The host's own addresses, for the two jobs that need them.

A socket bound to ``0.0.0.0`` or ``::`` has no address of its own; two things need the addresses
behind it, and they want different lists:

- Candidates a peer could dial (the node): :func:`host_addresses` and :func:`interface_addresses`
  list a few usable unicast addresses (Linux: ``SIOCGIFADDR`` per interface for IPv4,
  ``/proc/net/if_inet6`` for IPv6; no loopback, no link-local, at most :data:`MAX_ADDRESSES`;
  elsewhere, or on any error, the list is empty).
- Everything that *is* this host (the relay's loop check: relayed data must never reach one of its
  own listeners): :func:`all_local_ips` lists every local address, loopback, link-local and
  secondary IPv4 addresses included, uncapped (IPv4 from ``/proc/net/fib_trie``, which has the
  secondary addresses ``SIOCGIFADDR`` does not report; IPv6 from ``/proc/net/if_inet6``).

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
FIB_TRIE: Final = "/proc/net/fib_trie"
IF_INET6: Final = "/proc/net/if_inet6"

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
    text = _read_proc(IF_INET6)
    return [] if text is None else ipv6_from_if_inet6(text)


def ipv4_from_fib_trie(text: str) -> list[str]:
    """The host's IPv4 addresses in the text of Linux's ``/proc/net/fib_trie``: the leaves marked
    ``/32 host LOCAL``, each once, in order. Lines that do not parse are skipped."""
    out: dict[str, None] = {}
    leaf: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            leaf = stripped[3:].strip()
        elif stripped.startswith("/") and leaf is not None:
            words = stripped.split()
            if words[:1] == ["/32"] and words[1:3] == ["host", "LOCAL"]:
                with contextlib.suppress(ValueError):
                    out[str(ipaddress.IPv4Address(leaf))] = None
        elif not stripped.startswith("/"):
            leaf = None
    return list(out)


def ipv6_from_if_inet6(text: str) -> list[str]:
    """The host's IPv6 addresses in the text of Linux's ``/proc/net/if_inet6`` (the first column,
    32 hex digits), each once, in order. Lines that do not parse are skipped."""
    out: dict[str, None] = {}
    for line in text.splitlines():
        words = line.split()
        if words and len(words[0]) == 32:
            with contextlib.suppress(ValueError):
                out[ipaddress.IPv6Address(bytes.fromhex(words[0])).compressed] = None
    return list(out)


def local_ips_from_proc(fib_trie: str, if_inet6: str) -> list[str]:
    """Every IP of the host from the texts of ``/proc/net/fib_trie`` and ``/proc/net/if_inet6``,
    each once, IPv4 first. Pure, for tests."""
    return list(dict.fromkeys([*ipv4_from_fib_trie(fib_trie), *ipv6_from_if_inet6(if_inet6)]))


def all_local_ips() -> list[str] | None:
    """Every IP of the host (:func:`local_ips_from_proc`); ``None`` when ``/proc`` cannot be read."""
    texts = [_read_proc(FIB_TRIE) or "", _read_proc(IF_INET6) or ""]
    if not any(texts):
        return None
    return local_ips_from_proc(*texts) or None


def _read_proc(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None
