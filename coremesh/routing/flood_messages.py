"""The bodies of the overlay's BROADCAST, MULTICAST and MEMBERSHIP messages (after the type byte).

Every message is signed by its origin over a domain-separation string and every other byte of its
encoding, so that no signed object of the mesh (route records, DHT records, ...) can stand for
another. ``seqno`` is the origin's message number: ``max(previous + 1, wall_ms)``, so it grows across
restarts without storage and tells the age of a message. Layouts (big-endian)::

    BROADCAST   version:1 | origin:32 | seqno:8 | signature:64 | data
    MULTICAST   version:1 | origin:32 | seqno:8 | glen:1 | group | signature:64 | targets:32 | data
    MEMBERSHIP  version:1 | count:1 | count × record
    record      member:32 | seqno:8 | ngroups:1 | ngroups × (glen:1 | group) | signature:64

A MULTICAST's ``targets`` is a Bloom filter (256 bits, 4 bits per member, salted by the seqno) of the
members this copy is for; each hop rewrites it for the copies it sends on, so it is outside the
signature (a hop could drop the message anyway). All ones means every member.

A group name is UTF-8 of 1 to 64 bytes; a record's groups are distinct and sorted by their bytes
(one encoding per group set). Every malformation raises :class:`DecodeError`; a bad group name given
by the local program raises :class:`InvalidGroup` (a ``ValueError``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import DecodeError, LocalProtocolError
from ..identity import PeerId

FLOOD_VERSION: Final = 1
SIGNATURE_LEN: Final = 64
MAX_GROUP_LEN: Final = 64
MAX_SEQNO: Final = (1 << 64) - 1
MAX_RECORD_GROUPS: Final = 255
TARGETS_LEN: Final = 32  # bytes of a MULTICAST's target filter (256 bits)
TARGETS_HASHES: Final = 4  # bits set per member
ALL_TARGETS: Final = b"\xff" * TARGETS_LEN

BROADCAST_DOMAIN: Final = b"coremesh-broadcast-v1\x00"
MULTICAST_DOMAIN: Final = b"coremesh-multicast-v1\x00"
MEMBERSHIP_DOMAIN: Final = b"coremesh-membership-v1\x00"

_HEAD = struct.Struct("!B32sQ")  # version, origin, seqno
_RECORD_HEAD = struct.Struct("!32sQB")  # member, seqno, ngroups
BROADCAST_OVERHEAD: Final = _HEAD.size + SIGNATURE_LEN
MEMBERSHIP_HEADER_LEN: Final = 2  # version, count
MIN_RECORD_LEN: Final = _RECORD_HEAD.size + SIGNATURE_LEN


class InvalidGroup(LocalProtocolError, ValueError):
    """A group name is not UTF-8 text of 1 to 64 bytes."""


def group_bytes(group: str) -> bytes:
    """The UTF-8 form of a group name; :class:`InvalidGroup` unless it is 1 to 64 bytes of UTF-8."""
    if not isinstance(group, str):
        raise InvalidGroup(f"a group name must be text, got {type(group).__name__}")
    try:
        raw = group.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidGroup(f"group name {group!r} cannot be encoded as UTF-8") from None
    if not 1 <= len(raw) <= MAX_GROUP_LEN:
        raise InvalidGroup(f"a group name is 1 to {MAX_GROUP_LEN} bytes of UTF-8, got {len(raw)} bytes")
    return raw


def multicast_overhead(group: str) -> int:
    """Bytes of a MULTICAST body besides its data."""
    return _HEAD.size + 1 + len(group_bytes(group)) + SIGNATURE_LEN + TARGETS_LEN


def _target_bits(member: PeerId, seqno: int) -> bytes:
    # One byte per hash is a bit index 0..255; salted by the seqno so that no two members collide
    # in every message.
    return hashlib.blake2b(seqno.to_bytes(8, "big") + member.key, digest_size=TARGETS_HASHES).digest()


def target_filter(members: Iterable[PeerId], seqno: int) -> bytes:
    """The MULTICAST target filter of ``members`` for the message numbered ``seqno``."""
    bits = bytearray(TARGETS_LEN)
    for member in members:
        for index in _target_bits(member, seqno):
            bits[index >> 3] |= 1 << (index & 7)
    return bytes(bits)


def in_target_filter(targets: bytes, member: PeerId, seqno: int) -> bool:
    """True if ``member`` may be in ``targets`` (false positives possible, no false negatives)."""
    return all(targets[index >> 3] & (1 << (index & 7)) for index in _target_bits(member, seqno))


def _check_seqno(seqno: int) -> None:
    if isinstance(seqno, bool) or not isinstance(seqno, int) or not 0 <= seqno <= MAX_SEQNO:
        raise ValueError(f"seqno must be an integer 0 to 2^64-1, got {seqno!r}")


def _check_signature(signature: bytes) -> None:
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LEN:
        raise ValueError(f"a signature is {SIGNATURE_LEN} bytes")


@dataclass(frozen=True, slots=True)
class Broadcast:
    origin: PeerId
    seqno: int
    data: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_seqno(self.seqno)
        _check_signature(self.signature)

    def signed_bytes(self) -> bytes:
        return broadcast_signed_bytes(self.origin, self.seqno, self.data)

    def encode(self) -> bytes:
        head = _HEAD.pack(FLOOD_VERSION, self.origin.key, self.seqno)
        return head + self.signature + self.data


def broadcast_signed_bytes(origin: PeerId, seqno: int, data: bytes) -> bytes:
    return BROADCAST_DOMAIN + origin.key + seqno.to_bytes(8, "big") + data


def decode_broadcast(body: bytes) -> Broadcast:
    _, origin, seqno = _head(body, BROADCAST_OVERHEAD, "BROADCAST")
    pos = _HEAD.size
    signature = bytes(body[pos : pos + SIGNATURE_LEN])
    return Broadcast(origin, seqno, bytes(body[pos + SIGNATURE_LEN :]), signature)


@dataclass(frozen=True, slots=True)
class Multicast:
    origin: PeerId
    seqno: int
    group: str
    data: bytes
    signature: bytes
    targets: bytes = ALL_TARGETS  # not signed: see the module's docstring

    def __post_init__(self) -> None:
        _check_seqno(self.seqno)
        group_bytes(self.group)
        _check_signature(self.signature)
        if not isinstance(self.targets, bytes) or len(self.targets) != TARGETS_LEN:
            raise ValueError(f"a target filter is {TARGETS_LEN} bytes")

    def signed_bytes(self) -> bytes:
        return multicast_signed_bytes(self.origin, self.seqno, self.group, self.data)

    def encode(self) -> bytes:
        raw = group_bytes(self.group)
        head = _HEAD.pack(FLOOD_VERSION, self.origin.key, self.seqno) + bytes((len(raw),)) + raw
        return head + self.signature + self.targets + self.data


def multicast_signed_bytes(origin: PeerId, seqno: int, group: str, data: bytes) -> bytes:
    raw = group_bytes(group)
    return MULTICAST_DOMAIN + origin.key + seqno.to_bytes(8, "big") + bytes((len(raw),)) + raw + data


def decode_multicast(body: bytes) -> Multicast:
    _, origin, seqno = _head(body, _HEAD.size + 2 + SIGNATURE_LEN + TARGETS_LEN, "MULTICAST")
    pos = _HEAD.size
    glen = body[pos]
    pos += 1
    if not 1 <= glen <= MAX_GROUP_LEN or len(body) < pos + glen + SIGNATURE_LEN + TARGETS_LEN:
        raise DecodeError("bad MULTICAST group")
    group = _group_text(body[pos : pos + glen])
    pos += glen
    signature = bytes(body[pos : pos + SIGNATURE_LEN])
    pos += SIGNATURE_LEN
    targets = bytes(body[pos : pos + TARGETS_LEN])
    try:
        return Multicast(origin, seqno, group, bytes(body[pos + TARGETS_LEN :]), signature, targets)
    except ValueError as exc:
        raise DecodeError(f"invalid MULTICAST message: {exc}") from None


@dataclass(frozen=True, slots=True)
class MembershipRecord:
    """A member's signed statement of its full group set (empty: it is in no group)."""

    member: PeerId
    seqno: int
    groups: tuple[str, ...]
    signature: bytes

    def __post_init__(self) -> None:
        _check_seqno(self.seqno)
        if not isinstance(self.groups, tuple) or len(self.groups) > MAX_RECORD_GROUPS:
            raise ValueError(f"groups must be a tuple of at most {MAX_RECORD_GROUPS} names")
        raws = [group_bytes(g) for g in self.groups]
        if raws != sorted(set(raws)):
            raise ValueError("a record's groups are distinct and sorted by their UTF-8 bytes")
        _check_signature(self.signature)

    def signed_bytes(self) -> bytes:
        return membership_signed_bytes(self.member, self.seqno, self.groups)

    def encode(self) -> bytes:
        return _record_body(self.member, self.seqno, self.groups) + self.signature


def sorted_groups(groups: set[str] | frozenset[str]) -> tuple[str, ...]:
    """A group set in record order (sorted by UTF-8 bytes)."""
    return tuple(sorted(groups, key=group_bytes))


def _record_body(member: PeerId, seqno: int, groups: tuple[str, ...]) -> bytes:
    parts = [_RECORD_HEAD.pack(member.key, seqno, len(groups))]
    for g in groups:
        raw = group_bytes(g)
        parts.append(bytes((len(raw),)) + raw)
    return b"".join(parts)


def membership_signed_bytes(member: PeerId, seqno: int, groups: tuple[str, ...]) -> bytes:
    return MEMBERSHIP_DOMAIN + _record_body(member, seqno, groups)


def record_size(groups: tuple[str, ...] | list[str]) -> int:
    """Encoded size of a record with these groups."""
    return MIN_RECORD_LEN + sum(1 + len(group_bytes(g)) for g in groups)


def encode_membership(records: list[MembershipRecord] | tuple[MembershipRecord, ...]) -> bytes:
    """A MEMBERSHIP body carrying 1 to 255 records."""
    if not 1 <= len(records) <= 255:
        raise ValueError("a MEMBERSHIP message carries 1 to 255 records")
    return bytes((FLOOD_VERSION, len(records))) + b"".join(r.encode() for r in records)


def decode_membership(body: bytes) -> list[MembershipRecord]:
    if len(body) < MEMBERSHIP_HEADER_LEN + MIN_RECORD_LEN:
        raise DecodeError("truncated MEMBERSHIP message")
    if body[0] != FLOOD_VERSION:
        raise DecodeError(f"unsupported MEMBERSHIP version {body[0]}")
    count = body[1]
    if count == 0:
        raise DecodeError("empty MEMBERSHIP message")
    pos = MEMBERSHIP_HEADER_LEN
    records = []
    for _ in range(count):
        if len(body) < pos + MIN_RECORD_LEN:
            raise DecodeError("truncated membership record")
        key, seqno, ngroups = _RECORD_HEAD.unpack_from(body, pos)
        pos += _RECORD_HEAD.size
        groups = []
        for _ in range(ngroups):
            if pos >= len(body):
                raise DecodeError("truncated membership record")
            glen = body[pos]
            pos += 1
            if not 1 <= glen <= MAX_GROUP_LEN or len(body) < pos + glen:
                raise DecodeError("bad group in membership record")
            groups.append(_group_text(body[pos : pos + glen]))
            pos += glen
        if len(body) < pos + SIGNATURE_LEN:
            raise DecodeError("truncated membership record")
        signature = bytes(body[pos : pos + SIGNATURE_LEN])
        pos += SIGNATURE_LEN
        raws = [g.encode("utf-8") for g in groups]
        if raws != sorted(set(raws)):
            raise DecodeError("membership record groups are not distinct and sorted")
        try:
            records.append(MembershipRecord(PeerId(bytes(key)), seqno, tuple(groups), signature))
        except ValueError as exc:
            raise DecodeError(f"invalid membership record: {exc}") from None
    if pos != len(body):
        raise DecodeError("trailing bytes in MEMBERSHIP message")
    return records


def _head(body: bytes, minimum: int, what: str) -> tuple[int, PeerId, int]:
    if len(body) < minimum:
        raise DecodeError(f"truncated {what} message")
    version, origin, seqno = _HEAD.unpack_from(body)
    if version != FLOOD_VERSION:
        raise DecodeError(f"unsupported {what} version {version}")
    return version, PeerId(bytes(origin)), seqno


def _group_text(raw: bytes) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("group name is not UTF-8") from None
