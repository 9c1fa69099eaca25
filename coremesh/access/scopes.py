"""Resource scopes, after libp2p's resource manager: how much of the node each peer, each source
host and the whole node may hold (docs/access.md, "Resource limits"), sans-IO.

:class:`ResourceLimits` is the one place that says *how much, for whom*; the existing mechanisms
consult it rather than keeping their own numbers:

======================  ======================  ===============================================
scope                   resource                enforced by
======================  ======================  ===============================================
system                  connections             ``max_connections``: a new inbound handshake is
                                                refused when full, our own dial raises; no
                                                connection is ever evicted to make room
system                  unconfirmed handshakes  ``max_unconfirmed`` (half of max_connections)
per source host         connections             ``max_connections_per_host`` (inbound ones)
per source host         unconfirmed handshakes  ``max_unconfirmed_per_host``
per peer                send buffer             ``send_buffer_size``: ``try_send`` False, ``send``
                                                raises :class:`SendBufferFull`
per peer                receive buffer          ``receive_window`` (flow control: a peer that
                                                sends past it is a protocol violation)
per connection          unread messages         ``max_queued_messages``: past it the connection
                                                is closed
per neighbour, source   forwarded bytes/second  ``forward_rate_per_peer`` (token buckets)
======================  ======================  ===============================================

:class:`ResourceScopes` keeps the counts that change: which connection holds which reservation
(unconfirmed or confirmed, from which host), and the forwarding buckets. A refusal is a reason
string, the endpoint's drop counter. A source host is an IPv4 address or an IPv6 /64
(:func:`~coremesh.access.handshake_guard.host_key`); a relayed or routed source is its path address.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..errors import ConfigError, LocalProtocolError
from ..ratelimit import TokenBucket

if TYPE_CHECKING:
    from ..config import MeshConfig

# Refusal reasons (the endpoint's counters; drop_* reach /metrics as drops by reason).
UNCONFIRMED_FULL: Final = "drop_unconfirmed_full"
UNCONFIRMED_PER_HOST: Final = "drop_unconfirmed_per_host"
CONNECTIONS_PER_HOST: Final = "drop_connections_per_host"
FORWARD_RATE_LIMITED: Final = "drop_forward_rate_limited"

MAX_FORWARD_KEYS: Final = 4096  # neighbours and sources with a forwarding bucket (least recent forgotten)


class SendBufferFull(LocalProtocolError):
    """``send`` on a connection whose send buffer is at its cap (the peer does not read, or the
    path is slower than the sender): wait for ``SendReady`` (``Connection.send`` does) or drop."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceLimits:
    """Every limit of the node's resource scopes (see the module's table). Whole numbers >= 1."""

    max_connections: int = 256
    max_unconfirmed: int = 128
    max_connections_per_host: int = 64
    max_unconfirmed_per_host: int = 8
    send_buffer_size: int = 4 * 1024 * 1024
    receive_window: int = 4 * 1024 * 1024
    max_queued_messages: int = 65536
    forward_rate_per_peer: int = 16 * 1024 * 1024  # bytes per second, also the burst

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: expected a whole number >= 1, got {value!r}")

    @classmethod
    def from_config(cls, config: MeshConfig) -> ResourceLimits:
        """A node's limits: its settings, and the unconfirmed quota derived from max_connections
        (half of it, at least 2: throwaway identities can never hold every slot)."""
        return cls(
            max_connections=config.max_connections,
            max_unconfirmed=max(2, config.max_connections // 2),
            max_connections_per_host=config.max_connections_per_host,
            max_unconfirmed_per_host=config.max_unconfirmed_per_host,
            send_buffer_size=config.send_buffer_size,
            receive_window=config.receive_window,
            max_queued_messages=config.max_queued_messages,
            forward_rate_per_peer=config.forward_rate_per_peer,
        )


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What the scopes hold now (a snapshot for stats)."""

    unconfirmed: int
    inbound: int  # inbound connections counted against their hosts (unconfirmed included)
    hosts: int  # source hosts holding any


class ResourceScopes:
    """The counts behind :class:`ResourceLimits`: reservations by owner (a connection) and host,
    and the forwarding buckets. Sans-IO: ``now`` is an argument."""

    __slots__ = ("_conns", "_forward", "_host_of", "_unconfirmed", "_unconfirmed_by_host", "limits")

    def __init__(self, limits: ResourceLimits) -> None:
        self.limits = limits
        self._host_of: dict[Hashable, Hashable] = {}  # owner -> its source host (inbound only)
        self._unconfirmed: dict[Hashable, Hashable] = {}  # owner -> host, while unconfirmed
        self._conns: Counter[Hashable] = Counter()  # host -> inbound connections (unconfirmed too)
        self._unconfirmed_by_host: Counter[Hashable] = Counter()
        self._forward: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    # -- handshakes and connections ---------------------------------------------------------------

    def refusal_for_unconfirmed(self, host: Hashable) -> str | None:
        """Whether a new unconfirmed responder session from ``host`` fits: None, or the reason
        it does not (the node's quota, the host's quota, or the host's connections)."""
        limits = self.limits
        if len(self._unconfirmed) >= limits.max_unconfirmed:
            return UNCONFIRMED_FULL
        if self._unconfirmed_by_host[host] >= limits.max_unconfirmed_per_host:
            return UNCONFIRMED_PER_HOST
        if self._conns[host] >= limits.max_connections_per_host:
            return CONNECTIONS_PER_HOST
        return None

    def reserve_unconfirmed(self, owner: Hashable, host: Hashable) -> str | None:
        """Reserve an unconfirmed session for ``owner`` from ``host``; None if done, else why not."""
        refusal = self.refusal_for_unconfirmed(host)
        if refusal is None:
            self.release(owner)
            self._host_of[owner] = host
            self._unconfirmed[owner] = host
            self._conns[host] += 1
            self._unconfirmed_by_host[host] += 1
        return refusal

    def confirm(self, owner: Hashable) -> None:
        """``owner``'s peer confirmed the session: it stops counting as unconfirmed (its host
        still counts it as a connection)."""
        host = self._unconfirmed.pop(owner, None)
        if host is not None:
            self._decrement(self._unconfirmed_by_host, host)

    def release(self, owner: Hashable) -> None:
        """``owner`` ended: everything it held is free again. Releasing twice does nothing."""
        self.confirm(owner)
        host = self._host_of.pop(owner, None)
        if host is not None:
            self._decrement(self._conns, host)

    @staticmethod
    def _decrement(counts: Counter[Hashable], key: Hashable) -> None:
        left = counts[key] - 1
        if left > 0:
            counts[key] = left
        else:
            del counts[key]

    @property
    def unconfirmed(self) -> int:
        return len(self._unconfirmed)

    def host_connections(self, host: Hashable) -> int:
        return self._conns[host]

    def host_unconfirmed(self, host: Hashable) -> int:
        return self._unconfirmed_by_host[host]

    def usage(self) -> ResourceUsage:
        return ResourceUsage(len(self._unconfirmed), len(self._host_of), len(self._conns))

    # -- send and receive buffers ---------------------------------------------------------------

    def send_allowed(self, buffered: int) -> bool:
        """Whether one more message may be queued on a send buffer holding ``buffered`` bytes (the
        buffer then exceeds the cap by at most that message)."""
        return buffered < self.limits.send_buffer_size

    # -- forwarding -----------------------------------------------------------------------------

    def admit_forward(self, neighbour: Hashable, source: Hashable, nbytes: int, now: float) -> str | None:
        """Whether to forward ``nbytes`` that came from ``neighbour`` on behalf of ``source``: both
        have ``forward_rate_per_peer`` bytes a second (and as much burst). None, or the reason."""
        first = self._bucket(("neighbour", neighbour), now)
        second = self._bucket(("source", source), now)
        if first.tokens(now) < nbytes or second.tokens(now) < nbytes:
            return FORWARD_RATE_LIMITED
        first.consume(nbytes, now)
        second.consume(nbytes, now)
        return None

    def _bucket(self, key: Hashable, now: float) -> TokenBucket:
        buckets = self._forward
        bucket = buckets.get(key)
        if bucket is None:
            rate = float(self.limits.forward_rate_per_peer)
            bucket = buckets[key] = TokenBucket(rate, rate, now)
            if len(buckets) > MAX_FORWARD_KEYS:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return bucket
