"""The ROUTE_UPDATE body: acks, origin records, route entries and withdrawals between neighbours.

One message (the body after the overlay prefix and the type byte)::

    version:1 | epoch:4 | msg_no:4 | view:1 | ack_count:1 | [ack_epoch:4 | ack:4 * ack_count]
    | sections:1                                            (a bit for each section present, below)
    | [record_count:1 | origin record * record_count]        (coremesh/routing/records.py)
    | [first_index:2 | id_count:2 | id:32 * id_count]       (ids defined here, indices first_index...)
    | [route_count:2 | (metric:2 | based:1 bit | hops:7 bits | id_index:2 * hops) * route_count]
    | [withdrawal_count:2 | id_index:2 * withdrawal_count]
    | [elsewhere_count:2 | id_index:2 * elsewhere_count]
    | [want_count:2 | id_index:2 * want_count]

``ack_epoch`` is there only with acks, and a section only when its bit is set (and then it is not
empty): most messages carry one or two sections, and a pure ack none (a message is ~30 bytes
of framing before the 57 of the hop session and UDP, so what it need not carry counts).

``epoch`` is the sender's random number for its numbering of messages and ids on the link: new
when a link comes up, unless the sender still holds both ends' ids from before a short outage; then
it keeps its epoch (and numbers on) and moves ``view`` on by one instead, which tells the receiver
that the sender lost what it had been told (the receiver sends it everything again, naming the ids
by index as before);
``msg_no`` numbers the sender's messages within an epoch from 1 (0: a pure ack, which carries
nothing else and is not acknowledged); ``ack_epoch`` and the acks name the receiver's messages
that arrived. A route entry's hops are the sender's path without the sender: next hop first,
destination last (``metric`` < :data:`INFINITY`). A *based* entry (the top bit of its hops
byte) extends a path the sender told before: its first id is a destination the sender advertised
to this receiver (the base), the rest are the hops after it, and ``metric`` is what the path adds
to the base's metric. The receiver derives the path (the base's path, then the rest) and the
metric, and derives them again whenever the base's advert changes: when a path changes somewhere
upstream, one entry for the destination where it changed moves every path the sender built on it
(see :mod:`~coremesh.routing.table`). A withdrawal names a destination the sender no
longer reaches; an "elsewhere" names a destination the sender reaches at a lower metric than the
receiver's, so that it needs no path from the receiver (see :mod:`~coremesh.routing.table`): it
says only that the sender's choice is known and does not go through the receiver.

Entries name ids by 2-byte index. The id table defines ids for the sender's current epoch: an id
defined in a message the receiver acknowledged is named by its index alone from then on (the
receiver keeps the definitions of the sender's epoch), so a path costs 2 bytes per hop once its
ids have crossed the link once. An id not yet confirmed is defined again in every message that
names it, each time at fresh indices (a block from ``first_index``), so loss and reordering never
leave a name undefined; a sender whose indices run out starts a new epoch. A message may define ids
no entry names: a path too long to carry all its new ids (32 bytes each) waits until messages of
definitions alone are acknowledged, then costs 2 bytes a hop. A "want" asks for the
receiver's latest record of an origin: records are pulled by the tables that miss them, not pushed
along with every path (see :mod:`~coremesh.routing.table`).

:func:`pack_update` splits records, routes and withdrawals into bodies that each fit a size
budget. Every malformation raises :class:`~coremesh.errors.DecodeError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from ..errors import DecodeError
from ..identity import PeerId
from .overlay import OVERLAY_PREFIX
from .records import OriginRecord, decode_record_from, record_size

VERSION: Final = 3
INFINITY: Final = 0xFFFF
MAX_ACKS: Final = 255
MAX_RECORDS: Final = 255
MAX_HOPS: Final = 127  # the hops byte's top bit marks a based entry
MAX_ID_INDEX: Final = 0xFFFF  # id indices of one sender epoch: a sender past it starts a new epoch
_HEAD = struct.Struct("!BIIBB")
HEADER_LEN: Final = _HEAD.size  # without the acks
ACKS_HEAD: Final = 4  # the ack epoch, before acks
COUNTS_LEN: Final = 1 + 1 + 4 + 2 + 2 + 2 + 2  # at most: sections, record count, id table head, counts
_RECORDS, _IDS, _ROUTES, _WITHDRAWALS, _ELSEWHERE, _WANTS = (1 << i for i in range(6))
OVERLAY_OVERHEAD: Final = len(OVERLAY_PREFIX) + 1  # prefix and type byte before a body


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """The sender reaches ``hops[-1]`` through ``hops`` (next hop first) at ``metric``; or, when
    ``based``, through its path to ``hops[0]`` (a destination it advertised), then ``hops[1:]``,
    at ``metric`` more than that path."""

    hops: tuple[PeerId, ...]
    metric: int
    based: bool = False

    def __post_init__(self) -> None:
        if not 1 + self.based <= len(self.hops) <= MAX_HOPS:
            raise ValueError(f"a route entry has 1..{MAX_HOPS} hops (a based one at least 2)")
        if not 0 <= self.metric < INFINITY:
            raise ValueError("a route metric is 0..INFINITY-1")

    @property
    def destination(self) -> PeerId:
        return self.hops[-1]


@dataclass(frozen=True, slots=True)
class RouteUpdate:
    epoch: int
    msg_no: int
    ack_epoch: int = 0
    acks: tuple[int, ...] = ()
    records: tuple[OriginRecord, ...] = ()
    routes: tuple[RouteEntry, ...] = ()
    withdrawals: tuple[PeerId, ...] = ()
    elsewhere: tuple[PeerId, ...] = ()
    wants: tuple[PeerId, ...] = ()
    view: int = 0  # the sender's view of the link within its epoch (see the module docstring)
    # What a decoded message's id table defined (from first_index on): the receiver keeps them
    # for the sender's later messages. Not part of the update's meaning.
    first_index: int = field(default=0, compare=False)
    defined: tuple[PeerId, ...] = field(default=(), compare=False)
    # Ids to define even if no entry names them (ahead of a path too long to carry them all).
    defines: tuple[PeerId, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for n in (self.epoch, self.msg_no, self.ack_epoch, *self.acks):
            if not 0 <= n < 2**32:
                raise ValueError("epochs, message and ack numbers fit in 32 bits")
        if not self.acks:
            object.__setattr__(self, "ack_epoch", 0)  # it names the epoch of acks: none, nothing
        if not 0 <= self.view <= 255:
            raise ValueError("a view number fits in a byte")
        if len(self.acks) > MAX_ACKS or len(self.records) > MAX_RECORDS:
            raise ValueError("too many acks or records in one message")
        if self.msg_no == 0 and (
            self.records or self.routes or self.withdrawals or self.elsewhere or self.wants
        ):
            raise ValueError("a pure ack (msg_no 0) carries nothing else")


def encode_update(
    update: RouteUpdate,
    confirmed: Mapping[PeerId, int] | None = None,
    first_index: int = 0,
) -> bytes:
    """The body of ``update``. Ids in ``confirmed`` (the link's ids the receiver acknowledged, with
    their indices) are named by index alone; every other id is defined in this message's id
    table, at ``first_index`` on in order of appearance (:func:`defined_ids` lists them)."""
    return encode_head(update) + encode_tail(update, confirmed, first_index)


def encode_head(update: RouteUpdate) -> bytes:
    """The header and acks of ``update``'s body (what changes when a message is sent again)."""
    head = _HEAD.pack(VERSION, update.epoch, update.msg_no, update.view, len(update.acks))
    if not update.acks:
        return head
    return head + struct.pack(f"!I{len(update.acks)}I", update.ack_epoch, *update.acks)


def encode_tail(
    update: RouteUpdate,
    confirmed: Mapping[PeerId, int] | None = None,
    first_index: int = 0,
) -> bytes:
    """What follows the acks in ``update``'s body (see :func:`encode_update`)."""
    known = confirmed if confirmed is not None else {}
    ids: dict[PeerId, int] = {}

    def index(peer: PeerId) -> int:
        i = known.get(peer)
        if i is None:
            i = ids.get(peer)
            if i is None:
                i = ids[peer] = first_index + len(ids)
        return i

    for peer in update.defines:
        index(peer)
    routes = b"".join(
        struct.pack(f"!HB{len(e.hops)}H", e.metric, len(e.hops) | 0x80 * e.based, *map(index, e.hops))
        for e in update.routes
    )
    withdrawals = b"".join(struct.pack("!H", index(d)) for d in update.withdrawals)
    elsewhere = b"".join(struct.pack("!H", index(d)) for d in update.elsewhere)
    wants = b"".join(struct.pack("!H", index(d)) for d in update.wants)
    counts = (len(update.routes), len(update.withdrawals), len(update.elsewhere), len(update.wants))
    if max(counts) > 0xFFFF or first_index + len(ids) > MAX_ID_INDEX + 1:
        raise ValueError("too many ids, routes, withdrawals, elsewhere entries or wants in one message")
    out = [b""]
    sections = 0
    if update.records:
        sections |= _RECORDS
        out += (bytes((len(update.records),)), *(r.encode() for r in update.records))
    if ids:
        sections |= _IDS
        out += (struct.pack("!HH", first_index, len(ids)), *(p.key for p in ids))
    for bit, count, body in (
        (_ROUTES, len(update.routes), routes),
        (_WITHDRAWALS, len(update.withdrawals), withdrawals),
        (_ELSEWHERE, len(update.elsewhere), elsewhere),
        (_WANTS, len(update.wants), wants),
    ):
        if count:
            sections |= bit
            out += (struct.pack("!H", count), body)
    out[0] = bytes((sections,))
    return b"".join(out)


def defined_ids(update: RouteUpdate, confirmed: Mapping[PeerId, int]) -> list[PeerId]:
    """The ids :func:`encode_update` defines in ``update``'s id table, in index order."""
    seen: dict[PeerId, None] = {p: None for p in update.defines if p not in confirmed}
    for entry in update.routes:
        for hop in entry.hops:
            if hop not in confirmed:
                seen[hop] = None
    for peer in (*update.withdrawals, *update.elsewhere, *update.wants):
        if peer not in confirmed:
            seen[peer] = None
    return list(seen)


def decode_update(
    body: bytes,
    peer_of: Callable[[bytes], PeerId] = PeerId,
    held: Callable[[bytes], OriginRecord | None] | None = None,
    known: Mapping[int, PeerId] | None = None,
) -> RouteUpdate:
    """Decode a ROUTE_UPDATE body (after the type byte); DecodeError on anything malformed.

    ``peer_of`` makes the PeerId of each 32-byte id (a table passes its interning function, so
    that paths share one object per id); ``held`` the records it holds (see
    :func:`~coremesh.routing.records.decode_record_from`); ``known`` the ids the sender defined
    in earlier messages of its epoch (an index defined neither there nor here is malformed, and
    so is a definition that contradicts one of them). The update's ``defined`` lists this
    message's definitions from ``first_index`` on, for the caller to keep."""
    if len(body) < HEADER_LEN:
        raise DecodeError("truncated route update")
    version, epoch, msg_no, view, ack_count = _HEAD.unpack_from(body, 0)
    if version != VERSION:
        raise DecodeError(f"unsupported route update version {version}")
    pos = HEADER_LEN
    ack_epoch, acks = 0, tuple[int, ...]()
    if ack_count:
        ack_epoch, *ack_list = _take(body, pos, f"!I{ack_count}I")
        acks = tuple(ack_list)
        pos += ACKS_HEAD + 4 * ack_count
    sections = _take(body, pos, "!B")[0]
    pos += 1
    if sections >= 1 << 6:
        raise DecodeError(f"unknown route update sections {sections:#x}")
    if msg_no == 0 and sections:
        raise DecodeError("a pure ack (message number 0) carries routes or records")

    def count(bit: int, fmt: str = "!H") -> int:
        nonlocal pos
        if not sections & bit:
            return 0
        n = _take(body, pos, fmt)[0]
        pos += struct.calcsize(fmt)
        if n == 0:
            raise DecodeError("an empty route update section")
        return int(n)

    records = []
    for _ in range(count(_RECORDS, "!B")):
        record, pos = decode_record_from(body, pos, held)
        records.append(record)
    first, id_count = 0, 0
    if sections & _IDS:
        first, id_count = _take(body, pos, "!HH")
        pos += 4
        if id_count == 0:
            raise DecodeError("an empty route update section")
    if len(body) < pos + 32 * id_count:
        raise DecodeError("truncated route update id table")
    if first + id_count > MAX_ID_INDEX + 1:
        raise DecodeError("route update id indices past the last")
    keys = [bytes(body[pos + 32 * i : pos + 32 * (i + 1)]) for i in range(id_count)]
    pos += 32 * id_count
    if len(set(keys)) != len(keys):
        raise DecodeError("repeated id in a route update's id table")
    peers = [peer_of(k) for k in keys]
    earlier = known if known is not None else {}
    for i, peer in enumerate(peers, first):
        bound = earlier.get(i)
        if bound is not None and bound != peer:
            raise DecodeError(f"route update redefines id index {i}")
    table = _Ids(peers, first, earlier)
    routes = []
    for _ in range(count(_ROUTES)):
        metric, hops = _take(body, pos, "!HB")
        pos += 3
        based = hops >= 0x80
        hops &= 0x7F
        if metric >= INFINITY or hops <= based:
            raise DecodeError("bad route entry (metric INFINITY, no hops or a base alone)")
        indices = _take(body, pos, f"!{hops}H")
        pos += 2 * hops
        routes.append(RouteEntry(tuple(map(table.peer, indices)), metric, based))
    withdrawal_count = count(_WITHDRAWALS)
    withdrawals = tuple(map(table.peer, _take(body, pos, f"!{withdrawal_count}H")))
    pos += 2 * withdrawal_count
    elsewhere_count = count(_ELSEWHERE)
    elsewhere = tuple(map(table.peer, _take(body, pos, f"!{elsewhere_count}H")))
    pos += 2 * elsewhere_count
    want_count = count(_WANTS)
    wants = tuple(map(table.peer, _take(body, pos, f"!{want_count}H")))
    pos += 2 * want_count
    if pos != len(body):
        raise DecodeError("trailing bytes after a route update")
    return RouteUpdate(
        epoch,
        msg_no,
        ack_epoch,
        acks,
        tuple(records),
        tuple(routes),
        withdrawals,
        elsewhere,
        wants,
        view,
        first_index=first,
        defined=tuple(peers),
    )


class _Ids:
    """A message's id indices: its own table (from ``first``), then the sender's earlier ones."""

    __slots__ = ("earlier", "first", "peers")

    def __init__(self, peers: list[PeerId], first: int, earlier: Mapping[int, PeerId]) -> None:
        self.peers = peers
        self.first = first
        self.earlier = earlier

    def peer(self, i: int) -> PeerId:
        k = i - self.first
        if 0 <= k < len(self.peers):
            return self.peers[k]
        peer = self.earlier.get(i)
        if peer is None:
            raise DecodeError(f"route update id index {i} is not defined")
        return peer


def _take(body: bytes, pos: int, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if len(body) < pos + size:
        raise DecodeError("truncated route update")
    return struct.unpack_from(fmt, body, pos)


@dataclass(slots=True)
class UpdateParts:
    """What one message will carry (before message and ack numbers are given)."""

    records: list[OriginRecord] = field(default_factory=list)
    routes: list[RouteEntry] = field(default_factory=list)
    withdrawals: list[PeerId] = field(default_factory=list)
    elsewhere: list[PeerId] = field(default_factory=list)
    wants: list[PeerId] = field(default_factory=list)
    defines: list[PeerId] = field(default_factory=list)
    size: int = HEADER_LEN + COUNTS_LEN  # the encoded size without acks
    ids: set[PeerId] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(
            self.records or self.routes or self.withdrawals or self.elsewhere or self.wants or self.defines
        )


@dataclass(frozen=True, slots=True)
class Elsewhere:
    """An item for :func:`pack_update`: the sender reaches ``destination`` at a lower metric than
    the receiver does."""

    destination: PeerId


@dataclass(frozen=True, slots=True)
class Want:
    """An item for :func:`pack_update`: the sender asks for the receiver's record of ``origin``."""

    origin: PeerId


@dataclass(frozen=True, slots=True)
class Define:
    """An item for :func:`pack_update`: ids to define before a path that names them all would fit."""

    ids: tuple[PeerId, ...]


Item = OriginRecord | RouteEntry | Elsewhere | Want | Define | PeerId  # a PeerId alone: a withdrawal


_NOTHING: Mapping[PeerId, int] = {}


def item_size(item: Item, ids: set[PeerId], known: Mapping[PeerId, int] = _NOTHING) -> int:
    """Bytes ``item`` adds to a message already naming ``ids``, the receiver knowing ``known``."""
    if isinstance(item, OriginRecord):
        return item.size()
    if isinstance(item, Define):
        return 32 * sum(1 for p in set(item.ids) if p not in ids and p not in known)
    if isinstance(item, RouteEntry):
        new = set(item.hops) - ids
        return 3 + 2 * len(item.hops) + 32 * (len(new) - len(new.intersection(known)) if known else len(new))
    peer = (
        item.destination if isinstance(item, Elsewhere) else item.origin if isinstance(item, Want) else item
    )
    return 2 + (0 if peer in ids or peer in known else 32)


def max_item_size(max_hops: int, max_record_neighbours: int) -> int:
    """The largest single item :func:`pack_update` may be given, for these limits."""
    return max(3 + 2 * max_hops, record_size(max_record_neighbours))


def pack_update(
    items: Sequence[Item], budget: int, known: Mapping[PeerId, int] = _NOTHING
) -> list[UpdateParts]:
    """Split ``items`` (records, routes, withdrawals in the order given) into messages whose body
    without acks is at most ``budget`` bytes; the order is kept (a record goes before, or in the
    same message as, the routes listed after it). ``known``: the ids the receiver holds (named by
    index alone, see :func:`encode_update`). ValueError if one item cannot fit alone."""
    out: list[UpdateParts] = []
    cur = UpdateParts()
    for item in items:
        size = item_size(item, cur.ids, known)
        if cur.size + size > budget or (isinstance(item, OriginRecord) and len(cur.records) == MAX_RECORDS):
            if cur:
                out.append(cur)
            cur = UpdateParts()
            size = item_size(item, cur.ids, known)
            if cur.size + size > budget:
                raise ValueError(f"a route update item of {size} bytes cannot fit in {budget}")
        cur.size += size
        if isinstance(item, OriginRecord):
            cur.records.append(item)
        elif isinstance(item, RouteEntry):
            cur.routes.append(item)
            cur.ids.update(item.hops)
        elif isinstance(item, Elsewhere):
            cur.elsewhere.append(item.destination)
            cur.ids.add(item.destination)
        elif isinstance(item, Want):
            cur.wants.append(item.origin)
            cur.ids.add(item.origin)
        elif isinstance(item, Define):
            cur.defines.extend(item.ids)
            cur.ids.update(item.ids)
        else:
            cur.withdrawals.append(item)
            cur.ids.add(item)
    if cur:
        out.append(cur)
    return out
