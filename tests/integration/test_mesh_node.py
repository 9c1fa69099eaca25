"""MeshNode over real UDP sockets on loopback (IPv4, IPv6, dual-stack)."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import pytest

from coremesh import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionEvent,
    ConnectionFailed,
    ConnectionState,
    MeshConfig,
    MeshNode,
    MessageTooLarge,
    PeerNotFound,
)
from coremesh.identity import Identity
from coremesh.routing.flood import Delivery

from .aio import eventually, run

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

LOOP4 = MeshConfig(listen_addr="127.0.0.1:0", heartbeat_interval=0.5, idle_timeout=3.0, connect_timeout=2.0)


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_two_nodes_exchange_messages_both_ways() -> None:
    async def body() -> None:
        async with MeshNode(LOOP4) as a, MeshNode(LOOP4) as b:
            conn = await a.connect(b.peer_id, b.local_address)
            assert conn.peer_id == b.peer_id and conn.path == "direct"
            for i in range(100):
                await conn.send(f"message {i}".encode())
            incoming = b.get_connection(a.peer_id)
            assert incoming is not None
            got = [await incoming.receive() for _ in range(100)]
            assert got == [f"message {i}".encode() for i in range(100)]
            await incoming.send(b"reply")
            assert await conn.receive() == b"reply"

    run(body)


def test_large_messages_are_fragmented_and_reassembled() -> None:
    async def body() -> None:
        async with MeshNode(LOOP4) as a, MeshNode(LOOP4) as b:
            conn = await a.connect(f"{b.peer_id}@{b.local_address}")
            sizes = [0, 1, 1199, 1200, 70_000, 5_000_000]
            blobs = [random.Random(i).randbytes(n) for i, n in enumerate(sizes)]
            sender = asyncio.gather(*(conn.send(x) for x in blobs))
            incoming = b.get_connection(a.peer_id)
            assert incoming is not None
            got = [await incoming.receive() for _ in blobs]
            await sender
            assert got == blobs
            with pytest.raises(MessageTooLarge):
                await conn.send(bytes(LOOP4.max_message_size + 1))

    run(body)


def test_send_waits_when_the_peer_does_not_read() -> None:
    window = 256 * 1024
    config = MeshConfig(
        listen_addr="127.0.0.1:0", send_buffer_size=window, receive_window=window, pmtu_discovery=False
    )

    async def body() -> None:
        async with MeshNode(config) as a, MeshNode(config) as b:
            conn = await a.connect(b.peer_id, b.local_address)
            chunk = bytes(16 * 1024)
            sent = 0
            blocked = False
            for _ in range(200):  # 3.2 MB >> window + buffer
                try:
                    await asyncio.wait_for(conn.send(chunk), 0.5)
                except TimeoutError:
                    blocked = True
                    break
                sent += 1
            assert blocked, "send() never waited although the peer read nothing"
            assert sent * len(chunk) <= 2 * (256 + 256) * 1024 + len(chunk)
            incoming = b.get_connection(a.peer_id)
            assert incoming is not None
            # Reading releases the window and the sender resumes.
            reader = asyncio.gather(*(incoming.receive() for _ in range(sent + 20)))
            for _ in range(20):
                await asyncio.wait_for(conn.send(chunk), 10)
            assert len(await asyncio.wait_for(reader, 20)) == sent + 20

    run(body)


def test_ping_measures_a_round_trip() -> None:
    async def body() -> None:
        async with MeshNode(LOOP4) as a, MeshNode(LOOP4) as b:
            await a.connect(b.peer_id, b.local_address)
            clock = asyncio.get_running_loop().time
            started = clock()
            result = await a.ping(b.peer_id)
            took = clock() - started
            # A round trip, in seconds: more than nothing, within the call that measured it (its
            # figure on loopback is in benchmarks/coremesh_transport.py, "ping").
            assert 0 < result.rtt <= took and result.path == "direct"
            with pytest.raises(PeerNotFound):
                await a.ping(Identity.generate().peer_id)

    run(body)


def test_ipv6_and_dual_stack() -> None:
    assert ipv6_available(), "this test needs IPv6 on loopback (::1)"
    v6 = MeshConfig(listen_addr="[::1]:0")
    dual = MeshConfig(listen_addr="[::]:0")

    async def body() -> None:
        async with MeshNode(v6) as a, MeshNode(dual) as b, MeshNode(LOOP4) as c:
            port = b.local_address.port
            conn = await a.connect(b.peer_id, f"[::1]:{port}")
            await conn.send(b"over ipv6")
            incoming = b.get_connection(a.peer_id)
            assert incoming is not None and await incoming.receive() == b"over ipv6"
            assert incoming.remote_address.host == "::1"
            # An IPv4 node reaches the dual-stack node on its IPv4-mapped side.
            conn4 = await c.connect(b.peer_id, f"127.0.0.1:{port}")
            await conn4.send(b"over ipv4")
            incoming4 = b.get_connection(c.peer_id)
            assert incoming4 is not None and await incoming4.receive() == b"over ipv4"
            assert incoming4.remote_address.host == "127.0.0.1"

    run(body)


def test_an_address_of_the_other_family_fails_at_once_with_the_reason() -> None:
    async def body() -> None:
        async with MeshNode(LOOP4) as a, MeshNode(MeshConfig(listen_addr="[::1]:0")) as b:
            with pytest.raises(ConnectionFailed, match="IPv4 only"):
                await a.connect(b.peer_id, b.local_address)
            with pytest.raises(ConnectionFailed, match="IPv6 only"):
                await b.connect(a.peer_id, a.local_address)

    run(body)


def test_close_and_stop_are_seen_by_the_peer_as_a_close() -> None:
    async def body() -> None:
        seen: list[ConnectionEvent] = []
        async with MeshNode(LOOP4) as a:
            a.on_connection(seen.append)
            b = MeshNode(LOOP4)
            await b.start()
            c = MeshNode(LOOP4)
            await c.start()
            conn_b = await b.connect(a.peer_id, a.local_address)
            await c.connect(a.peer_id, a.local_address)
            await conn_b.close()
            assert conn_b.is_closed
            with pytest.raises(ConnectionClosed):
                await conn_b.send(b"x")
            await c.stop()
            for _ in range(100):
                closed = [e for e in seen if e.state is ConnectionState.CLOSED]
                if len(closed) == 2:
                    break
                await asyncio.sleep(0.02)
            closed = [e for e in seen if e.state is ConnectionState.CLOSED]
            assert {e.peer_id for e in closed} == {b.peer_id, c.peer_id}
            assert all((e.reason or "").startswith("closed by peer") for e in closed)
            assert a.get_peers() == []
            await b.stop()

    run(body)


def test_wrong_peer_id_fails_cleanly() -> None:
    async def body() -> None:
        async with MeshNode(LOOP4) as a, MeshNode(LOOP4) as b:
            impostor = Identity.generate().peer_id
            with pytest.raises(AuthenticationFailed, match=f"the node at {b.local_address} is {b.peer_id}"):
                await a.connect(impostor, b.local_address, timeout=1.0)
            assert b.get_peers() == [] and b.stats().get("drop_bad_mac1", 0) >= 1
            # The real id still works afterwards.
            await a.connect(b.peer_id, b.local_address)

    run(body)


def test_connect_by_address_learns_the_peer_id() -> None:
    async def body() -> None:
        async with MeshNode(LOOP4) as a, MeshNode(LOOP4) as b:
            conn = await a.connect(str(b.local_address))
            assert conn.peer_id == b.peer_id
            with pytest.raises(ConnectionFailed):
                silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                silent.bind(("127.0.0.1", 0))
                try:
                    await a.connect(f"127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
                finally:
                    silent.close()

    run(body)


def test_hostile_datagrams_are_counted_and_harmless() -> None:
    async def body() -> None:
        async with MeshNode(LOOP4) as a, MeshNode(LOOP4) as b:
            conn = await a.connect(b.peer_id, b.local_address)
            rng = random.Random(1)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(500):
                    first = rng.choice([0xE1, 0xE2, 0xE4, 0xE5, 0xE6, 0x00, 0x41, 0xFF])
                    s.sendto(bytes([first]) + rng.randbytes(rng.randint(0, 300)), tuple(b.local_address))
            await conn.send(b"still here")
            incoming = b.get_connection(a.peer_id)
            assert incoming is not None and await incoming.receive() == b"still here"
            stats = b.stats()
            assert sum(v for k, v in stats.items() if k.startswith("drop_")) >= 400

    run(body)


def test_identity_persists_in_the_data_dir(tmp_path: Path) -> None:
    async def body() -> None:
        config = MeshConfig(listen_addr="127.0.0.1:0", data_dir=tmp_path / "node")
        first = MeshNode(config)
        await first.stop()  # gives the data dir up (a data dir belongs to one node at a time)
        second = MeshNode(config)
        assert first.peer_id == second.peer_id
        await second.stop()
        assert (tmp_path / "node" / "identity.key").stat().st_mode & 0o777 == 0o600

    run(body)


def test_broadcast_reaches_every_node_of_the_mesh_once_not_only_neighbours() -> None:
    async def body() -> None:
        async with MeshNode(LOOP4) as hub, MeshNode(LOOP4) as x, MeshNode(LOOP4) as y:
            got: dict[str, list[Delivery]] = {"hub": [], "x": [], "y": []}
            for name, node in (("hub", hub), ("x", x), ("y", y)):
                node.on_delivery(got[name].append)
            # x - hub - y: x and y are not connected to each other.
            await x.connect(hub.peer_id, hub.local_address)
            await y.connect(hub.peer_id, hub.local_address)
            await eventually(lambda: any(r["destination"] == y.peer_id.to_text() for r in x.routes()))
            assert await x.broadcast(b"to all") == 1  # one neighbour: the hub
            await eventually(lambda: bool(got["hub"] and got["y"]))
            for name in ("hub", "y"):
                assert [(d.kind, d.origin, d.data) for d in got[name]] == [
                    ("broadcast", x.peer_id, b"to all")
                ]
            assert got["x"] == []  # the sender does not deliver its own broadcast
            assert y.get_connection(x.peer_id) is None  # it came through the hub, not a connection

    run(body)


@pytest.mark.parametrize("example", ["two_nodes.py", "monitor.py"])
def test_examples_run(example: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / example)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    if example == "two_nodes.py":
        assert "bob got: b'hello bob'" in proc.stdout and "alice got: b'hello alice'" in proc.stdout
    else:
        assert " connected " in proc.stdout and " closed " in proc.stdout
