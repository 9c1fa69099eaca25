"""An iterative Kademlia lookup as a pull-based state machine (rust-libp2p ``ClosestPeersIter``).

The caller asks :meth:`ClosestPeersIter.next` what to do: ``Waiting(peer)`` (send that peer a request),
``WAITING_AT_CAPACITY`` (alpha requests are in flight: wait for answers) or ``FINISHED``. It feeds
the answers back with :meth:`on_success` (with the closer peers the answer named) and
:meth:`on_failure` (timeout, garbage). Nothing here sends, sleeps or reads a clock.

Termination: the k closest peers known have all answered (none of them is still in flight), or no
peer is left to ask. After alpha
answers in a row bring no peer closer than the closest known, the lookup is *stalled* and widens its
parallelism to k (it then asks all the remaining k closest at once). In value mode the caller ends
the lookup with :meth:`on_value` when a peer returned a valid record.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..addr import Address
from ..identity import PeerId


class PeerState(enum.Enum):
    NOT_CONTACTED = "not_contacted"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Waiting:
    """Send a request to this peer now."""

    peer_id: PeerId
    address: Address


class _Signal(enum.Enum):
    WAITING_AT_CAPACITY = "waiting_at_capacity"
    FINISHED = "finished"


WAITING_AT_CAPACITY: Final = _Signal.WAITING_AT_CAPACITY
FINISHED: Final = _Signal.FINISHED
Step = Waiting | _Signal


class _Entry:
    __slots__ = ("address", "distance", "hop", "peer_id", "state")

    def __init__(self, peer_id: PeerId, address: Address, distance: int, hop: int) -> None:
        self.peer_id = peer_id
        self.address = address
        self.distance = distance
        self.hop = hop
        self.state = PeerState.NOT_CONTACTED


class ClosestPeersIter:
    """Finds the ``k`` peers closest to ``target``, asking at most ``alpha`` at a time."""

    def __init__(
        self,
        target: PeerId,
        seeds: Iterable[tuple[PeerId, Address]],
        *,
        k: int = 20,
        alpha: int = 3,
        exclude: PeerId | None = None,
        max_candidates: int | None = None,
    ) -> None:
        if k < 1 or alpha < 1:
            raise ValueError("k and alpha must be >= 1")
        self.target = target
        self.k = k
        self.alpha = alpha
        self._t = int.from_bytes(target.key, "big")
        self._exclude = exclude
        self._max = max_candidates if max_candidates is not None else 4 * k
        self._entries: list[_Entry] = []  # sorted by distance
        self._by_peer: dict[PeerId, _Entry] = {}
        self._num_waiting = 0
        self._no_progress = 0
        self.stalled = False
        self.finished = False
        self.value_from: PeerId | None = None
        self.value_hop = 0
        for peer, address in seeds:
            self._insert(peer, address, 1)

    # ---- internals ------------------------------------------------------------------------------

    def _insert(self, peer: PeerId, address: Address, hop: int) -> bool:
        if peer == self._exclude:
            return False
        known = self._by_peer.get(peer)
        if known is not None:
            if hop < known.hop:
                known.hop = hop
            return False
        entry = _Entry(peer, address, int.from_bytes(peer.key, "big") ^ self._t, hop)
        pos = bisect.bisect_left(self._entries, entry.distance, key=lambda e: e.distance)
        if pos >= self._max:
            return False
        self._entries.insert(pos, entry)
        self._by_peer[peer] = entry
        if len(self._entries) > self._max:
            # Drop the farthest entry that is not in flight (its answer would still be accounted).
            for i in range(len(self._entries) - 1, -1, -1):
                e = self._entries[i]
                if e.state is not PeerState.WAITING:
                    del self._entries[i]
                    del self._by_peer[e.peer_id]
                    break
        return True

    # ---- the iterator ---------------------------------------------------------------------------

    def add_peers(self, peers: Iterable[tuple[PeerId, Address]]) -> None:
        """Add first-hop candidates while the lookup runs (a seed that answered late)."""
        if not self.finished:
            for peer, address in peers:
                self._insert(peer, address, 1)

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    def next(self, now: float) -> Step:
        """What to do next. ``now`` is accepted for symmetry with the other cores (timeouts are the
        caller's: it reports them with :meth:`on_failure`)."""
        if self.finished:
            return FINISHED
        parallelism = self.k if self.stalled else self.alpha
        succeeded = 0
        closer_in_flight = False
        for e in self._entries:
            state = e.state
            if state is PeerState.SUCCEEDED:
                succeeded += 1
                if succeeded >= self.k:
                    if closer_in_flight:
                        return WAITING_AT_CAPACITY  # one of the k closest has yet to answer
                    self.finished = True
                    return FINISHED
            elif state is PeerState.NOT_CONTACTED:
                if self._num_waiting >= parallelism:
                    return WAITING_AT_CAPACITY
                e.state = PeerState.WAITING
                self._num_waiting += 1
                return Waiting(e.peer_id, e.address)
            elif state is PeerState.WAITING:
                if self._num_waiting >= parallelism:
                    return WAITING_AT_CAPACITY
                closer_in_flight = True
        if self._num_waiting > 0:
            return WAITING_AT_CAPACITY
        self.finished = True
        return FINISHED

    def on_success(self, peer: PeerId, closer: Iterable[tuple[PeerId, Address]]) -> bool:
        """``peer`` answered with ``closer`` peers. False if ``peer`` was not awaited (ignored)."""
        e = self._by_peer.get(peer)
        if e is None or e.state is not PeerState.WAITING or self.finished:
            return False
        e.state = PeerState.SUCCEEDED
        self._num_waiting -= 1
        best = self._entries[0].distance if self._entries else None
        for p, a in closer:
            self._insert(p, a, e.hop + 1)
        if self._entries and (best is None or self._entries[0].distance < best):
            self._no_progress = 0
            self.stalled = False
        else:
            self._no_progress += 1
            if self._no_progress >= self.alpha:
                self.stalled = True
        return True

    def on_failure(self, peer: PeerId) -> bool:
        """A request to ``peer`` failed (timeout or garbage). False if ``peer`` was not awaited."""
        e = self._by_peer.get(peer)
        if e is None or e.state is not PeerState.WAITING:
            return False
        e.state = PeerState.FAILED
        self._num_waiting -= 1
        return True

    def retry(self, peer: PeerId) -> bool:
        """Ask ``peer`` again (its request was lost): it goes back to not-contacted."""
        e = self._by_peer.get(peer)
        if e is None or e.state is not PeerState.WAITING or self.finished:
            return False
        e.state = PeerState.NOT_CONTACTED
        self._num_waiting -= 1
        return True

    def on_value(self, peer: PeerId) -> None:
        """Value mode: ``peer`` returned a valid record; the lookup is finished."""
        e = self._by_peer.get(peer)
        if e is not None:
            if e.state is PeerState.WAITING:
                self._num_waiting -= 1
            e.state = PeerState.SUCCEEDED
            self.value_hop = e.hop
        self.value_from = peer
        self.finished = True

    def finish(self) -> None:
        self.finished = True

    def state_of(self, peer: PeerId) -> PeerState | None:
        e = self._by_peer.get(peer)
        return e.state if e else None

    def closest(self) -> list[tuple[PeerId, Address]]:
        """The (up to) k closest peers that answered, closest first."""
        return [(e.peer_id, e.address) for e in self._entries if e.state is PeerState.SUCCEEDED][: self.k]

    @property
    def hops(self) -> int:
        """Hops to the record (value mode) or to the farthest-in-hops of the k closest that answered."""
        if self.value_from is not None:
            return self.value_hop
        hs = [e.hop for e in self._entries if e.state is PeerState.SUCCEEDED][: self.k]
        return max(hs, default=0)

    def waiting_peers(self) -> list[PeerId]:
        return [e.peer_id for e in self._entries if e.state is PeerState.WAITING]
