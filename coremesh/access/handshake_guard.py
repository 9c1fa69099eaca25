"""The gate every handshake initiation passes after its mac1 and before its Diffie-Hellman.

A responder's costly step is the initiation's Diffie-Hellman; everything before it must be cheap and
stateless enough that a flood of initiations (copies of a real one, or fresh ones with a valid mac1:
the mac1 key is derived from our public key, so anyone can make them) cannot keep legitimate peers
out. :meth:`HandshakeGuard.admit` decides, in this order, with no Diffie-Hellman:

1. An exact replay (an ephemeral key already admitted; kept in a bounded FIFO) is dropped: a
   legitimate initiator never sends one twice, every retry carries a fresh one.
2. Under load (:attr:`GuardConfig.load_threshold` initiations admitted within
   :attr:`GuardConfig.load_window`; it lasts one window after the threshold was last reached):
   a token bucket per source host (:class:`SourceLimiter`, a bounded table) refuses a source that
   sends too often, then an initiation without a valid mac2 is answered with a cookie reply
   (:mod:`coremesh.access.cookies`) and not processed. A spoofed source never receives the cookie,
   so it never gets past this point; a real one echoes it in its next initiation.
3. Otherwise the initiation is admitted: its ephemeral key is remembered and it counts towards the
   load.

Out of load nothing is rate limited: fewer handshakes than the threshold cost little, and peers
behind one address (a NAT, or every test node on 127.0.0.1) are not held back. Under load the
flood's Diffie-Hellmans are bounded by about ``load_threshold`` per ``load_window`` (the load ends
one window after the flood stopped reaching it), and legitimate initiators pay one round trip.

Sans-IO: time is the ``now`` argument; randomness (the cookie secrets and nonces) is injected.
"""

from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

from ..addr import Address
from ..config import MeshConfig
from ..errors import ConfigError
from ..ratelimit import TokenBucket
from ..secure import wire
from .cookies import CookieIssuer, source_bytes

EPHEMERAL_LEN: Final = 32  # the initiation's Noise message starts with the initiator's ephemeral key


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardConfig:
    """The handshake gate's parameters. ``load_threshold`` 0 asks for a cookie always."""

    load_threshold: int = 256  # admitted initiations per load window before cookies are asked for
    load_window: float = 1.0
    rate_per_source: float = 20.0  # under load, initiations per second per source host
    burst_per_source: float = 20.0
    max_sources: int = 4096  # source hosts with a bucket; the least recently seen is forgotten
    replay_cache_size: int = 16384  # ephemeral keys of admitted initiations remembered

    def __post_init__(self) -> None:
        for name in ("load_threshold", "max_sources", "replay_cache_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (name != "load_threshold"):
                raise ConfigError(
                    f"{name}: expected a whole number >= {int(name != 'load_threshold')}, got {value!r}"
                )
        for name in ("load_window", "rate_per_source", "burst_per_source"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise ConfigError(f"{name}: expected a positive number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An initiation the gate refused: ``reason`` is the drop counter, ``reply`` what to send back."""

    reason: str
    reply: bytes | None = None


REPLAYED: Final = Refusal("drop_replayed_handshake")
RATE_LIMITED: Final = Refusal("drop_handshake_rate_limited")


def host_key(udp: Address | None, source: Hashable) -> Hashable:
    """Whom a rate limit counts: the host of a UDP source (an IPv6 source by its /64, as one
    host's addresses share it), or the whole path address of a relayed or routed source."""
    if udp is None:
        return source
    host = udp.host
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    mapped = ip.ipv4_mapped
    return str(mapped) if mapped is not None else ip.packed[:8]


class SourceLimiter:
    """A token bucket per source, in a table of at most ``max_sources`` (the least recently seen
    source is forgotten first: a new bucket starts full, so forgetting one only ever lets through
    what a source that has been quiet the longest would have had)."""

    __slots__ = ("_buckets", "_burst", "_max", "_rate")

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_sources
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: Hashable, now: float) -> bool:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(self._rate, self._burst, now)
            if len(buckets) > self._max:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return bucket.consume(1.0, now)


class HandshakeGuard:
    """The responder's gate before the Diffie-Hellman (see the module's docstring)."""

    def __init__(self, static_public: bytes, rng: random.Random, config: GuardConfig | None = None) -> None:
        self.config = config = config if config is not None else GuardConfig()
        self.cookies = CookieIssuer(static_public, rng)
        self.limiter = SourceLimiter(config.rate_per_source, config.burst_per_source, config.max_sources)
        self._seen: dict[bytes, None] = {}
        self._recent: deque[float] = deque(maxlen=config.load_threshold)
        self._load_until = float("-inf")

    @classmethod
    def for_config(cls, static_public: bytes, rng: random.Random, config: MeshConfig) -> HandshakeGuard:
        """The gate with a node's settings: ``handshake_load_threshold`` and
        ``handshake_rate_per_source`` (also the burst, at least one)."""
        rate = float(config.handshake_rate_per_source)
        return cls(
            static_public,
            rng,
            GuardConfig(
                load_threshold=config.handshake_load_threshold,
                rate_per_source=rate,
                burst_per_source=max(1.0, rate),
            ),
        )

    @property
    def recent_admissions(self) -> int:
        """Initiations admitted within one load window before the latest one (at most the threshold)."""
        return len(self._recent)

    def under_load(self, now: float) -> bool:
        return self.config.load_threshold == 0 or now < self._load_until

    def admit(
        self, init: wire.HandshakeInit, source: Hashable, udp: Address | None, now: float
    ) -> Refusal | None:
        """None: go on with the Diffie-Hellman (``init``'s mac1 was checked). Else why not, and the
        cookie reply to send back to ``source`` (``udp`` is its UDP address, if it has one)."""
        ephemeral = init.noise[:EPHEMERAL_LEN]
        seen = self._seen
        if ephemeral in seen:
            return REPLAYED
        if self.under_load(now):
            if not self.limiter.allow(host_key(udp, source), now):
                return RATE_LIMITED
            src = source_bytes(source)
            if not self.cookies.check_mac2(init, src, now):
                reason = "drop_bad_mac2" if any(init.mac2) else "drop_handshake_under_load"
                return Refusal(reason, self.cookies.reply(init, src, now))
        seen[ephemeral] = None
        if len(seen) > self.config.replay_cache_size:
            del seen[next(iter(seen))]
        recent = self._recent
        if recent.maxlen:
            window = self.config.load_window
            while recent and now - recent[0] >= window:  # only the window's admissions are kept
                recent.popleft()
            recent.append(now)
            if len(recent) == recent.maxlen:
                self._load_until = now + window
        return None
