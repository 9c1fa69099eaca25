"""Hundreds of DhtNode cores on the simulated network: lookups, churn, and a hostile member."""

from __future__ import annotations

import random
import struct

from coremesh.dht import DhtConfig, DhtNode, LookupFinished
from coremesh.dht import messages as m
from coremesh.sim.network import LinkProfile

from .dht_helpers import build_network, drain


def run_lookups(
    net: object, pairs: list[tuple[DhtNode, DhtNode]], *, settle: float = 20.0
) -> list[LookupFinished]:
    by_node: dict[int, list[int]] = {}
    for src, dst in pairs:
        qid = src.start_lookup(dst.peer_id, net.clock.now)  # type: ignore[attr-defined]
        by_node.setdefault(id(src), []).append(qid)
    net.run_for(settle)  # type: ignore[attr-defined]
    done: list[LookupFinished] = []
    for src in {id(s): s for s, _ in pairs}.values():
        done += [e for e in drain(src) if isinstance(e, LookupFinished)]
    assert len(done) == len(pairs)
    return done


def test_every_record_is_found_and_survives_a_third_of_nodes_leaving() -> None:
    config = DhtConfig(liveness_interval=60.0)
    profile = LinkProfile(latency=0.02, jitter=0.02, loss=0.01)
    net, nodes = build_network(200, seed=4, config=config, profile=profile)
    peers = [n for n, _ in nodes]
    assert all(len(n.table) >= 20 for n in peers)
    # Every node looks up 8 others; every node's record is looked up by 8 others.
    pairs = [(peers[i], peers[(i + 1 + 23 * j) % len(peers)]) for i in range(len(peers)) for j in range(8)]
    done = run_lookups(net, pairs)
    found = [e for e in done if e.record is not None and e.record.peer_id == e.target]
    assert len(found) == len(pairs)
    assert {e.target for e in found} == {n.peer_id for n in peers}
    assert all(e.record is not None and e.record.host_addresses() for e in found)
    hops = sorted(e.hops for e in done)
    assert hops[len(hops) // 2] <= 3

    # Churn: a third of the nodes leave at once, without a word.
    rng = random.Random(8)
    gone = set(rng.sample(range(len(nodes)), len(nodes) // 3))
    for i in gone:
        net.detach(nodes[i][1])
    live = [n for i, (n, _) in enumerate(nodes) if i not in gone]
    pairs = [(live[i], live[(i * 7 + 3) % len(live)]) for i in range(len(live))]
    pairs = [(a, b) for a, b in pairs if a is not b]
    done = run_lookups(net, pairs, settle=40.0)
    ok = [e for e in done if e.record is not None and e.record.peer_id == e.target]
    assert len(ok) == len(pairs)
    # Liveness checks evict the dead contacts (and only those) within a few minutes.
    gone_ids = {nodes[i][0].peer_id for i in gone}
    before = sum(1 for n in live for c in n.table.contacts() if c.peer_id in gone_ids)
    net.run_for(400)
    after = sum(1 for n in live for c in n.table.contacts() if c.peer_id in gone_ids)
    assert after < before / 10
    assert sum(n.counters["evicted_dead"] for n in live) > 0
    assert all(len(n.table) >= 20 for n in live)


def make_hostile(inner: DhtNode, victim_record: object) -> None:
    """Turn ``inner`` into a member that answers PINGs honestly (so it gets into tables) but answers
    every lookup with validly signed (and sealed) garbage: a malformed body, or a record of the
    wrong peer. It replaces the node's message encoder, so the garbage is sealed as usual."""
    honest = inner._encode
    toggle = [False]

    def encode(txid: int, body: m.Body, pad_to: int = 0) -> bytes:
        data = honest(txid, body, pad_to)
        if isinstance(body, m.Nodes | m.Value):
            toggle[0] = not toggle[0]
            if toggle[0] or isinstance(body, m.Nodes):
                garbage = b"\x05" + bytes(12)  # five contacts promised, none there
            else:
                raw = victim_record.encode()  # type: ignore[attr-defined]
                garbage = b"\x01" + struct.pack("!H", len(raw)) + raw + b"\x00"  # wrong peer's record
            head = data[: m.HEADER_LEN]
            data = head + garbage + inner._sign(m._DOMAIN + head + garbage)
        return data

    inner._encode = encode  # type: ignore[method-assign]


def test_hostile_node_answering_garbage_is_demoted() -> None:
    net, nodes = build_network(60, seed=5)
    peers = [n for n, _ in nodes]
    bad_index = 17
    bad, _ = nodes[bad_index]
    other = next(n for n in peers if n is not bad)
    assert other.own_record is not None
    make_hostile(bad, other.own_record)
    holders = [n for n in peers if bad.peer_id in n.table]
    assert len(holders) >= 5
    # Everyone looks up the peers closest to the hostile one, so lookups run into it.
    near = sorted((n for n in peers if n is not bad), key=lambda n: bad.peer_id.distance(n.peer_id))[:5]
    pairs = [(src, dst) for src in peers if src is not bad for dst in near if dst is not src]
    done = run_lookups(net, pairs)
    assert all(e.record is not None and e.record.peer_id == e.target for e in done)
    demoted = [n for n in peers if n.counters["demoted"]]
    assert demoted
    assert all(bad.peer_id not in n.table for n in demoted)
    assert sum(n.counters["garbage_response"] for n in peers) > 0
