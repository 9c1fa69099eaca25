"""What padding and cover traffic cost: bytes on the wire and CPU, side by side, off / buckets only /
buckets + cover at 10 and 50 packets/s (coremesh/reliability/padding.py, docs/access.md).

Two endpoints on the virtual-time network (``coremesh/sim``): the whole core runs (streams, AEAD,
padding, cover schedule), time is virtual, so the CPU figures are those of the core itself plus the
simulator's bookkeeping (the same in every column). Three workloads, each on a fresh connection:

* bulk: ``--bulk-mb`` MB a -> b in messages of 1 to 16 KiB;
* chat: 64-byte messages both ways, 5 per second each, for ``--chat-seconds``;
* idle: a connection left idle for ``--idle-seconds``, scaled to one hour.

``wire/payload`` counts every TRANSPORT datagram both ways (headers, tags, ACKs, padding, cover)
over the application bytes. ``CPU s/MB`` is process CPU time per MB of payload; the idle columns
are per connection-hour (both ends together).

    .venv/bin/python benchmarks/padding_cost.py [--bulk-mb 8] [--chat-seconds 60]
        [--idle-seconds 600] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coremesh.addr import Address
from coremesh.config import MeshConfig
from coremesh.endpoint import events as ev
from coremesh.endpoint.endpoint import Endpoint
from coremesh.identity import Identity
from coremesh.secure import wire
from coremesh.sim import LinkProfile, SimNetwork

A_ADDR = Address("192.0.2.1", 1000)
B_ADDR = Address("192.0.2.2", 2000)
BUCKETS = (128, 256, 512, 1024)
MODES: dict[str, dict[str, Any]] = {
    "off": {},
    "off, no PMTU probing": {"pmtu_discovery": False},  # padding turns it off: the cost of that alone
    "buckets": {"padding_buckets": BUCKETS},
    "buckets+cover 10/s": {"padding_buckets": BUCKETS, "cover_rate": 10},
    "buckets+cover 50/s": {"padding_buckets": BUCKETS, "cover_rate": 50},
}


class Node:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.wire_bytes = 0
        self.datagrams = 0
        self.received = 0
        self.connected = False

    def _drain(self) -> None:
        while (e := self.endpoint.next_event()) is not None:
            if isinstance(e, ev.MessageReceived):
                self.received += len(e.data)
                self.endpoint.consume(e.peer_id, len(e.data))
            elif isinstance(e, ev.PeerConnected):
                self.connected = True

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.endpoint.receive_datagram(data, addr, now)
        self._drain()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = self.endpoint.datagrams_to_send(now)
        for data, _ in out:
            if data[0] == wire.PacketType.TRANSPORT:
                self.wire_bytes += len(data)
                self.datagrams += 1
        self._drain()
        return out  # type: ignore[return-value]

    def get_timer(self) -> float | None:
        return self.endpoint.get_timer()

    def handle_timer(self, now: float) -> None:
        self.endpoint.handle_timer(now)
        self._drain()


def pair(config: dict[str, Any]) -> tuple[SimNetwork, Node, Node]:
    net = SimNetwork(7, LinkProfile(latency=0.01))
    nodes = []
    for i, addr in ((1, A_ADDR), (2, B_ADDR)):
        cfg = MeshConfig(heartbeat_interval=5.0, idle_timeout=30.0, **config)
        identity = Identity(random.Random(i).randbytes(32))
        node = Node(Endpoint(identity, cfg, rng=random.Random(i), wall_offset=1.7e9))
        net.attach(addr, node)
        nodes.append(node)
    a, b = nodes
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, net.clock.now)
    net.flush()
    assert net.run_until(lambda: a.connected and b.connected, timeout=10)
    net.run_for(1.0)
    a.wire_bytes = b.wire_bytes = a.datagrams = b.datagrams = 0
    return net, a, b


def bulk(config: dict[str, Any], megabytes: float) -> dict[str, float]:
    net, a, b = pair(config)
    rng = random.Random(1)
    total = int(megabytes * 1_000_000)
    queued = 0
    cpu = time.process_time()
    while b.received < total:
        while queued < total and queued - b.received < 2_000_000:
            size = min(rng.randint(1024, 16384), total - queued)
            a.endpoint.send(b.endpoint.peer_id, rng.randbytes(size), net.clock.now)
            queued += size
        net.flush()
        net.run_for(0.05)
    cpu = time.process_time() - cpu
    return {"wire/payload": (a.wire_bytes + b.wire_bytes) / total, "cpu_s_per_mb": cpu / (total / 1e6)}


def chat(config: dict[str, Any], seconds: float) -> dict[str, float]:
    net, a, b = pair(config)
    payload = 0
    cpu = time.process_time()
    steps = int(seconds * 5)
    for _ in range(steps):
        a.endpoint.send(b.endpoint.peer_id, bytes(64), net.clock.now)
        b.endpoint.send(a.endpoint.peer_id, bytes(64), net.clock.now)
        payload += 128
        net.flush()
        net.run_for(0.2)
    cpu = time.process_time() - cpu
    assert a.received + b.received == payload
    return {
        "wire/payload": (a.wire_bytes + b.wire_bytes) / payload,
        "cpu_s_per_mb": cpu / (payload / 1e6),
        "kbit_s": (a.wire_bytes + b.wire_bytes) * 8 / seconds / 1000,
    }


def idle(config: dict[str, Any], seconds: float) -> dict[str, float]:
    net, a, b = pair(config)
    cpu = time.process_time()
    net.run_for(seconds)
    cpu = time.process_time() - cpu
    scale = 3600 / seconds
    return {
        "mb_per_hour": (a.wire_bytes + b.wire_bytes) * scale / 1e6,
        "cpu_s_per_hour": cpu * scale,
        "pkts_per_s": (a.datagrams + b.datagrams) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk-mb", type=float, default=8.0)
    parser.add_argument("--chat-seconds", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=600.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {
        name: {
            "bulk": bulk(config, args.bulk_mb),
            "chat": chat(config, args.chat_seconds),
            "idle": idle(config, args.idle_seconds),
        }
        for name, config in MODES.items()
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    head = (
        f"{'mode':<22} {'bulk wire/payload':>17} {'bulk CPU s/MB':>13} {'chat wire/payload':>17} "
        f"{'chat kbit/s':>11} {'chat CPU s/MB':>13} {'idle pkt/s':>10} {'idle MB/h':>9} {'idle CPU s/h':>12}"
    )
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        b, c, i = r["bulk"], r["chat"], r["idle"]
        print(
            f"{name:<22} {b['wire/payload']:>17.3f} {b['cpu_s_per_mb']:>13.3f} {c['wire/payload']:>17.2f} "
            f"{c['kbit_s']:>11.2f} {c['cpu_s_per_mb']:>13.2f} {i['pkts_per_s']:>10.2f} "
            f"{i['mb_per_hour']:>9.2f} {i['cpu_s_per_hour']:>12.2f}"
        )


if __name__ == "__main__":
    main()
