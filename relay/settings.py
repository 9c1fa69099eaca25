"""``coremesh-relay`` settings: flags, environment (``COREMESH_RELAY_*``), config file, defaults.

Precedence, highest first: flags > environment > config file (the ``[relay]`` table of a TOML file) >
defaults. A list (``--user``, ``--allowed-peer-ip``, ...) given at a higher level replaces the lower one
as a whole. Flags that coturn's ``turnserver`` has for the same thing keep coturn's name.

Everything is checked here, before any socket is opened (the TLS certificate and key are loaded too);
every problem is a :class:`~coremesh.errors.ConfigError` whose message names the setting and where it
came from, which ``main`` prints as one line before exiting with status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from coremesh.addr import Address
from coremesh.errors import ConfigError
from coremesh.service import version
from coremesh.service.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    OneLineParser,
    Sources,
    parse_admin,
    parse_bool,
    parse_choice,
    parse_host_port,
    parse_int,
    parse_ip,
    parse_list,
    parse_path,
    parse_str,
    read_layers,
)
from coremesh.stun.attributes import MAX_TEXT_CHARS, MAX_USERNAME_BYTES
from coremesh.turn.policy import parse_ip_range

from .stunturn_config import DEFAULT_MAX_PORT, DEFAULT_MIN_PORT, DEFAULT_REALM, parse_external_ip

PROG: Final = "coremesh-relay"
TABLE: Final = "relay"
ENV_PREFIX: Final = "COREMESH_RELAY_"
DEFAULT_LISTEN: Final = "0.0.0.0:3478"
DEFAULT_ADMIN: Final = "127.0.0.1:9641"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Settings keys: the flag is --key-with-dashes, the variable COREMESH_RELAY_KEY, the file key `key`
# (or key-with-dashes). Lists are repeatable flags, comma-separated variables, TOML arrays.
_LIST_KEYS: Final = ("user", "allowed_peer_ip", "denied_peer_ip")
_BOOL_KEYS: Final = ("admin_allow_remote", "allow_loopback_peers", "no_tcp", "no_udp")
_INT_KEYS: Final = ("min_port", "max_port", "user_quota", "total_quota", "max_bps")
_STR_KEYS: Final = (
    "listen",
    "alt_address",
    "external_ip",
    "admin",
    "keyed_listen",
    "data_dir",
    "realm",
    "static_auth_secret",
    "cert",
    "pkey",
    "log_format",
    "log_level",
)
KEYS: Final = (*_STR_KEYS, *_LIST_KEYS, *_BOOL_KEYS, *_INT_KEYS)
ENV_VARS: Final[Mapping[str, str]] = {"config": ENV_PREFIX + "CONFIG"} | {
    key: ENV_PREFIX + key.upper() for key in KEYS
}

EXAMPLES: Final = f"""\
examples:
  {PROG} --listen 0.0.0.0:3478 --realm example.org --user alice:secret1 --user bob:secret2
  {PROG} --listen 192.0.2.10:3478 --alt-address 192.0.2.11 --static-auth-secret \\
      "$TURN_SECRET" --denied-peer-ip 10.0.0.0/8 --max-bps 1000000
  {PROG} --listen 127.0.0.1:3478 --alt-address 127.0.0.2 --allow-loopback-peers \\
      --keyed-listen 127.0.0.1:8443 --admin 127.0.0.1:9641 --log-format text
  {PROG} --config /etc/coremesh/relay.toml

precedence: flags > environment > config file > defaults. Every flag has a variable
{ENV_PREFIX}NAME (e.g. {ENV_PREFIX}STATIC_AUTH_SECRET, {ENV_PREFIX}MIN_PORT; lists
comma-separated, switches true/false) and a key in the [relay] table of the config file
({ENV_PREFIX}CONFIG names the file):
  [relay]
  listen = "0.0.0.0:3478"
  realm = "example.org"
  user = ["alice:secret1", "bob:secret2"]
  denied-peer-ip = ["10.0.0.0/8", "192.168.0.0/16"]
  min-port = 49152
  max-port = 65535
  max-bps = 1000000

exit status: 0 after a clean shutdown (SIGTERM/SIGINT); 2 bad flags or configuration (one line on
stderr); 1 the relay cannot run (address in use, ...). See docs/relay.md.
"""


def parse_user(text: str, where: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise ConfigError(f"{where}: expected NAME:PASSWORD, got {_redact(text)!r}")
    if len(name.encode("utf-8")) > MAX_USERNAME_BYTES:
        raise ConfigError(f"{where}: user name longer than {MAX_USERNAME_BYTES} bytes")
    if any(not c.isprintable() for c in name + password):
        raise ConfigError(f"{where}: user {name!r}: control characters are not allowed")
    return name, password


def _redact(text: str) -> str:
    name, sep, _ = text.partition(":")
    return f"{name}:***" if sep else text


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Everything the relay needs, checked."""

    listen: Address
    alt_address: IpAddress | None
    external_ip: str | None  # PUBLIC or PUBLIC/PRIVATE, checked (coturn's --external-ip)
    admin: Address
    admin_allow_remote: bool
    keyed_listen: Address | None
    data_dir: Path | None
    realm: str
    users: Mapping[str, str]
    static_auth_secret: str | None
    allow_loopback_peers: bool
    allowed_peer_ips: tuple[str, ...]  # IP, A-B or CIDR, checked (coremesh.turn.policy parses them)
    denied_peer_ips: tuple[str, ...]
    min_port: int
    max_port: int
    cert: Path | None
    pkey: Path | None
    ssl_context: ssl.SSLContext | None
    user_quota: int
    total_quota: int
    max_bps: int
    no_tcp: bool
    no_udp: bool
    log_format: str
    log_level: str
    config_file: Path | None

    @property
    def alt_listen(self) -> Address | None:
        """Where the RFC 5780 alternate address answers: ALT-IP:PORT+1 (and the listen IP:PORT+1)."""
        if self.alt_address is None:
            return None
        return Address(self.alt_address.compressed, self.listen.port + 1 if self.listen.port else 0)

    def summary(self) -> dict[str, Any]:
        """The settings without secrets, for the ready log line and ``/v1/status``."""
        return {
            "listen": str(self.listen),
            "alt_address": str(self.alt_address) if self.alt_address else None,
            "external_ip": self.external_ip,
            "keyed_listen": str(self.keyed_listen) if self.keyed_listen else None,
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "realm": self.realm,
            "users": len(self.users),
            "static_auth_secret": self.static_auth_secret is not None,
            "allow_loopback_peers": self.allow_loopback_peers,
            "allowed_peer_ips": list(self.allowed_peer_ips),
            "denied_peer_ips": list(self.denied_peer_ips),
            "port_range": [self.min_port, self.max_port],
            "tls": self.ssl_context is not None,
            "user_quota": self.user_quota,
            "total_quota": self.total_quota,
            "max_bps": self.max_bps,
            "udp": not self.no_udp,
            "tcp": not self.no_tcp,
        }


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Run a Core Mesh relay: a STUN server (RFC 8489, with RFC 5780 NAT behaviour discovery), a "
            "TURN server (RFC 8656) on UDP and TCP, optionally a keyed mesh relay that forwards "
            "end-to-end encrypted mesh packets by PeerId, and an admin HTTP API with health, readiness, "
            "Prometheus metrics and status. Flags named like coturn's turnserver mean the same thing."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every default is None ("not given") so that lower levels show through.
    add = p.add_argument
    add("--config", metavar="FILE", help="TOML config file with a [relay] table")
    g = p.add_argument_group("listening")
    g.add_argument("--listen", metavar="HOST:PORT", help=f"STUN and TURN, on UDP and TCP ({DEFAULT_LISTEN})")
    g.add_argument(
        "--alt-address",
        metavar="IP",
        help="RFC 5780 alternate address: also answer on IP:PORT and both IPs on PORT+1 (off)",
    )
    g.add_argument(
        "--external-ip",
        "-X",
        metavar="PUBLIC[/PRIVATE]",
        help="behind a 1:1 NAT or load balancer: tell TURN clients relayed addresses as PUBLIC:PORT; "
        "relay sockets stay bound locally, on PRIVATE when given; one IP, IPv4 or IPv6 (off)",
    )
    g.add_argument("--no-udp", action="store_const", const=True, help="no STUN/TURN over UDP")
    g.add_argument("--no-tcp", action="store_const", const=True, help="no STUN/TURN over TCP")
    g.add_argument("--cert", metavar="FILE", help="TLS certificate chain (PEM) for TURN over TCP and keyed")
    g.add_argument("--pkey", metavar="FILE", help="TLS private key (PEM) for --cert")
    g.add_argument(
        "--keyed-listen",
        metavar="HOST:PORT",
        help="keyed mesh relay over TCP/WebSocket, TLS with --cert (off unless given)",
    )
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        help="directory of the relay's identity key (created if missing); its PeerId is announced by "
        "the keyed relay and shown in status (none unless given)",
    )
    g = p.add_argument_group("authentication (TURN long-term credentials)")
    g.add_argument("--realm", metavar="REALM", help=f"realm of the credentials ({DEFAULT_REALM})")
    g.add_argument("--user", action="append", metavar="NAME:PASSWORD", help="a static TURN user (repeatable)")
    g.add_argument(
        "--static-auth-secret",
        metavar="SECRET",
        help="shared secret for time-limited credentials (TURN REST API: user 'EXPIRY[:NAME]')",
    )
    g = p.add_argument_group("relaying")
    g.add_argument(
        "--allow-loopback-peers",
        action="store_const",
        const=True,
        help="allow relaying to loopback peers (refused by default)",
    )
    g.add_argument(
        "--allowed-peer-ip",
        action="append",
        metavar="IP|A-B|CIDR",
        help="allow these peers even if private or loopback; a denied range still wins (repeatable)",
    )
    g.add_argument(
        "--denied-peer-ip", action="append", metavar="IP|A-B|CIDR", help="never relay to these (repeatable)"
    )
    g.add_argument("--min-port", metavar="PORT", help=f"lowest relay port ({DEFAULT_MIN_PORT})")
    g.add_argument("--max-port", metavar="PORT", help=f"highest relay port ({DEFAULT_MAX_PORT})")
    g.add_argument("--user-quota", metavar="N", help="allocations per user, 0 unlimited (0)")
    g.add_argument("--total-quota", metavar="N", help="allocations in total, 0 unlimited (0)")
    g.add_argument("--max-bps", metavar="BYTES", help="bytes per second per allocation, 0 unlimited (0)")
    g = p.add_argument_group("operation")
    g.add_argument("--admin", metavar="HOST:PORT", help=f"admin HTTP API ({DEFAULT_ADMIN})")
    g.add_argument(
        "--admin-allow-remote",
        action="store_const",
        const=True,
        help="allow a non-loopback --admin address (the admin API has no authentication)",
    )
    g.add_argument("--log-format", metavar="FORMAT", help="json or text, on stderr (json)")
    g.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (info)")
    add("--version", action="version", version=f"%(prog)s {version()}")
    return p


DEFAULTS: Final[Mapping[str, Any]] = {
    "listen": DEFAULT_LISTEN,
    "alt_address": None,
    "external_ip": None,
    "admin": DEFAULT_ADMIN,
    "admin_allow_remote": False,
    "keyed_listen": None,
    "data_dir": None,
    "realm": DEFAULT_REALM,
    "user": [],
    "static_auth_secret": None,
    "allow_loopback_peers": False,
    "allowed_peer_ip": [],
    "denied_peer_ip": [],
    "min_port": DEFAULT_MIN_PORT,
    "max_port": DEFAULT_MAX_PORT,
    "cert": None,
    "pkey": None,
    "user_quota": 0,
    "total_quota": 0,
    "max_bps": 0,
    "no_tcp": False,
    "no_udp": False,
    "log_format": "json",
    "log_level": "info",
}


def resolve(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> RelaySettings:
    """Parse flags (exit 2 with one line on a malformed command line), merge, check.

    Raises :class:`ConfigError` for a bad value from any source.
    """
    raw = read_layers(build_parser(), argv, env, env_names=ENV_VARS, table=TABLE, keys=KEYS)
    return merge(flags=raw.flags, env=raw.env, file=raw.file, config_file=raw.config_file)


def merge(
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, Any],
    file: Mapping[str, Any],
    config_file: Path | None = None,
) -> RelaySettings:
    """Merge the sources (flags > env > file > defaults) and check every value."""
    src = Sources(
        defaults=DEFAULTS,
        file=file,
        env=env,
        flags=flags,
        env_names=ENV_VARS,
        config_file=config_file,
    )
    w = src.where

    log_format = parse_choice(src["log_format"], w("log_format"), LOG_FORMATS)
    log_level = parse_choice(src["log_level"], w("log_level"), LOG_LEVELS)
    b = {key: parse_bool(src[key], w(key)) for key in _BOOL_KEYS}
    n = {key: parse_int(src[key], w(key), low=0) for key in _INT_KEYS}

    listen = parse_host_port(src["listen"], w("listen"))
    admin = parse_admin(
        src["admin"], w("admin"), allow_remote=b["admin_allow_remote"], remote_flag="--admin-allow-remote"
    )
    keyed_listen = (
        None if src["keyed_listen"] is None else parse_host_port(src["keyed_listen"], w("keyed_listen"))
    )

    data_dir: Path | None = None
    if src["data_dir"] is not None:
        text = parse_str(src["data_dir"], w("data_dir")).strip()
        if not text:
            raise ConfigError(f"{w('data_dir')}: expected a directory, got an empty string")
        data_dir = Path(text).expanduser()
        if data_dir.exists() and not data_dir.is_dir():
            raise ConfigError(f"{w('data_dir')}: {data_dir} is not a directory")

    alt_address: IpAddress | None = None
    if src["alt_address"] is not None:
        alt_address = _check_alt_address(parse_ip(src["alt_address"], w("alt_address")), listen, w)

    external_ip: str | None = None
    if src["external_ip"] is not None:
        public, private = parse_external_ip(parse_str(src["external_ip"], w("external_ip")), w("external_ip"))
        external_ip = public if private is None else f"{public}/{private}"

    for key in ("min_port", "max_port"):
        if not 1 <= n[key] <= 65535:
            raise ConfigError(f"{w(key)}: expected a port 1 to 65535, got {n[key]}")
    if n["min_port"] > n["max_port"]:
        raise ConfigError(
            f"{w('min_port')} ({n['min_port']}) is above {w('max_port')} ({n['max_port']}): "
            "the relay port range is empty"
        )

    if b["no_udp"] and b["no_tcp"]:
        raise ConfigError(f"{w('no_udp')} and {w('no_tcp')} together leave nothing to serve STUN/TURN on")

    realm = parse_str(src["realm"], w("realm")).strip()
    # RFC 8489 §14.9: REALM is less than 128 characters (MAX_TEXT_CHARS).
    if not realm or len(realm) > MAX_TEXT_CHARS or any(not c.isprintable() or c == '"' for c in realm):
        raise ConfigError(
            f"{w('realm')}: expected 1 to {MAX_TEXT_CHARS} printable characters without quotes, "
            f"got {src['realm']!r}"
        )

    users: dict[str, str] = {}
    for text in parse_list(src["user"], w("user")):
        name, password = parse_user(text, w("user"))
        if name in users:
            raise ConfigError(f"{w('user')}: user {name!r} given twice")
        users[name] = password

    secret: str | None = None
    if src["static_auth_secret"] is not None:
        secret = parse_str(src["static_auth_secret"], w("static_auth_secret"))
        if not secret:
            raise ConfigError(f"{w('static_auth_secret')}: the secret is empty")

    ranges: dict[str, tuple[str, ...]] = {}
    for key in ("allowed_peer_ip", "denied_peer_ip"):
        texts = parse_list(src[key], w(key))
        for text in texts:
            parse_ip_range(text, field=w(key))  # checked here; the service parses them again
        ranges[key] = tuple(texts)

    cert = None if src["cert"] is None else parse_path(src["cert"], w("cert"))
    pkey = None if src["pkey"] is None else parse_path(src["pkey"], w("pkey"))
    ssl_context = _tls_context(cert, pkey, w)

    return RelaySettings(
        listen=listen,
        alt_address=alt_address,
        external_ip=external_ip,
        admin=admin,
        admin_allow_remote=b["admin_allow_remote"],
        keyed_listen=keyed_listen,
        data_dir=data_dir,
        realm=realm,
        users=users,
        static_auth_secret=secret,
        allow_loopback_peers=b["allow_loopback_peers"],
        allowed_peer_ips=ranges["allowed_peer_ip"],
        denied_peer_ips=ranges["denied_peer_ip"],
        min_port=n["min_port"],
        max_port=n["max_port"],
        cert=cert,
        pkey=pkey,
        ssl_context=ssl_context,
        user_quota=n["user_quota"],
        total_quota=n["total_quota"],
        max_bps=n["max_bps"],
        no_tcp=b["no_tcp"],
        no_udp=b["no_udp"],
        log_format=log_format,
        log_level=log_level,
        config_file=config_file,
    )


def _check_alt_address(alt: IpAddress, listen: Address, w: Any) -> IpAddress:
    primary = ipaddress.ip_address(listen.host)
    if alt.version != primary.version:
        raise ConfigError(
            f"{w('alt_address')}: {alt} is IPv{alt.version} but {w('listen')} {listen} is "
            f"IPv{primary.version}; RFC 5780 needs two addresses of one family"
        )
    if alt.is_unspecified or alt.is_multicast:
        raise ConfigError(f"{w('alt_address')}: {alt} is not a unicast address")
    if primary.is_unspecified:
        where_listen = "--listen" if w("listen") == "listen" else w("listen")
        raise ConfigError(
            f"{w('alt_address')}: needs a specific IP in {where_listen}, not {listen.host} (RFC 5780 "
            "answers from two distinct addresses)"
        )
    if alt == primary:
        raise ConfigError(f"{w('alt_address')}: {alt} is the listen address itself; give a second IP")
    if listen.port == 65535:
        raise ConfigError(f"{w('listen')}: port 65535 leaves no PORT+1 for {w('alt_address')}")
    return alt


def _tls_context(cert: Path | None, pkey: Path | None, w: Any) -> ssl.SSLContext | None:
    if cert is None and pkey is None:
        return None
    if cert is None or pkey is None:
        given, missing = ("cert", "pkey") if cert is not None else ("pkey", "cert")
        raise ConfigError(f"{w(given)} needs --{missing} too (TLS takes a certificate and its key)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, pkey)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise ConfigError(
            f"{w('cert')}/{w('pkey')}: cannot load {cert} with {pkey}: {reason} "
            "(PEM certificate chain and its matching private key expected)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{w('cert')}: cannot read {cert} or {pkey}: {exc.strerror or exc}") from None
    return context
