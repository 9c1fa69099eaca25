"""Events a :class:`~coremesh.dht.DhtNode` reports, drained with ``next_event()``."""

from __future__ import annotations

from dataclasses import dataclass

from ..addr import Address
from ..identity import PeerId
from .records import PeerRecord


@dataclass(frozen=True, kw_only=True, slots=True)
class LookupFinished:
    """A lookup started with ``start_lookup`` ended.

    ``record`` is the newest valid record of ``target`` found (None if no live record was found);
    ``closest`` the k closest peers that answered, closest first; ``hops`` the hop at which the
    record (or the farthest of the closest) was reached; ``elapsed`` seconds since the start.
    """

    query_id: int
    target: PeerId
    record: PeerRecord | None
    closest: tuple[tuple[PeerId, Address], ...]
    hops: int
    elapsed: float
    timed_out: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class BootstrapFinished:
    """The lookup of our own id after joining ended; ``contacts`` is the routing table size."""

    contacts: int


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishFinished:
    """The own record (``seq``) was sent to the closest peers; ``stored`` of them acknowledged it."""

    seq: int
    stored: int
    attempted: int


@dataclass(frozen=True, kw_only=True, slots=True)
class OwnRecordRenewed:
    """The node re-signed its own record before it expired (persist it if you keep it)."""

    record: PeerRecord


Event = LookupFinished | BootstrapFinished | PublishFinished | OwnRecordRenewed
