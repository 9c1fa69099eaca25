"""Origin records: each node's signed list of its neighbours, the evidence behind every route.

A node signs ``(origin, seqno, sorted neighbour keys)`` under a domain-separated message and signs
again, with a higher seqno, whenever its neighbour set changes. A route advert's path is accepted
only when both ends of every link on it list each other in their latest verified records, so a
node cannot advertise a link that does not exist without both ends' signatures.

Wire form (also the form carried inside ROUTE_UPDATE messages; self-delimiting)::

    origin:32 | seqno:8 | count:2 | neighbour:32 * count (sorted, unique, never origin) | signature:64

Every malformation raises :class:`~coremesh.errors.DecodeError`.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import DecodeError
from ..identity import PeerId, verify_signature

RECORD_DOMAIN: Final = b"coremesh-route-origin-v1"
SIGNATURE_LEN: Final = 64
MAX_RECORD_NEIGHBOURS: Final = 255
_HEAD = struct.Struct("!32sQH")
RECORD_OVERHEAD: Final = _HEAD.size + SIGNATURE_LEN  # a record's bytes besides 32 per neighbour


def record_size(neighbours: int) -> int:
    """The encoded size of a record listing ``neighbours`` neighbours."""
    return RECORD_OVERHEAD + 32 * neighbours


def signed_message(origin: PeerId, seqno: int, neighbours: Iterable[PeerId]) -> bytes:
    keys = sorted(n.key for n in neighbours)
    return RECORD_DOMAIN + _HEAD.pack(origin.key, seqno, len(keys)) + b"".join(keys)


@dataclass(frozen=True, slots=True)
class OriginRecord:
    """``origin``'s signed statement that ``neighbours`` are its neighbours (as of ``seqno``)."""

    origin: PeerId
    seqno: int
    neighbours: tuple[PeerId, ...]  # sorted by key, unique, without origin
    signature: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.seqno < 2**64:
            raise ValueError("seqno must fit in 64 bits")
        if len(self.neighbours) > MAX_RECORD_NEIGHBOURS:
            raise ValueError(f"a record lists at most {MAX_RECORD_NEIGHBOURS} neighbours")
        keys = [n.key for n in self.neighbours]
        if keys != sorted(set(keys)) or self.origin.key in keys:
            raise ValueError("neighbours must be sorted, unique and exclude the origin")
        if len(self.signature) != SIGNATURE_LEN:
            raise ValueError("a signature is 64 bytes")

    @classmethod
    def create(
        cls,
        origin: PeerId,
        seqno: int,
        neighbours: Iterable[PeerId],
        sign: Callable[[bytes], bytes],
    ) -> OriginRecord:
        ordered = tuple(sorted(set(neighbours), key=lambda p: p.key))
        return cls(origin, seqno, ordered, sign(signed_message(origin, seqno, ordered)))

    def message(self) -> bytes:
        return signed_message(self.origin, self.seqno, self.neighbours)

    def verify(self, verify: Callable[[PeerId, bytes, bytes], bool] = verify_signature) -> bool:
        return verify(self.origin, self.message(), self.signature)

    def encode(self) -> bytes:
        return (
            _HEAD.pack(self.origin.key, self.seqno, len(self.neighbours))
            + b"".join(n.key for n in self.neighbours)
            + self.signature
        )

    def size(self) -> int:
        return record_size(len(self.neighbours))

    @classmethod
    def decode(cls, data: bytes) -> OriginRecord:
        record, end = decode_record_from(data, 0)
        if end != len(data):
            raise DecodeError("trailing bytes after an origin record")
        return record


def decode_record_from(
    data: bytes, pos: int, held: Callable[[bytes], OriginRecord | None] | None = None
) -> tuple[OriginRecord, int]:
    """Decode one record starting at ``pos``; returns it and the position after it.

    ``held(origin key)`` gives the record the caller already holds for an origin: when the bytes
    carry that very version (the same bytes) it is returned as is, without building the neighbour
    list's ids again (most records a table receives are copies it holds)."""
    if len(data) < pos + _HEAD.size:
        raise DecodeError("truncated origin record")
    origin, seqno, count = _HEAD.unpack_from(data, pos)
    pos += _HEAD.size
    if count > MAX_RECORD_NEIGHBOURS:
        raise DecodeError(f"origin record lists {count} neighbours (max {MAX_RECORD_NEIGHBOURS})")
    end = pos + 32 * count + SIGNATURE_LEN
    if len(data) < end:
        raise DecodeError("truncated origin record")
    if held is not None:
        known = held(origin)
        if (
            known is not None
            and known.seqno == seqno
            and len(known.neighbours) == count
            and known.signature == data[end - SIGNATURE_LEN : end]
            and b"".join([n.key for n in known.neighbours]) == data[pos : end - SIGNATURE_LEN]
        ):
            return known, end
    keys = [bytes(data[pos + 32 * i : pos + 32 * (i + 1)]) for i in range(count)]
    for a, b in itertools.pairwise(keys):
        if not a < b:
            raise DecodeError("origin record neighbours are not sorted and unique")
    if origin in keys:
        raise DecodeError("origin record lists its own origin")
    signature = bytes(data[end - SIGNATURE_LEN : end])
    record = OriginRecord(PeerId(bytes(origin)), seqno, tuple(PeerId(k) for k in keys), signature)
    return record, end
