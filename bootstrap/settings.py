"""``coremesh-bootstrap`` settings: flags, environment (``COREMESH_BOOTSTRAP_*``), config file, defaults.

Precedence, highest first: flags > environment > config file (the ``[bootstrap]`` table of a TOML file)
> defaults; a list given at a higher level replaces the lower one as a whole. Every problem is a
:class:`~coremesh.errors.ConfigError` naming the setting and where it came from; ``main`` prints it as
one line and exits 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from coremesh.addr import Address
from coremesh.config import parse_peer_address
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
    parse_host_port,
    parse_int,
    parse_list,
    parse_str,
    read_layers,
)

PROG: Final = "coremesh-bootstrap"
TABLE: Final = "bootstrap"
ENV_PREFIX: Final = "COREMESH_BOOTSTRAP_"
DEFAULT_LISTEN: Final = "[::]:7946"
DEFAULT_ADMIN: Final = "127.0.0.1:7948"

_LIST_KEYS: Final = ("bootstrap", "advertise")
_BOOL_KEYS: Final = ("admin_allow_remote",)
KEYS: Final = (
    "listen",
    "data_dir",
    "admin",
    "admin_allow_remote",
    "bootstrap",
    "advertise",
    "max_connections",
    "dht_k",
    "dht_alpha",
    "log_format",
    "log_level",
)
ENV_VARS: Final[Mapping[str, str]] = {key: ENV_PREFIX + key.upper() for key in (*KEYS, "config")}

EXAMPLES: Final = f"""\
examples:
  {PROG} --listen 0.0.0.0:7946 --data-dir /var/lib/coremesh-bootstrap --admin 127.0.0.1:7948
  {PROG} --listen 127.0.0.1:7000 --data-dir ./b2 --admin 127.0.0.1:7002 --bootstrap 127.0.0.1:6000

config file (--config FILE or {ENV_PREFIX}CONFIG):
  [bootstrap]
  listen = "0.0.0.0:7946"
  data_dir = "/var/lib/coremesh-bootstrap"
  bootstrap = ["PEERID@198.51.100.8:7946"]
  advertise = ["198.51.100.7:7946"]

Every setting is also an environment variable: {ENV_PREFIX}LISTEN, {ENV_PREFIX}DATA_DIR, ...
"""


@dataclass(frozen=True, slots=True)
class BootstrapSettings:
    listen: Address
    data_dir: Path
    admin: Address
    admin_allow_remote: bool
    bootstrap: tuple[str, ...]
    advertise: tuple[Address, ...]
    max_connections: int
    dht_k: int
    dht_alpha: int
    log_format: str
    log_level: str
    config_file: Path | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "listen": str(self.listen),
            "data_dir": str(self.data_dir),
            "admin": str(self.admin),
            "bootstrap": list(self.bootstrap),
            "advertise": [str(a) for a in self.advertise],
            "max_connections": self.max_connections,
            "dht_k": self.dht_k,
            "dht_alpha": self.dht_alpha,
        }


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Run a Core Mesh bootstrap node: a stable member of the mesh's DHT with a persistent identity "
            "that new nodes join through. It stores and serves signed peer records, answers lookups, "
            "accepts mesh connections, and serves an admin HTTP API with health, readiness, Prometheus "
            "metrics and status. Run several side by side, each listing the others with --bootstrap."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--config", metavar="FILE", help="TOML config file with a [bootstrap] table")
    add("--listen", metavar="HOST:PORT", help=f"UDP address for the mesh and the DHT ({DEFAULT_LISTEN})")
    add("--data-dir", metavar="DIR", help="identity key, routing table and peer store (required)")
    add("--admin", metavar="HOST:PORT", help=f"admin HTTP API ({DEFAULT_ADMIN})")
    add(
        "--admin-allow-remote",
        action="store_const",
        const=True,
        help="allow a non-loopback --admin address (the admin API has no authentication)",
    )
    add(
        "--bootstrap",
        action="append",
        metavar="[PEERID@]HOST:PORT",
        help="another bootstrap node or seed to join through (repeatable)",
    )
    add(
        "--advertise",
        action="append",
        metavar="HOST:PORT",
        help="address to publish in this node's peer record (repeatable; default: the listen address, "
        "or the host's addresses when it listens on a wildcard)",
    )
    add("--max-connections", metavar="N", help="mesh connections at most (1024)")
    add("--dht-k", metavar="K", help="Kademlia bucket size and replication (20)")
    add("--dht-alpha", metavar="A", help="Kademlia lookup parallelism (3)")
    add("--log-format", metavar="FORMAT", help="json or text, on stderr (json)")
    add("--log-level", metavar="LEVEL", help="debug, info, warning or error (info)")
    add("--version", action="version", version=f"%(prog)s {version()}")
    return p


DEFAULTS: Final[Mapping[str, Any]] = {
    "listen": DEFAULT_LISTEN,
    "data_dir": None,
    "admin": DEFAULT_ADMIN,
    "admin_allow_remote": False,
    "bootstrap": [],
    "advertise": [],
    "max_connections": 1024,
    "dht_k": 20,
    "dht_alpha": 3,
    "log_format": "json",
    "log_level": "info",
}


def resolve(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> BootstrapSettings:
    """Parse flags (exit 2 with one line on a malformed command line), merge, check."""
    raw = read_layers(build_parser(), argv, env, env_names=ENV_VARS, table=TABLE, keys=KEYS)
    return merge(flags=raw.flags, env=raw.env, file=raw.file, config_file=raw.config_file)


def merge(
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, Any],
    file: Mapping[str, Any],
    config_file: Path | None = None,
) -> BootstrapSettings:
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
    b = {key: parse_bool(src[key], w(key)) for key in _BOOL_KEYS}
    listen = parse_host_port(src["listen"], w("listen"))
    admin = parse_admin(
        src["admin"], w("admin"), allow_remote=b["admin_allow_remote"], remote_flag="--admin-allow-remote"
    )
    if src["data_dir"] is None:
        raise ConfigError(
            "--data-dir is required: a bootstrap node keeps its identity (its PeerId is pinned by "
            "others) and its routing table across restarts"
        )
    text = parse_str(src["data_dir"], w("data_dir")).strip()
    if not text:
        raise ConfigError(f"{w('data_dir')}: expected a directory, got an empty string")
    data_dir = Path(text).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"{w('data_dir')}: {data_dir} is not a directory")

    seeds = parse_list(src["bootstrap"], w("bootstrap"))
    for entry in seeds:
        try:
            parse_peer_address(entry)
        except (InvalidAddress, InvalidPeerId) as exc:
            raise ConfigError(f"{w('bootstrap')}: {exc}") from None
    advertise = tuple(
        parse_host_port(a, w("advertise"), allow_zero_port=False)
        for a in parse_list(src["advertise"], w("advertise"))
    )
    for a in advertise:
        if a.host in ("0.0.0.0", "::"):
            raise ConfigError(f"{w('advertise')}: {a} is a wildcard; advertise an address peers can reach")
    return BootstrapSettings(
        listen=listen,
        data_dir=data_dir,
        admin=admin,
        admin_allow_remote=b["admin_allow_remote"],
        bootstrap=tuple(seeds),
        advertise=advertise,
        max_connections=parse_int(src["max_connections"], w("max_connections"), low=1, high=1_000_000),
        dht_k=parse_int(src["dht_k"], w("dht_k"), low=2, high=64),
        dht_alpha=parse_int(src["dht_alpha"], w("dht_alpha"), low=1, high=16),
        log_format=parse_choice(src["log_format"], w("log_format"), LOG_FORMATS),
        log_level=parse_choice(src["log_level"], w("log_level"), LOG_LEVELS),
        config_file=config_file,
    )
