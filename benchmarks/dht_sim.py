"""DHT simulator benchmark: thousands of DhtNode cores in one process on a virtual-time network.

    .venv/bin/python benchmarks/dht_sim.py --nodes 10000 --duration 900

The same sans-IO cores as in the node (real Ed25519 signatures on every datagram) run on
:class:`coremesh.sim.network.SimNetwork` with latency, jitter and loss. Phases:

1. join: nodes join one after the other (``--join-rate`` per virtual second), each through three
   random live nodes known by address only, and publish their own signed record;
2. settle for ``--settle`` virtual seconds;
3. churn for ``--duration`` virtual seconds: nodes leave silently at ``--churn`` of the network per
   hour (Poisson), each replaced by a fresh node that joins; meanwhile ``--lookup-rate`` lookups per
   virtual second from random live nodes for random live targets (alive for at least 60 s).

Prints one JSON object: lookup success rate, median/p99 hops and time, DHT traffic per live node
in bytes/s during the churn phase (everything: maintenance, joins of replacement nodes and the
benchmark's own lookups), routing table sizes, and memory per routing-table entry (tracemalloc, in a
separate measurement). Not part of CI: 10,000 nodes take tens of minutes of CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from coremesh.addr import Address
from coremesh.dht import DhtConfig, DhtNode, LookupFinished, PeerRecord
from coremesh.dht.routing import RoutingTable
from coremesh.identity import Identity, PeerId
from coremesh.sim.network import LinkProfile, SimNetwork

WALL = 1_700_000_000.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


class Sim:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        profile = LinkProfile(latency=args.latency, jitter=args.jitter, loss=args.loss)
        self.net = SimNetwork(seed=args.seed, default=profile, stall_limit=1_000_000)
        self.config = DhtConfig()
        self.live: dict[Address, DhtNode] = {}
        self.joined_at: dict[PeerId, float] = {}
        self.live_list: list[Address] = []
        self.counter = 0
        self.leave_rate = 0.0  # churn and lookups: set by start_churn
        self.next_leave = self.next_lookup = float("inf")
        self.departed = 0
        self.departed_bytes = 0  # what departed nodes sent (the nodes themselves are let go)
        # (source node, qid) -> target, start; a departed source's lookups are dropped with it.
        self.lookups: dict[tuple[PeerId, int], tuple[PeerId, float]] = {}

    def new_address(self) -> Address:
        i = self.counter
        self.counter += 1
        return Address(f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.1", 4000)  # one /24 each

    def join_all(self, count: int, per_second: float, progress: Callable[[], None] | None = None) -> None:
        """Join nodes until ``count`` are live, ``per_second`` a virtual second (every run of the
        network visits all nodes once); ``progress`` is called at each thousand."""
        batch = max(1, int(per_second))
        while len(self.live) < count:
            for _ in range(min(batch, count - len(self.live))):
                self.join()
            self.net.run_for(1.0)
            if progress is not None and len(self.live) % 1000 < batch:
                progress()

    def start_churn(self, t0: float) -> None:
        """From ``t0`` on, nodes leave silently (each replaced by a new one) at ``--churn`` of the
        network per hour, and lookups start at ``--lookup-rate`` per second."""
        self.leave_rate = self.args.churn * self.args.nodes / 3600.0
        self.next_leave = t0 + self.rng.expovariate(self.leave_rate) if self.leave_rate > 0 else float("inf")
        self.next_lookup = t0

    def advance(self, end: float) -> None:
        """The churn and lookups due before virtual time ``end``, then the network run up to it."""
        while self.next_leave < end:
            self.leave()
            self.join()
            self.next_leave += self.rng.expovariate(self.leave_rate)
        while self.next_lookup < end:
            self.start_lookup()
            self.next_lookup += 1.0 / self.args.lookup_rate
        self.net.run_for(end - self.net.clock.now)

    def join(self) -> None:
        now = self.net.clock.now
        rng = self.rng
        ident = Identity.generate(rng.randbytes)
        node = DhtNode(ident, self.config, rng=random.Random(rng.getrandbits(64)), wall_offset=WALL)
        addr = self.new_address()
        seeds = [self.live_list[rng.randrange(len(self.live_list))] for _ in range(3)] if self.live else []
        if seeds:
            node.bootstrap(sorted(set(seeds)), now)
        record = PeerRecord.create(ident, 1, WALL + now + self.config.record_ttl, [("host", str(addr))])
        node.publish(record, now)
        self.net.attach(addr, node)  # picks up the node's first datagrams and timer
        self.live[addr] = node
        self.live_list.append(addr)
        self.joined_at[node.peer_id] = now

    def leave(self) -> None:
        i = self.rng.randrange(len(self.live_list))
        addr = self.live_list[i]
        self.live_list[i] = self.live_list[-1]
        self.live_list.pop()
        node = self.live.pop(addr)
        self.joined_at.pop(node.peer_id, None)
        self.net.detach(addr)
        self.departed += 1
        self.departed_bytes += node.bytes_sent
        for key in [k for k in self.lookups if k[0] == node.peer_id]:
            del self.lookups[key]

    def start_lookup(self) -> bool:
        now = self.net.clock.now
        rng = self.rng
        src = self.live[self.live_list[rng.randrange(len(self.live_list))]]
        for _ in range(10):
            dst = self.live[self.live_list[rng.randrange(len(self.live_list))]]
            if dst is not src and now - self.joined_at[dst.peer_id] >= 60.0:
                qid = src.start_lookup(dst.peer_id, now)
                self.lookups[(src.peer_id, qid)] = (dst.peer_id, now)
                return True
        return False

    def drain(self, results: list[dict[str, Any]]) -> None:
        for node in list(self.live.values()):
            while (e := node.next_event()) is not None:
                if isinstance(e, LookupFinished):
                    key = (node.peer_id, e.query_id)
                    if key not in self.lookups:
                        continue
                    target, _started = self.lookups.pop(key)
                    results.append(
                        {
                            "ok": e.record is not None and e.record.peer_id == target,
                            "target_alive": target in self.joined_at,
                            "hops": e.hops,
                            "elapsed": e.elapsed,
                        }
                    )

    def traffic(self) -> int:
        return self.departed_bytes + sum(n.bytes_sent for n in self.live.values())


def routing_entry_memory(entries: int = 1000) -> dict[str, float]:
    """Bytes per routing-table entry: contacts built the way the node builds them (from decoded
    datagrams), held in a table with buckets large enough to keep them all."""
    rng = random.Random(1)
    local = PeerId(rng.randbytes(32))
    raw = [(rng.randbytes(32), rng.getrandbits(32), rng.randrange(1, 65536)) for _ in range(20 * entries)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    table = RoutingTable(local, DhtConfig(k=64, max_per_prefix=64, replacement_cache_size=0))
    for key, ip, port in raw:
        host = f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"
        table.update(PeerId(bytes(key)), Address(host, port), 0.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(base, "filename"))
    return {"entries": len(table), "bytes_per_entry": round(used / max(1, len(table)), 1)}


def node_memory(known: int = 1000) -> dict[str, float]:
    """Python heap of a node that knows ``known`` peers: their records (decoded from the wire, as
    the node receives them, all stored) and their contacts (as far as its buckets take them)."""
    rng = random.Random(2)
    idents = [Identity.generate(rng.randbytes) for _ in range(known)]
    wire = [
        PeerRecord.create(ident, 1, WALL + 3000, [("host", f"10.0.{n >> 8}.{n & 255}:4000")]).encode()
        for n, ident in enumerate(idents)
    ]
    keys = [bytes(ident.peer_id.key) for ident in idents]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    node = DhtNode(Identity.generate(rng.randbytes), DhtConfig(), rng=random.Random(3), wall_offset=WALL)
    for n, (key, raw) in enumerate(zip(keys, wire, strict=True)):
        node.table.update(PeerId(key), Address(f"10.0.{n >> 8}.{n & 255}", 4000), 0.0)
        node.store.put(PeerRecord.decode(raw), WALL)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(base, "filename"))
    return {
        "known_peers": known,
        "table_entries": len(node.table),
        "records": len(node.store),
        "python_heap_bytes": used,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--join-rate", type=float, default=100.0, help="joins per virtual second")
    ap.add_argument("--settle", type=float, default=120.0)
    ap.add_argument("--duration", type=float, default=900.0, help="virtual seconds of churn")
    ap.add_argument("--churn", type=float, default=0.10, help="fraction of nodes replaced per hour")
    ap.add_argument("--lookup-rate", type=float, default=2.0, help="lookups per virtual second")
    ap.add_argument("--latency", type=float, default=0.04)
    ap.add_argument("--jitter", type=float, default=0.02)
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--slice", type=float, default=5.0, help="virtual seconds between driver steps")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()

    started = time.perf_counter()
    sim = Sim(args)
    net = sim.net
    # 1. join
    sim.join_all(
        args.nodes,
        args.join_rate,
        lambda: print(
            f"# joined {len(sim.live)} (virtual {net.clock.now:.0f}s, "
            f"real {time.perf_counter() - started:.0f}s)",
            file=sys.stderr,
            flush=True,
        ),
    )
    join_real = time.perf_counter() - started
    net.run_for(args.settle)
    for node in sim.live.values():
        while node.next_event() is not None:
            pass
    # 3. churn + lookups
    results: list[dict[str, Any]] = []
    t0 = net.clock.now
    bytes0 = sim.traffic()
    live_seconds = 0.0
    sim.start_churn(t0)
    churn_started = time.perf_counter()
    while net.clock.now < t0 + args.duration:
        now = net.clock.now
        end = min(now + args.slice, t0 + args.duration)
        sim.advance(end)
        live_seconds += len(sim.live) * (end - now)
        sim.drain(results)
        if int(end - t0) % 60 < args.slice:
            ok = sum(r["ok"] for r in results if r["target_alive"])
            n = sum(1 for r in results if r["target_alive"])
            rate = (sim.traffic() - bytes0) / max(1.0, live_seconds)
            print(
                f"# churn t={end - t0:.0f}s lookups {ok}/{n} departed {sim.departed} "
                f"traffic {rate:.0f} B/s/node "
                f"real {time.perf_counter() - started:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    traffic = sim.traffic() - bytes0
    # let the last lookups finish (no churn, traffic not counted)
    net.run_for(sim.config.lookup_timeout + 1)
    sim.drain(results)
    counted = [r for r in results if r["target_alive"]]
    ok = [r for r in counted if r["ok"]]
    tables = [len(n.table) for n in sim.live.values()]
    out: dict[str, Any] = {
        "nodes": args.nodes,
        "virtual_churn_seconds": args.duration,
        "churn_per_hour": args.churn,
        "departed": sim.departed,
        "link": {"latency": args.latency, "jitter": args.jitter, "loss": args.loss},
        "lookups": len(counted),
        "lookup_success_rate": round(len(ok) / max(1, len(counted)), 5),
        "hops_median": statistics.median(r["hops"] for r in ok) if ok else None,
        "hops_p99": percentile([r["hops"] for r in ok], 0.99),
        "time_median_s": round(statistics.median(r["elapsed"] for r in ok), 3) if ok else None,
        "time_p99_s": round(percentile([r["elapsed"] for r in ok], 0.99), 3),
        "traffic_bytes_per_node_per_s": round(traffic / max(1.0, live_seconds), 1),
        "routing_table_median": statistics.median(tables),
        "routing_table_min": min(tables),
        "datagrams": net.stats.as_dict(),
        "real_seconds_join": round(join_real, 1),
        "real_seconds_churn": round(time.perf_counter() - churn_started, 1),
    }
    if not args.no_memory:
        out["routing_entry_memory"] = routing_entry_memory()
        out["node_memory_1000_peers"] = node_memory()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
