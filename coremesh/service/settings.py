"""Service settings from flags, environment, a TOML config file and defaults, merged and checked.

Precedence, highest first: flags > environment > config file > defaults. A list given at a higher level
replaces the lower one as a whole. Every problem is a :class:`~coremesh.errors.ConfigError` whose
message starts with where the value came from (``--min-port``, ``COREMESH_RELAY_MIN_PORT``,
``min_port in /etc/coremesh/relay.toml``), so a service prints it as one line and exits 2.

The pieces here are generic; a service declares its keys, flags and environment variables and builds
its own frozen settings object from the merged values.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

from coremesh.addr import Address, parse_address
from coremesh.errors import ConfigError, InvalidAddress

LOG_FORMATS: Final = ("json", "text")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ONE line on stderr, then exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Sources:
    """The merged values of every layer, and where each one came from (for error messages).

    ``flag_names`` maps a settings key to its flag (``"users" -> "--user"``; default ``--key-with-dashes``);
    ``env_names`` maps a settings key to its environment variable.
    """

    def __init__(
        self,
        *,
        defaults: Mapping[str, Any],
        file: Mapping[str, Any],
        env: Mapping[str, Any],
        flags: Mapping[str, Any],
        env_names: Mapping[str, str],
        flag_names: Mapping[str, str] | None = None,
        config_file: Path | None = None,
    ) -> None:
        self.values: dict[str, Any] = dict(defaults)
        self._source: dict[str, str] = dict.fromkeys(defaults, "default")
        self._env_names = env_names
        self._flag_names = dict(flag_names or {})
        self.config_file = config_file
        for name, layer in (("file", file), ("env", env), ("flag", flags)):
            for key, value in layer.items():
                self.values[key] = value
                self._source[key] = name

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def source(self, key: str) -> str:
        """``default``, ``file``, ``env`` or ``flag``."""
        return self._source.get(key, "default")

    def where(self, key: str) -> str:
        src = self.source(key)
        if src == "flag":
            return self._flag_names.get(key, "--" + key.replace("_", "-"))
        if src == "env":
            return self._env_names.get(key, key)
        if src == "file":
            return f"{key} in {self.config_file}"
        return key


@dataclass(frozen=True, slots=True)
class RawSettings:
    """What each layer gave, before merging: flags, environment, config file (and its path)."""

    flags: dict[str, Any]
    env: dict[str, Any]
    file: dict[str, Any]
    config_file: Path | None


TableLoader = Callable[[Path, str, Iterable[str]], dict[str, Any]]
"""Reads the ``[table]`` of a config file, its keys checked against the known ones (``load_toml_table``)."""


def read_layers(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    env: Mapping[str, str] | None,
    *,
    env_names: Mapping[str, str],
    table: str,
    keys: Iterable[str],
    load_table: TableLoader | None = None,
) -> RawSettings:
    """Parse the flags (exit 2 with one line on a malformed command line), read the environment
    variables of ``env_names`` (which may name ``config``) and the ``[table]`` of the config file
    given by ``--config`` or the environment, with ``load_table`` (default :func:`load_toml_table`)."""
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    flags = {k: v for k, v in vars(ns).items() if v is not None and k != "config"}
    env_values: dict[str, Any] = dict(read_env(os.environ if env is None else env, env_names))
    config_text = getattr(ns, "config", None) or env_values.get("config")
    env_values.pop("config", None)
    config_file = Path(config_text).expanduser() if config_text else None
    load = load_toml_table if load_table is None else load_table
    file_values = load(config_file, table, keys) if config_file else {}
    return RawSettings(flags, env_values, file_values, config_file)


def read_env(env: Mapping[str, str], names: Mapping[str, str]) -> dict[str, str]:
    """``{key: raw text}`` for every variable of ``names`` (key -> variable) that is set and not blank."""
    out: dict[str, str] = {}
    for key, var in names.items():
        raw = env.get(var)
        if raw is not None and raw.strip():
            out[key] = raw.strip()
    return out


def read_toml(path: Path, table: str) -> dict[str, Any]:
    """A TOML config file whose every key sits in a table (``[table]`` is the one the message
    suggests). Every problem with the file itself (missing, a directory, unreadable, not TOML) is one
    :class:`~coremesh.errors.ConfigError` line that names it."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    stray = sorted(k for k, v in doc.items() if not isinstance(v, dict))
    if stray:
        raise ConfigError(
            f"config file {path}: key(s) {', '.join(stray)} outside a table; put them under [{table}]"
        )
    return doc


def load_toml_table(path: Path, table: str, known: Iterable[str]) -> dict[str, Any]:
    """The ``[table]`` of a TOML file. Keys may be written with dashes (``min-port``) or underscores;
    they come back with underscores. Unknown keys and keys outside the table are errors."""
    doc = read_toml(path, table)
    other = sorted(k for k in doc if k != table)
    if other:
        raise ConfigError(f"config file {path}: unknown table(s) {', '.join(other)}; expected [{table}]")
    known_keys = frozenset(known)
    out: dict[str, Any] = {}
    for raw_key, value in doc.get(table, {}).items():
        key = raw_key.replace("-", "_")
        if key not in known_keys:
            raise ConfigError(
                f"config file {path}: unknown key {raw_key!r} in [{table}]; known: "
                + ", ".join(sorted(known_keys))
            )
        if key in out:
            raise ConfigError(f"config file {path}: {raw_key!r} given twice in [{table}]")
        out[key] = value
    return out


# ------------------------------------------------------------------------------------- value parsers


def parse_bool(value: Any, where: str) -> bool:
    """``true``/``false`` (TOML), or text ``1/0, true/false, yes/no, on/off`` (environment)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def parse_int(value: Any, where: str, *, low: int, high: int | None = None) -> int:
    """An integer from TOML or decimal text, in ``low..high``."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip(), 10)
    if number is None:
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if number < low or (high is not None and number > high):
        bound = f"{low} to {high}" if high is not None else f"{low} or more"
        raise ConfigError(f"{where}: expected {bound}, got {number}")
    return number


def parse_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def parse_list(value: Any, where: str) -> list[str]:
    """A list of strings (TOML, repeated flags) or one comma-separated string (environment)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [str(item).strip() for item in value]
    raise ConfigError(f"{where}: expected a list of strings, got {value!r}")


def parse_choice(value: Any, where: str, choices: Iterable[str]) -> str:
    options = tuple(choices)
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in options:
        raise ConfigError(f"{where}: expected one of {', '.join(options)}, got {value!r}")
    return str(text)


def parse_host_port(value: Any, where: str, *, allow_zero_port: bool = True) -> Address:
    """``HOST:PORT`` or ``[V6]:PORT`` with a literal IP; ``localhost:PORT`` means ``127.0.0.1:PORT``."""
    text = parse_str(value, where).strip()
    if text.lower().startswith("localhost:"):
        text = "127.0.0.1:" + text[len("localhost:") :]
    try:
        return parse_address(text, allow_zero_port=allow_zero_port)
    except InvalidAddress as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_ip(value: Any, where: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    text = parse_str(value, where).strip()
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an IP address") from None


def parse_admin(value: Any, where: str, *, allow_remote: bool, remote_flag: str) -> Address:
    """The admin API address: loopback only unless ``allow_remote`` (it has no authentication)."""
    address = parse_host_port(value, where)
    if not allow_remote and not ipaddress.ip_address(address.host).is_loopback:
        raise ConfigError(
            f"{where}: {address} is not a loopback address; the admin API has no authentication, "
            f"so it listens on loopback only unless {remote_flag} is given"
        )
    return address


def parse_path(value: Any, where: str, *, must_exist: bool = True) -> Path:
    text = parse_str(value, where).strip()
    if not text:
        raise ConfigError(f"{where}: expected a file name, got an empty string")
    path = Path(text).expanduser()
    if must_exist and not path.is_file():
        raise ConfigError(f"{where}: {path}: no such file")
    return path
