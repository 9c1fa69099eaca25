"""Mesh-wide broadcast and multicast groups over the routing tree (sans-IO).

Why a tree and not gossip. The routing table already holds, for every origin S, which neighbours
route to S through us (``RouteView.children(S)``: the path vectors tell us each neighbour's chosen
path). The union of those choices is a shortest-path tree rooted at S, so a broadcast from S is sent
by reverse-path forwarding: each node passes it to its children for S only. On a consistent tree the
payload crosses each node exactly once (N-1 copies for N nodes, zero duplicates), where gossipsub
pays about three extra copies per node at degree 8 and a plain flood pays degree-1 per node.
Plumtree would reach the same tree only after a warm-up of pruned duplicates; the path vectors give
it for free. Tables converge, though, so the tree is not trusted blindly: a neighbour that has not
told us its choice for S (``not knows_route_of(n, S)``: a link just up, an update still in flight)
is sent the message anyway. That flood fallback keeps delivery complete while the tree forms, and
its cost shows as duplicates. No message goes back where it came from, nor to its origin.

Exactly once. Every message is signed by its origin (a domain-separated signature, verified before
delivery or forwarding) and numbered ``seqno = max(previous + 1, wall_ms)``, which grows across
restarts without storage and dates the message. A seen cache keyed (kind, origin, seqno) admits each
message once: every copy after the first is counted (``broadcast_duplicates`` /
``multicast_duplicates``: copies received minus messages admitted, the redundancy figure) and is
neither verified again nor delivered; a broadcast copy goes no further, a multicast copy only
towards members not yet served (below). The cache is bounded in age and in count: a message older
than ``max_age`` (by its seqno against our wall clock) or further ahead than ``max_future`` is
refused (``drop_too_old`` / ``drop_too_new``), so a replay is either in the cache or refused; when
the count bound forces an entry out, its seqno becomes a floor below which new arrivals from the same
origin are refused as too old, so an eviction never lets a replay through. Floors and quotas are per
origin: an origin holds at most ``max_seen_per_origin`` entries (its own lowest leave first), and when
the whole cache is full the origin holding the most gives one up; so an origin that dates its messages
up to ``max_future`` ahead moves its own floor only, never another origin's (one global floor would let
it block every broadcast of the mesh).

Rate limits. BROADCAST and MULTICAST packets (``message_rate``) and membership records
(``record_rate``) from each neighbour pass a token bucket before any signature check; the excess is
dropped and counted (``drop_rate_limited``). The bursts are sized from what an honest neighbour sends
at once: its whole outbox of flood packets, or two full membership syncs (``link_up``).

Multicast. Each member floods a signed membership record (member, seqno, its full sorted group set)
like a broadcast; leaving is a newer record without the group; records expire after ``record_ttl``
and members refresh them before. When the store (``max_records``) is full, a new member's record
evicts the least recently stored record of a member the routes do not reach (records of throwaway
keys look like that: counted ``records_evicted``); it is refused (``drop_records_full``) only when
every member held is routable. A neighbour whose link comes up is sent every record we hold. A
MULTICAST from S to group G follows the routes towards its members: S sends one copy to each
distinct next hop (``RouteView.next_hop``) of the members of G, and each copy names, in a 32-byte
Bloom filter outside the signature, the members it is for; a hop passes it on towards the members
the filter names, again one copy per next hop with its own filter. So the message travels the union
of the routes from S to the members and nothing else (measured on the grids of the tests: exactly
that many copies, none duplicated); a false positive of the filter only sends a copy further than
needed. Where the routes towards two members meet again, the second copy is a counted duplicate
that is passed on only towards the members its filter adds. A node delivers the message only if it
is a member itself: a non-member on the path forwards without delivering. The origin delivers
neither its broadcasts nor its multicasts to itself.

Memory is bounded: groups per member, members per group, records, seen entries, deliveries waiting
and packets waiting are all capped (:class:`FloodConfig`); what does not fit is dropped and counted.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..errors import ConfigError, DecodeError, LocalProtocolError, MessageTooLarge
from ..identity import PeerId, verify_signature
from ..ratelimit import TokenBucket
from .flood_messages import (
    BROADCAST_OVERHEAD,
    MEMBERSHIP_HEADER_LEN,
    Broadcast,
    InvalidGroup,
    MembershipRecord,
    Multicast,
    broadcast_signed_bytes,
    decode_broadcast,
    decode_membership,
    decode_multicast,
    encode_membership,
    group_bytes,
    in_target_filter,
    membership_signed_bytes,
    multicast_overhead,
    multicast_signed_bytes,
    record_size,
    sorted_groups,
    target_filter,
)
from .overlay import OVERLAY_PREFIX, OverlayType, overlay_packet


def _digest(msg: Multicast) -> bytes:
    return hashlib.blake2b(msg.signature + msg.signed_bytes(), digest_size=16).digest()


__all__ = [
    "Delivery",
    "Flood",
    "FloodConfig",
    "InvalidGroup",
    "RouteView",
    "TooManyGroups",
]

_OVERLAY_HEADER = len(OVERLAY_PREFIX) + 1
_KIND_BROADCAST = 0
_KIND_MULTICAST = 1


class TooManyGroups(LocalProtocolError, ValueError):
    """``join`` would exceed the groups a member may have (or its record would not fit a packet)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    kind: str  # "broadcast" or "multicast"
    origin: PeerId
    group: str | None
    data: bytes


class RouteView(Protocol):
    """What flooding needs of the routing table (``coremesh.routing.table.RoutingTable`` has it)."""

    def neighbours(self) -> list[PeerId]: ...
    def next_hop(self, destination: PeerId) -> PeerId | None: ...
    def children(self, origin: PeerId) -> set[PeerId]: ...
    def knows_route_of(self, neighbour: PeerId, origin: PeerId) -> bool: ...


@dataclass(frozen=True, slots=True)
class FloodConfig:
    """Bounds and times of :class:`Flood` (seconds, counts)."""

    max_groups_per_member: int = 16  # groups a member may join (records with more are dropped)
    max_members_per_group: int = 1024  # members kept per group (beyond: dropped, counted)
    max_records: int = 10000  # membership records kept (other members)
    max_seen: int = 16384  # seen-cache entries (broadcast and multicast)
    max_seen_per_origin: int = 1024  # ... of which one origin may hold (its oldest leave first)
    max_floors: int = 16384  # origins whose eviction floor is remembered (least recently evicted go)
    max_age: float = 60.0  # a message whose seqno is older than this is refused
    max_future: float = 60.0  # ... or one further ahead of our wall clock (clock skew allowed)
    record_ttl: float = 3600.0  # a membership record not refreshed for this long is forgotten
    record_refresh: float = 1200.0  # members re-sign their record this often
    max_deliveries: int = 1024  # deliveries waiting for next_delivery()
    max_outbox: int = 4096  # broadcast/multicast packets waiting for messages_to_send()
    prune_interval: float = 10.0  # how often expired entries are swept
    # Per neighbour, before any signature check (excess dropped, ``drop_rate_limited``):
    message_rate: float = 1000.0  # BROADCAST and MULTICAST packets per second
    message_burst: float | None = None  # ... banked; None: max_outbox (what one node sends at once)
    record_rate: float = 200.0  # membership records per second
    record_burst: float | None = None  # ... banked; None: two full syncs (2 * (max_records + 1))

    def __post_init__(self) -> None:
        for name in (
            "max_groups_per_member",
            "max_members_per_group",
            "max_records",
            "max_seen",
            "max_seen_per_origin",
            "max_floors",
            "max_deliveries",
            "max_outbox",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"FloodConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("max_age", "max_future", "record_ttl", "record_refresh", "prune_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
                raise ConfigError(f"FloodConfig.{name} must be a number of seconds > 0, got {value!r}")
        for name in ("message_rate", "message_burst", "record_rate", "record_burst"):
            value = getattr(self, name)
            if value is None and name.endswith("burst"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e12:
                raise ConfigError(f"FloodConfig.{name} must be a positive number, got {value!r}")
        if self.record_refresh >= self.record_ttl:
            raise ConfigError("FloodConfig.record_refresh must be shorter than record_ttl")


class _Seen:
    """What we keep of an admitted multicast: a digest of what its signature covers, and the
    members we have sent it towards (or found no way to)."""

    __slots__ = ("digest", "served")

    def __init__(self, digest: bytes, served: set[PeerId]) -> None:
        self.digest = digest
        self.served = served


_SeenKey = tuple[int, bytes, int]  # kind, origin key, seqno


class _SeenCache:
    """Keys (kind, origin, seqno) of admitted messages, bounded by age and count, per origin.

    Each origin holds at most ``per_origin`` entries; when the whole cache is over ``max_entries``,
    the origin holding the most entries gives one up. Either way an origin loses its own lowest
    seqno, and that seqno raises the origin's floor (``floor(origin)``): its unseen messages at or
    below it are refused, so that no evicted message can be admitted twice. A floor is the origin's
    own: an origin dating its messages in the future moves nobody's floor but its own. Floors are
    kept for the ``max_floors`` origins most recently evicted from (the oldest forgotten first) and
    dropped once below the age window, where the age check refuses replays by itself.
    """

    def __init__(self, max_entries: int, per_origin: int, max_floors: int) -> None:
        self._max = max_entries
        self._per_origin = per_origin
        self._max_floors = max_floors
        self._entries: dict[_SeenKey, _Seen | None] = {}
        self._origins: dict[bytes, list[tuple[int, int]]] = {}  # origin: heap of (seqno, kind)
        self._by_count: dict[int, dict[bytes, None]] = {}  # entries held: origins holding that many
        self._most = 0  # the most entries an origin holds
        self._heap: list[tuple[int, int, bytes]] = []  # every entry by seqno (lazy: may hold gone ones)
        self._floors: collections.OrderedDict[bytes, int] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: _SeenKey) -> bool:
        return key in self._entries

    def get(self, key: _SeenKey) -> _Seen | None:
        return self._entries.get(key)

    def floor(self, origin: bytes) -> int:
        return self._floors.get(origin, -1)

    def add(self, key: _SeenKey, entry: _Seen | None = None) -> None:
        kind, origin, seqno = key
        if key in self._entries:
            self._entries[key] = entry
            return
        self._entries[key] = entry
        heap = self._origins.setdefault(origin, [])
        self._recount(origin, len(heap), len(heap) + 1)
        heapq.heappush(heap, (seqno, kind))
        heapq.heappush(self._heap, (seqno, kind, origin))
        if len(heap) > self._per_origin:
            self._evict(origin)
        while len(self._entries) > self._max:
            self._evict(next(iter(self._by_count[self._most])))
        if len(self._heap) > 2 * self._max + 64:  # drop the gone entries the lazy heap still holds
            self._heap = [(q, k, o) for (q, k, o) in self._heap if (k, o, q) in self._entries]
            heapq.heapify(self._heap)

    def expire(self, below: int) -> None:
        """Forget the entries (and floors) with seqnos below ``below``: the age check refuses them."""
        while self._heap and self._heap[0][0] < below:
            _, _, origin = heapq.heappop(self._heap)
            heap = self._origins.get(origin)
            while heap and heap[0][0] < below:
                self._remove_lowest(origin)
        for origin, floor in list(self._floors.items()):
            if floor < below:
                del self._floors[origin]

    def _evict(self, origin: bytes) -> None:
        seqno = self._remove_lowest(origin)
        self._floors[origin] = max(self._floors.pop(origin, -1), seqno)
        if len(self._floors) > self._max_floors:
            self._floors.popitem(last=False)

    def _remove_lowest(self, origin: bytes) -> int:
        heap = self._origins[origin]
        seqno, kind = heapq.heappop(heap)
        del self._entries[(kind, origin, seqno)]
        self._recount(origin, len(heap) + 1, len(heap))
        if not heap:
            del self._origins[origin]
        return seqno

    def _recount(self, origin: bytes, old: int, new: int) -> None:
        if old:
            holders = self._by_count[old]
            del holders[origin]
            if not holders:
                del self._by_count[old]
        if new:
            self._by_count.setdefault(new, {})[origin] = None
        if new > self._most:
            self._most = new
        while self._most and self._most not in self._by_count:
            self._most -= 1


class Flood:
    """Broadcast and multicast for one node. Fed ``receive``/``link_up``/``handle_timer``; drained
    with ``messages_to_send`` (full overlay plaintexts per neighbour) and ``next_delivery``."""

    def __init__(
        self,
        peer_id: PeerId,
        sign: Callable[[bytes], bytes],
        routes: RouteView,
        *,
        verify: Callable[[PeerId, bytes, bytes], bool] = verify_signature,
        max_packet: int = 1100,
        now: float,
        wall_offset: float = 0.0,
        config: FloodConfig | None = None,
    ) -> None:
        self.config = config if config is not None else FloodConfig()
        if isinstance(max_packet, bool) or not isinstance(max_packet, int) or max_packet < 256:
            raise ConfigError(f"max_packet must be an integer >= 256, got {max_packet!r}")
        self.peer_id = peer_id
        self._sign = sign
        self._verify = verify
        self._routes = routes
        self._max_packet = max_packet
        self._wall_offset = wall_offset
        self._seqno = 0
        cfg = self.config
        self._seen = _SeenCache(cfg.max_seen, cfg.max_seen_per_origin, cfg.max_floors)
        self._message_burst = float(cfg.message_burst if cfg.message_burst is not None else cfg.max_outbox)
        self._record_burst = float(
            cfg.record_burst if cfg.record_burst is not None else 2 * (cfg.max_records + 1)
        )
        self._buckets: dict[tuple[bool, PeerId], TokenBucket] = {}  # (records?, neighbour)
        self._joined: set[str] = set()
        self._own: MembershipRecord | None = None
        self._own_at = now
        self._records: dict[PeerId, MembershipRecord] = {}  # least recently stored first
        self._records_full_until = now  # every member held was routable: refuse until then
        self._index: dict[str, set[PeerId]] = {}
        self._outbox: list[tuple[PeerId, bytes]] = []
        self._pending: dict[PeerId, dict[PeerId, MembershipRecord]] = {}
        self._deliveries: collections.deque[Delivery] = collections.deque()
        self._last_prune = now
        self.counters: collections.Counter[str] = collections.Counter()

    # -- the local program ------------------------------------------------------------------------

    @property
    def max_broadcast(self) -> int:
        """The largest broadcast data that fits one packet."""
        return self._max_packet - _OVERLAY_HEADER - BROADCAST_OVERHEAD

    def max_multicast(self, group: str) -> int:
        """The largest multicast data to ``group`` that fits one packet."""
        return self._max_packet - _OVERLAY_HEADER - multicast_overhead(group)

    def broadcast(self, data: bytes, now: float) -> int:
        """Send ``data`` to every node of the mesh; returns the number of neighbours it went to."""
        data = bytes(data)
        if len(data) > self.max_broadcast:
            raise MessageTooLarge(f"broadcast data is {len(data)} bytes, max {self.max_broadcast}")
        self._maybe_prune(now)
        seqno = self._next_seqno(now)
        sig = self._sign(broadcast_signed_bytes(self.peer_id, seqno, data))
        msg = Broadcast(self.peer_id, seqno, data, sig)
        self._seen.add((_KIND_BROADCAST, self.peer_id.key, seqno))
        self.counters["broadcasts_sent"] += 1
        return self._send(self._tree_targets(self.peer_id, None), OverlayType.BROADCAST, msg.encode(), None)

    def multicast(self, group: str, data: bytes, now: float) -> int:
        """Send ``data`` to the members of ``group`` (we need not be one); returns the number of
        neighbours it went to (0 when no other member is known or reachable)."""
        data = bytes(data)
        limit = self.max_multicast(group)  # validates the name
        if len(data) > limit:
            raise MessageTooLarge(f"multicast data is {len(data)} bytes, max {limit} for group {group!r}")
        self._maybe_prune(now)
        seqno = self._next_seqno(now)
        sig = self._sign(multicast_signed_bytes(self.peer_id, seqno, group, data))
        msg = Multicast(self.peer_id, seqno, group, data, sig)
        served: set[PeerId] = set()
        self._seen.add((_KIND_MULTICAST, self.peer_id.key, seqno), _Seen(_digest(msg), served))
        self.counters["multicasts_sent"] += 1
        return self._forward_multicast(msg, None, served, None)

    def join(self, group: str, now: float) -> None:
        """Become a member of ``group`` (InvalidGroup / TooManyGroups, both ValueErrors, if not
        allowed); announces a new membership record. Joining a group twice does nothing."""
        group_bytes(group)
        if group in self._joined:
            return
        wanted = sorted_groups(self._joined | {group})
        if len(wanted) > self.config.max_groups_per_member:
            raise TooManyGroups(f"a member has at most {self.config.max_groups_per_member} groups")
        size = _OVERLAY_HEADER + MEMBERSHIP_HEADER_LEN + record_size(wanted)
        if size > self._max_packet:
            raise TooManyGroups(
                f"the membership record with {group!r} would be {size} bytes, over the packet limit "
                f"({self._max_packet}): leave a group or use shorter names"
            )
        self._joined.add(group)
        self._publish(now)

    def leave(self, group: str, now: float) -> None:
        """Stop being a member of ``group``: announces a record without it. Not a member: nothing."""
        group_bytes(group)
        if group not in self._joined:
            return
        self._joined.discard(group)
        self._publish(now)

    def groups(self) -> list[str]:
        """The groups we are a member of."""
        return list(sorted_groups(self._joined))

    def members(self, group: str) -> list[PeerId]:
        """The known members of ``group`` (ourselves included when we are one), sorted by key."""
        group_bytes(group)
        found = set(self._index.get(group, ()))
        if group in self._joined:
            found.add(self.peer_id)
        return sorted(found, key=lambda p: p.key)

    def next_delivery(self) -> Delivery | None:
        return self._deliveries.popleft() if self._deliveries else None

    # -- the endpoint -----------------------------------------------------------------------------

    def link_up(self, neighbour: PeerId, now: float) -> None:
        """A neighbour's link came up: it gets every membership record we hold (its own too: a
        restarted node learns what its earlier incarnation announced, and supersedes it)."""
        self._maybe_prune(now)
        queue = self._pending.setdefault(neighbour, {})
        queue.update(self._records)

    def receive(self, neighbour: PeerId, kind: int, body: bytes, now: float) -> None:
        """An overlay message of ``kind`` (OverlayType) from ``neighbour``; ``body`` follows the type
        byte. Bad input is dropped and counted, never raised."""
        self._maybe_prune(now)
        try:
            if kind == OverlayType.BROADCAST:
                msg = decode_broadcast(body)
                if self._take(neighbour, False, 1, now):
                    self._on_broadcast(neighbour, msg, now)
            elif kind == OverlayType.MULTICAST:
                mmsg = decode_multicast(body)
                if self._take(neighbour, False, 1, now):
                    self._on_multicast(neighbour, mmsg, now)
            elif kind == OverlayType.MEMBERSHIP:
                records = decode_membership(body)
                if self._take(neighbour, True, len(records), now):
                    for record in records:
                        self._on_record(neighbour, record, now)
            else:
                self.counters["drop_unknown_kind"] += 1
        except DecodeError:
            self.counters["drop_malformed"] += 1

    def messages_to_send(self, now: float) -> list[tuple[PeerId, bytes]]:
        """Overlay plaintexts (prefix and type byte included) to seal to each neighbour."""
        out, self._outbox = self._outbox, []
        pending, self._pending = self._pending, {}
        limit = self._max_packet - _OVERLAY_HEADER - MEMBERSHIP_HEADER_LEN
        for neighbour, records in pending.items():
            batch: list[MembershipRecord] = []
            size = 0
            for record in records.values():
                n = len(record.encode())
                if batch and (size + n > limit or len(batch) == 255):
                    out.append((neighbour, overlay_packet(OverlayType.MEMBERSHIP, encode_membership(batch))))
                    batch, size = [], 0
                batch.append(record)
                size += n
            if batch:
                out.append((neighbour, overlay_packet(OverlayType.MEMBERSHIP, encode_membership(batch))))
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run: our record's refresh, the next sweep."""
        times = []
        if self._joined:
            times.append(self._own_at + self.config.record_refresh)
        if len(self._seen) or len(self._records) > (1 if self._own is not None else 0):
            times.append(self._last_prune + self.config.prune_interval)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._maybe_prune(now)
        if self._joined and now >= self._own_at + self.config.record_refresh:
            self._publish(now)

    # -- internals --------------------------------------------------------------------------------

    def _wall_ms(self, now: float) -> int:
        return int((now + self._wall_offset) * 1000)

    def _next_seqno(self, now: float) -> int:
        self._seqno = max(self._seqno + 1, self._wall_ms(now))
        return self._seqno

    def _take(self, neighbour: PeerId, records: bool, amount: int, now: float) -> bool:
        """Charge ``neighbour``'s bucket (messages, or membership records) before any signature
        check; an empty bucket drops the whole packet (counted ``drop_rate_limited``)."""
        bucket = self._buckets.get((records, neighbour))
        if bucket is None:
            cfg = self.config
            rate, burst = (
                (cfg.record_rate, self._record_burst) if records else (cfg.message_rate, self._message_burst)
            )
            bucket = self._buckets[(records, neighbour)] = TokenBucket(rate, burst, now)
        if bucket.consume(amount, now):
            return True
        self.counters["drop_rate_limited"] += 1
        return False

    def _maybe_prune(self, now: float) -> None:
        if now < self._last_prune + self.config.prune_interval:
            return
        self._last_prune = now
        for key, bucket in list(self._buckets.items()):
            if bucket.idle_full(now):  # full again: forgetting it changes no decision
                del self._buckets[key]
        wall = self._wall_ms(now)
        self._seen.expire(wall - int(self.config.max_age * 1000))
        cutoff = wall - int(self.config.record_ttl * 1000)
        for member, record in list(self._records.items()):
            if member != self.peer_id and record.seqno < cutoff:
                self._set_record(member, None)

    def _publish(self, now: float) -> None:
        """Sign and flood our record with our current group set."""
        seqno = self._next_seqno(now)
        groups = sorted_groups(self._joined)
        sig = self._sign(membership_signed_bytes(self.peer_id, seqno, groups))
        record = MembershipRecord(self.peer_id, seqno, groups, sig)
        self._own, self._own_at = record, now
        self._set_record(self.peer_id, record)
        self.counters["memberships_sent"] += 1
        for n in self._tree_targets(self.peer_id, None):
            self._pending.setdefault(n, {})[self.peer_id] = record

    def _tree_targets(self, origin: PeerId, came_from: PeerId | None) -> list[PeerId]:
        """Reverse-path forwarding: our children for ``origin``, plus every neighbour whose choice for
        it we do not know; never the neighbour it came from, nor the origin itself."""
        children = self._routes.children(origin)
        return [
            n
            for n in self._routes.neighbours()
            if n != came_from
            and n != origin
            and (n in children or not self._routes.knows_route_of(n, origin))
        ]

    def _forward_multicast(
        self, msg: Multicast, came_from: PeerId | None, served: set[PeerId], counter: str | None
    ) -> int:
        """Send ``msg`` on towards the members its target filter names (every member, at the origin)
        that are not in ``served`` yet, one copy per next hop, each copy's filter naming the members
        it is for. Never back where it came from, nor to the origin. Returns the copies sent."""
        neighbours = set(self._routes.neighbours())
        by_hop: dict[PeerId, list[PeerId]] = {}
        for member in sorted(self._index.get(msg.group, ()), key=lambda p: p.key):
            if member in (self.peer_id, msg.origin) or member in served:
                continue
            if not in_target_filter(msg.targets, member, msg.seqno):
                continue  # this copy is not for that member: another path serves it
            served.add(member)
            hop = self._routes.next_hop(member)
            if hop is None or hop in (came_from, msg.origin) or hop not in neighbours:
                self.counters["multicast_unroutable"] += 1
                continue
            by_hop.setdefault(hop, []).append(member)
        sent = 0
        for hop, members in by_hop.items():
            copy = dataclasses.replace(msg, targets=target_filter(members, msg.seqno))
            sent += self._send([hop], OverlayType.MULTICAST, copy.encode(), counter)
        return sent

    def _send(self, targets: Iterable[PeerId], kind: OverlayType, body: bytes, counter: str | None) -> int:
        packet = overlay_packet(kind, body)
        sent = 0
        for n in targets:
            if len(self._outbox) >= self.config.max_outbox:
                self.counters["drop_outbox_full"] += 1
                continue
            self._outbox.append((n, packet))
            sent += 1
        if counter is not None:
            self.counters[counter] += sent
        return sent

    def _deliver(self, delivery: Delivery) -> None:
        if len(self._deliveries) >= self.config.max_deliveries:
            self.counters["drop_deliveries_full"] += 1
            return
        self._deliveries.append(delivery)

    def _admit(self, kind: int, origin: PeerId, seqno: int, now: float, duplicates: str) -> bool:
        """Cheap checks before the signature: seen, our own, too old, too new."""
        if (kind, origin.key, seqno) in self._seen or origin == self.peer_id:
            self.counters[duplicates] += 1  # our own come back as duplicates too
            return False
        wall = self._wall_ms(now)
        if seqno < wall - int(self.config.max_age * 1000) or seqno <= self._seen.floor(origin.key):
            self.counters["drop_too_old"] += 1
            return False
        if seqno > wall + int(self.config.max_future * 1000):
            self.counters["drop_too_new"] += 1
            return False
        return True

    def _on_broadcast(self, neighbour: PeerId, msg: Broadcast, now: float) -> None:
        if not self._admit(_KIND_BROADCAST, msg.origin, msg.seqno, now, "broadcast_duplicates"):
            return
        if not self._verify(msg.origin, msg.signed_bytes(), msg.signature):
            self.counters["drop_bad_signature"] += 1
            return
        self._seen.add((_KIND_BROADCAST, msg.origin.key, msg.seqno))
        self.counters["broadcasts_delivered"] += 1
        self._deliver(Delivery("broadcast", msg.origin, None, msg.data))
        targets = self._tree_targets(msg.origin, neighbour)
        self._send(targets, OverlayType.BROADCAST, msg.encode(), "broadcasts_forwarded")

    def _on_multicast(self, neighbour: PeerId, msg: Multicast, now: float) -> None:
        key = (_KIND_MULTICAST, msg.origin.key, msg.seqno)
        if key in self._seen:
            self.counters["multicast_duplicates"] += 1
            entry = self._seen.get(key)
            if entry is not None and entry.digest == _digest(msg):
                # Where the paths towards two members meet, the second copy names the members its
                # sender sent it for: pass it on towards those not served yet.
                self._forward_multicast(msg, neighbour, entry.served, "multicasts_forwarded")
            return
        if not self._admit(_KIND_MULTICAST, msg.origin, msg.seqno, now, "multicast_duplicates"):
            return
        member = msg.group in self._joined
        if not member and not self._index.get(msg.group):
            self.counters["drop_unknown_group"] += 1
            return
        if not self._verify(msg.origin, msg.signed_bytes(), msg.signature):
            self.counters["drop_bad_signature"] += 1
            return
        if member:
            self.counters["multicasts_delivered"] += 1
            self._deliver(Delivery("multicast", msg.origin, msg.group, msg.data))
        served: set[PeerId] = set()
        self._seen.add(key, _Seen(_digest(msg), served))
        self._forward_multicast(msg, neighbour, served, "multicasts_forwarded")

    def _on_record(self, neighbour: PeerId, record: MembershipRecord, now: float) -> None:
        member = record.member
        current = self._records.get(member)
        if current is not None and record.seqno <= current.seqno:
            same = record.seqno == current.seqno
            self.counters["membership_duplicates" if same else "membership_stale"] += 1
            return
        wall = self._wall_ms(now)
        if record.seqno < wall - int(self.config.record_ttl * 1000):
            self.counters["drop_too_old"] += 1
            return
        if record.seqno > wall + int(self.config.max_future * 1000):
            self.counters["drop_too_new"] += 1
            return
        if len(record.groups) > self.config.max_groups_per_member:
            self.counters["drop_too_many_groups"] += 1
            return
        victim: PeerId | None = None
        full = len(self._records) - (self._own is not None) >= self.config.max_records
        if current is None and member != self.peer_id and full:
            victim = self._unroutable_record(now)
            if victim is None:
                self.counters["drop_records_full"] += 1
                return
        if not self._verify(member, record.signed_bytes(), record.signature):
            self.counters["drop_bad_signature"] += 1
            return
        if member == self.peer_id:
            # A record of an earlier incarnation of ours is still about: supersede it with our
            # current group set (newer seqno), so that nobody keeps us in groups we are not in.
            self._seqno = max(self._seqno, record.seqno)
            self._publish(now)
            return
        if victim is not None:
            self._set_record(victim, None)
            self.counters["records_evicted"] += 1
        self.counters["memberships"] += 1
        self._set_record(member, record)
        for n in self._tree_targets(member, neighbour):
            self._pending.setdefault(n, {})[member] = record

    def _unroutable_record(self, now: float) -> PeerId | None:
        """The member to evict for a new record when the store is full: the least recently stored
        one the routes do not reach (throwaway keys' records look like that), or None when every
        member held is routable (the new record is then refused; the whole store is not looked at
        again for a second). Routable members passed over move to the end of the scan order, so
        repeated evictions do not walk past them again."""
        if now < self._records_full_until:
            return None
        for member in list(self._records):
            if member == self.peer_id:
                continue
            if self._routes.next_hop(member) is None:
                return member
            self._records[member] = self._records.pop(member)  # routable: looked at last next time
        self._records_full_until = now + 1.0
        return None

    def _set_record(self, member: PeerId, record: MembershipRecord | None) -> None:
        """Store (or with None forget) a member's record and update the group index."""
        old = self._records.pop(member, None)
        if old is not None:
            for g in old.groups:
                members = self._index.get(g)
                if members is not None:
                    members.discard(member)
                    if not members:
                        del self._index[g]
        if record is None:
            return
        self._records[member] = record
        if member == self.peer_id:
            return  # our own membership is self._joined
        for g in record.groups:
            members = self._index.setdefault(g, set())
            if len(members) >= self.config.max_members_per_group:
                self.counters["drop_group_full"] += 1
                continue
            members.add(member)
