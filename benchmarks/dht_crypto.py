"""What sealing the DHT costs: lookups per CPU second and bytes per lookup, plus the seal itself.

    .venv/bin/python benchmarks/dht_crypto.py --nodes 200 --lookups 2000

``--nodes`` DhtNode cores join a virtual-time network (:class:`coremesh.sim.network.SimNetwork`,
10 ms links, no loss) through two earlier nodes known by address only and publish their records;
then ``--lookups`` lookups of random members by random members run, ``--batch`` at a time. The
lookup phase is measured: CPU seconds (``time.process_time``: every datagram's signature, seal and
handling, in both the requester and the responders), the bytes every node sent during it, and the
datagrams. A lookup counts as found when it returns the target's own record.

The figures of the version before the seal (wire version 1, signed datagrams in clear) come from the
same script run against that tree, which it only uses through APIs both versions have::

    git -C . archive ec253b0 coremesh | tar -x -C /tmp/dht-v1
    PYTHONPATH=/tmp/dht-v1 .venv/bin/python benchmarks/dht_crypto.py --nodes 200 --lookups 2000

With the seal present, ``--micro`` also times one seal, one open (requester and responder side of
one request) and one reply seal and open, per call, over ``--micro`` calls. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from typing import Any

import coremesh
from coremesh.addr import Address
from coremesh.dht import DhtConfig, DhtNode, LookupFinished, PeerRecord
from coremesh.identity import Identity
from coremesh.sim.network import LinkProfile, SimNetwork

WALL = 1_700_000_000.0


def wire_version() -> int:
    from coremesh.dht import messages

    return int(getattr(messages, "DHT_VERSION", 1))


def build(nodes: int, seed: int) -> tuple[SimNetwork, list[tuple[DhtNode, Address]]]:
    rng = random.Random(seed)
    net = SimNetwork(seed=seed, default=LinkProfile(latency=0.01), stall_limit=1_000_000)
    out: list[tuple[DhtNode, Address]] = []
    for i in range(nodes):
        node_rng = random.Random(seed * 1_000_003 + i)
        node = DhtNode(Identity.generate(node_rng.randbytes), DhtConfig(), rng=node_rng, wall_offset=WALL)
        at = Address(f"10.{(i >> 8) & 255}.{i & 255}.1", 4000)
        net.attach(at, node)
        now = net.clock.now
        if out:
            node.bootstrap([out[j][1] for j in rng.sample(range(len(out)), min(2, len(out)))], now)
        node.publish(PeerRecord.create(node.identity, 1, WALL + now + 3600, [("host", str(at))]), now)
        out.append((node, at))
        net.run_for(0.2)
    net.run_for(30)
    for node, _ in out:
        while node.next_event() is not None:
            pass
    return net, out


def lookups(
    net: SimNetwork, members: list[tuple[DhtNode, Address]], count: int, batch: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed + 7)
    peers = [n for n, _ in members]
    sent_before = sum(n.bytes_sent for n in peers)
    datagrams_before = net.stats.sent
    found = 0
    hops: list[int] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    virtual0 = net.clock.now
    done = 0
    while done < count:
        n = min(batch, count - done)
        pending: dict[int, set[int]] = {}
        for _ in range(n):
            src, dst = rng.sample(peers, 2)
            pending.setdefault(id(src), set()).add(src.start_lookup(dst.peer_id, net.clock.now))
        net.run_for(5.0)
        for src in peers:
            while (event := src.next_event()) is not None:
                if isinstance(event, LookupFinished) and event.query_id in pending.get(id(src), ()):
                    hops.append(event.hops)
                    if event.record is not None and event.record.peer_id == event.target:
                        found += 1
        done += n
    cpu = time.process_time() - cpu0
    sent = sum(n.bytes_sent for n in peers) - sent_before
    datagrams = net.stats.sent - datagrams_before
    return {
        "lookups": count,
        "found": found,
        "cpu_s": round(cpu, 3),
        "wall_s": round(time.perf_counter() - wall0, 3),
        "virtual_s": round(net.clock.now - virtual0, 1),
        "lookups_per_cpu_s": round(count / cpu, 1),
        "bytes_per_lookup": round(sent / count, 1),
        "datagrams_per_lookup": round(datagrams / count, 2),
        "bytes_per_datagram": round(sent / max(1, datagrams), 1),
        "hops_median": statistics.median(hops) if hops else None,
    }


def micro(calls: int) -> dict[str, float]:
    from coremesh.dht import messages as m
    from coremesh.dht import secure as sec

    responder = Identity(bytes(range(32)))
    requester = Identity(bytes(range(1, 33)))
    message = m.encode_message(
        requester.sign,
        requester.peer_id,
        1,
        m.FindNode(responder.peer_id),
        pad_to=m.REQUEST_PAD - sec.SEALED_OVERHEAD,
    )
    reply = bytes(1100)
    private, public = responder.x25519_private, responder.x25519_public
    ephemerals = [os.urandom(32) for _ in range(calls)]

    def per_call(fn: Any) -> float:
        t0 = time.perf_counter()
        for i in range(calls):
            fn(i)
        return round((time.perf_counter() - t0) / calls * 1e6, 1)

    sealed = [sec.seal(responder.peer_id, message, WALL, e) for e in ephemerals]
    packets = [sec.parse_packet(d) for d, _ in sealed]
    reply_packets = [sec.parse_packet(sec.seal_reply(k, 1, reply)) for _, k in sealed]
    return {
        "seal_request_us": per_call(lambda i: sec.seal(responder.peer_id, message, WALL, ephemerals[i])),
        "open_request_us": per_call(lambda i: sec.open_sealed(private, public, packets[i])),  # type: ignore[arg-type]
        "seal_reply_us": per_call(lambda i: sec.seal_reply(sealed[i][1], 1, reply)),
        "open_reply_us": per_call(lambda i: sec.open_reply(sealed[i][1], reply_packets[i])),  # type: ignore[arg-type]
        "sign_us": per_call(lambda i: requester.sign(message)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50, help="lookups started together")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--micro", type=int, default=2000, help="calls per micro-benchmark (0: none)")
    args = parser.parse_args(argv)
    t0 = time.process_time()
    net, members = build(args.nodes, args.seed)
    result: dict[str, Any] = {
        "coremesh": os.path.dirname(coremesh.__file__),
        "wire_version": wire_version(),
        "nodes": args.nodes,
        "join_cpu_s": round(time.process_time() - t0, 2),
        "lookup_phase": lookups(net, members, args.lookups, args.batch, args.seed),
    }
    if args.micro and wire_version() >= 2:
        result["micro"] = micro(args.micro)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
