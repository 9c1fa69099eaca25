"""``MeshConfig``: every tunable of a node, validated on construction with errors that name the field."""

from __future__ import annotations

import ipaddress
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .addr import Address, parse_address
from .errors import ConfigError, InvalidAddress, InvalidPeerId
from .identity import PeerId

if TYPE_CHECKING:
    from .dht.config import DhtConfig

MIN_DATAGRAM_SIZE: Final = 1200  # RFC 8899 / QUIC: every IPv6 path carries 1280-byte packets
MAX_DATAGRAM_SIZE: Final = 65487  # largest UDP payload over IPv6 loopback (MTU 65536)


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A peer's address, optionally pinned to its id: ``[PEERID@]HOST:PORT``."""

    address: Address
    peer_id: PeerId | None = None

    def __str__(self) -> str:
        return f"{self.peer_id}@{self.address}" if self.peer_id else str(self.address)


def parse_peer_address(text: str, *, require_id: bool = False, allow_names: bool = True) -> PeerAddress:
    """Parse ``[PEERID@]HOST:PORT``. Raises InvalidAddress / InvalidPeerId with a clear message."""
    if not isinstance(text, str):
        raise InvalidAddress("invalid peer address: expected text")
    peer_text, sep, addr_text = text.strip().rpartition("@")
    if sep and not peer_text:
        raise InvalidPeerId(f"invalid peer address {text!r}: empty peer id before '@'")
    if require_id and not sep:
        raise InvalidAddress(f"invalid peer address {text!r}: expected PEERID@HOST:PORT")
    peer = PeerId.from_text(peer_text) if sep else None
    return PeerAddress(parse_address(addr_text, allow_zero_port=False, allow_names=allow_names), peer)


@dataclass(frozen=True, slots=True)
class RelayServer:
    """A STUN/TURN server the node uses: ``[USER:PASSWORD@]HOST:PORT``."""

    address: Address
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        return f"{self.username}:***@{self.address}" if self.username else str(self.address)


def parse_relay(text: str) -> RelayServer:
    """Parse ``[USER:PASSWORD@]HOST:PORT``. The user part is split at its last ``:`` because
    time-limited TURN usernames (``EXPIRY:USER``) contain one; passwords never contain ``@``."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidAddress("invalid relay: expected [USER:PASSWORD@]HOST:PORT")
    userinfo, sep, hostport = text.strip().rpartition("@")
    address = parse_address(hostport, allow_zero_port=False, allow_names=True)
    if not sep:
        return RelayServer(address)
    user, colon, password = userinfo.rpartition(":")
    if not colon or not user or not password:
        raise InvalidAddress(f"invalid relay {text!r}: credentials must be USER:PASSWORD@")
    return RelayServer(address, user, password)


_KEYED_SCHEMES = ("tcp", "tls", "ws", "wss")


def parse_keyed_relay(text: str) -> str:
    """Validate a keyed relay URL (``tcp://``, ``tls://``, ``ws://``, ``wss://`` HOST:PORT[/path])."""
    scheme, sep, rest = str(text).strip().partition("://")
    if not sep or scheme not in _KEYED_SCHEMES:
        raise InvalidAddress(
            f"invalid keyed relay {text!r}: expected tcp://, tls://, ws:// or wss://HOST:PORT"
        )
    hostport = rest.split("/", 1)[0]
    parse_address(hostport, allow_zero_port=False, allow_names=True)
    return f"{scheme}://{rest}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_duration(value: object, name: str) -> float:
    """Seconds from a number or text like ``250ms``, ``5s``, ``1m``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
            return float(m.group(1)) * scale
    raise ConfigError(f"{name}: expected a duration such as 5, '5s' or '250ms', got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Configuration of a :class:`~coremesh.MeshNode`.

    ``listen_addr`` ``[::]:PORT`` listens dual-stack (IPv6 and IPv4-mapped) where the host allows it.
    ``data_dir`` holds the identity key (created on first start); ``None`` runs with a fresh in-memory
    identity. ``enable_nat_traversal`` and ``enable_relay`` are accepted and validated now and act once
    the NAT traversal and relay components are configured (see docs/configuration.md).
    """

    listen_addr: str = "[::]:0"
    bootstrap_peers: tuple[str, ...] = ()
    relays: tuple[str, ...] = ()
    keyed_relays: tuple[str, ...] = ()
    max_connections: int = 256
    enable_nat_traversal: bool = True
    enable_relay: bool = True
    heartbeat_interval: float = 5.0
    idle_timeout: float = 30.0
    path_dead_after: float = 3.0  # a direct path unacknowledged this long falls back to the relay
    traversal_retry_max: float = 30.0  # while relayed, direct checks are retried at most this far apart
    connect_timeout: float = 5.0
    data_dir: Path | None = None
    datagram_size: int = 1200
    pmtu_discovery: bool = True
    max_datagram_size: int = MAX_DATAGRAM_SIZE
    max_message_size: int = 16 * 1024 * 1024
    send_buffer_size: int = 4 * 1024 * 1024
    receive_window: int = 4 * 1024 * 1024
    rekey_after_time: float = 120.0
    rekey_after_packets: int = 1 << 40
    socket_buffer_size: int = 4 * 1024 * 1024
    dht: bool = True
    dht_k: int = 20
    dht_alpha: int = 3
    dht_options: dict[str, Any] = field(default_factory=dict)
    lookup_timeout: float = 5.0
    advertise_addresses: tuple[str, ...] = ()
    gossip_interval: float = 30.0
    stun_servers: tuple[str, ...] = ()
    netcheck_interval: float = 300.0
    mdns: bool = False
    mdns_interfaces: tuple[str, ...] = ()
    forwarding: bool = True  # carry other peers' routed packets (overlay routing through this node)
    # Overlay neighbours quiet this long are pinged; a link silent 3.5 times as long is withdrawn
    # from routing (traffic moves to a backup route) until the neighbour is heard again.
    hello_interval: float = 1.0
    # Access lists by PeerId (docs/access.md): a non-empty allow_peers closes the mesh to everyone
    # else; deny_peers are refused whatever allow_peers says.
    allow_peers: tuple[str, ...] = ()
    deny_peers: tuple[str, ...] = ()
    # Handshake floods (docs/access.md): initiations admitted per second before the node is under
    # load and asks for cookies (0: always), and, under load, initiations per second per source host.
    handshake_load_threshold: int = 256
    handshake_rate_per_source: float = 20.0
    # Resource limits (docs/access.md): per source host, inbound connections and unconfirmed
    # handshakes; per connection, messages waiting for the application; per neighbour and per
    # source, bytes forwarded a second.
    max_connections_per_host: int = 64
    max_unconfirmed_per_host: int = 8
    max_queued_messages: int = 65536
    forward_rate_per_peer: int = 16 * 1024 * 1024
    # Padding and cover traffic (docs/access.md, coremesh/reliability/padding.py): datagram sizes
    # every transport packet is padded up to (datagram_size is always the top one; empty: off),
    # cover packets per second per connection (0: off; needs buckets), and the seconds without an
    # application message after which cover stops until the next one (0: never).
    padding_buckets: tuple[int, ...] = ()
    cover_rate: float = 0.0
    cover_idle: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        try:
            set_(self, "_listen", parse_address(self.listen_addr))
        except InvalidAddress as exc:
            raise ConfigError(f"listen_addr: {exc}") from None
        if isinstance(self.bootstrap_peers, str):
            raise ConfigError("bootstrap_peers: expected a list of [PEERID@]HOST:PORT, got a string")
        peers = []
        for entry in self.bootstrap_peers:
            try:
                peers.append(parse_peer_address(entry))
            except (InvalidAddress, InvalidPeerId) as exc:
                raise ConfigError(f"bootstrap_peers: {exc}") from None
        set_(self, "bootstrap_peers", tuple(self.bootstrap_peers))
        set_(self, "_bootstrap", tuple(peers))
        for name, parse in (("relays", parse_relay), ("keyed_relays", parse_keyed_relay)):
            entries = getattr(self, name)
            if isinstance(entries, str):
                raise ConfigError(f"{name}: expected a list, got a string")
            parsed = []
            for entry in entries:
                try:
                    parsed.append(parse(entry))
                except InvalidAddress as exc:
                    raise ConfigError(f"{name}: {exc}") from None
            set_(self, name, tuple(entries))
            set_(self, f"_{name}", tuple(parsed))
        _int(self.max_connections, "max_connections", 1, 1_000_000)
        _int(self.handshake_load_threshold, "handshake_load_threshold", 0, 1_000_000)
        _int(self.max_connections_per_host, "max_connections_per_host", 1, 1_000_000)
        _int(self.max_unconfirmed_per_host, "max_unconfirmed_per_host", 1, 1_000_000)
        _int(self.max_queued_messages, "max_queued_messages", 1, 1 << 30)
        _int(self.forward_rate_per_peer, "forward_rate_per_peer", 1024, 1 << 40)
        rate = self.handshake_rate_per_source
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1_000_000:
            raise ConfigError(
                f"handshake_rate_per_source: expected a number above 0, up to 1000000, got {rate!r}"
            )
        for name in ("enable_nat_traversal", "enable_relay", "pmtu_discovery", "dht", "forwarding"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        for name in (
            "heartbeat_interval",
            "idle_timeout",
            "connect_timeout",
            "rekey_after_time",
            "lookup_timeout",
            "gossip_interval",
            "path_dead_after",
            "traversal_retry_max",
            "hello_interval",
        ):
            value = parse_duration(getattr(self, name), name)
            if not 0.01 <= value <= 86400:
                raise ConfigError(f"{name}: expected 0.01 to 86400 seconds, got {value}")
            set_(self, name, value)
        if self.idle_timeout < 2 * self.heartbeat_interval:
            raise ConfigError(
                f"idle_timeout ({self.idle_timeout}s) must be at least twice heartbeat_interval "
                f"({self.heartbeat_interval}s), or live peers would time out between keepalives"
            )
        if self.data_dir is not None:
            if not isinstance(self.data_dir, str | Path) or not str(self.data_dir):
                raise ConfigError(f"data_dir: expected a directory path, got {self.data_dir!r}")
            set_(self, "data_dir", Path(self.data_dir))
        _int(self.datagram_size, "datagram_size", MIN_DATAGRAM_SIZE, MAX_DATAGRAM_SIZE)
        _int(self.max_datagram_size, "max_datagram_size", self.datagram_size, MAX_DATAGRAM_SIZE)
        _int(self.max_message_size, "max_message_size", 1, 1 << 30)
        _int(self.send_buffer_size, "send_buffer_size", 64 * 1024, 1 << 30)
        _int(self.receive_window, "receive_window", 64 * 1024, 1 << 30)
        _int(self.rekey_after_packets, "rekey_after_packets", 16, 1 << 60)
        _int(self.socket_buffer_size, "socket_buffer_size", 64 * 1024, 1 << 30)
        _discovery_fields(self)
        if isinstance(self.advertise_addresses, str):
            raise ConfigError("advertise_addresses: expected a list of HOST:PORT, got a string")
        advertised = []
        for entry in self.advertise_addresses:
            try:
                address = parse_address(entry, allow_zero_port=False, allow_names=False)
            except InvalidAddress as exc:
                raise ConfigError(f"advertise_addresses: {exc}") from None
            if address.host in ("0.0.0.0", "::"):
                raise ConfigError(
                    f"advertise_addresses: {address} is a wildcard, not an address peers can reach"
                )
            advertised.append(address)
        set_(self, "advertise_addresses", tuple(self.advertise_addresses))
        set_(self, "_advertise", tuple(advertised))
        set_(self, "_dht_config", self._build_dht_config())
        for name in ("allow_peers", "deny_peers"):
            set_(self, f"_{name}", _peer_ids(getattr(self, name), name))
            set_(self, name, tuple(getattr(self, name)))
        _padding_fields(self)

    def _build_dht_config(self) -> DhtConfig:
        from .dht.config import DhtConfig  # the DHT package imports this module

        if not isinstance(self.dht_options, dict):
            raise ConfigError(f"dht_options: expected a table of DHT settings, got {self.dht_options!r}")
        options = {"k": self.dht_k, "alpha": self.dht_alpha, **self.dht_options}
        options.setdefault("lookup_timeout", max(self.lookup_timeout, options.get("request_timeout", 2.0)))
        try:
            return DhtConfig.from_dict(options)
        except ConfigError as exc:
            raise ConfigError(f"dht: {exc}") from None

    @property
    def dht_config(self) -> DhtConfig:
        """The DHT's settings: ``dht_k``, ``dht_alpha`` and ``dht_options`` (any DhtConfig field)."""
        return self._dht_config  # type: ignore[attr-defined,no-any-return]

    @property
    def allowed_peer_ids(self) -> tuple[PeerId, ...]:
        return self._allow_peers  # type: ignore[attr-defined,no-any-return]

    @property
    def denied_peer_ids(self) -> tuple[PeerId, ...]:
        return self._deny_peers  # type: ignore[attr-defined,no-any-return]

    @property
    def advertised(self) -> tuple[Address, ...]:
        return self._advertise  # type: ignore[attr-defined,no-any-return]

    @property
    def listen_address(self) -> Address:
        return self._listen  # type: ignore[attr-defined,no-any-return]

    @property
    def bootstrap_addresses(self) -> tuple[PeerAddress, ...]:
        return self._bootstrap  # type: ignore[attr-defined,no-any-return]

    @property
    def relay_servers(self) -> tuple[RelayServer, ...]:
        return self._relays  # type: ignore[attr-defined,no-any-return]

    @property
    def keyed_relay_urls(self) -> tuple[str, ...]:
        return self._keyed_relays  # type: ignore[attr-defined,no-any-return]

    @property
    def stun_addresses(self) -> tuple[Address, ...]:
        """Where netcheck measures: ``stun_servers``, else the ``relays`` (STUN/TURN servers)."""
        own: tuple[Address, ...] = self._stun  # type: ignore[attr-defined]
        return own or tuple(dict.fromkeys(r.address for r in self.relay_servers))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeshConfig:
        """Build from a mapping (a config file section); unknown keys are refused by name."""
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = dict(data)
        for key in tuple_fields(cls):
            if key in values and isinstance(values[key], list):
                values[key] = tuple(values[key])
        return cls(**values)


def tuple_fields(cls: type[MeshConfig]) -> frozenset[str]:
    """The fields of ``cls`` declared as tuples: a config file gives them as lists."""
    hints = typing.get_type_hints(cls)
    return frozenset(f.name for f in fields(cls) if typing.get_origin(hints[f.name]) is tuple)


def _int(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: expected {low} to {high}, got {value}")


def _peer_ids(value: object, name: str) -> tuple[PeerId, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{name}: expected a list of peer ids, got {value!r}")
    out = []
    for entry in value:
        try:
            out.append(PeerId.from_text(entry))
        except InvalidPeerId as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return tuple(dict.fromkeys(out))


MAX_STUN_SERVERS: Final = 16


def _discovery_fields(config: MeshConfig) -> None:
    """Netcheck and mDNS settings: ``stun_servers`` (no public default: empty means the relays),
    ``netcheck_interval`` (0 turns the periodic re-run off), ``mdns``, ``mdns_interfaces``."""
    set_ = object.__setattr__
    for name in ("stun_servers", "mdns_interfaces"):
        value = getattr(config, name)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        set_(config, name, tuple(value))
    if len(config.stun_servers) > MAX_STUN_SERVERS:
        raise ConfigError(f"stun_servers: at most {MAX_STUN_SERVERS}, got {len(config.stun_servers)}")
    stun = []
    for entry in config.stun_servers:
        try:
            stun.append(parse_address(entry, allow_zero_port=False, allow_names=True))
        except (InvalidAddress, TypeError) as exc:
            raise ConfigError(f"stun_servers: {exc}") from None
    set_(config, "_stun", tuple(stun))
    interval = parse_duration(config.netcheck_interval, "netcheck_interval")
    if interval != 0 and not 1 <= interval <= 86400:
        raise ConfigError(f"netcheck_interval: expected 0 (off) or 1 to 86400 seconds, got {interval}")
    set_(config, "netcheck_interval", interval)
    if not isinstance(config.mdns, bool):
        raise ConfigError(f"mdns: expected true or false, got {config.mdns!r}")
    for entry in config.mdns_interfaces:
        try:
            ipaddress.ip_address(entry)
        except (ValueError, TypeError):
            raise ConfigError(
                f"mdns_interfaces: expected IP addresses of this host's interfaces, got {entry!r}"
            ) from None


def _padding_fields(config: MeshConfig) -> None:
    """``padding_buckets`` (increasing sizes, 64 to ``datagram_size``), ``cover_rate`` (0, or up
    to 1000 packets/s with buckets set) and ``cover_idle`` (0, or a duration)."""
    from .reliability.padding import MAX_COVER_RATE, MIN_BUCKET

    set_ = object.__setattr__
    buckets = config.padding_buckets
    if isinstance(buckets, str) or not isinstance(buckets, list | tuple):
        raise ConfigError(f"padding_buckets: expected a list of datagram sizes, got {buckets!r}")
    for size in buckets:
        _int(size, "padding_buckets", MIN_BUCKET, config.datagram_size)
    if list(buckets) != sorted(set(buckets)):
        raise ConfigError(f"padding_buckets: expected increasing sizes, got {list(buckets)}")
    set_(config, "padding_buckets", tuple(buckets))
    rate = config.cover_rate
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= MAX_COVER_RATE:
        raise ConfigError(f"cover_rate: expected 0 (off) to {MAX_COVER_RATE:g} packets/s, got {rate!r}")
    if rate and not buckets:
        raise ConfigError(
            "cover_rate: cover traffic needs padding_buckets (cover packets would stand out by size)"
        )
    set_(config, "cover_rate", float(rate))
    idle = parse_duration(config.cover_idle, "cover_idle")
    if idle != 0 and not 0.01 <= idle <= 86400:
        raise ConfigError(f"cover_idle: expected 0 (never) or 0.01 to 86400 seconds, got {idle}")
    set_(config, "cover_idle", idle)
