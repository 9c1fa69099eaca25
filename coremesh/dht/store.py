"""The record store: other peers' signed records, newest sequence number wins, bounded, purged on expiry."""

from __future__ import annotations

from ..identity import PeerId
from .messages import StoreStatus
from .records import PeerRecord, RecordRejected


class RecordStore:
    """At most ``max_records`` records. When full, a record closer to ``local`` (XOR) displaces the
    farthest one, so a node keeps the records it is responsible for."""

    def __init__(self, local: PeerId, max_records: int, max_ttl: float) -> None:
        self._local = int.from_bytes(local.key, "big")
        self.max_records = max_records
        self.max_ttl = max_ttl
        self._records: dict[PeerId, PeerRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def get(self, peer: PeerId, wall_now: float) -> PeerRecord | None:
        record = self._records.get(peer)
        if record is not None and record.expires_at <= wall_now:
            del self._records[peer]
            return None
        return record

    def records(self) -> list[PeerRecord]:
        return list(self._records.values())

    def put(self, record: PeerRecord, wall_now: float) -> StoreStatus:
        """Store ``record``. Raises :class:`RecordRejected` (``stale_seq``, ``store_full``, or a
        reason of :meth:`PeerRecord.check`). Storing the very record already held is a no-op."""
        current = self._records.get(record.peer_id)
        if current is not None and current.expires_at > wall_now:
            if current.seq > record.seq:
                raise RecordRejected("stale_seq", f"seq {record.seq} is older than {current.seq}")
            if current.seq == record.seq:
                if current == record:
                    return StoreStatus.STORED
                raise RecordRejected("stale_seq", f"another record with seq {record.seq} is held")
        record.check(wall_now, max_ttl=self.max_ttl)
        if current is None and len(self._records) >= self.max_records:
            self.purge(wall_now)
            if len(self._records) >= self.max_records:
                farthest = max(self._records, key=lambda p: int.from_bytes(p.key, "big") ^ self._local)
                mine = int.from_bytes(record.peer_id.key, "big") ^ self._local
                if mine >= int.from_bytes(farthest.key, "big") ^ self._local:
                    raise RecordRejected("store_full")
                del self._records[farthest]
        self._records[record.peer_id] = record
        return StoreStatus.STORED

    def purge(self, wall_now: float) -> int:
        """Drop expired records; returns how many."""
        dead = [p for p, r in self._records.items() if r.expires_at <= wall_now]
        for p in dead:
            del self._records[p]
        return len(dead)
