"""NAT traversal between MeshNodes in one process, over real UDP sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TypeVar

from coremesh_relay.keyed import KeyedRelayConfig, KeyedRelayServer

from coremesh import Address, MeshConfig, MeshNode

from .aio import run

T = TypeVar("T")
LOOP = "127.0.0.1:0"


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def candidate_frames_sent(node: MeshNode) -> int:
    """Path packets that were neither a direct check nor its answer: candidate announcements and
    replies (one per round announced, one per round of the peer answered)."""
    s = node.stats()
    checks = s.get("path_challenges_sent", 0) + s.get("path_challenges_answered", 0)
    return s.get("path_packets_sent", 0) - checks


def checks_sent(node: MeshNode) -> int:
    return node.stats().get("path_challenges_sent", 0)


def unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_relayed_connection_moves_to_the_direct_path_it_discovers() -> None:
    async def body() -> None:
        server = KeyedRelayServer(KeyedRelayConfig(listen=LOOP))
        await server.start()
        try:
            config = MeshConfig(
                listen_addr=LOOP, keyed_relays=(f"tcp://{server.address}",), connect_timeout=3.0
            )
            async with MeshNode(config) as a, MeshNode(config) as b:
                # A only knows a stale address of B: the direct handshake fails, the keyed relay
                # carries the connection, and B's announced candidates lead to the direct path.
                stale = Address("127.0.0.1", unused_udp_port())
                conn = await a.connect(b.peer_id, stale)
                assert a.path_info(b.peer_id)[0] == "keyed"
                for i in range(50):
                    await conn.send(b"early %d" % i)
                assert await wait_for(lambda: a.path_info(b.peer_id)[0] == "direct")
                assert await wait_for(lambda: b.path_info(a.peer_id)[0] == "direct")
                for i in range(50):
                    await conn.send(b"late %d" % i)
                incoming = b.get_connection(a.peer_id)
                assert incoming is not None
                got = [await incoming.receive() for _ in range(100)]
                assert got == [b"early %d" % i for i in range(50)] + [b"late %d" % i for i in range(50)]
                ping = await a.ping(b.peer_id)
                assert ping.path == "direct" and ping.via == "direct" and ping.reason is None
                assert conn.path == "direct"
                assert a.stats()["path_switches_to_direct"] == 1
        finally:
            await server.stop()

    run(body)


def test_a_pinned_relay_connection_stays_relayed_and_says_why() -> None:
    async def body() -> None:
        server = KeyedRelayServer(KeyedRelayConfig(listen=LOOP))
        await server.start()
        try:
            config = MeshConfig(listen_addr=LOOP, keyed_relays=(f"tcp://{server.address}",))
            async with MeshNode(config) as a, MeshNode(config) as b:
                conn = await a.connect(b.peer_id, b.local_address, path="relay")

                # A (pinned) announces its candidates once; B's agent retries its round after ~2-3 s.
                # Once B has started a second round and A answered it, the first round is over:
                # had either side ignored the pin, it would have checked B's loopback address (it
                # answers) and gone direct well before then.
                def round_over_or_checked() -> bool:
                    if checks_sent(a) or checks_sent(b):
                        return True  # fails below, at once
                    return candidate_frames_sent(a) >= 3 and candidate_frames_sent(b) >= 3

                assert await wait_for(round_over_or_checked, 20), (a.stats(), b.stats())
                assert checks_sent(a) == 0, "the pinned side ran direct checks"
                assert checks_sent(b) == 0, "the peer of a pinned side ran direct checks"
                ping = await a.ping(b.peer_id)
                assert ping.path == "relay" and ping.via == "keyed"
                assert ping.reason is not None and "path=relay" in ping.reason
                assert conn.path == "relay"
                assert b.path_info(a.peer_id)[0] == "keyed"
                back = await b.ping(a.peer_id)
                assert back.reason is not None and "the peer pinned this connection" in back.reason
        finally:
            await server.stop()

    run(body)
