"""A handshake flood over real sockets (issue 14): legitimate peers still connect and talk.

A real MeshNode on 127.0.0.1 is flooded from another process (tests/integration/flood.py, so the
flood does not share the node's loop) with copies of one real initiation and fresh valid-looking
ones (valid mac1), from 59 addresses 127.0.0.2..127.0.0.60, at 20,000 a second: the rate of the
report, several times what the node can answer (a real initiation costs it four Diffie-Hellmans,
about 2,500 a second on one core; a forged one one). Meanwhile legitimate peers connect and
exchange messages; afterwards the node's drop counters say what happened to the flood.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from coremesh_node.metrics import NodeCollector
from prometheus_client import CollectorRegistry, generate_latest

from coremesh import MeshConfig, MeshNode

from .aio import eventually, run
from .flood import start_flood

FLOOD_RATE = 20_000
PEERS = 4
MESSAGES = 20
TARGET = MeshConfig(listen_addr="127.0.0.1:0", dht=False)
PEER = MeshConfig(listen_addr="127.0.0.1:0", dht=False)


@dataclass
class Scraped:
    """What the node's /metrics reads (node/metrics.py's MetricsSource), for a MeshNode."""

    node: MeshNode
    ready: bool = True

    def traffic(self) -> Mapping[str, int]:
        return {}


def metrics_text(node: MeshNode) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(lambda: Scraped(node), "test"))
    return generate_latest(registry).decode()


async def talk(target: MeshNode, peer: MeshNode, tag: int) -> None:
    """``peer`` connects to ``target`` (one connect timeout, the default 5 s) and both send."""
    conn = await peer.connect(target.peer_id, target.local_address)
    for i in range(MESSAGES):
        await conn.send(f"{tag}:{i}".encode())
    await eventually(lambda: target.get_connection(peer.peer_id) is not None, 5.0, "the accepted connection")
    incoming = target.get_connection(peer.peer_id)
    assert incoming is not None
    assert [await asyncio.wait_for(incoming.receive(), 10) for _ in range(MESSAGES)] == [
        f"{tag}:{i}".encode() for i in range(MESSAGES)
    ]
    await incoming.send(b"reply")
    assert await asyncio.wait_for(conn.receive(), 10) == b"reply"


def test_legitimate_peers_connect_and_talk_through_a_handshake_flood() -> None:
    async def body() -> None:
        async with MeshNode(TARGET) as target:
            address = target.local_address
            flood = start_flood((address.host, address.port), target.peer_id, rate=FLOOD_RATE)
            try:
                # The flood is on before anyone connects, and is still on when they are done.
                await eventually(lambda: target.stats()["datagrams_received"] >= 5000, 15.0, "the flood")
                sent_before = flood.packets_sent()
                peers = [MeshNode(PEER) for _ in range(PEERS)]
                for p in peers:
                    await p.start()
                try:
                    await asyncio.gather(*(talk(target, p, i) for i, p in enumerate(peers)))
                    # The node was under load: the peers' first initiations got cookie replies,
                    # which they answered transparently (mac2 on their next initiation).
                    assert sum(p.stats().get("cookie_replies_received", 0) for p in peers) >= 1
                finally:
                    for p in peers:
                        await p.stop()
                assert flood.process.is_alive() and flood.packets_sent() > sent_before
            finally:
                sent = flood.stop()
            stats = target.stats()
            metrics = metrics_text(target)
            # The node is up and serving: a peer connects after the flood as it did during it.
            async with MeshNode(PEER) as late:
                await talk(target, late, PEERS)
        # What the node did with the flood: exact replays dropped before any Diffie-Hellman, and
        # under load cookie replies and rate limits instead of Diffie-Hellmans.
        replays, cookies = stats["drop_replayed_handshake"], stats["cookie_replies_sent"]
        limited = stats.get("drop_handshake_rate_limited", 0)
        refused = replays + cookies + limited + stats.get("drop_bad_mac2", 0)
        admitted = stats["handshakes_admitted"]
        print(f"\nflood: {sent} sent; node: {refused} refused before any DH ({replays} replays, {cookies}"
              f" cookie replies, {limited} rate limited), {admitted} admitted (DH)")  # fmt: skip
        assert replays > 0 and cookies > 0
        assert stats["drop_handshake_under_load"] > 0
        assert refused >= 5 * admitted, stats
        assert stats["handshake_responses_sent"] >= PEERS
        # Every reason reaches /metrics.
        for reason in ("replayed_handshake", "handshake_under_load", "handshake_rate_limited"):
            assert (
                f'coremesh_node_drops_total{{layer="mesh",reason="{reason}"}} {stats["drop_" + reason]}'
                in metrics
            )
        assert f"coremesh_node_mesh_cookie_replies_sent_total {cookies}" in metrics

    run(body, timeout=60)
