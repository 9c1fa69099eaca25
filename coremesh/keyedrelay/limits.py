"""What a keyed relay admits: the limits its core enforces, and the cap on unregistered connections.

:class:`RelayLimits` is the core's side (rates, sessions, frame size, timeouts; the server's config
maps onto it). :class:`UnregisteredLimiter` is the shell's: connections that have not registered yet
are capped in all and per source, so that idle connections can neither lock out a newcomer nor hold
more than their share.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from .frames import MAX_FRAME, MIN_FRAME, SEND_HEADER_LEN


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimits:
    """The limits :class:`RelayCore` enforces (the server's config maps onto these)."""

    rate_bytes_per_s: float = 12_500_000.0
    rate_packets_per_s: float = 20_000.0
    burst: float = 1.0  # seconds of rate a bucket can bank
    max_sessions: int = 10_000  # registered sessions (peers) at once
    max_frame: int = MAX_FRAME
    register_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_unregistered: int = 1024  # sessions that have not registered (yet), counted apart

    def __post_init__(self) -> None:
        for name in ("rate_bytes_per_s", "rate_packets_per_s", "burst", "register_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.max_sessions, int) or self.max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive integer, got {self.max_sessions!r}")
        if not isinstance(self.max_unregistered, int) or self.max_unregistered < 1:
            raise ValueError(f"max_unregistered must be a positive integer, got {self.max_unregistered!r}")
        if not isinstance(self.max_frame, int) or not MIN_FRAME <= self.max_frame <= MAX_FRAME:
            raise ValueError(
                f"max_frame must be an integer in {MIN_FRAME}..{MAX_FRAME}, got {self.max_frame!r}"
            )

    @property
    def max_packet(self) -> int:
        return self.max_frame - SEND_HEADER_LEN


K = TypeVar("K", bound=Hashable)


class UnregisteredLimiter(Generic[K]):
    """Connections that have not registered (yet), oldest first, capped in total and per source.

    ``admit(key, source, now)`` adds a new connection and returns the ones to close to make room,
    oldest first: the oldest of the same ``source`` while that source holds ``max_per_source``,
    then the oldest of all while there are ``max_total``. So idle connections can neither lock out
    a newcomer nor hold more than their share; a client that registers promptly is never the oldest
    for long. ``remove(key)`` when the connection registers or ends (unknown keys are ignored).
    Keys are opaque to this class (the server uses its transports); sources are e.g. IP addresses.
    """

    __slots__ = ("_all", "_by_source", "max_per_source", "max_total")

    def __init__(self, max_total: int, max_per_source: int) -> None:
        if not 1 <= max_per_source <= max_total:
            raise ValueError("need 1 <= max_per_source <= max_total")
        self.max_total = max_total
        self.max_per_source = max_per_source
        self._all: OrderedDict[K, Hashable] = OrderedDict()
        self._by_source: dict[Hashable, OrderedDict[K, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: object) -> bool:
        return key in self._all

    def count(self, source: Hashable) -> int:
        keys = self._by_source.get(source)
        return len(keys) if keys is not None else 0

    def admit(self, key: K, source: Hashable) -> list[K]:
        evicted: list[K] = []
        same = self._by_source.get(source)
        while same is not None and len(same) >= self.max_per_source:
            oldest = next(iter(same))
            self.remove(oldest)
            evicted.append(oldest)
            same = self._by_source.get(source)
        while len(self._all) >= self.max_total:
            oldest = next(iter(self._all))
            self.remove(oldest)
            evicted.append(oldest)
        self._all[key] = source
        self._by_source.setdefault(source, OrderedDict())[key] = None
        return evicted

    def remove(self, key: K) -> None:
        source = self._all.pop(key, _MISSING)
        if source is _MISSING:
            return
        keys = self._by_source[source]
        del keys[key]
        if not keys:
            del self._by_source[source]


_MISSING: Final = object()
