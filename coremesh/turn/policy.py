"""Which peers a TURN server may relay to, and which ports it may relay from.

A TURN server must not become an open proxy into its own network (RFC 8656 §21.2.3 and §17): by
default it refuses peers on loopback, private, link-local, unspecified, multicast and broadcast
addresses, and the relay's own addresses. Operators widen this with ``allow_loopback_peers`` (loopback
and the relay's own addresses) and ``allowed_peer_ips`` ranges, and narrow it with
``denied_peer_ips`` ranges. A denied range always wins.

Ranges are written the way coturn's ``--allowed-peer-ip`` / ``--denied-peer-ip`` take them: one
address (``10.0.0.1``), a CIDR block (``10.0.0.0/8``) or an inclusive span (``10.0.0.1-10.0.0.9``).
All pure: no clock, no sockets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_FORBIDDEN: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT shared space
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes 255.255.255.255 broadcast
    )
)
_V6_FORBIDDEN: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::/128",  # unspecified
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_V4_LOOPBACK: Final = ipaddress.ip_network("127.0.0.0/8")
_V6_LOOPBACK: Final = ipaddress.ip_network("::1/128")


@dataclass(frozen=True, slots=True)
class IpRange:
    """An inclusive range of addresses of one IP version."""

    version: int
    first: int
    last: int

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return ip.version == self.version and self.first <= int(ip) <= self.last

    def __str__(self) -> str:
        a = ipaddress.ip_address(self.first if self.version == 4 else self.first.to_bytes(16, "big"))
        b = ipaddress.ip_address(self.last if self.version == 4 else self.last.to_bytes(16, "big"))
        return str(a) if a == b else f"{a}-{b}"


def parse_ip(text: str) -> IPAddress:
    """A literal IP; IPv4-mapped IPv6 addresses become IPv4. Raises ``ValueError``."""
    ip = ipaddress.ip_address(text.strip().strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip_range(text: str, *, field: str = "ip range") -> IpRange:
    """``IP``, ``IP/PREFIX`` or ``IP1-IP2`` (inclusive). Raises :class:`ConfigError` naming ``field``."""
    raw = text.strip() if isinstance(text, str) else ""
    try:
        if "/" in raw:
            net = ipaddress.ip_network(raw, strict=False)
            return IpRange(net.version, int(net.network_address), int(net.broadcast_address))
        if "-" in raw:
            lo_text, _, hi_text = raw.partition("-")
            lo, hi = parse_ip(lo_text), parse_ip(hi_text)
            if lo.version != hi.version:
                raise ValueError("both ends must be of one IP version")
            if int(lo) > int(hi):
                raise ValueError("the first address is above the last")
            return IpRange(lo.version, int(lo), int(hi))
        ip = parse_ip(raw)
        return IpRange(ip.version, int(ip), int(ip))
    except ValueError as exc:
        raise ConfigError(
            f"{field}: invalid range {text!r} ({exc}); expected IP, IP/PREFIX or IP1-IP2"
        ) from None


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """Decides whether a peer IP may be relayed to. ``own_ips`` are the relay's addresses."""

    allow_loopback_peers: bool = False
    allowed: tuple[IpRange, ...] = ()
    denied: tuple[IpRange, ...] = ()
    own_ips: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        *,
        allow_loopback_peers: bool = False,
        allowed_peer_ips: Iterable[str] = (),
        denied_peer_ips: Iterable[str] = (),
        own_ips: Iterable[str] = (),
    ) -> PeerPolicy:
        return cls(
            allow_loopback_peers,
            tuple(parse_ip_range(r, field="allowed_peer_ips") for r in allowed_peer_ips),
            tuple(parse_ip_range(r, field="denied_peer_ips") for r in denied_peer_ips),
            frozenset(str(parse_ip(ip)) for ip in own_ips),
        )

    def with_own_ips(self, own_ips: Iterable[str]) -> PeerPolicy:
        return PeerPolicy(
            self.allow_loopback_peers,
            self.allowed,
            self.denied,
            self.own_ips | {str(parse_ip(ip)) for ip in own_ips},
        )

    def reason(self, host: str) -> str | None:
        """``None`` if relaying to ``host`` is allowed, else a short reason (for logs and counters)."""
        try:
            ip = parse_ip(host)
        except ValueError:
            return "not an IP address"
        if any(ip in r for r in self.denied):
            return "denied by denied_peer_ips"
        if any(ip in r for r in self.allowed):
            return None
        loopback = ip in (_V4_LOOPBACK if ip.version == 4 else _V6_LOOPBACK)
        if loopback:
            return None if self.allow_loopback_peers else "loopback"
        if str(ip) in self.own_ips:
            return None if self.allow_loopback_peers else "the relay's own address"
        for net in _V4_FORBIDDEN if ip.version == 4 else _V6_FORBIDDEN:
            if ip in net:
                return f"reserved range {net}"
        return None

    def allows(self, host: str) -> bool:
        return self.reason(host) is None
