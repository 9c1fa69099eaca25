"""Resource limits over real sockets (issue 14, docs/access.md "Resource limits").

- A hostile process opens connections to a MeshNode from many throwaway identities on one host
  (127.0.0.2: real MeshNodes that complete their handshakes and hold on) and sends real initiations
  from throwaway identities on another (127.0.0.3: they never confirm), beyond the node's limits,
  while a legitimate peer on 127.0.0.1 connects and exchanges messages.
- A peer that never reads: the node's send buffer toward it stays under its cap and ``send_nowait``
  says False (back-pressure), however long the node keeps trying.
- A peer that floods small messages an application does not read: the connection is closed at
  ``max_queued_messages``, never queued without bound.

The node stays up through all of it, and every refusal is counted by reason in /metrics.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

from coremesh import MeshConfig, MeshNode
from coremesh.addr import Address
from coremesh.errors import ConnectionClosed, ConnectionFailed
from coremesh.identity import PeerId

from .aio import eventually, run
from .flood import real_initiation
from .test_handshake_flood import metrics_text

PER_HOST = 6
UNCONFIRMED_PER_HOST = 3
HOSTILE_IDENTITIES = 16
TARGET = MeshConfig(
    listen_addr="127.0.0.1:0",
    dht=False,
    max_connections=64,
    max_connections_per_host=PER_HOST,
    max_unconfirmed_per_host=UNCONFIRMED_PER_HOST,
)


def _hostile(
    target: tuple[str, int],
    peer_text: str,
    ready: Event,
    stop: Event,
    connected: Synchronized,  # type: ignore[type-arg]
    refused: Synchronized,  # type: ignore[type-arg]
) -> None:
    """The hostile process: throwaway MeshNodes on 127.0.0.2 connect and hold on; a raw socket on
    127.0.0.3 sends real initiations from fresh throwaway identities (never confirmed)."""
    peer = PeerId.from_text(peer_text)
    address = Address(*target)

    async def main() -> None:
        nodes = [
            MeshNode(MeshConfig(listen_addr="127.0.0.2:0", dht=False, enable_nat_traversal=False))
            for _ in range(HOSTILE_IDENTITIES)
        ]
        for node in nodes:
            await node.start()
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind(("127.0.0.3", 0))
        raw.setblocking(False)

        async def dial(node: MeshNode) -> None:
            try:
                await node.connect(peer, address, timeout=3.0)
                connected.value += 1
            except ConnectionFailed:
                refused.value += 1

        dials = asyncio.gather(*(dial(node) for node in nodes))
        ready.set()
        seed = 0
        try:
            while not stop.is_set():
                for _ in range(10):  # 200 a second, below the handshake gate's load threshold
                    seed += 1
                    raw.sendto(real_initiation(peer, seed), target)
                await asyncio.sleep(0.05)
            await dials
        finally:
            raw.close()
            for node in nodes:
                await node.stop()

    asyncio.run(main())


def start_hostile(
    node: MeshNode,
) -> tuple[multiprocessing.process.BaseProcess, Event, Synchronized, Synchronized]:  # type: ignore[type-arg]
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    connected, refused = ctx.Value("q", 0), ctx.Value("q", 0)
    address = node.local_address
    process = ctx.Process(
        target=_hostile,
        args=((address.host, address.port), str(node.peer_id), ready, stop, connected, refused),
        name="hostile-peers",
        daemon=True,
    )
    process.start()
    if not ready.wait(60):
        stop.set()
        process.kill()
        raise RuntimeError("the hostile process did not start")
    return process, stop, connected, refused


def test_throwaway_identities_beyond_the_limits_leave_room_for_a_legitimate_peer() -> None:
    async def body() -> None:
        target = MeshNode(TARGET)
        legit = MeshNode(MeshConfig(listen_addr="127.0.0.1:0", dht=False))
        await target.start()
        await legit.start()
        process, stop, connected, refused = start_hostile(target)
        try:
            # Every hostile dial ends: at most PER_HOST of them got in, the rest were refused.
            await eventually(
                lambda: connected.value + refused.value == HOSTILE_IDENTITIES, 30.0, "the hostile dials"
            )
            assert 1 <= connected.value <= PER_HOST and refused.value >= HOSTILE_IDENTITIES - PER_HOST
            # Meanwhile the raw initiations keep the host's unconfirmed quota full, and no more.
            usage = target.resource_usage()
            assert usage["unconfirmed"] <= 2 * UNCONFIRMED_PER_HOST
            assert usage["inbound"] <= PER_HOST + UNCONFIRMED_PER_HOST
            # The legitimate peer connects and talks, under the flood.
            conn = await legit.connect(target.peer_id, target.local_address)
            for i in range(10):
                await conn.send(b"legit %d" % i)
            await eventually(lambda: target.get_connection(legit.peer_id) is not None, 5.0, "accepted")
            incoming = target.get_connection(legit.peer_id)
            assert incoming is not None
            got = [await asyncio.wait_for(incoming.receive(), 10) for _ in range(10)]
            assert got == [b"legit %d" % i for i in range(10)]
            await incoming.send(b"reply")
            assert await asyncio.wait_for(conn.receive(), 10) == b"reply"
        finally:
            stop.set()
            process.join(20)
            if process.is_alive():
                process.kill()
                process.join(5)
        stats = target.stats()
        assert stats["drop_connections_per_host"] >= 1
        assert stats["drop_unconfirmed_per_host"] >= 1
        text = metrics_text(target)
        for reason in ("connections_per_host", "unconfirmed_per_host"):
            assert f'coremesh_node_drops_total{{layer="mesh",reason="{reason}"}}' in text
        assert await conn.ping() >= 0  # the node is still up and serving
        await legit.stop()
        await target.stop()

    run(body, timeout=120)


def test_a_peer_that_never_reads_gets_back_pressure_not_our_memory() -> None:
    cap = 256 * 1024
    message = bytes(4096)

    async def body() -> None:
        sender = MeshNode(MeshConfig(listen_addr="127.0.0.1:0", dht=False, send_buffer_size=cap))
        sink = MeshNode(MeshConfig(listen_addr="127.0.0.1:0", dht=False, receive_window=128 * 1024))
        await sender.start()
        await sink.start()
        conn = await sender.connect(sink.peer_id, sink.local_address)
        await eventually(lambda: sink.get_connection(sender.peer_id) is not None, 5.0, "accepted")
        # The sink's application never reads. The sender tries for a while, in rounds.
        refusals = 0
        highest = 0
        loop = asyncio.get_running_loop()
        rounds_end = loop.time() + 2.0
        while loop.time() < rounds_end:
            while conn.send_nowait(message):
                highest = max(highest, sender.resource_usage()["send_buffered_bytes"])
            refusals += 1
            highest = max(highest, sender.resource_usage()["send_buffered_bytes"])
            await asyncio.sleep(0.02)
        assert refusals > 1
        assert cap <= highest < cap + len(message) + 8  # the cap, plus at most one message
        incoming = sink.get_connection(sender.peer_id)
        assert incoming is not None and incoming.queued * len(message) <= 128 * 1024
        assert sender.stats()["send_buffer_full"] >= refusals
        # Once the sink reads, the sender may send again.
        for _ in range(incoming.queued):
            incoming.receive_nowait()
        await eventually(lambda: conn.send_nowait(b"more"), 10.0, "room in the send buffer")
        assert await conn.ping() >= 0
        await sender.stop()
        await sink.stop()

    run(body, timeout=60)


def test_a_flood_of_small_messages_nobody_reads_closes_the_connection() -> None:
    async def body() -> None:
        sink = MeshNode(MeshConfig(listen_addr="127.0.0.1:0", dht=False, max_queued_messages=200))
        sender = MeshNode(MeshConfig(listen_addr="127.0.0.1:0", dht=False))
        await sink.start()
        await sender.start()
        conn = await sender.connect(sink.peer_id, sink.local_address)
        for _ in range(1000):  # tiny messages: the receive window alone would let millions in
            try:
                await conn.send(b"")
            except ConnectionClosed:  # the close arrived while we were still sending
                break
        reason = await asyncio.wait_for(conn.wait_closed(), 15)
        assert "too many unread messages" in reason
        stats = sink.stats()
        assert stats["connections_closed_inbox_full"] == 1 and stats["drop_inbox_full"] >= 1
        assert 'reason="inbox_full"' in metrics_text(sink)
        # The sink is up: the same peer connects again.
        again = await sender.connect(sink.peer_id, sink.local_address)
        assert await again.ping() >= 0
        await sender.stop()
        await sink.stop()

    run(body, timeout=60)


if __name__ == "__main__":  # pragma: no cover - a manual run
    start = time.perf_counter()
    test_throwaway_identities_beyond_the_limits_leave_room_for_a_legitimate_peer()
    print(f"{time.perf_counter() - start:.1f}s")
