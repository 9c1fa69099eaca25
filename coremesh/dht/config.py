"""``DhtConfig``: every tunable of the DHT in one documented, validated place.

Defaults follow the Kademlia paper (k = 20, alpha = 3) and rust-libp2p's kad behaviour, scaled so
that a node's maintenance traffic stays well under 2 KB/s (see docs/dht.md for the figures).
Errors name the field and the accepted range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True, kw_only=True, slots=True)
class DhtConfig:
    """Configuration of a :class:`~coremesh.dht.DhtNode`. Durations are seconds.

    Routing table:
      ``k`` contacts per bucket and results per lookup; ``replacement_cache_size`` verified contacts
      kept per full bucket to replace dead ones; a contact is dead after ``max_failures`` consecutive
      failed requests and only then evicted; ``max_per_prefix`` contacts per IPv4 /``ipv4_prefix``
      (IPv6 /``ipv6_prefix``) per bucket, loopback exempt, so that one host cannot fill a table.
      A peer that answers garbage is removed and not re-added for ``demotion_period``.
    Lookups:
      ``alpha`` requests in flight; ``request_timeout`` per request; ``lookup_timeout`` for a whole
      lookup; ``max_lookups`` concurrent lookups.
    Maintenance (every ``maintenance_interval``, jittered):
      a contact not heard from for ``liveness_interval`` is pinged; a bucket not looked into for
      ``refresh_interval`` is refreshed by a lookup of a random id in it; the own record is stored
      again at the k closest every ``republish_interval`` and renewed to live ``record_ttl``.
    Records:
      at most ``max_records`` stored; records that claim to live longer than ``max_record_ttl`` are
      refused; ``pex_max_records`` records per gossip datagram.
    Abuse limits:
      ``max_replies_per_second`` (burst ``reply_burst``) answered per source IP, tracked for at most
      ``max_rate_sources`` sources (a source silent for a full refill is forgotten at the next
      maintenance round); ``max_pending_requests`` requests in flight; at most
      ``max_verifications`` pings in flight to check the address of unknown requesters, each peer at
      most once per ``verify_backoff``.
    Sealed requests (:mod:`coremesh.dht.secure`):
      a request sent more than ``replay_window`` seconds from our clock (either way) is refused, as
      is one whose ephemeral key was seen; at most ``replay_cache_size`` keys are kept (when full,
      the oldest is forgotten and requests sent before it are refused too).
    Address validation: a reply's address token is valid for ``token_lifetime`` to twice that at the
    node that made it; a requester uses one it holds for ``token_lifetime``, keeping at most
    ``max_tokens`` (one per address it asks).
    """

    k: int = 20
    alpha: int = 3
    replacement_cache_size: int = 8
    max_failures: int = 3
    max_per_prefix: int = 2
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    demotion_period: float = 600.0
    request_timeout: float = 2.0
    lookup_timeout: float = 15.0
    max_lookups: int = 64
    maintenance_interval: float = 15.0
    liveness_interval: float = 600.0
    refresh_interval: float = 1800.0
    republish_interval: float = 1200.0
    record_ttl: float = 3600.0
    max_record_ttl: float = 86400.0
    max_records: int = 4096
    pex_max_records: int = 4
    max_replies_per_second: float = 20.0
    reply_burst: int = 40
    max_rate_sources: int = 4096
    max_pending_requests: int = 1024
    max_verifications: int = 32
    verify_backoff: float = 300.0
    replay_window: float = 900.0
    replay_cache_size: int = 65536
    token_lifetime: float = 600.0
    max_tokens: int = 4096

    def __post_init__(self) -> None:
        _int(self.k, "k", 1, 64)
        _int(self.alpha, "alpha", 1, 16)
        _int(self.replacement_cache_size, "replacement_cache_size", 0, 256)
        _int(self.max_failures, "max_failures", 1, 100)
        _int(self.max_per_prefix, "max_per_prefix", 1, 1024)
        _int(self.ipv4_prefix, "ipv4_prefix", 8, 32)
        _int(self.ipv6_prefix, "ipv6_prefix", 16, 128)
        _int(self.max_lookups, "max_lookups", 1, 100_000)
        _int(self.max_records, "max_records", 1, 10_000_000)
        _int(self.pex_max_records, "pex_max_records", 0, 16)
        _int(self.reply_burst, "reply_burst", 1, 1_000_000)
        _int(self.max_rate_sources, "max_rate_sources", 1, 10_000_000)
        _int(self.max_pending_requests, "max_pending_requests", 1, 1_000_000)
        _int(self.max_verifications, "max_verifications", 0, 1_000_000)
        _int(self.replay_cache_size, "replay_cache_size", 16, 10_000_000)
        _int(self.max_tokens, "max_tokens", 0, 10_000_000)
        for name in (
            "demotion_period",
            "request_timeout",
            "lookup_timeout",
            "maintenance_interval",
            "liveness_interval",
            "refresh_interval",
            "republish_interval",
            "record_ttl",
            "max_record_ttl",
            "verify_backoff",
            "replay_window",
            "token_lifetime",
        ):
            _seconds(getattr(self, name), name)
        _positive(self.max_replies_per_second, "max_replies_per_second")
        if self.lookup_timeout < self.request_timeout:
            raise ConfigError(
                f"lookup_timeout ({self.lookup_timeout}s) must be at least request_timeout "
                f"({self.request_timeout}s)"
            )
        if self.republish_interval >= self.record_ttl:
            raise ConfigError(
                f"republish_interval ({self.republish_interval}s) must be shorter than record_ttl "
                f"({self.record_ttl}s), or the own record expires between republications"
            )
        if self.record_ttl > self.max_record_ttl:
            raise ConfigError(
                f"record_ttl ({self.record_ttl}s) must not exceed max_record_ttl ({self.max_record_ttl}s)"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DhtConfig:
        """Build from a mapping (a config file section); unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown dht config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)


def _int(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"DhtConfig.{name}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"DhtConfig.{name}: expected {low} to {high}, got {value}")


def _seconds(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"DhtConfig.{name}: expected a number of seconds, got {value!r}")
    if not 0.001 <= value <= 10 * 365 * 86400:
        raise ConfigError(f"DhtConfig.{name}: expected 0.001 to 315360000 seconds, got {value}")


def _positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"DhtConfig.{name}: expected a number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"DhtConfig.{name}: expected a number > 0, got {value}")
