"""The Kademlia routing table: 256 k-buckets by XOR distance, least-recently-seen first.

Only contacts whose address was verified (a signed response to a request we sent to that address)
are ever inserted; the node enforces that, this table trusts its caller. A full bucket keeps new
contacts in a small replacement cache; its least-recently-seen contact is only evicted once it is
dead (``max_failures`` consecutive failures), and then the newest replacement takes its place. At
most ``max_per_prefix`` contacts of one IPv4 /24 (IPv6 /48) share a bucket, loopback exempt, so one
host cannot fill a node's table. A peer that answers garbage is removed and refused for a while.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Iterator

from ..addr import Address
from ..identity import PeerId
from .config import DhtConfig

NUM_BUCKETS = 256


class Contact:
    """One routing table entry (mutable, owned by the table)."""

    __slots__ = ("address", "failures", "key", "last_seen", "peer_id", "prefix")

    def __init__(self, peer_id: PeerId, address: Address, now: float, prefix: bytes | None) -> None:
        self.peer_id = peer_id
        self.key = int.from_bytes(peer_id.key, "big")
        self.address = address
        self.last_seen = now
        self.failures = 0
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"Contact({self.peer_id.short()}…, {self.address}, failures={self.failures})"


class Update(enum.Enum):
    """What :meth:`RoutingTable.update` did."""

    ADDED = "added"
    REFRESHED = "refreshed"  # already known: moved to most-recently-seen
    PENDING = "pending"  # bucket full: kept as a replacement (ping the bucket's oldest contact)
    PREFIX_LIMIT = "prefix_limit"  # too many contacts of this address prefix in the bucket
    DEMOTED = "demoted"  # the peer answered garbage recently
    SELF = "self"


def address_prefix(address: Address, v4_bits: int, v6_bits: int) -> bytes | None:
    """The network prefix the per-bucket limit counts, or None if exempt (loopback) or unparsable."""
    host = address.host
    if ":" not in host:
        try:
            packed = socket.inet_pton(socket.AF_INET, host)
        except OSError:
            return None
        if packed[0] == 127:
            return None
        value = int.from_bytes(packed, "big") >> (32 - v4_bits)
        return bytes((4, v4_bits)) + value.to_bytes(4, "big")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.is_loopback:
        return None
    bits = v4_bits if ip.version == 4 else v6_bits
    top = int.from_bytes(ip.packed, "big") >> (len(ip.packed) * 8 - bits)
    return bytes((ip.version, bits)) + top.to_bytes((bits + 7) // 8, "big")


class _Bucket:
    __slots__ = ("contacts", "replacements")

    def __init__(self) -> None:
        self.contacts: OrderedDict[PeerId, Contact] = OrderedDict()  # oldest first
        self.replacements: OrderedDict[PeerId, Contact] = OrderedDict()  # oldest first


class RoutingTable:
    """k-buckets around ``local``. Time is passed in; nothing here sends anything."""

    def __init__(self, local: PeerId, config: DhtConfig) -> None:
        self.local = local
        self._local_key = int.from_bytes(local.key, "big")
        self.config = config
        self._buckets: dict[int, _Bucket] = {}
        self._index: dict[PeerId, Contact] = {}
        self._demoted: OrderedDict[PeerId, float] = OrderedDict()  # peer -> until
        self.garbage = 0

    # ---- queries --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, peer: object) -> bool:
        return peer in self._index

    def get(self, peer: PeerId) -> Contact | None:
        return self._index.get(peer)

    def contacts(self) -> Iterator[Contact]:
        return iter(self._index.values())

    def bucket_index(self, peer: PeerId) -> int:
        return (self._local_key ^ int.from_bytes(peer.key, "big")).bit_length() - 1

    def bucket(self, index: int) -> list[Contact]:
        b = self._buckets.get(index)
        return list(b.contacts.values()) if b else []

    def bucket_size(self, index: int) -> int:
        b = self._buckets.get(index)
        return len(b.contacts) if b else 0

    def replacements(self, index: int) -> list[Contact]:
        b = self._buckets.get(index)
        return list(b.replacements.values()) if b else []

    def sizes(self) -> dict[str, int]:
        """How much the table holds: contacts, replacement contacts, buckets, demoted peers."""
        return {
            "contacts": len(self._index),
            "replacements": sum(len(b.replacements) for b in self._buckets.values()),
            "buckets": len(self._buckets),
            "demoted": len(self._demoted),
        }

    def nonempty_buckets(self) -> list[int]:
        return sorted(i for i, b in self._buckets.items() if b.contacts)

    def oldest(self, index: int) -> Contact | None:
        """The least-recently-seen contact of bucket ``index`` (the one to check for liveness)."""
        b = self._buckets.get(index)
        if not b or not b.contacts:
            return None
        return next(iter(b.contacts.values()))

    def is_full(self, peer: PeerId) -> bool:
        b = self._buckets.get(self.bucket_index(peer))
        return b is not None and len(b.contacts) >= self.config.k

    def admits(self, peer: PeerId, address: Address, now: float) -> bool:
        """Whether :meth:`update` would add ``peer`` at ``address`` now (so verifying it is worth a PING)."""
        if peer == self.local or peer in self._index or self.is_demoted(peer, now):
            return False
        bucket = self._buckets.get(self.bucket_index(peer))
        if bucket is None:
            return True
        return len(bucket.contacts) < self.config.k and self._prefix_ok(bucket, self._prefix(address), peer)

    def is_demoted(self, peer: PeerId, now: float) -> bool:
        until = self._demoted.get(peer)
        if until is None:
            return False
        if until <= now:
            del self._demoted[peer]
            return False
        return True

    def closest(self, target: PeerId, count: int, *, exclude: PeerId | None = None) -> list[Contact]:
        """The ``count`` contacts closest to ``target`` by XOR distance, closest first."""
        t = int.from_bytes(target.key, "big")
        candidates = (c for c in self._index.values() if c.peer_id != exclude)
        return heapq.nsmallest(count, candidates, key=lambda c: c.key ^ t)

    # ---- updates --------------------------------------------------------------------------------

    def _prefix(self, address: Address) -> bytes | None:
        return address_prefix(address, self.config.ipv4_prefix, self.config.ipv6_prefix)

    def _prefix_ok(self, bucket: _Bucket, prefix: bytes | None, peer: PeerId) -> bool:
        if prefix is None:
            return True
        same = sum(1 for c in bucket.contacts.values() if c.prefix == prefix and c.peer_id != peer)
        return same < self.config.max_per_prefix

    def update(self, peer: PeerId, address: Address, now: float) -> Update:
        """Record that ``peer`` answered from ``address`` (verified). Returns what happened."""
        if peer == self.local:
            return Update.SELF
        if self.is_demoted(peer, now):
            return Update.DEMOTED
        index = self.bucket_index(peer)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        contact = bucket.contacts.get(peer)
        if contact is not None and contact.address == address:
            contact.last_seen = now
            contact.failures = 0
            bucket.contacts.move_to_end(peer)
            return Update.REFRESHED
        prefix = self._prefix(address)
        if contact is not None:
            if contact.address != address:
                if not self._prefix_ok(bucket, prefix, peer):
                    return Update.PREFIX_LIMIT
                contact.address, contact.prefix = address, prefix
            contact.last_seen = now
            contact.failures = 0
            bucket.contacts.move_to_end(peer)
            return Update.REFRESHED
        if not self._prefix_ok(bucket, prefix, peer):
            return Update.PREFIX_LIMIT
        if len(bucket.contacts) < self.config.k:
            bucket.replacements.pop(peer, None)
            contact = Contact(peer, address, now, prefix)
            bucket.contacts[peer] = contact
            self._index[peer] = contact
            return Update.ADDED
        if self.config.replacement_cache_size:
            old = bucket.replacements.pop(peer, None)
            if old is None and len(bucket.replacements) >= self.config.replacement_cache_size:
                bucket.replacements.popitem(last=False)
            bucket.replacements[peer] = Contact(peer, address, now, prefix)
        return Update.PENDING

    def touch(self, peer: PeerId, address: Address, now: float) -> bool:
        """Mark a known contact as seen (it sent a signed datagram from its known address)."""
        contact = self._index.get(peer)
        if contact is None or contact.address != address:
            return False
        contact.last_seen = now
        self._buckets[self.bucket_index(peer)].contacts.move_to_end(peer)
        return True

    def record_failure(self, peer: PeerId, now: float) -> bool:
        """A request to ``peer`` failed. Returns True if the contact was dead and is now removed."""
        contact = self._index.get(peer)
        if contact is None:
            b = self._buckets.get(self.bucket_index(peer))
            if b is not None:
                b.replacements.pop(peer, None)
            return False
        contact.failures += 1
        if contact.failures < self.config.max_failures:
            return False
        self.remove(peer)
        return True

    def demote(self, peer: PeerId, now: float) -> None:
        """``peer`` answered garbage: remove it and refuse it for ``demotion_period``."""
        self.garbage += 1
        self.remove(peer)
        b = self._buckets.get(self.bucket_index(peer))
        if b is not None:
            b.replacements.pop(peer, None)
        self._demoted[peer] = now + self.config.demotion_period
        self._demoted.move_to_end(peer)
        while len(self._demoted) > 4 * self.config.k * 8:
            self._demoted.popitem(last=False)

    def purge_demotions(self, now: float) -> int:
        """Forget demotions that ended (they are kept in order of their end); returns how many."""
        demoted = self._demoted
        count = 0
        while demoted:
            peer, until = next(iter(demoted.items()))
            if until > now:
                break
            del demoted[peer]
            count += 1
        return count

    def remove(self, peer: PeerId) -> None:
        """Drop ``peer``; the newest replacement that fits the prefix limit takes its slot."""
        contact = self._index.pop(peer, None)
        if contact is None:
            return
        index = self.bucket_index(peer)
        bucket = self._buckets[index]
        del bucket.contacts[peer]
        while bucket.replacements:
            _, repl = bucket.replacements.popitem(last=True)
            if self._prefix_ok(bucket, repl.prefix, repl.peer_id):
                repl.failures = 0
                bucket.contacts[repl.peer_id] = repl
                bucket.contacts.move_to_end(repl.peer_id, last=False)  # unconfirmed lately: check first
                self._index[repl.peer_id] = repl
                break
        if not bucket.contacts and not bucket.replacements:
            del self._buckets[index]
