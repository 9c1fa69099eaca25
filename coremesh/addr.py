"""Network addresses in the text form the mesh uses everywhere: ``HOST:PORT`` or ``[V6]:PORT``.

Parsing is strict: a bare IPv6 address without brackets is refused because its last group would be
ambiguous with a port. Host names are accepted only where a caller asks for them (``allow_names``),
since the core works with literal IPs.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from .errors import InvalidAddress


class Address(NamedTuple):
    """A literal IP address and a UDP/TCP port. Hashable; usable as a socket address."""

    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return format_address(self.host, self.port)


def format_address(host: str, port: int) -> str:
    """``1.2.3.4:5`` or ``[::1]:5``; IPv4-mapped IPv6 addresses are shown as IPv4."""
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split(text: str) -> tuple[str, str]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise InvalidAddress(f"invalid address {text!r}: expected [V6]:PORT")
        return text[1:end], text[end + 2 :]
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise InvalidAddress(f"invalid address {text!r}: expected HOST:PORT or [V6]:PORT")
    if ":" in host:
        raise InvalidAddress(f"invalid address {text!r}: IPv6 addresses must be written [V6]:PORT")
    return host, port


def parse_port(text: str, *, allow_zero: bool = True) -> int:
    if not text.isdigit():
        raise InvalidAddress(f"invalid port {text!r}: expected a number 0-65535")
    port = int(text)
    if port > 65535 or (port == 0 and not allow_zero):
        raise InvalidAddress(f"invalid port {text!r}: expected {'0' if allow_zero else '1'}-65535")
    return port


def parse_address(text: str, *, allow_zero_port: bool = True, allow_names: bool = False) -> Address:
    """Parse ``HOST:PORT`` / ``[V6]:PORT`` into a normalized :class:`Address`.

    Raises :class:`InvalidAddress` with a message that says what was expected.
    """
    if not isinstance(text, str) or not text:
        raise InvalidAddress("invalid address: empty")
    text = text.strip()
    host, port_text = _split(text)
    port = parse_port(port_text, allow_zero=allow_zero_port)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if allow_names and _is_hostname(host):
            return Address(host.lower(), port)
        raise InvalidAddress(f"invalid address {text!r}: {host!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return Address(str(ip.ipv4_mapped), port)
    return Address(ip.compressed, port)


def _is_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c == "-" for c in label)
        and label.isascii()
        for label in labels
    )


def normalize_socket_address(sockaddr: tuple[object, ...]) -> Address:
    """Turn a socket-level address (v4 pair or v6 4-tuple, possibly v4-mapped) into an Address."""
    host = str(sockaddr[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    elif "%" in host:
        host = host.split("%", 1)[0]
    return Address(host, int(str(sockaddr[1])))
