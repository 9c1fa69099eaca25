"""Keyed relay URLs: ``tcp://``, ``tls://``, ``ws://`` and ``wss://``, parsed and checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from ..addr import parse_address
from ..errors import ConfigError, InvalidAddress
from .framing import WS_PATH

_SCHEMES: Final = ("tcp", "tls", "ws", "wss")


@dataclass(frozen=True, slots=True)
class RelayUrl:
    """A parsed relay URL."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def secure(self) -> bool:
        return self.scheme in ("tls", "wss")

    @property
    def websocket(self) -> bool:
        return self.scheme in ("ws", "wss")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_relay_url(url: str) -> RelayUrl:
    """Parse a relay URL; raises :class:`ConfigError` saying what was expected."""
    expected = (
        "expected tcp://HOST:PORT, tls://HOST:PORT, ws://HOST:PORT/v1/relay or wss://HOST:PORT/v1/relay"
    )
    if not isinstance(url, str):
        raise ConfigError(f"relay url must be text; {expected}")
    parts = urlsplit(url.strip())
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"relay url {url!r}: unknown scheme {parts.scheme!r}; {expected}")
    try:
        addr = parse_address(parts.netloc, allow_zero_port=False, allow_names=True)
    except InvalidAddress as exc:
        raise ConfigError(f"relay url {url!r}: {exc}; {expected}") from None
    path = parts.path
    if parts.scheme in ("tcp", "tls"):
        if path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"relay url {url!r}: a {parts.scheme} url has no path; {expected}")
        path = ""
    else:
        path = path or WS_PATH
        if parts.query:
            path += "?" + parts.query
    return RelayUrl(parts.scheme, addr.host, addr.port, path)
