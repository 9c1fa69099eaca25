"""What one STUN/TURN relay is told to do: :class:`StunTurnConfig`, checked on construction.

A room of its own so that the settings layer (``relay/settings.py`` and ``main``) and the tests build
and check a configuration without pulling in the service's sockets, and so that the defaults of the
TCP/TLS connection limits are written once, here, where the fields that take them are.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from coremesh.addr import Address, parse_address
from coremesh.errors import ConfigError
from coremesh.stun.attributes import MAX_TEXT_CHARS
from coremesh.turn.policy import parse_ip_range

from .own_addresses import WILDCARDS

DEFAULT_REALM: Final = "coremesh"
DEFAULT_MIN_PORT: Final = 49152  # the relay port range: IANA's dynamic ports
DEFAULT_MAX_PORT: Final = 65535
# TCP/TLS connection limits: the defaults of the StunTurnConfig fields of the same names, lowercase.
MAX_TCP_CONNECTIONS: Final = 4096  # in total (also at most half the process's file descriptor limit)
MAX_TCP_CONNECTIONS_PER_IP: Final = 64  # per source IPv4 address / IPv6 /64
TCP_REQUEST_TIMEOUT: Final = 10.0  # s from connecting (or the TLS handshake) to the first valid request
TCP_IDLE_TIMEOUT: Final = 30.0  # s without a valid request on a connection that has no allocation
TCP_PARTIAL_TIMEOUT: Final = 5.0  # s one incomplete frame may take to arrive in full


def parse_external_ip(text: str, where: str) -> tuple[str, str | None]:
    """``PUBLIC`` or ``PUBLIC/PRIVATE`` (coturn's ``--external-ip``) → the two IPs, compressed;
    :class:`ConfigError` naming ``where`` otherwise."""
    public_text, sep, private_text = text.strip().partition("/")
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for part in (public_text, private_text) if sep else (public_text,):
        try:
            ips.append(ipaddress.ip_address(part.strip()))
        except ValueError:
            raise ConfigError(
                f"{where}: expected PUBLIC or PUBLIC/PRIVATE (IP addresses), got {text!r}"
            ) from None
    for ip in ips:
        if ip.is_unspecified or ip.is_multicast:
            raise ConfigError(f"{where}: {ip} is not a unicast address")
    if len(ips) == 2 and ips[0].version != ips[1].version:
        raise ConfigError(f"{where}: {ips[0]} and {ips[1]} must be of one IP family")
    return ips[0].compressed, ips[1].compressed if len(ips) == 2 else None


@dataclass(frozen=True, slots=True)
class StunTurnConfig:
    """Everything one relay needs; validated on construction (:class:`ConfigError` names the field).

    ``listen`` is ``HOST:PORT`` (an :class:`Address` or its text); port 0 picks a free port.
    ``alt_address`` is an IP of the same family (RFC 5780: the relay then also listens on it and on
    PORT+1). ``users`` maps names to passwords; ``static_auth_secret`` enables TURN REST API
    credentials. Quotas and ``max_bps`` (bytes per second per allocation): 0 means unlimited.
    ``ssl_context`` turns the TCP listener into TLS. ``external_ip`` is ``PUBLIC`` or
    ``PUBLIC/PRIVATE`` (coturn's ``--external-ip``): clients are told relayed addresses of PUBLIC's
    family as PUBLIC:PORT while the relay sockets stay bound locally, on PRIVATE when given (else on
    the usual relay IP of that family); one external IP, for one family.

    TCP/TLS limits: at most ``max_tcp_connections`` connections (and never more than half the
    process's ``RLIMIT_NOFILE``, so relay sockets always find descriptors) and
    ``max_tcp_connections_per_ip`` from one IPv4 address or IPv6 /64; a connection is closed when it
    sends no valid STUN request within ``tcp_request_timeout`` seconds of connecting, when it has no
    allocation and sent no valid request for ``tcp_idle_timeout`` seconds, or when one incomplete
    frame stays incomplete for ``tcp_partial_timeout`` seconds.
    """

    listen: Address
    alt_address: str | None = None
    realm: str = DEFAULT_REALM
    users: Mapping[str, str] = field(default_factory=dict)
    static_auth_secret: str | None = None
    allow_loopback_peers: bool = False
    allowed_peer_ips: tuple[str, ...] = ()
    denied_peer_ips: tuple[str, ...] = ()
    min_port: int = DEFAULT_MIN_PORT
    max_port: int = DEFAULT_MAX_PORT
    user_quota: int = 0
    total_quota: int = 0
    max_bps: int = 0
    no_tcp: bool = False
    no_udp: bool = False
    ssl_context: ssl.SSLContext | None = None
    external_ip: str | None = None
    max_tcp_connections: int = MAX_TCP_CONNECTIONS
    max_tcp_connections_per_ip: int = MAX_TCP_CONNECTIONS_PER_IP
    tcp_request_timeout: float = TCP_REQUEST_TIMEOUT
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT
    tcp_partial_timeout: float = TCP_PARTIAL_TIMEOUT

    def __post_init__(self) -> None:
        listen: object = self.listen
        if isinstance(listen, str):
            object.__setattr__(self, "listen", parse_address(listen))
        elif not isinstance(listen, Address):
            raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
        if self.alt_address is not None:
            try:
                alt = ipaddress.ip_address(self.alt_address)
            except ValueError:
                raise ConfigError(f"alt_address: {self.alt_address!r} is not an IP address") from None
            if alt.compressed == self.listen.host:
                raise ConfigError("alt_address: must differ from the listen address")
            if (alt.version == 6) != self.listen.is_ipv6:
                raise ConfigError("alt_address: must be of the same IP family as listen")
            if self.listen.host in WILDCARDS:
                raise ConfigError("alt_address: needs a concrete listen address, not a wildcard")
            if self.listen.port == 65535:
                raise ConfigError("alt_address: listen port + 1 must be a port (listen port < 65535)")
            object.__setattr__(self, "alt_address", alt.compressed)
        if self.external_ip is not None:
            public, private = parse_external_ip(self.external_ip, "external_ip")
            object.__setattr__(self, "external_ip", public if private is None else f"{public}/{private}")
        if not self.realm or len(self.realm) > MAX_TEXT_CHARS:
            raise ConfigError(f"realm: must be 1-{MAX_TEXT_CHARS} characters")
        for name, password in self.users.items():
            if not name or not password:
                raise ConfigError("users: names and passwords must not be empty")
        if self.static_auth_secret is not None and not self.static_auth_secret:
            raise ConfigError("static_auth_secret: must not be empty")
        for fld in ("min_port", "max_port"):
            value = getattr(self, fld)
            if not isinstance(value, int) or not 1 <= value <= 65535:
                raise ConfigError(f"{fld}: expected 1-65535, got {value!r}")
        if self.min_port > self.max_port:
            raise ConfigError(f"min_port: {self.min_port} is above max_port {self.max_port}")
        for fld in ("user_quota", "total_quota", "max_bps"):
            value = getattr(self, fld)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{fld}: expected an integer >= 0 (0 = unlimited), got {value!r}")
        if self.no_tcp and self.no_udp:
            raise ConfigError("no_tcp/no_udp: at least one of UDP and TCP must stay on")
        for fld in ("allowed_peer_ips", "denied_peer_ips"):
            for text in getattr(self, fld):
                parse_ip_range(text, field=fld)
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise ConfigError("ssl_context: expected an ssl.SSLContext")
        for fld in ("max_tcp_connections", "max_tcp_connections_per_ip"):
            value = getattr(self, fld)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{fld}: expected an integer >= 1, got {value!r}")
        for fld in ("tcp_request_timeout", "tcp_idle_timeout", "tcp_partial_timeout"):
            value = getattr(self, fld)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1e6:
                raise ConfigError(f"{fld}: expected seconds > 0, got {value!r}")
