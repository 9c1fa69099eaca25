"""A long-running DHT node's memory stays flat: over simulated hours of churn, every table a node
keeps is bounded by recent traffic (the peers alive now, and those that left within the table's own
time window), never by how many peers it ever heard from."""

from __future__ import annotations

import random

from coremesh.addr import Address
from coremesh.dht import DhtConfig, DhtNode, PeerRecord
from coremesh.dht import messages as m
from coremesh.dht.node import MAX_EVENTS
from coremesh.identity import Identity

from .dht_helpers import WALL, address, build_network, drain, node, sealed

NODES = 20
HOURS = 3
SEED = 7


def test_every_table_of_a_long_running_node_stays_bounded() -> None:
    """A node leaves and a fresh one joins every simulated minute for three hours (180 departures,
    nine times the network), with a lookup each minute. After each minute, for every live node:
    rate-limit entries only for sources heard within a refill (the live peers), verification
    backoffs only within ``verify_backoff``, records only of peers alive or gone within a record's
    lifetime, routing table and replacement caches within their per-bucket sizes."""
    cfg = DhtConfig()
    net, joined = build_network(NODES, seed=SEED, config=cfg)
    rng = random.Random(SEED)
    live: dict[object, DhtNode] = {addr: n for n, addr in joined}
    departures: list[float] = []
    worst: dict[str, int] = {}
    serial = NODES
    for _ in range(HOURS * 60):
        now = net.clock.now
        gone = rng.choice(sorted(live))
        net.detach(gone)  # type: ignore[arg-type]
        del live[gone]
        departures.append(now)
        fresh, at = node(SEED * 100_000 + serial, cfg), address(serial)
        serial += 1
        fresh.bootstrap(rng.sample(sorted(live), 2), now)  # type: ignore[arg-type]
        fresh.publish(PeerRecord.create(fresh.identity, 1, WALL + now + 3600, [("host", str(at))]), now)
        net.attach(at, fresh)
        live[at] = fresh
        src, dst = rng.sample(sorted(live.values(), key=lambda n: n.peer_id.key), 2)
        src.start_lookup(dst.peer_id, now)
        net.run_for(60.0)
        now = net.clock.now
        for n in live.values():
            drain(n)

        def left_within(seconds: float, now: float = now) -> int:
            return sum(1 for t in departures if now - t <= seconds)

        slack = 1.25 * cfg.maintenance_interval  # tables are purged at each maintenance round
        for n in live.values():
            sizes = n.memory_stats()
            for key, value in sizes.items():
                worst[key] = max(worst.get(key, 0), value)
            assert sizes["rate_sources"] <= len(live) + left_within(slack + 2.0), sizes
            assert sizes["verified"] <= len(live) + left_within(cfg.verify_backoff + slack), sizes
            assert sizes["tokens"] <= len(live) + left_within(cfg.token_lifetime + slack), sizes
            assert sizes["records"] <= len(live) + left_within(cfg.record_ttl + slack), sizes
            assert sizes["contacts"] <= cfg.k * sizes["buckets"], sizes
            assert sizes["replacements"] <= cfg.replacement_cache_size * sizes["buckets"], sizes
            assert sizes["demoted"] == 0 and sizes["events"] <= MAX_EVENTS, sizes
            assert sizes["pending"] <= cfg.max_pending_requests, sizes
            assert sizes["queued"] <= 16 * cfg.max_lookups, sizes
    # The run did use the tables that age (bounds on empty tables would prove nothing).
    assert serial == NODES + HOURS * 60
    assert worst["rate_sources"] > 0 and worst["verified"] > 0 and worst["records"] > 0, worst
    assert worst["tokens"] > 0 and worst["replay"] > 0, worst


def test_rate_limit_verification_and_demotion_entries_age_out() -> None:
    """Two hundred peers, each at its own address, send one signed PING: the node keeps a rate-limit
    entry and a verification backoff for each. Once each entry's window has passed (a refill; the
    verification backoff; the demotion period), the next maintenance round forgets it; a source
    heard again within its window is kept."""
    cfg = DhtConfig()
    a = node(1, cfg)
    signers = [Identity(bytes([i % 256, i // 256]) + bytes(30)) for i in range(200)]
    for i, signer in enumerate(signers):
        ping, _ = sealed(signer, a.peer_id, m.Ping(), txid=i, now=1.0)
        a.receive_datagram(ping, Address(f"10.9.{i // 250}.{i % 250 + 1}", 4000), 1.0)
    a.table.demote(signers[0].peer_id, 1.0)
    a.datagrams_to_send(1.0)
    sizes = a.memory_stats()
    assert sizes["rate_sources"] == 200 and sizes["verified"] == cfg.max_verifications
    assert sizes["demoted"] == 1 and sizes["replay"] == 200

    def maintain(now: float) -> dict[str, int]:
        timer = a.get_timer()
        while timer is not None and timer <= now:  # every round (and request timeout) due by now
            a.handle_timer(timer)
            timer = a.get_timer()
        a.datagrams_to_send(now)
        return a.memory_stats()

    # Past a refill of silence (and the verification pings' timeouts): at the next round, every
    # rate-limit entry goes but that of a source heard just before it.
    sizes = maintain(1.0 + cfg.reply_burst / cfg.max_replies_per_second + cfg.request_timeout)
    next_round = a.get_timer()
    assert next_round is not None and sizes["pending"] == 0
    keep = Identity(bytes(range(40, 72)))
    ping, _ = sealed(keep, a.peer_id, m.Ping(), txid=9, now=next_round - 0.5)
    a.receive_datagram(ping, Address("10.8.0.1", 4000), next_round - 0.5)
    a.handle_timer(next_round)
    sizes = a.memory_stats()
    assert sizes["rate_sources"] == 1 and sizes["demoted"] == 1, sizes
    # Past the verification backoff, then the demotion period.
    sizes = maintain(next_round + cfg.verify_backoff + 2 * cfg.maintenance_interval)
    assert sizes["rate_sources"] == 0 and sizes["verified"] == 0 and sizes["demoted"] == 1, sizes
    sizes = maintain(1.0 + cfg.demotion_period + 2 * cfg.maintenance_interval)
    assert sizes["demoted"] == 0, sizes
    assert sizes["replay"] > 0, sizes
    sizes = maintain(next_round + cfg.replay_window + 2 * cfg.maintenance_interval)
    assert sizes["replay"] == 0, sizes  # every request has left the replay window
