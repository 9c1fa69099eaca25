"""The daemon's settings: command-line flags, environment, config file and defaults, merged.

Precedence, highest first: flags > environment (``COREMESH_*``) > config file (``[node]`` table of a
TOML file) > defaults. A list (bootstrap peers, ``--connect``) given at a higher level replaces the
lower one as a whole; lists are never concatenated across levels.

Everything is validated here, before any socket is opened, and every problem is a
:class:`~coremesh.errors.ConfigError` whose message names the setting and where it came from. The
layering is the services' (:mod:`coremesh.service.settings`); what is the node's own: the keys of
its ``[node]`` table are the :class:`~coremesh.config.MeshConfig` fields plus a few of the daemon's,
and the mesh values are checked by ``MeshConfig`` itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from coremesh.addr import Address
from coremesh.config import MeshConfig, PeerAddress, parse_peer_address
from coremesh.errors import ConfigError, InvalidAddress, InvalidPeerId
from coremesh.service import version
from coremesh.service.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    OneLineParser,
    Sources,
    parse_admin,
    parse_bool,
    parse_choice,
    parse_list,
    read_layers,
    read_toml,
)

PROG: Final = "coremesh-node"
TABLE: Final = "node"
DEFAULT_LISTEN: Final = "[::]:7946"
DEFAULT_ADMIN: Final = "127.0.0.1:7947"
DEFAULT_INBOX_BYTES: Final = 64 * 1024 * 1024

# Settings key -> environment variable. Lists are comma-separated.
ENV_VARS: Final[Mapping[str, str]] = {
    "config": "COREMESH_CONFIG",
    "listen_addr": "COREMESH_LISTEN",
    "data_dir": "COREMESH_DATA_DIR",
    "admin": "COREMESH_ADMIN",
    "admin_allow_remote": "COREMESH_ADMIN_ALLOW_REMOTE",
    "bootstrap_peers": "COREMESH_BOOTSTRAP",
    "relays": "COREMESH_RELAY",
    "keyed_relays": "COREMESH_KEYED_RELAY",
    "connect": "COREMESH_CONNECT",
    "log_format": "COREMESH_LOG_FORMAT",
    "log_level": "COREMESH_LOG_LEVEL",
    "inbox_bytes": "COREMESH_INBOX_BYTES",
    "advertise_addresses": "COREMESH_ADVERTISE",
    "stun_servers": "COREMESH_STUN_SERVERS",
    "allow_peers": "COREMESH_ALLOW",
    "deny_peers": "COREMESH_DENY",
}
# Settings key -> its flag, where the flag is not --key-with-dashes.
FLAG_NAMES: Final[Mapping[str, str]] = {
    "listen_addr": "--listen",
    "bootstrap_peers": "--bootstrap",
    "relays": "--relay",
    "keyed_relays": "--keyed-relay",
    "advertise_addresses": "--advertise",
    "stun_servers": "--stun-server",
    "mdns_interfaces": "--mdns-interface",
    "allow_peers": "--allow",
    "deny_peers": "--deny",
}

# Keys of the [node] table besides the MeshConfig fields.
NODE_KEYS: Final = frozenset(
    {"admin", "admin_allow_remote", "log_format", "log_level", "connect", "inbox_bytes"}
)
MESH_KEYS: Final = frozenset(f.name for f in fields(MeshConfig)) - {"extra"}
KEYS: Final = MESH_KEYS | NODE_KEYS
# The lists: MeshConfig's tuple-valued fields, and --connect.
_LIST_KEYS: Final = frozenset(f.name for f in fields(MeshConfig) if str(f.type).startswith("tuple[")) | {
    "connect"
}
_INT_LIST_KEYS: Final = frozenset({"padding_buckets"})  # lists of sizes, not of strings
_STR_KEYS: Final = ("admin", "log_format", "log_level", "listen_addr", "data_dir")
# Flags whose text becomes a whole number here (MeshConfig checks the range).
_INT_FLAGS: Final = ("max_connections", "datagram_size")

DEFAULTS: Final[Mapping[str, Any]] = {
    "listen_addr": DEFAULT_LISTEN,
    "admin": DEFAULT_ADMIN,
    "admin_allow_remote": False,
    "log_format": "json",
    "log_level": "info",
    "connect": [],
    "inbox_bytes": DEFAULT_INBOX_BYTES,
}

EXAMPLES: Final = f"""\
examples:
  {PROG} --listen 0.0.0.0:7946 --data-dir /var/lib/coremesh --admin 127.0.0.1:7947
  {PROG} --listen '[::]:7946' --data-dir ./n1 --admin 127.0.0.1:7947 \\
      --bootstrap PEERID@198.51.100.7:7946 --connect PEERID@192.0.2.10:7946
  {PROG} --config /etc/coremesh/node.toml --log-format text

precedence: flags > environment > config file > defaults. Environment variables:
  {", ".join(ENV_VARS.values())}
  (COREMESH_BOOTSTRAP, COREMESH_CONNECT, COREMESH_ALLOW and COREMESH_DENY are comma-separated lists).

config file (TOML), all keys optional, in a [node] table:
  [node]
  listen_addr = "[::]:7946"
  data_dir = "/var/lib/coremesh"
  admin = "127.0.0.1:7947"
  bootstrap_peers = ["PEERID@198.51.100.7:7946", "192.0.2.1:7946"]
  connect = ["PEERID@192.0.2.10:7946"]
  log_format = "json"      # or "text"
  log_level = "info"
  heartbeat_interval = "5s"
  idle_timeout = "30s"
  allow_peers = ["PEERID", "PEERID"]   # a closed mesh: only these peers (docs/access.md)
  deny_peers = ["PEERID"]              # refused, whatever allow_peers says
  # ... and any other MeshConfig field (see docs/configuration.md)
"""


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Everything the daemon needs, validated."""

    mesh: MeshConfig
    admin: Address
    admin_allow_remote: bool
    log_format: str
    log_level: str
    connect: tuple[PeerAddress, ...]
    config_file: Path | None
    inbox_bytes: int = DEFAULT_INBOX_BYTES

    @property
    def pinned_bootstrap(self) -> tuple[PeerAddress, ...]:
        """Bootstrap entries with a peer id: ``MeshNode`` dials them at start and keeps them connected."""
        return tuple(e for e in self.mesh.bootstrap_addresses if e.peer_id is not None)

    @property
    def dial_peers(self) -> tuple[PeerAddress, ...]:
        """``--connect`` peers the daemon dials and keeps connected (minus those the node dials itself
        as pinned bootstrap peers, and duplicates)."""
        out: list[PeerAddress] = []
        seen = {e.peer_id for e in self.pinned_bootstrap}
        for entry in self.connect:
            if entry.peer_id not in seen:
                seen.add(entry.peer_id)
                out.append(entry)
        return tuple(out)

    @property
    def deferred_bootstrap(self) -> tuple[PeerAddress, ...]:
        """Bootstrap entries without a peer id: DHT seeds only (their ids come from signed answers)."""
        return tuple(e for e in self.mesh.bootstrap_addresses if e.peer_id is None)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Run a Core Mesh node: listen for peers over UDP, keep connections to the peers it is told "
            "about, and serve the admin HTTP API (JSON) that the `coremesh` CLI talks to."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every default is None: "not given", so lower levels (env, file, defaults) show through.
    p.add_argument("--config", metavar="FILE", help="TOML config file with a [node] table (none)")
    p.add_argument(
        "--listen",
        dest="listen_addr",
        metavar="HOST:PORT",
        help=f"UDP address; [::] is dual-stack where the host allows ({DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="directory of the identity key (identity.key, created 0600 on first start) and of the lock "
        "that keeps a second process off it; without it the node runs with a fresh identity, lost on exit",
    )
    p.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help=f"admin HTTP API address; loopback only unless --admin-allow-remote ({DEFAULT_ADMIN})",
    )
    p.add_argument(
        "--admin-allow-remote",
        action="store_const",
        const=True,
        default=None,
        help="allow a non-loopback --admin address (the admin API has no authentication)",
    )
    p.add_argument(
        "--bootstrap",
        dest="bootstrap_peers",
        action="append",
        metavar="[PEERID@]HOST:PORT",
        help="bootstrap node to join the DHT through (repeatable): without a PEERID a DHT seed, whose id "
        "comes from its signed answer (logged as bootstrap.seed); with one it is also dialed at start and "
        "kept connected (bootstrap.dialing)",
    )
    p.add_argument(
        "--advertise",
        dest="advertise_addresses",
        action="append",
        metavar="HOST:PORT",
        help="address to publish in this node's signed peer record (repeatable; default: the listen "
        "address, a wildcard expanded to the host's addresses)",
    )
    p.add_argument(
        "--lookup-timeout", metavar="DURATION", help="how long a PeerId lookup in the DHT may take (5s)"
    )
    p.add_argument(
        "--no-dht",
        dest="dht",
        action="store_const",
        const=False,
        default=None,
        help="take no part in the DHT: no lookups, no record published (peers need PEERID@HOST:PORT)",
    )
    p.add_argument(
        "--no-forwarding",
        dest="forwarding",
        action="store_const",
        const=False,
        default=None,
        help="carry no routed packets for other peers (this node still uses routes through others)",
    )
    p.add_argument(
        "--allow",
        dest="allow_peers",
        action="append",
        metavar="PEERID",
        help="allow this peer (repeatable): with an allow-list the mesh is closed, every other peer is "
        "refused in the handshake, also through the overlay (docs/access.md); `coremesh allow` changes it "
        "at run time, saved in the data dir",
    )
    p.add_argument(
        "--deny",
        dest="deny_peers",
        action="append",
        metavar="PEERID",
        help="refuse this peer (repeatable), whatever the allow-list says; `coremesh deny` at run time",
    )
    p.add_argument(
        "--relay",
        dest="relays",
        action="append",
        metavar="[USER:PASSWORD@]HOST:PORT",
        help="STUN/TURN server (repeatable): the node learns its public address there and allocates a "
        "relayed address, used when a peer cannot be reached directly",
    )
    p.add_argument(
        "--keyed-relay",
        dest="keyed_relays",
        action="append",
        metavar="URL",
        help="keyed mesh relay (repeatable): tcp://, tls://, ws:// or wss://HOST:PORT[/v1/relay]; the "
        "node registers there by its PeerId and reaches peers through it when UDP fails",
    )
    p.add_argument(
        "--stun-server",
        dest="stun_servers",
        action="append",
        metavar="HOST:PORT",
        help="STUN server for netcheck (repeatable; default: the --relay servers; there is no public "
        "default)",
    )
    p.add_argument(
        "--netcheck-interval",
        metavar="DURATION",
        help="re-run netcheck this often, e.g. 5m (and check for a changed address every quarter of it, "
        "at most 30s); 0 turns the background runs off (5m)",
    )
    p.add_argument(
        "--mdns",
        action="store_const",
        const=True,
        default=None,
        help="advertise and discover nodes on the local network with mDNS (docs/discovery.md); leave off "
        "in containers (off)",
    )
    p.add_argument(
        "--mdns-interface",
        dest="mdns_interfaces",
        action="append",
        metavar="IP",
        help="limit mDNS to the interface with this IP (repeatable; default: all interfaces)",
    )
    p.add_argument(
        "--connect",
        action="append",
        metavar="PEERID@HOST:PORT",
        help="peer to dial at start and keep connected (repeatable): retried with exponential backoff (0.5s "
        "doubling to 30s, jittered), and dialed again whenever the connection ends",
    )
    p.add_argument(
        "--inbox-bytes",
        metavar="BYTES",
        help="bytes of received messages held for `coremesh recv` (64 MiB); when full the node stops "
        "reading from peers, so their sends wait (back-pressure)",
    )
    p.add_argument("--log-format", choices=LOG_FORMATS, help="log format on stderr: json or text (json)")
    p.add_argument(
        "--log-level", type=str.lower, choices=LOG_LEVELS, help="debug, info, warning, error (info)"
    )
    p.add_argument(
        "--heartbeat-interval", metavar="DURATION", help="keepalive interval: 5, 5s, 250ms, 1m (5s)"
    )
    p.add_argument(
        "--idle-timeout",
        metavar="DURATION",
        help="close a connection silent this long; at least twice the heartbeat (30s)",
    )
    p.add_argument("--connect-timeout", metavar="DURATION", help="handshake timeout, e.g. 5s (5s)")
    p.add_argument("--max-connections", metavar="N", help="maximum concurrent connections (256)")
    p.add_argument("--datagram-size", metavar="BYTES", help="initial datagram size, 1200-65487 (1200)")
    p.add_argument(
        "--no-pmtu-discovery",
        dest="pmtu_discovery",
        action="store_const",
        const=False,
        default=None,
        help="keep the datagram size fixed instead of probing the path MTU",
    )
    p.add_argument(
        "--no-nat-traversal",
        dest="enable_nat_traversal",
        action="store_const",
        const=False,
        default=None,
        help="keep every connection on the path it was established on (no direct upgrade)",
    )
    p.add_argument(
        "--path-dead-after",
        metavar="DURATION",
        help="a direct path with nothing acknowledged this long falls back to the relay (3s)",
    )
    p.add_argument(
        "--traversal-retry-max",
        metavar="DURATION",
        help="while relayed, direct checks retry with backoff up to this interval (30s)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return p


def load_config_file(path: Path, table: str = TABLE, known: Iterable[str] = KEYS) -> dict[str, Any]:
    """The ``[node]`` table of a TOML file, keys and value types checked; ConfigError names the file.

    Unlike the relay's and the bootstrap's tables, keys are written as the MeshConfig fields are
    (underscores), every unknown key is listed, and other tables are left alone."""
    table_values = read_toml(path, table).get(table, {})
    known_keys = frozenset(known)
    unknown = sorted(set(table_values) - known_keys)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) in [{table}]: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known_keys))}"
        )
    for key in _LIST_KEYS:
        kind, what = (int, "integers") if key in _INT_LIST_KEYS else (str, "strings")
        if key in table_values and not (
            isinstance(table_values[key], list) and all(isinstance(x, kind) for x in table_values[key])
        ):
            raise ConfigError(f"config file {path}: {key}: expected a list of {what}")
    for key in _STR_KEYS:
        if key in table_values and not isinstance(table_values[key], str):
            raise ConfigError(f"config file {path}: {key}: expected a string, got {table_values[key]!r}")
    if "admin_allow_remote" in table_values and not isinstance(table_values["admin_allow_remote"], bool):
        raise ConfigError(f"config file {path}: admin_allow_remote: expected true or false")
    return dict(table_values)


def resolve(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> NodeSettings:
    """Parse flags (exits 2 with one line on a malformed command line), merge, validate.

    ``env`` is the environment to read (none if not given). Raises :class:`ConfigError` for a bad
    value from any source.
    """
    raw = read_layers(
        build_parser(),
        argv,
        {} if env is None else env,
        env_names=ENV_VARS,
        table=TABLE,
        keys=KEYS,
        load_table=load_config_file,
    )
    # The log settings from the environment are not case-sensitive (COREMESH_LOG_LEVEL=Warning).
    env_values = {k: v.lower() if k in ("log_format", "log_level") else v for k, v in raw.env.items()}
    return merge(flags=raw.flags, env=env_values, file=raw.file, config_file=raw.config_file)


def merge(
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, Any],
    file: Mapping[str, Any],
    config_file: Path | None = None,
) -> NodeSettings:
    """Merge the three sources (flags > env > file > defaults) and validate the result."""
    src = Sources(
        defaults=DEFAULTS,
        file=file,
        env=env,
        flags=flags,
        env_names=ENV_VARS,
        flag_names=FLAG_NAMES,
        config_file=config_file,
    )
    w = src.where
    for key in _INT_FLAGS:
        if src.source(key) == "flag" and isinstance(src[key], str):
            src.values[key] = _flag_int(src[key], w(key))

    log_format = str(src["log_format"]).lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"{w('log_format')}: expected json or text, got {src['log_format']!r}")
    log_level = parse_choice(str(src["log_level"]), w("log_level"), LOG_LEVELS)
    allow_remote = parse_bool(src["admin_allow_remote"], w("admin_allow_remote"))
    admin = parse_admin(
        src["admin"], w("admin"), allow_remote=allow_remote, remote_flag="--admin-allow-remote"
    )

    connect: list[PeerAddress] = []
    for entry in parse_list(src["connect"], w("connect")):
        try:
            connect.append(parse_peer_address(entry, require_id=True))
        except (InvalidAddress, InvalidPeerId) as exc:
            raise ConfigError(f"{w('connect')}: {exc}") from None

    mesh_values = {k: v for k, v in src.values.items() if k in MESH_KEYS}
    for key in _LIST_KEYS & mesh_values.keys():
        if isinstance(mesh_values[key], str):  # a comma-separated environment variable
            mesh_values[key] = parse_list(mesh_values[key], w(key))
    try:
        mesh = MeshConfig.from_dict(mesh_values)
    except ConfigError as exc:
        key, sep, rest = str(exc).partition(":")
        if not sep or w(key) == key:
            raise
        raise ConfigError(f"{w(key)}:{rest}") from None
    except TypeError as exc:  # a value of the wrong type that MeshConfig did not name
        raise ConfigError(f"config: {exc}") from None
    try:
        inbox_bytes = int(src["inbox_bytes"])
    except (TypeError, ValueError):
        raise ConfigError(
            f"{w('inbox_bytes')}: expected a number of bytes, got {src['inbox_bytes']!r}"
        ) from None
    if not 1024 * 1024 <= inbox_bytes <= 1 << 40:
        raise ConfigError(f"{w('inbox_bytes')}: expected 1 MiB to 1 TiB, got {inbox_bytes}")
    return NodeSettings(
        mesh=mesh,
        admin=admin,
        admin_allow_remote=allow_remote,
        log_format=log_format,
        log_level=log_level,
        connect=tuple(connect),
        config_file=config_file,
        inbox_bytes=inbox_bytes,
    )


def _flag_int(text: str, where: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
