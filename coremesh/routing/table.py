"""The overlay's routing table: signed path vectors between neighbours (sans-IO).

Why path vectors, and why signed
--------------------------------
Babel (RFC 8966) stays loop-free with its feasibility condition: a node accepts a route only if
it carries a newer seqno or a metric below the best it ever announced for the current one, and
when nothing feasible is left it must ask the origin for a new seqno and wait. That works between routers that
trust each other; here any peer may lie, and a liar can claim any metric. A path vector carries
the whole path ``[neighbour, ..., destination]`` instead, so

- loops are impossible by construction: a path that contains our own id is never a route (it is
  remembered only as "this neighbour routes that destination through us", which
  :meth:`RoutingTable.children` reports for broadcast trees), and a path with a repeated id is
  refused. No feasibility condition, no seqno requests, no starvation: any loop-free path a
  neighbour offers may be used at once, which is what makes repair immediate;
- every claim can be checked: each node signs an :class:`~coremesh.routing.records.OriginRecord`
  listing its neighbours, and a path is accepted only when both ends of each of its links list each
  other in their latest verified records (the link from the advertising neighbour to us is
  attested by the hop session itself). A peer cannot advertise a path through a link that does not
  exist without the signatures of both its ends; a forged, unattested or replayed claim is refused
  and counted (``drop_*`` counters). A peer can still lie about a metric or drop traffic: that is
  what measured link costs, backups and ``set_router`` are for.

Records are verified once per (origin, seqno) and kept (latest per origin, at most
``max_records``). They are pulled, not pushed with the paths: a table that gets a path whose
records it misses (or holds in a version that does not list a link of it) asks the neighbour that
sent it ("wants" in the update message), which holds them (an honest table advertises only what
its records attest), and looks at the path again when they come. One request per record is out at
a time, to whichever neighbour named it first, so a record crosses into each table about once,
not once per neighbour (pushing them with every path made records most of the routing traffic).
Our own record goes to every neighbour when it changes and when a link comes up. Records are not
flooded: a version a node holds keeps attesting the links still on it. To the neighbour
that is our next hop for a destination we send only "you are my next hop" (what
:meth:`RoutingTable.children` needs), not the path beyond it. An advert is checked when it
arrives; one whose records are missing or older than needed waits and is checked again when a newer
record of an end of the faulty link arrives. We advertise a route only when our records attest its
first link (our record and the next hop's list each other), so honest tables never send a path
their neighbour must refuse. What a table can be fooled by is bounded: a replayed record older than
the one it holds is refused (``drop_old_record``), so a dead link can only be claimed while the
table holds no newer record of either end; and whatever a path claims, its metric is only a claim.

The record store is bounded and cannot be filled for good. A record from a neighbour is kept only
when useful: the neighbour's own, a node on a path in the same message, one a waiting advert needs,
or a newer version of one we hold; others wait a little, unverified (at most 32 per neighbour),
for the paths that may follow them in the next messages, then are dropped. A record is referenced
while a link goes to its origin, a stored advert's path names it or an advert waits for it (counts
kept where adverts and links come and go); when the store is full the oldest unreferenced record
makes room, and one unreferenced for ``record_ttl`` goes (swept when updates arrive and on the
timer, oldest first). A record we dropped that a path needs again is asked for again.

Metrics, hysteresis, selection
------------------------------
A link costs what RFC 9616 (Babel's RTT-based metric) gives: a hop cost (96) plus an RTT penalty
that is 0 below 10 ms, rises linearly to 150 at 120 ms and stays there, all times the ETX factor
``1/(1-loss)`` (capped) (so that LAN jitter never flaps routes, while a slow link costs more than
a fast one); the samples are smoothed, and the cost the table uses changes only after the smoothed
cost stayed more than ``cost_hysteresis`` away from it for ``cost_hold`` seconds (RFC 9616's
hysteresis: jitter does not flap routes). A route's metric is the neighbour's advertised metric
plus our link cost to it. The primary is the lowest metric, but a new primary replaces the
current one only when better by ``switch_margin`` or when the current one is gone. Backups: the
best route via each other neighbour (up to ``max_backups``).

Propagation and repair
----------------------
Updates are triggered (batched, at most one batch per neighbour per ``min_update_interval``), a
full table goes to a neighbour whose link comes up, and there are no periodic dumps. A neighbour
that told us a valid route to a destination at a lower metric than ours, not through us, gets no
path from us for it, only "elsewhere": it would never choose our route over its own (ours costs
more before even the link to us), so neither the path nor the records attesting it would be of use
to it, and "elsewhere" still tells us that its choice is known and does not go through us (what
:meth:`RoutingTable.children` and :meth:`RoutingTable.knows_route_of` need for broadcast trees).
When its route gets worse than ours or goes, its update makes us look again and it gets our path
(one round trip later than a backup it held would be used). This halves the paths a table sends:
of two neighbours, at most one needs the other's path to a destination.

A path goes out *based* on another when it can (:class:`~coremesh.routing.messages.RouteEntry`):
"our path to B (which you hold), then these hops". Routes mostly form a tree, so the base is
usually the hop before the destination and the entry names one new hop. The neighbour derives the
path and metric from its advert for the base, and again whenever that advert changes; we keep, per
neighbour, what it holds and so what it derives (``sent``, ``sent_base``, ``sent_deps``): when a
base's advert changes, the destinations built on it get the derived path, and only those whose
route is then not what the neighbour derives are sent. A path vector otherwise re-advertises a
change near the root of a subtree for every destination in it; here it costs the entries where the
tree itself changed. A chain of bases that would come back to its destination is refused
(``drop_path_loop``), and a derivation is checked like any path (``adverts_derived`` counts them).

Overlay
packets are unreliable, so the table makes updates reliable itself: each message carries a
per-neighbour message number within the sender's link epoch; the neighbour acks; unacked messages
are retransmitted with a doubling RTO; if the queue of unacked messages overflows, or the neighbour
starts a new epoch (it lost its view of us), the whole table is sent again. Per destination the
newest message number wins, so reordering and retransmission never bring back stale state.
:meth:`RoutingTable.link_down` removes every route via the neighbour at once: the best backup is
primary immediately, and updates or withdrawals go out to the other neighbours, which repair the
same way: the table converges again in about one update interval per hop.
"""

from __future__ import annotations

import collections
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import DecodeError
from ..identity import PeerId, verify_signature
from ..ratelimit import TokenBucket
from .messages import (
    ACKS_HEAD,
    COUNTS_LEN,
    HEADER_LEN,
    INFINITY,
    MAX_ACKS,
    MAX_HOPS,
    MAX_ID_INDEX,
    OVERLAY_OVERHEAD,
    Define,
    Elsewhere,
    Item,
    RouteEntry,
    RouteUpdate,
    UpdateParts,
    Want,
    decode_update,
    defined_ids,
    encode_head,
    encode_tail,
    item_size,
    max_item_size,
    pack_update,
)
from .overlay import OverlayType, overlay_packet
from .records import MAX_RECORD_NEIGHBOURS, OriginRecord

__all__ = ["INFINITY", "Route", "RoutingConfig", "RoutingTable"]

MAX_LINK_COST = 10_000
_RETIRED_EPOCHS = 8
# Records a neighbour sent that nothing needed yet, kept unverified per neighbour for the routes
# that follow them in its next messages (a path's records may fill the message before the path's).
_PARKED = 32
# A neighbour is asked for everything again (a new epoch) when a path it sends needs a record we
# dropped (it believes we hold it and would never send it again otherwise): at most once per gap,
# which doubles each time up to the maximum (a neighbour cannot make us send our table in a loop).
_UNKNOWN: Final = "unknown"  # in _Link.sent: it may hold anything
_VIA_IT: Final = "via it"  # in _Link.sent: told that it is our next hop
_ELSEWHERE: Final = "elsewhere"  # in _Link.sent: told that we route elsewhere, with no path
_EMPTY_TAIL: Final = encode_tail(RouteUpdate(1, 0))  # a pure ack's body after its acks
_MAX_DORMANT = 64  # links gone down whose ids we keep (the oldest is forgotten first)


@dataclass(slots=True)
class _Dormant:
    """What a link that went down keeps for ``dictionary_hold``: its numbering and both ends'
    ids, so that a link that comes back soon need not define every id again (at 1,000 nodes a
    whole table's ids are 32 KB each way, and links come back all the time)."""

    at: float
    epoch: int
    next_msg_no: int
    out_ids: dict[PeerId, int]
    next_index: int
    in_ids: dict[int, PeerId]
    peer_epoch: int
    retired: collections.deque[int]
    view: int
    peer_view: int
    view_no: int


@dataclass(frozen=True, slots=True)
class Route:
    destination: PeerId
    next_hop: PeerId
    path: tuple[PeerId, ...]  # next_hop ... destination (len 1 when the destination is a neighbour)
    metric: int
    seqno: int  # destination's record seqno (0 while its record is unknown)
    updated_at: float


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The table's parameters; every field is validated on construction."""

    max_packet: int = 1100  # overlay plaintext per message, prefix and type byte included
    min_update_interval: float = 0.05  # seconds between two batches of triggered updates, per neighbour
    max_backups: int = 3
    max_records: int = 10000  # origin records kept (one per origin); also bounds adverts per neighbour
    record_ttl: float = 600.0  # a record nothing references (no link, path, waiting advert) this long goes
    max_path: int = 62  # hops of a route (next hop ... destination); ROUTED's hop limit is 64
    max_record_neighbours: int = 29  # neighbours listed in our record (the oldest links)
    record_hold: float = 60.0  # a neighbour whose link went down stays listed this long (see _refresh_own)
    dictionary_hold: float = 120.0  # a link that comes back within this keeps its ids (see link_up)
    default_link_cost: int = 96  # before the first RTT sample: one hop, no RTT penalty
    hop_cost: int = 96  # what any link costs (Babel's wired link cost), times its ETX factor
    rtt_min: float = 0.010  # RFC 9616: RTTs below this add nothing (LAN jitter flaps no route) ...
    rtt_max: float = 0.120  # ... then the penalty grows linearly up to max_rtt_penalty at rtt_max
    max_rtt_penalty: int = 150
    max_loss_factor: float = 8.0  # cap of the ETX factor 1/(1-loss)
    rtt_smoothing: float = 0.25  # weight of a new sample in the smoothed RTT and loss
    cost_hysteresis: float = 0.25  # relative move of the smoothed cost that may change the used cost
    cost_hold: float = 2.0  # seconds the move must last
    switch_margin: float = 0.1  # a new primary must be this much better than the current one
    initial_rto: float = 1.0  # retransmission timeout before the link's RTT is known
    min_rto: float = 0.2
    max_rto: float = 16.0
    max_unacked: int = 1024  # unacked messages per neighbour before a full resend
    ack_delay: float = 0.1  # a pure ack waits this long for more messages to ack (or an update)
    update_rate: float = 100.0  # incoming messages per second per neighbour (token bucket)
    update_burst: float = 1000.0
    # Adverts derived again per second per neighbour (one based entry may move many: see _rederive)
    derive_rate: float = 10_000.0
    derive_burst: float = 100_000.0

    def __post_init__(self) -> None:
        positive = (
            "min_update_interval",
            "max_records",
            "record_ttl",
            "max_path",
            "default_link_cost",
            "rtt_max",
            "max_loss_factor",
            "rtt_smoothing",
            "cost_hysteresis",
            "initial_rto",
            "min_rto",
            "max_rto",
            "max_unacked",
            "update_rate",
            "update_burst",
            "derive_rate",
            "derive_burst",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"RoutingConfig.{name} must be positive, got {value!r}")
        if not 0 <= self.rtt_min < self.rtt_max or self.max_rtt_penalty < 0 or self.hop_cost < 0:
            raise ValueError("rtt_min must be >= 0 and below rtt_max; hop_cost, max_rtt_penalty >= 0")
        for name in (
            "max_backups",
            "cost_hold",
            "switch_margin",
            "max_record_neighbours",
            "ack_delay",
            "record_hold",
            "dictionary_hold",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"RoutingConfig.{name} must be >= 0, got {value!r}")
        if not self.rtt_smoothing <= 1 or not self.max_loss_factor >= 1:
            raise ValueError("rtt_smoothing must be in (0, 1] and max_loss_factor >= 1")
        if self.min_rto > self.max_rto or self.default_link_cost > MAX_LINK_COST:
            raise ValueError("min_rto must be <= max_rto and default_link_cost <= 10000")
        if self.ack_delay >= min(self.min_rto, self.initial_rto):
            raise ValueError("ack_delay must be below min_rto and initial_rto")
        if self.max_record_neighbours > MAX_RECORD_NEIGHBOURS or self.max_path > MAX_HOPS:
            raise ValueError(f"max_record_neighbours must be <= 255 and max_path <= {MAX_HOPS}")
        need = OVERLAY_OVERHEAD + HEADER_LEN + COUNTS_LEN
        need += max_item_size(self.max_path, self.max_record_neighbours)
        if self.max_packet < need:
            raise ValueError(
                f"max_packet {self.max_packet} cannot hold a path of {self.max_path} hops or a record"
                f" of {self.max_record_neighbours} neighbours ({need} bytes needed)"
            )


@dataclass(slots=True)
class _Advert:
    """What a neighbour last told us about one destination."""

    msg_no: int
    metric: int
    path: tuple[PeerId, ...] | None  # neighbour ... destination; None: withdrawn or refused
    valid: bool = False  # attested by the records we hold (checked on arrival and when they change)
    elsewhere: bool = False  # no path: it reaches the destination better than we do, not via us
    # A based advert: path and metric are derived from its advert for ``base`` (then ``suffix``,
    # ``delta`` more), again whenever that advert changes.
    base: PeerId | None = None
    suffix: tuple[PeerId, ...] = ()
    delta: int = 0


@dataclass(slots=True)
class _Sent:
    parts: UpdateParts
    deadline: float
    rto: float
    tail: bytes  # the body after the acks, sent again as is (its id definitions must not move)
    defines: tuple[tuple[PeerId, int], ...]  # the ids its table defines: known once it is acked


class _Link:
    """Our state for one neighbour: the link's cost, what it told us, what we told it."""

    __slots__ = (
        "ack_at",
        "adverts",
        "bucket",
        "cost",
        "deferred",
        "defining",
        "dependents",
        "derive",
        "epoch",
        "in_ids",
        "last_update",
        "loss",
        "moved_since",
        "next_index",
        "next_msg_no",
        "out_ids",
        "parked",
        "peer_epoch",
        "peer_view",
        "pending",
        "pending_acks",
        "pending_at",
        "pending_records",
        "raw_cost",
        "records_sent",
        "retired",
        "rtx_at",
        "sent",
        "sent_base",
        "sent_deps",
        "serve",
        "srtt",
        "unacked",
        "up_at",
        "view",
        "view_no",
        "wants",
    )

    def __init__(self, epoch: int, config: RoutingConfig, now: float) -> None:
        self.up_at = now
        self.epoch = epoch
        self.next_msg_no = 1
        self.out_ids: dict[PeerId, int] = {}  # ids it acknowledged a definition of, our epoch
        self.next_index = 0  # the next id index of our epoch
        self.in_ids: dict[int, PeerId] = {}  # the ids it defined in its epoch
        # Paths too long to carry their new ids wait (deferred) for definitions sent ahead
        # (defining: unacknowledged); an ack of definitions brings the waiting destinations back.
        self.defining: set[PeerId] = set()
        self.deferred: set[PeerId] = set()
        self.peer_epoch: int | None = None
        self.retired: collections.deque[int] = collections.deque(maxlen=_RETIRED_EPOCHS)
        self.view = 0  # ours within our epoch: moves on when the link resumes (see link_up)
        self.peer_view = 0  # its, and the number of its first message in that view
        self.view_no = 0
        self.unacked: dict[int, _Sent] = {}
        # No unacked message is due before this (acks only make it early: a wakeup at a stale
        # value rescans and moves it), so timers and sends never scan the queue when nothing is due.
        self.rtx_at = math.inf
        self.pending_acks: list[int] = []
        self.ack_at = math.inf
        self.pending: dict[PeerId, None] = {}  # destinations whose advert to it may have changed
        self.pending_records: dict[PeerId, None] = {}  # origins whose latest record it should get
        self.pending_at = math.inf
        self.sent: dict[PeerId, Route | str] = {}  # what it holds from us: a route, _VIA_IT, _UNKNOWN
        # Destinations we sent as based entries -> their base, and base -> those built on it: a
        # change of what it holds for a base changes what it derives for them (see _set_sent).
        self.sent_base: dict[PeerId, PeerId] = {}
        self.sent_deps: dict[PeerId, list[PeerId]] = {}
        # The version of each record it was last sent: seqno and neighbours.
        self.records_sent: dict[PeerId, OriginRecord] = {}
        self.last_update = -math.inf
        self.bucket = TokenBucket(config.update_rate, config.update_burst, now)
        self.derive = TokenBucket(config.derive_rate, config.derive_burst, now)  # see _rederive
        # Records it may pull from us: a neighbour asking again and again gets no more than this.
        self.serve = TokenBucket(4 * config.update_rate, config.update_burst, now)
        self.adverts: dict[PeerId, _Advert] = {}
        self.dependents: dict[PeerId, list[PeerId]] = {}  # base -> its based adverts' destinations
        self.parked: dict[PeerId, OriginRecord] = {}  # records not needed yet, oldest first
        self.wants: dict[PeerId, None] = {}  # origins whose records we ask it for
        self.cost = config.default_link_cost
        self.raw_cost: int | None = None
        self.srtt: float | None = None
        self.loss = 0.0
        self.moved_since: float | None = None

    def mark(self, destination: PeerId, now: float) -> None:
        self.pending[destination] = None
        self.pending_at = min(self.pending_at, now)

    def mark_record(self, origin: PeerId, now: float) -> None:
        self.pending_records[origin] = None
        self.pending_at = min(self.pending_at, now)


Router = Callable[[PeerId, list[Route]], PeerId | None]


def _same(sent: Route | str, want: Route | str) -> bool:
    """Whether a neighbour that was sent ``sent`` holds what ``want`` would tell it."""
    if isinstance(sent, str) or isinstance(want, str):
        return sent == want and sent != _UNKNOWN
    return sent.metric == want.metric and sent.path == want.path


class RoutingTable:
    """One node's routes to every destination of the overlay (see the module docstring).

    ``counters``: ``route_changes`` (a destination's primary next hop changed, appeared or went),
    ``updates_sent`` / ``updates_received`` (messages, pure acks and retransmissions included),
    ``retransmissions``, ``full_resends``, ``peer_epoch_changes``, ``records_verified``,
    ``updates_stale`` (an entry older than one already applied), ``adverts_waiting`` (for a
    record), ``router_invalid`` (a ``set_router`` choice that was no candidate), and the refusals:
    ``drop_not_neighbour``, ``drop_rate_limited``, ``drop_malformed``, ``drop_stale_epoch``,
    ``drop_bad_signature``, ``drop_old_record`` (also seen when two copies of a record race),
    ``drop_record_conflict``, ``drop_unneeded_record`` (a record no path it came with or followed
    it names, of a node we neither hold nor wait for: ``records_parked`` counts those kept a
    while for the paths that may follow, ``records_unparked`` those a path then needed),
    ``drop_records_full`` (the store is full of records still referenced:
    by a link, a stored advert's path or a waiting advert; otherwise the oldest unreferenced record
    is evicted, ``records_evicted``; one unreferenced for ``record_ttl`` goes, ``records_expired``;
    ``records_asked`` / ``record_wants_received``: records pulled from / by neighbours,
    ``drop_wants_rate_limited`` past ``4 * update_rate`` a second),
    ``drop_unattested``, ``drop_path_loop``, ``drop_path_too_long``, ``drop_too_many_adverts``.
    Based entries: ``paths_based`` (of ``paths_sent``), ``adverts_derived`` (derived again when
    their base moved), ``derived_path_loop`` / ``derived_path_too_long`` (a derivation briefly
    wrong while the entry built on the moved base is on its way again), ``drop_derive_limited``.
    Links: ``links_resumed`` (back within ``dictionary_hold``, ids kept), ``peer_view_changes``
    (a neighbour resumed), ``drop_stale_view``, ``ids_defined`` (32-byte ids sent).
    """

    def __init__(
        self,
        peer_id: PeerId,
        sign: Callable[[bytes], bytes],
        config: RoutingConfig,
        *,
        verify: Callable[[PeerId, bytes, bytes], bool] = verify_signature,
        rng: random.Random,
        now: float,
        wall_offset: float = 0.0,
    ) -> None:
        self.peer_id = peer_id
        self.config = config
        self.counters: collections.Counter[str] = collections.Counter()
        self._sign = sign
        self._verify = verify
        self._rng = rng
        self._wall_offset = wall_offset
        self._now = now
        self._links: dict[PeerId, _Link] = {}
        self._records: dict[PeerId, OriginRecord] = {}
        self._own: OriginRecord | None = None
        self._own_listed: frozenset[PeerId] = frozenset()  # the neighbours our record lists
        # Listed neighbours whose link went down -> when (oldest first): still listed for
        # record_hold, so that a link that comes back soon changes no record.
        self._down_listed: dict[PeerId, float] = {}
        self._dormant: dict[PeerId, _Dormant] = {}  # links gone down, oldest first
        self._ids: dict[bytes, PeerId] = {peer_id.key: peer_id}  # interned ids
        self._own_dirty = True
        self._own_dirty_at = now
        self._seqno_floor = 0  # a seqno of ours seen elsewhere (a previous run's): sign above it
        self._routes: dict[PeerId, list[Route]] = {}
        self._waiting: dict[PeerId, dict[PeerId, None]] = {}  # missing record's origin -> dests
        # Stored adverts whose path names each origin; an origin's record is referenced while this
        # is positive, it is a neighbour, or an advert waits for a newer record of it.
        self._refs: dict[PeerId, int] = {}
        # The stored records nothing references, oldest first, with when they became so: the
        # first one is evicted when the store is full.
        self._unref: dict[PeerId, float] = {}
        # Origins whose records we asked a neighbour for -> when we may ask again (oldest first).
        self._asked: dict[PeerId, float] = {}
        # destination -> the neighbours holding an advert for it, so that choosing a destination's
        # route looks at its advertisers only (a hub with many neighbours would otherwise pay
        # O(neighbours) per destination).
        self._advertisers: dict[PeerId, set[PeerId]] = {}
        self._router: Router | None = None
        self._budget = config.max_packet - OVERLAY_OVERHEAD

    # -- links ---------------------------------------------------------------------------------

    def link_up(self, neighbour: PeerId, now: float) -> None:
        """A hop session to ``neighbour`` is up: send it our whole table."""
        self._now = now
        if neighbour == self.peer_id:
            raise ValueError("a node is not its own neighbour")
        neighbour = self._intern(neighbour)
        if neighbour in self._links:
            self.link_down(neighbour, now)
        epoch = self._rng.getrandbits(32) or 1
        link = self._links[neighbour] = _Link(epoch, self.config, now)
        self._down_listed.pop(neighbour, None)
        dormant = self._dormant.pop(neighbour, None)
        if dormant is not None and now < dormant.at + self.config.dictionary_hold:
            # It came back soon: same epoch, numbers and ids; a new view tells it that we lost
            # what it told us (it sends it all again, by index). If it lost our ids meanwhile,
            # its new epoch makes us define them again, as on any link up.
            link.epoch, link.next_msg_no, link.next_index = (
                dormant.epoch,
                dormant.next_msg_no,
                dormant.next_index,
            )
            link.out_ids, link.in_ids = dormant.out_ids, dormant.in_ids
            link.peer_epoch, link.retired = dormant.peer_epoch, dormant.retired
            link.view, link.peer_view, link.view_no = (
                (dormant.view + 1) % 256,
                dormant.peer_view,
                dormant.view_no,
            )
            self.counters["links_resumed"] += 1
        self._unref.pop(neighbour, None)
        self._own_changed(now)
        link.mark_record(self.peer_id, now)
        for destination in self._routes:
            link.mark(destination, now)
        self._recompute(neighbour, now)

    def link_down(self, neighbour: PeerId, now: float) -> None:
        """The hop session to ``neighbour`` is gone: every route via it goes at once."""
        self._now = now
        link = self._links.pop(neighbour, None)
        if link is None:
            return
        if neighbour in self._own_listed and self.config.record_hold > 0:
            self._down_listed[neighbour] = now
        if link.peer_epoch is not None and self.config.dictionary_hold > 0:
            if len(self._dormant) >= _MAX_DORMANT:
                del self._dormant[next(iter(self._dormant))]
            self._dormant[neighbour] = _Dormant(
                now,
                link.epoch,
                link.next_msg_no,
                link.out_ids,
                link.next_index,
                link.in_ids,
                link.peer_epoch,
                link.retired,
                link.view,
                link.peer_view,
                link.view_no,
            )
        self._own_changed(now)
        self._unindex_all(neighbour, link.adverts)
        self._unref_paths(link.adverts.values(), now)
        self._touch(neighbour, now)
        for destination in [neighbour, *link.adverts]:
            self._recompute(destination, now)

    def link_sample(self, neighbour: PeerId, rtt: float | None, loss: float, now: float) -> None:
        """A measurement of the link: smoothed RTT in seconds (None: none yet) and loss (0..1)."""
        self._now = now
        link = self._links.get(neighbour)
        if link is None:
            return
        a = self.config.rtt_smoothing
        if not 0.0 <= loss <= 1.0 or math.isnan(loss):
            loss = 1.0 if loss > 1.0 else 0.0
        link.loss = loss if link.srtt is None else link.loss + a * (loss - link.loss)
        if rtt is not None and rtt >= 0 and math.isfinite(rtt):
            link.srtt = rtt if link.srtt is None else link.srtt + a * (rtt - link.srtt)
        if link.srtt is None:
            return
        raw = self.link_cost(link.srtt, link.loss)
        first = link.raw_cost is None
        link.raw_cost = raw
        if first:
            self._set_cost(neighbour, link, raw, now)
        else:
            self._check_cost(neighbour, link, now)

    def link_cost(self, srtt: float, loss: float) -> int:
        """A link's cost from its smoothed RTT and loss, after RFC 9616: the hop cost plus an RTT
        penalty that is 0 below ``rtt_min``, grows linearly to ``max_rtt_penalty`` at ``rtt_max``
        and stays there, times the ETX factor ``1/(1-loss)`` (capped)."""
        cfg = self.config
        etx = min(1.0 / (1.0 - loss) if loss < 1.0 else math.inf, cfg.max_loss_factor)
        span = (min(max(srtt, cfg.rtt_min), cfg.rtt_max) - cfg.rtt_min) / (cfg.rtt_max - cfg.rtt_min)
        return min(MAX_LINK_COST, max(1, round((cfg.hop_cost + cfg.max_rtt_penalty * span) * etx)))

    def _check_cost(self, neighbour: PeerId, link: _Link, now: float) -> None:
        raw = link.raw_cost
        if raw is None:
            return
        if abs(raw - link.cost) <= self.config.cost_hysteresis * link.cost:
            link.moved_since = None
        elif link.moved_since is None and self.config.cost_hold > 0:
            link.moved_since = now
        elif link.moved_since is None or now - link.moved_since >= self.config.cost_hold:
            self._set_cost(neighbour, link, raw, now)

    def _set_cost(self, neighbour: PeerId, link: _Link, cost: int, now: float) -> None:
        link.moved_since = None
        if cost == link.cost:
            return
        link.cost = cost
        for destination in [neighbour, *link.adverts]:
            self._recompute(destination, now)

    def _own_changed(self, now: float) -> None:
        if not self._own_dirty:
            self._own_dirty = True
            self._own_dirty_at = now

    def _expire_down_listed(self, now: float) -> None:
        down, hold = self._down_listed, self.config.record_hold
        while down and next(iter(down.values())) + hold <= now:  # as get_timer computes it
            del down[next(iter(down))]
            self._own_changed(now)

    def _refresh_own(self, now: float) -> None:
        """Sign a new record when the neighbours it should list changed: the oldest links, then
        the neighbours whose link went down less than ``record_hold`` ago. Links fail and come
        back all the time in a large mesh; a new record for each would have to reach every table
        with a path through the link (records are ~360 bytes at 8 neighbours: at 100 nodes they
        were the largest part of the routing traffic under churn). Listing a dead link a while
        longer lets a liar claim it for that while, no more: our own adverts through it are
        withdrawn at once, whatever the record says."""
        self._expire_down_listed(now)
        if not self._own_dirty:
            return
        self._own_dirty = False
        room = self.config.max_record_neighbours
        oldest = sorted(self._links, key=lambda p: (self._links[p].up_at, p.key))
        listed = oldest[:room]
        listed += list(self._down_listed)[: room - len(listed)]
        if self._own is not None and set(self._own.neighbours) == set(listed):
            return
        previous = self._own.seqno if self._own is not None else 0
        wall = int((now + self._wall_offset) * 1000)
        seqno = min(max(previous + 1, wall, self._seqno_floor + 1), 2**64 - 1)
        before = set(self._own.neighbours) if self._own is not None else set()
        self._own = OriginRecord.create(self.peer_id, seqno, listed, self._sign)
        self._own_listed = frozenset(map(self._intern, listed))
        for link in self._links.values():  # every neighbour will need it
            link.mark_record(self.peer_id, now)
        self._advertise_via(before.symmetric_difference(listed), now)

    # -- receiving -----------------------------------------------------------------------------

    def receive(self, neighbour: PeerId, body: bytes, now: float) -> None:
        """A ROUTE_UPDATE body (after the type byte) from ``neighbour``."""
        self._now = now
        neighbour = self._intern(neighbour)
        link = self._links.get(neighbour)
        if link is None:
            self.counters["drop_not_neighbour"] += 1
            return
        if not link.bucket.consume(1, now):
            self.counters["drop_rate_limited"] += 1
            return
        if link.derive.tokens(now) <= 0:  # its last messages made us derive too much: wait
            self.counters["drop_derive_limited"] += 1
            return
        # Its ids defined in earlier messages hold within its current epoch only.
        epoch = int.from_bytes(body[1:5], "big") if len(body) >= 5 else None
        if epoch is not None and epoch != link.peer_epoch and epoch in link.retired:
            self.counters["drop_stale_epoch"] += 1
            return
        try:
            update = decode_update(
                body, self._intern_key, self._held_record, link.in_ids if epoch == link.peer_epoch else {}
            )
        except DecodeError:
            self.counters["drop_malformed"] += 1
            return
        if update.epoch != link.peer_epoch:
            # Its ids start again, and it may have lost ours (its view of the link restarted):
            # our later messages define every id again (at fresh indices of our epoch).
            link.in_ids = {}
            link.out_ids = {}
            link.defining.clear()
            if link.peer_epoch is not None:
                # The neighbour restarted its view of us: forget what it told us, tell it all again.
                link.retired.append(link.peer_epoch)
                self._forget_adverts(neighbour, link, now)
                self._resend_all(link, now)
                self.counters["peer_epoch_changes"] += 1
            link.peer_epoch = update.epoch
            link.pending_acks.clear()
            link.peer_view, link.view_no = update.view, update.msg_no
        elif update.msg_no and update.view != link.peer_view:
            if update.msg_no < link.view_no:  # from before its current view
                self.counters["drop_stale_view"] += 1
                return
            # It resumed the link: it lost what we told it (and we what it told us before).
            link.peer_view, link.view_no = update.view, update.msg_no
            self._forget_adverts(neighbour, link, now)
            self._resend_all(link, now)
            self.counters["peer_view_changes"] += 1
        self.counters["updates_received"] += 1
        self._expire(now)
        if update.ack_epoch == link.epoch:
            out_ids = link.out_ids
            for no in update.acks:
                sent = link.unacked.pop(no, None)
                if sent is not None:
                    for peer, index in sent.defines:
                        out_ids.setdefault(peer, index)
                        link.defining.discard(peer)
            if link.deferred and not link.defining:
                for destination in link.deferred:
                    link.mark(destination, now)
                link.deferred.clear()
            if not link.unacked:
                link.rtx_at = math.inf
        if update.msg_no == 0:
            return
        if update.defined:
            in_ids = link.in_ids
            for index, peer in enumerate(update.defined, update.first_index):
                in_ids[index] = peer
        link.pending_acks.append(update.msg_no)
        link.ack_at = min(link.ack_at, now + self.config.ack_delay)
        intern = self._intern
        paths = [(neighbour, *entry.hops) for entry in update.routes]  # hops interned by the decoder
        # The nodes the message's paths name: their records are useful, and referenced while the
        # message is applied (a full store must not evict one for the next before its path is in).
        held: tuple[PeerId, ...] = ()
        if paths and (update.records or link.parked):
            held = tuple({hop: None for path in paths for hop in path})
            self._ref_path(held)
        on_paths = set(held)
        for record in update.records:
            if not self._useful(neighbour, record.origin, on_paths):
                self._park(link, record)
                continue
            self._accept_record(record, now)
            # It holds this version: no need to send it back.
            known = link.records_sent.get(record.origin)
            latest = self._records.get(record.origin)
            if (
                (known is None or known.seqno < record.seqno)
                and latest is not None
                and latest.seqno == record.seqno
            ):
                link.records_sent[latest.origin] = latest
        for origin in update.wants:  # it misses records: send ours, whatever we sent before
            self.counters["record_wants_received"] += 1
            if not link.serve.consume(1, now):
                self.counters["drop_wants_rate_limited"] += 1
            elif origin == self.peer_id or origin in self._records:
                link.records_sent.pop(origin, None)
                link.mark_record(origin, now)
        for destination in update.withdrawals:
            advert = _Advert(update.msg_no, INFINITY, None)
            self._receive_advert(neighbour, link, intern(destination), advert, now)
        for destination in update.elsewhere:
            advert = _Advert(update.msg_no, INFINITY, None, elsewhere=True)
            self._receive_advert(neighbour, link, intern(destination), advert, now)
        for entry, path in zip(update.routes, paths, strict=True):
            if link.parked:
                for hop in path:
                    parked = link.parked.pop(hop, None)
                    if parked is not None:
                        self.counters["records_unparked"] += 1
                        self._accept_record(parked, now)
            if entry.based:
                # The common suffix, the destination alone, is kept as () (a tuple less per advert).
                base, suffix = entry.hops[0], entry.hops[1:] if len(entry.hops) > 2 else ()
                advert = _Advert(update.msg_no, INFINITY, None, base=base, suffix=suffix, delta=entry.metric)
            else:
                advert = _Advert(update.msg_no, entry.metric, path)
            self._receive_advert(neighbour, link, path[-1], advert, now)
        if held:
            self._unref_paths((_Advert(0, 0, held),), now)

    def _useful(self, neighbour: PeerId, origin: PeerId, on_paths: set[PeerId]) -> bool:
        """Whether a record of ``origin`` from ``neighbour`` is worth keeping: its own, of a node
        on a path it sent with it, of one an advert waits for, or a newer version of one we hold.
        Records of nodes no path names would only fill the store."""
        return (
            origin == neighbour
            or origin == self.peer_id
            or origin in on_paths
            or origin in self._waiting
            or origin in self._records
            or origin in self._links
        )

    def _park(self, link: _Link, record: OriginRecord) -> None:
        """Keep an unneeded record for the paths that may follow it (the oldest goes when full)."""
        parked = link.parked
        parked.pop(record.origin, None)
        if len(parked) >= _PARKED:
            dropped = next(iter(parked))
            del parked[dropped]
            self.counters["drop_unneeded_record"] += 1
        parked[record.origin] = record
        self.counters["records_parked"] += 1

    def _intern(self, peer: PeerId) -> PeerId:
        """One PeerId object per id: paths share them, and lookups compare by identity first."""
        known = self._ids.get(peer.key)
        if known is not None:
            return known
        if len(self._ids) < 4 * self.config.max_records:
            self._ids[peer.key] = peer
        return peer

    def _held_record(self, key: bytes) -> OriginRecord | None:
        peer = self._ids.get(key)
        return None if peer is None else self._records.get(peer)

    def _intern_key(self, key: bytes) -> PeerId:
        known = self._ids.get(key)
        return known if known is not None else self._intern(PeerId(key))

    def _accept_record(self, record: OriginRecord, now: float) -> None:
        origin = record.origin
        if origin == self.peer_id:
            if record.seqno > self._seqno_floor:
                self._seqno_floor = record.seqno
                if self._own is not None and record.seqno >= self._own.seqno:
                    self._own = None  # sign again above it
                    self._own_changed(now)
            return
        stored = self._records.get(origin)
        if stored is not None:
            if record.seqno < stored.seqno:
                self.counters["drop_old_record"] += 1
                return
            if record.seqno == stored.seqno:
                if record.signature != stored.signature or record.neighbours != stored.neighbours:
                    self.counters["drop_record_conflict"] += 1
                return
        elif len(self._records) >= self.config.max_records and not self._unref:
            self.counters["drop_records_full"] += 1
            return
        if not record.verify(self._verify):
            self.counters["drop_bad_signature"] += 1
            return
        if stored is None and len(self._records) >= self.config.max_records:
            self._evict(next(iter(self._unref)))
        self.counters["records_verified"] += 1
        # Kept with interned ids: shared with every path, compared by identity first.
        origin = self._intern(origin)
        neighbours = tuple(map(self._intern, record.neighbours))
        self._records[origin] = OriginRecord(origin, record.seqno, neighbours, record.signature)
        self._asked.pop(origin, None)
        # Not flooded: a neighbour that needs it asks; a version it holds keeps attesting the
        # links still on it.
        if origin in self._links:
            # Routes via this neighbour may have become advertisable (its record now lists us).
            self._advertise_via({origin}, now)
        waiting = self._waiting.pop(origin, {})
        self._touch(origin, now)
        for destination in waiting:
            for holder, holder_link in self._links.items():
                advert = holder_link.adverts.get(destination)
                if advert is not None and advert.path is not None:
                    advert.valid = self._path_fault(advert.path) is None
                    self._index(holder, destination, advert.valid)
            self._recompute(destination, now)
        self._recompute(origin, now)

    # -- the record store's references ---------------------------------------------------------

    def _touch(self, origin: PeerId, now: float) -> None:
        """Keep ``_unref`` to the stored records that nothing references."""
        if (
            origin in self._records
            and not self._refs.get(origin)
            and origin not in self._links
            and origin not in self._waiting
        ):
            self._unref.setdefault(origin, now)
        else:
            self._unref.pop(origin, None)

    def _ref_path(self, path: tuple[PeerId, ...] | None) -> None:
        if path is not None:
            refs = self._refs
            for hop in path:
                refs[hop] = refs.get(hop, 0) + 1
                self._unref.pop(hop, None)

    def _unref_paths(self, adverts: Iterable[_Advert], now: float) -> None:
        refs = self._refs
        for advert in adverts:
            if advert.path is None:
                continue
            for hop in advert.path:
                count = refs[hop] - 1
                if count:
                    refs[hop] = count
                else:
                    del refs[hop]
                    # No stored advert names it: none waits for its record any more.
                    self._waiting.pop(hop, None)
                    self._touch(hop, now)

    def _evict(self, origin: PeerId, counter: str = "records_evicted") -> None:
        del self._unref[origin]
        del self._records[origin]
        self.counters[counter] += 1

    def _expire(self, now: float) -> None:
        """Drop the records nothing referenced for ``record_ttl`` (oldest first: O(1) amortised),
        and the ids of links gone down for ``dictionary_hold``."""
        dormant, hold = self._dormant, self.config.dictionary_hold
        while dormant and next(iter(dormant.values())).at + hold <= now:
            del dormant[next(iter(dormant))]
        unref = self._unref
        limit = now - self.config.record_ttl
        while unref:
            origin, since = next(iter(unref.items()))
            if since > limit:
                break
            self._evict(origin, "records_expired")

    def _receive_advert(
        self, neighbour: PeerId, link: _Link, destination: PeerId, advert: _Advert, now: float
    ) -> None:
        old = link.adverts.get(destination)
        if old is not None and old.msg_no >= advert.msg_no:
            self.counters["updates_stale"] += 1
            return
        if old is None and len(link.adverts) >= self.config.max_records:
            self.counters["drop_too_many_adverts"] += 1
            return
        if advert.base is not None:
            if self._base_loops(link, advert.base, destination):
                self.counters["drop_path_loop"] += 1
                advert.base = None  # kept as refused: no path
            else:
                self._derive(link, advert, destination)
        self._check_path(link, destination, advert, now)
        link.adverts[destination] = advert
        self._ref_path(advert.path)
        if old is not None:
            self._unref_paths((old,), now)
            if old.base is not None:
                self._undepend(link.dependents, old.base, destination)
        if advert.base is not None:
            link.dependents.setdefault(advert.base, []).append(destination)
        self._index(neighbour, destination, advert.valid and advert.path is not None)
        self._recompute(destination, now)
        if destination in self._routes:
            link.mark(destination, now)  # whether it needs our path depends on what it has
        if destination in link.dependents:
            self._rederive(neighbour, link, destination, now)

    def _check_path(self, link: _Link, destination: PeerId, advert: _Advert, now: float) -> None:
        """Whether ``advert``'s path is a route (``valid``); ask for the records it lacks."""
        path = advert.path
        if path is None:
            advert.valid = False
            return
        reason = self._path_fault(path)
        advert.valid = reason is None
        if reason in ("missing_record", "unattested"):
            # Ask it for the records (an honest neighbour holds those that attest what it
            # sends) and look again when they come.
            self._wait_for_records(link, path, destination, now)
        if reason == "missing_record":
            self.counters["adverts_waiting"] += 1
        elif reason in ("path_loop", "path_too_long", "unattested"):
            # A derived path may be briefly wrong while its base moved and the entry built on it
            # is on its way again: not a refusal of what the neighbour said.
            derived = advert.base is not None and reason != "unattested"
            self.counters[f"derived_{reason}" if derived else f"drop_{reason}"] += 1
            if reason != "unattested":
                advert.path = None

    @staticmethod
    def _undepend(index: dict[PeerId, list[PeerId]], base: PeerId, destination: PeerId) -> None:
        deps = index.get(base)
        if deps is not None:
            deps.remove(destination)
            if not deps:
                del index[base]

    def _base_loops(self, link: _Link, base: PeerId, destination: PeerId) -> bool:
        """Whether ``destination``'s advert would be built, through bases, on itself."""
        x: PeerId | None = base
        for _ in range(self.config.max_path + 1):
            if x is None:
                return False
            if x == destination:
                return True
            advert = link.adverts.get(x)
            x = advert.base if advert is not None else None
        return True

    @staticmethod
    def _derive(link: _Link, advert: _Advert, destination: PeerId) -> None:
        """A based advert's path and metric from its neighbour's advert for the base (then the
        suffix: ``destination`` alone when it is empty)."""
        base = link.adverts.get(advert.base) if advert.base is not None else None
        metric = INFINITY if base is None or base.path is None else base.metric + advert.delta
        if base is None or base.path is None or metric >= INFINITY:
            advert.path, advert.metric = None, INFINITY
        else:
            advert.path, advert.metric = base.path + (advert.suffix or (destination,)), metric

    def _rederive(self, neighbour: PeerId, link: _Link, base: PeerId, now: float) -> None:
        """``base``'s advert changed: derive again the adverts built on it (their own bases'
        dependents in turn), each then checked and chosen from like a new one. One entry may
        move thousands: the work is charged to the neighbour's ``derive`` bucket, whose debt
        makes us drop its next messages (``drop_derive_limited``) until it is repaid, so that a
        neighbour moving a base again and again costs us no more than ``derive_rate``."""
        stack = [base]
        derived = 0
        while stack:
            for destination in list(link.dependents.get(stack.pop(), ())):
                advert = link.adverts[destination]
                old_path, old_metric = advert.path, advert.metric
                self._derive(link, advert, destination)
                if advert.path == old_path and advert.metric == old_metric:
                    continue
                self.counters["adverts_derived"] += 1
                derived += 1
                self._check_path(link, destination, advert, now)
                self._ref_path(advert.path)
                self._unref_paths((_Advert(0, 0, old_path),), now)
                self._index(neighbour, destination, advert.valid and advert.path is not None)
                self._recompute(destination, now)
                if destination in self._routes:
                    link.mark(destination, now)
                if destination in link.dependents:
                    stack.append(destination)
        if derived:
            link.derive.charge(derived, now)

    def _path_fault(self, path: tuple[PeerId, ...]) -> str | None:
        """Why ``path`` (neighbour ... destination) is not a route now, or None if it is one."""
        if len(set(path)) != len(path):
            return "path_loop"
        if self.peer_id in path:
            return "via_us"
        if len(path) > self.config.max_path:
            return "path_too_long"
        records = self._records
        for x, y in itertools.pairwise(path):
            rx = records.get(x)
            ry = records.get(y)
            if rx is None or ry is None:
                return "missing_record"
            if y not in rx.neighbours or x not in ry.neighbours:
                return "unattested"
        return None

    def _wait_for_records(
        self, link: _Link, path: tuple[PeerId, ...], destination: PeerId, now: float
    ) -> None:
        """Re-examine ``destination`` when a newer record of an end of a faulty link arrives, and
        ask the neighbour that sent the path for the records that would attest it."""
        records = self._records
        for x, y in itertools.pairwise(path):
            rx = records.get(x)
            ry = records.get(y)
            x_ok = rx is not None and y in rx.neighbours
            y_ok = ry is not None and x in ry.neighbours
            if x_ok and y_ok:
                continue
            for origin, ok in ((x, x_ok), (y, y_ok)):
                if len(self._waiting) < self.config.max_records or origin in self._waiting:
                    self._waiting.setdefault(origin, {})[destination] = None
                    self._unref.pop(origin, None)
                if not ok:
                    self._ask(link, origin, now)

    def _ask(self, link: _Link, origin: PeerId, now: float) -> None:
        """Ask ``link``'s neighbour for its record of ``origin``, unless a request for it is out
        (to any neighbour) and not yet overdue: one copy of a record travels, not one per path."""
        if origin == self.peer_id:
            return
        asked = self._asked
        due = asked.get(origin)
        if due is not None and due > now:
            return
        asked.pop(origin, None)
        if len(asked) >= self.config.max_records:
            del asked[next(iter(asked))]
        asked[origin] = now + 2 * self._rto(link)
        link.wants[origin] = None
        link.pending_at = min(link.pending_at, now)
        self.counters["records_asked"] += 1

    def _forget_adverts(self, neighbour: PeerId, link: _Link, now: float) -> None:
        adverts, link.adverts = link.adverts, {}
        link.dependents = {}
        self._unindex_all(neighbour, adverts)
        self._unref_paths(adverts.values(), now)
        for destination in adverts:
            self._recompute(destination, now)

    def _index(self, neighbour: PeerId, destination: PeerId, usable: bool) -> None:
        """Keep ``_advertisers`` to the usable adverts (valid, with a path): a hub's neighbours'
        paths through the hub itself are kept for children() but never looked at for a route."""
        if usable:
            self._advertisers.setdefault(destination, set()).add(neighbour)
            return
        holders = self._advertisers.get(destination)
        if holders is not None:
            holders.discard(neighbour)
            if not holders:
                del self._advertisers[destination]

    def _unindex_all(self, neighbour: PeerId, destinations: dict[PeerId, _Advert]) -> None:
        index = self._advertisers
        for destination in destinations:
            holders = index.get(destination)
            if holders is not None:
                holders.discard(neighbour)
                if not holders:
                    del index[destination]

    def _resend_all(self, link: _Link, now: float) -> None:
        self.counters["full_resends"] += 1
        for sent in link.unacked.values():
            for destination in sent.parts.withdrawals:  # it may still hold what these withdrew
                link.sent[destination] = _UNKNOWN
        link.unacked.clear()
        link.rtx_at = math.inf
        link.defining.clear()  # their definitions will never be acknowledged
        link.deferred.clear()  # marked again below with everything else
        for destination in link.sent:
            link.sent[destination] = _UNKNOWN
            link.mark(destination, now)
        link.sent_base.clear()
        link.sent_deps.clear()
        for destination in self._routes:
            link.mark(destination, now)
        link.records_sent.clear()
        link.mark_record(self.peer_id, now)

    # -- route selection -----------------------------------------------------------------------

    def _recompute(self, destination: PeerId, now: float) -> None:
        if destination == self.peer_id:
            return
        cands: list[tuple[int, bytes, PeerId, tuple[PeerId, ...]]] = []
        direct = self._links.get(destination)
        if direct is not None:
            cands.append((direct.cost, destination.key, destination, (destination,)))
        links = self._links
        for neighbour in self._advertisers.get(destination, ()):
            link = links.get(neighbour)
            advert = link.adverts.get(destination) if link is not None else None
            if link is None or advert is None or not advert.valid or advert.path is None:
                continue  # valid: attested, without us, no loop (checked on arrival)
            if len(advert.path) > 2 and self._contradicted(advert.path, destination):
                continue
            metric = advert.metric + link.cost
            if metric < INFINITY:
                cands.append((metric, neighbour.key, neighbour, advert.path))
        old = self._routes.get(destination)
        if not cands:
            if old is not None:
                del self._routes[destination]
                self.counters["route_changes"] += 1
                self._advertise(destination, now)
            return
        cands.sort(key=lambda c: (c[0], c[1]))
        best = cands[0]
        if old is not None and old[0].next_hop != best[2]:
            current = next((c for c in cands if c[2] == old[0].next_hop), None)
            if current is not None and best[0] * (1 + self.config.switch_margin) >= current[0]:
                best = current
        chosen = [best, *(c for c in cands if c is not best)][: 1 + self.config.max_backups]
        record = self._records.get(destination)
        seqno = record.seqno if record is not None else 0
        previous = {r.next_hop: r for r in old} if old is not None else {}
        routes = []
        for metric, _, next_hop, path in chosen:
            r = previous.get(next_hop)
            if r is None or r.path != path or r.metric != metric or r.seqno != seqno:
                r = Route(destination, next_hop, path, metric, seqno, now)
            routes.append(r)
        self._routes[destination] = routes
        if old is None or old[0].next_hop != routes[0].next_hop:
            self.counters["route_changes"] += 1
        if old is None or old[0].path != routes[0].path or old[0].metric != routes[0].metric:
            self._advertise(destination, now)

    def _contradicted(self, path: tuple[PeerId, ...], destination: PeerId) -> bool:
        """Whether a neighbour on ``path`` (after its first hop) told us itself that it no longer
        reaches ``destination``, or only through us: then the path is a ghost of a route that
        is gone (BGP's consistency assertions). When a destination is cut off, the paths
        through the cut are withdrawn one neighbour at a time, and each table would otherwise
        try, and advertise, every stale path its other neighbours still offer."""
        links = self._links
        for hop in path[1:-1]:
            link = links.get(hop)
            if link is not None:
                theirs = link.adverts.get(destination)
                if (
                    theirs is not None
                    and not theirs.elsewhere
                    and (theirs.path is None or self.peer_id in theirs.path)
                ):
                    return True
        return False

    def _advertise(self, destination: PeerId, now: float) -> None:
        for link in self._links.values():
            link.mark(destination, now)

    def _advertise_via(self, next_hops: set[PeerId], now: float) -> None:
        """Look again at the adverts of every route whose primary goes via ``next_hops``."""
        if next_hops:
            for destination, routes in self._routes.items():
                if routes[0].next_hop in next_hops:
                    self._advertise(destination, now)

    def _advertisable(self, route: Route) -> bool:
        """Whether our records attest the first link (both ends list each other): a neighbour
        would refuse the route otherwise. The rest of the path was checked when it arrived."""
        if len(route.path) >= self.config.max_path or route.next_hop not in self._own_listed:
            return False
        theirs = self._records.get(route.next_hop)
        return theirs is not None and self.peer_id in theirs.neighbours

    # -- sending -------------------------------------------------------------------------------

    def messages_to_send(self, now: float) -> list[tuple[PeerId, bytes]]:
        """Overlay plaintexts (prefix included) to seal into each neighbour's hop session."""
        self._now = now
        self._refresh_own(now)
        out: list[tuple[PeerId, bytes]] = []
        for neighbour, link in self._links.items():
            if link.rtx_at <= now:
                rtx_at = math.inf
                for msg_no, sent in link.unacked.items():
                    if sent.deadline <= now:
                        sent.rto = min(sent.rto * 2, self.config.max_rto)
                        sent.deadline = now + sent.rto
                        self.counters["retransmissions"] += 1
                        out.append((neighbour, self._emit(link, msg_no, sent)))
                    rtx_at = min(rtx_at, sent.deadline)
                link.rtx_at = rtx_at
            allowed = now >= link.last_update + self.config.min_update_interval
            if (link.pending or link.pending_records or link.wants) and allowed:
                if len(link.unacked) >= self.config.max_unacked:
                    self._resend_all(link, now)
                items = self._items_for(neighbour, link)
                if link.next_msg_no + len(items) >= 2**32 or link.next_index > MAX_ID_INDEX // 2:
                    # Message numbers or id indices run out: a new epoch starts both again.
                    self._new_epoch(link, now)
                    items = self._items_for(neighbour, link)
                for parts in pack_update(items, self._budget, link.out_ids):
                    msg_no = link.next_msg_no
                    content = RouteUpdate(
                        epoch=link.epoch,
                        msg_no=msg_no,
                        records=tuple(parts.records),
                        routes=tuple(parts.routes),
                        withdrawals=tuple(parts.withdrawals),
                        elsewhere=tuple(parts.elsewhere),
                        wants=tuple(parts.wants),
                        defines=tuple(parts.defines),
                    )
                    defines = defined_ids(content, link.out_ids)
                    first = link.next_index
                    if first + len(defines) > MAX_ID_INDEX + 1:  # cannot happen below half: be safe
                        self._new_epoch(link, now)
                        break
                    link.next_index = first + len(defines)
                    self.counters["ids_defined"] += len(defines)
                    link.next_msg_no = msg_no + 1
                    rto = self._rto(link)
                    tail = encode_tail(content, link.out_ids, first)
                    sent = _Sent(parts, now + rto, rto, tail, tuple(zip(defines, itertools.count(first))))
                    link.unacked[msg_no] = sent
                    link.rtx_at = min(link.rtx_at, now + rto)
                    out.append((neighbour, self._emit(link, msg_no, sent)))
                if items:
                    link.last_update = now
                link.pending_at = math.inf
            while link.pending_acks and now >= link.ack_at:
                room = (self._budget - HEADER_LEN - ACKS_HEAD - COUNTS_LEN) // 4
                out.append((neighbour, self._emit(link, 0, None, min(room, MAX_ACKS))))
        return out

    def _rto(self, link: _Link) -> float:
        if link.srtt is None:
            return self.config.initial_rto
        return min(max(3 * link.srtt + self.config.ack_delay, self.config.min_rto), self.config.max_rto)

    def _emit(self, link: _Link, msg_no: int, sent: _Sent | None, max_acks: int = 0) -> bytes:
        """Message ``msg_no`` (``sent``: its content; None: a pure ack) with the acks that fit."""
        if sent is not None:
            max_acks = min(MAX_ACKS, (self._budget - HEADER_LEN - ACKS_HEAD - len(sent.tail)) // 4)
        acks = tuple(link.pending_acks[:max_acks])
        del link.pending_acks[: len(acks)]
        if not link.pending_acks:
            link.ack_at = math.inf
        head = encode_head(RouteUpdate(link.epoch, msg_no, link.peer_epoch or 0, acks, view=link.view))
        self.counters["updates_sent"] += 1
        return overlay_packet(
            OverlayType.ROUTE_UPDATE, head + (sent.tail if sent is not None else _EMPTY_TAIL)
        )

    def _too_long(self, link: _Link, entry: RouteEntry, items: list[Item]) -> bool:
        """Whether ``entry`` cannot carry the ids ``link``'s neighbour does not know yet in one
        message; then their definitions go ahead (in ``items``) unless already on their way."""
        room = self._budget - HEADER_LEN - COUNTS_LEN
        if 3 + 34 * len(entry.hops) <= room or item_size(entry, set(), link.out_ids) <= room:
            return False  # (the first test spares the hashing of every hop of most entries)
        new = [
            hop for hop in dict.fromkeys(entry.hops) if hop not in link.out_ids and hop not in link.defining
        ]
        chunk = (self._budget - HEADER_LEN - COUNTS_LEN) // 32
        for i in range(0, len(new), chunk):
            items.append(Define(tuple(new[i : i + chunk])))
        link.defining.update(new)
        self.counters["paths_deferred"] += 1
        return True

    def _new_epoch(self, link: _Link, now: float) -> None:
        """Start our view of the link again: message numbers and id indices from the start, and
        the whole table sent again (the neighbour forgets what our old epoch told it)."""
        link.epoch = self._rng.getrandbits(32) or 1
        link.next_msg_no = 1
        link.out_ids = {}
        link.defining.clear()
        link.next_index = 0
        self._resend_all(link, now)

    def _items_for(self, neighbour: PeerId, link: _Link) -> list[Item]:
        items: list[Item] = []

        for origin in link.pending_records:  # ours, and those it asked for
            record = self._own if origin == self.peer_id else self._records.get(origin)
            if record is None or origin == neighbour:
                continue
            held = link.records_sent.get(origin)
            if held is not None and held.seqno == record.seqno:
                continue
            link.records_sent[origin] = record
            self.counters["records_sent"] += 1
            items.append(record)
        link.pending_records.clear()
        routes_of = self._routes

        def depth(destination: PeerId) -> int:
            routes = routes_of.get(destination)
            return len(routes[0].path) if routes is not None else 0

        while link.pending:
            # Nearer destinations first: a path goes out after the paths it may be based on.
            batch, link.pending = sorted(link.pending, key=depth), {}
            for destination in batch:
                self._item_for(neighbour, link, destination, items)
        for origin in link.wants:
            items.append(Want(origin))
        link.wants.clear()
        return items

    def _item_for(self, neighbour: PeerId, link: _Link, destination: PeerId, items: list[Item]) -> None:
        """What ``neighbour`` should now hear about ``destination``, if it holds something else."""
        routes = self._routes.get(destination)
        want: Route | str | None = None
        if routes is not None and routes[0].next_hop == neighbour:
            # It only needs to know that it is our next hop (children, knows_route_of): a short
            # path that changes only when our next hop does, no records, no metric.
            want = _VIA_IT
        elif routes is not None and self._advertisable(routes[0]):
            want = routes[0]
            theirs = link.adverts.get(destination)
            if (
                theirs is not None
                and theirs.valid
                and theirs.path is not None
                and theirs.metric < want.metric
            ):
                # It has a better route than ours without us: it would never choose ours,
                # so it gets no path (nor the records for it); when its route gets worse
                # than ours or goes, it tells us and gets ours (see the module docstring).
                want = _ELSEWHERE
        sent = link.sent.get(destination)
        if sent is None and want is None:
            return
        if sent is not None and want is not None and _same(sent, want):
            if sent is not want:
                link.sent[destination] = want  # the route itself, not a derived copy of it
            return
        if want is None:
            self._set_sent(link, destination, None, None)
            items.append(destination)
            return
        if want is _ELSEWHERE:
            self._set_sent(link, destination, want, None)
            self.counters["elsewhere_sent"] += 1
            items.append(Elsewhere(destination))
            return
        if isinstance(want, str):
            self._set_sent(link, destination, want, None)
            hops = (neighbour,) if destination == neighbour else (neighbour, destination)
            items.append(RouteEntry(hops, 0))
            return
        entry, base = self._entry(link, want)
        if self._too_long(link, entry, items):
            link.deferred.add(destination)  # back when its ids are acknowledged
            return
        self._set_sent(link, destination, want, base)
        self.counters["paths_sent"] += 1
        if base is not None:
            self.counters["paths_based"] += 1
        items.append(entry)

    def _entry(self, link: _Link, route: Route) -> tuple[RouteEntry, PeerId | None]:
        """``route`` as an entry for ``link``'s neighbour: based on the deepest destination on
        its path that the neighbour holds our path to, as a prefix of this one, else the whole
        path."""
        path = route.path
        sent = link.sent
        for j in range(len(path) - 1, 0, -1):
            base = sent.get(path[j - 1])
            if base.__class__ is Route and len(base.path) == j and base.path == path[:j]:
                delta = route.metric - base.metric
                if 0 <= delta < INFINITY:
                    return RouteEntry(path[j - 1 :], delta, True), path[j - 1]
        return RouteEntry(path, route.metric), None

    def _set_sent(
        self, link: _Link, destination: PeerId, value: Route | str | None, base: PeerId | None
    ) -> None:
        """Record what ``link``'s neighbour will hold for ``destination`` (None: nothing) and
        what it will derive, in turn, for the destinations we sent based on it: the same paths
        built on the new one (nothing to send for them when that is still our route), or
        unknown (they will be sent again) when that path cannot be built on."""
        sent, sent_base, sent_deps = link.sent, link.sent_base, link.sent_deps
        old_base = sent_base.pop(destination, None)
        if old_base is not None:
            self._undepend(sent_deps, old_base, destination)
        if base is not None:
            sent_base[destination] = base
            sent_deps.setdefault(base, []).append(destination)
        stack: list[tuple[PeerId, Route | str | None]] = [(destination, value)]
        max_path, now = self.config.max_path, self._now
        while stack:
            x, new = stack.pop()
            old = sent.pop(x, None)
            if new is not None:
                sent[x] = new
            deps = sent_deps.get(x)
            if not deps or new is old:
                continue
            for dep in list(deps):
                link.mark(dep, now)
                was = sent.get(dep)
                derived: Route | str = _UNKNOWN
                if isinstance(old, Route) and isinstance(new, Route) and isinstance(was, Route):
                    path = new.path + was.path[len(old.path) :]
                    metric = new.metric + was.metric - old.metric
                    if len(path) < max_path and metric < INFINITY and len(set(path)) == len(path):
                        derived = Route(dep, path[0], path, metric, 0, 0.0)
                if derived is _UNKNOWN:  # it will be sent again: no longer built on x
                    del sent_base[dep]
                    self._undepend(sent_deps, x, dep)
                stack.append((dep, derived))

    # -- timers --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` or :meth:`messages_to_send` next has work (None: never)."""
        t = self._own_dirty_at if self._own_dirty else math.inf
        if self._down_listed:
            t = min(t, next(iter(self._down_listed.values())) + self.config.record_hold)
        interval = self.config.min_update_interval
        for link in self._links.values():
            t = min(t, link.ack_at)
            if link.pending or link.pending_records or link.wants:
                t = min(t, max(link.pending_at, link.last_update + interval))
            t = min(t, link.rtx_at)
            if link.moved_since is not None:
                t = min(t, link.moved_since + self.config.cost_hold)
        return None if t == math.inf else t

    def handle_timer(self, now: float) -> None:
        self._now = now
        self._refresh_own(now)
        self._expire(now)
        for neighbour, link in list(self._links.items()):
            if link.moved_since is not None and now - link.moved_since >= self.config.cost_hold:
                self._check_cost(neighbour, link, now)

    # -- queries -------------------------------------------------------------------------------

    def next_hop(self, destination: PeerId) -> PeerId | None:
        routes = self._routes.get(destination)
        if routes is None:
            return None
        if self._router is not None:
            choice = self._router(destination, list(routes))
            if choice is not None:
                if any(r.next_hop == choice for r in routes):
                    return choice
                self.counters["router_invalid"] += 1
        return routes[0].next_hop

    def routes(self, destination: PeerId) -> list[Route]:
        return list(self._routes.get(destination, ()))

    def all_routes(self) -> list[list[Route]]:
        return [list(routes) for routes in self._routes.values()]

    def neighbours(self) -> list[PeerId]:
        return list(self._links)

    def children(self, origin: PeerId) -> set[PeerId]:
        """Neighbours whose chosen path to ``origin`` has us as their next hop."""
        children = set()
        for neighbour, link in self._links.items():
            advert = link.adverts.get(origin)
            path = advert.path if advert is not None else None
            if path is not None and len(path) > 1 and path[1] == self.peer_id:
                children.add(neighbour)
        return children

    def knows_route_of(self, neighbour: PeerId, origin: PeerId) -> bool:
        """Whether ``neighbour`` told us its current path to ``origin`` (or is ``origin``)."""
        link = self._links.get(neighbour)
        if link is None:
            return False
        if neighbour == origin:
            return True
        advert = link.adverts.get(origin)
        return advert is not None and (advert.path is not None or advert.elsewhere)

    def set_router(self, fn: Router | None) -> None:
        """``fn(destination, routes primary first)`` picks the next hop; None: the default choice."""
        self._router = fn

    def record(self, origin: PeerId) -> OriginRecord | None:
        """The latest verified record of ``origin`` (ours included)."""
        return self._own if origin == self.peer_id else self._records.get(origin)
