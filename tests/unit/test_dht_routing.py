"""Routing table: buckets, LRU, replacement cache, eviction only of the dead, prefix limits, demotion."""

from __future__ import annotations

import random

from coremesh.addr import Address
from coremesh.dht import DhtConfig, RoutingTable, Update
from coremesh.dht.routing import address_prefix
from coremesh.identity import PeerId

LOCAL = PeerId(bytes(32))


def peer_in_bucket(index: int, n: int) -> PeerId:
    """The n-th peer id at XOR distance in [2^index, 2^(index+1)) from LOCAL (all zeros)."""
    return PeerId(((1 << index) | n).to_bytes(32, "big"))


def table(**kw: int) -> RoutingTable:
    return RoutingTable(LOCAL, DhtConfig(**kw))  # type: ignore[arg-type]


def test_bucket_index_and_closest() -> None:
    t = table()
    rng = random.Random(1)
    peers = [PeerId(rng.randbytes(32)) for _ in range(100)]
    for i, p in enumerate(peers):
        t.update(p, Address(f"10.0.{i}.1", 1), 0.0)
    assert t.update(LOCAL, Address("10.9.9.9", 1), 0.0) is Update.SELF
    target = PeerId(rng.randbytes(32))
    got = [c.peer_id for c in t.closest(target, 5)]
    assert got == sorted((p for p in peers if p in t), key=target.distance)[:5]
    assert t.bucket_index(peer_in_bucket(200, 7)) == 200


def test_full_bucket_keeps_old_contacts_and_caches_replacements() -> None:
    t = table(k=4, replacement_cache_size=2)
    for n in range(4):
        assert t.update(peer_in_bucket(100, n), Address(f"10.0.{n}.1", 1), float(n)) is Update.ADDED
    assert t.update(peer_in_bucket(100, 9), Address("10.0.9.1", 1), 10.0) is Update.PENDING
    assert t.update(peer_in_bucket(100, 10), Address("10.0.10.1", 1), 11.0) is Update.PENDING
    assert t.update(peer_in_bucket(100, 11), Address("10.0.11.1", 1), 12.0) is Update.PENDING
    assert [c.peer_id for c in t.replacements(100)] == [peer_in_bucket(100, 10), peer_in_bucket(100, 11)]
    oldest = t.oldest(100)
    assert oldest is not None and oldest.peer_id == peer_in_bucket(100, 0)
    # A contact seen again becomes the most recently seen.
    assert t.update(peer_in_bucket(100, 0), Address("10.0.0.1", 1), 20.0) is Update.REFRESHED
    assert t.bucket(100)[-1].peer_id == peer_in_bucket(100, 0)


def test_only_dead_contacts_are_evicted() -> None:
    t = table(k=2, max_failures=3)
    a, b, c = (peer_in_bucket(50, n) for n in range(3))
    t.update(a, Address("10.0.1.1", 1), 0.0)
    t.update(b, Address("10.0.2.1", 1), 0.0)
    t.update(c, Address("10.0.3.1", 1), 1.0)  # replacement
    assert not t.record_failure(a, 2.0)
    assert not t.record_failure(a, 3.0)
    assert a in t  # two failures: not dead yet
    t.update(a, Address("10.0.1.1", 1), 4.0)  # it answered: failures reset
    assert not t.record_failure(a, 5.0)
    assert not t.record_failure(a, 6.0)
    assert t.record_failure(a, 7.0)  # third consecutive failure: dead
    assert a not in t and c in t and b in t


def test_prefix_limit_per_bucket_and_loopback_exemption() -> None:
    t = table(max_per_prefix=2)
    same_24 = [Address(f"198.51.100.{n}", 1) for n in range(1, 6)]
    results = [t.update(peer_in_bucket(120, n), a, 0.0) for n, a in enumerate(same_24)]
    assert results == [Update.ADDED, Update.ADDED] + [Update.PREFIX_LIMIT] * 3
    # Another bucket has its own allowance.
    assert t.update(peer_in_bucket(121, 0), Address("198.51.100.9", 1), 0.0) is Update.ADDED
    # IPv6: the /48 counts.
    v6 = [Address(f"2001:db8:1:{n}::1", 1) for n in range(3)]
    assert [t.update(peer_in_bucket(130, n), a, 0.0) for n, a in enumerate(v6)] == [
        Update.ADDED,
        Update.ADDED,
        Update.PREFIX_LIMIT,
    ]
    # Loopback is exempt: a local mesh on one machine fills buckets freely.
    loop = [t.update(peer_in_bucket(140, n), Address("127.0.0.1", 5000 + n), 0.0) for n in range(10)]
    assert loop == [Update.ADDED] * 10
    assert address_prefix(Address("::1", 1), 24, 48) is None


def test_demoted_peer_is_removed_and_refused_for_a_while() -> None:
    t = table(demotion_period=100)
    p = peer_in_bucket(10, 1)
    t.update(p, Address("10.0.0.1", 1), 0.0)
    t.demote(p, 1.0)
    assert p not in t and t.garbage == 1
    assert t.update(p, Address("10.0.0.1", 1), 50.0) is Update.DEMOTED
    assert t.update(p, Address("10.0.0.1", 1), 102.0) is Update.ADDED


def test_touch_only_refreshes_known_address() -> None:
    t = table()
    p = peer_in_bucket(10, 1)
    t.update(p, Address("10.0.0.1", 1), 0.0)
    assert not t.touch(p, Address("10.0.0.2", 1), 5.0)
    assert t.touch(p, Address("10.0.0.1", 1), 5.0)
    contact = t.get(p)
    assert contact is not None and contact.last_seen == 5.0
