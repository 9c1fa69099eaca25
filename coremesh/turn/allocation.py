"""The state of one TURN allocation (RFC 8656 §2.2): relayed addresses, lifetime, permissions,
channel bindings and a bandwidth token bucket. Plain data with pure methods; ``now`` is an input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

from ..addr import Address
from ..ratelimit import TokenBucket

Transport = Literal["udp", "tcp", "tls"]

PERMISSION_LIFETIME: Final = 300.0
CHANNEL_LIFETIME: Final = 600.0
# After a binding expires, neither its number nor its peer may be bound to anything else for 5 min.
CHANNEL_QUARANTINE: Final = 300.0
CHANNEL_MIN: Final = 0x4000
CHANNEL_MAX: Final = 0x4FFF
# Caps on what one allocation may hold and one request may carry (the server can override them).
MAX_PERMISSIONS: Final = 256
MAX_PEERS_PER_REQUEST: Final = 16


def bandwidth_bucket(max_bps: int, now: float) -> TokenBucket | None:
    """The bucket of a new allocation: ``max_bps`` bytes per second, a burst of one second (at least
    one largest datagram); None for ``max_bps`` 0, unlimited."""
    return TokenBucket(max_bps, max(max_bps, 65535), now) if max_bps > 0 else None


class FiveTuple(NamedTuple):
    """What an allocation is keyed by: the client's address, the server's address, the transport."""

    client: Address
    local: Address
    transport: Transport

    def __str__(self) -> str:
        return f"{self.transport}:{self.client}->{self.local}"


@dataclass(slots=True)
class Channel:
    number: int
    peer: Address
    expires: float

    def live(self, now: float) -> bool:
        return now < self.expires


@dataclass(slots=True)
class Allocation:
    """One allocation. ``relays`` maps IP version (4/6) to the relayed transport address."""

    key: FiveTuple
    username: str
    realm: str
    hmac_key: bytes
    relays: dict[int, Address]
    expires: float
    bucket: TokenBucket | None  # bytes per second, both directions together; None: unlimited
    transaction_id: bytes = b""
    confirmed: bool = False
    pending: set[Address] = field(default_factory=set)
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    channel_by_peer: dict[Address, Channel] = field(default_factory=dict)
    success: bytes = b""  # the encoded Allocate success response, resent on a retransmitted request
    timer_seq: int = 0  # sequence number of this allocation's live expiry-heap entry (0: none)
    timer_at: float = 0.0  # the time of that entry; never later than ``expires``

    def within_bandwidth(self, size: int, now: float) -> bool:
        """Take ``size`` bytes from the bandwidth bucket; False (and nothing taken) when over."""
        return self.bucket is None or self.bucket.consume(size, now)

    def has_permission(self, host: str, now: float) -> bool:
        expiry = self.permissions.get(host)
        return expiry is not None and now < expiry

    def install_permission(self, host: str, now: float) -> None:
        self.permissions[host] = now + PERMISSION_LIFETIME

    def room_for_permissions(self, hosts: set[str], now: float, cap: int) -> bool:
        """Whether installing or refreshing permissions for ``hosts`` keeps at most ``cap`` live
        permissions. Expired ones are forgotten first; refreshing a live one needs no room."""
        new = {h for h in hosts if not self.has_permission(h, now)}
        if not new:
            return True
        if len(self.permissions) + len(new) <= cap:
            return True
        for host in [h for h, t in self.permissions.items() if t <= now]:
            del self.permissions[host]
        return len(self.permissions) + len(new) <= cap

    def live_channel(self, number: int, now: float) -> Channel | None:
        ch = self.channels.get(number)
        return ch if ch is not None and ch.live(now) else None

    def live_channel_for(self, peer: Address, now: float) -> Channel | None:
        ch = self.channel_by_peer.get(peer)
        return ch if ch is not None and ch.live(now) else None

    def bind_channel(self, number: int, peer: Address, now: float) -> str | None:
        """Bind or refresh; returns ``None`` or why the binding conflicts with an existing one."""
        by_number = self.channels.get(number)
        by_peer = self.channel_by_peer.get(peer)
        if by_number is not None and by_number.peer != peer:
            return "channel number bound to another peer"
        if by_peer is not None and by_peer.number != number:
            return "peer bound to another channel"
        if by_number is not None:
            by_number.expires = now + CHANNEL_LIFETIME
        else:
            ch = Channel(number, peer, now + CHANNEL_LIFETIME)
            self.channels[number] = ch
            self.channel_by_peer[peer] = ch
        self.install_permission(peer.host, now)
        return None

    def expire(self, now: float) -> None:
        """Forget expired permissions and channels past their quarantine."""
        for host in [h for h, t in self.permissions.items() if t <= now]:
            del self.permissions[host]
        for number in [n for n, c in self.channels.items() if c.expires + CHANNEL_QUARANTINE <= now]:
            ch = self.channels.pop(number)
            self.channel_by_peer.pop(ch.peer, None)

    def next_deadline(self) -> float:
        times = [self.expires, *self.permissions.values()]
        times.extend(c.expires + CHANNEL_QUARANTINE for c in self.channels.values())
        return min(times)
