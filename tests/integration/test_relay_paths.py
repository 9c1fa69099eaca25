"""Nodes use relays: server-reflexive addresses, TURN allocations and the keyed relay.

In-process tests start our relay services on 127.0.0.1 and drive MeshNodes through the public API.
The namespace tests run real `coremesh-relay` and `coremesh-node` processes in a private network
namespace where a firewall rule makes the direct path between the two nodes impossible.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from typing import TypeVar

import pytest
from coremesh_relay.keyed import KeyedRelayConfig, KeyedRelayServer
from coremesh_relay.stunturn import StunTurnService
from coremesh_relay.stunturn_config import StunTurnConfig

from coremesh import Connection, ConnectionFailed, MeshConfig, MeshNode, PeerId
from coremesh.endpoint.paths import RelayAddress

from .aio import eventually, run
from .netns import free_ports, private_namespace

T = TypeVar("T")
LOOP = "127.0.0.1:0"


async def accepted(node: MeshNode, peer: PeerId, timeout: float = 5.0) -> Connection:
    """The connection ``node`` accepted from ``peer``: the responder has it once the initiator's
    first packet under the new keys arrives, which may be just after the initiator's connect returns."""
    await eventually(lambda: node.get_connection(peer) is not None, timeout, "the responder's connection")
    conn = node.get_connection(peer)
    assert conn is not None
    return conn


def test_a_node_behind_nothing_learns_its_server_reflexive_address() -> None:
    async def body() -> None:
        service = StunTurnService(StunTurnConfig(listen=LOOP))
        await service.start()
        try:
            port = service.addresses[0].port
            async with MeshNode(MeshConfig(listen_addr=LOOP, relays=(f"127.0.0.1:{port}",))) as node:
                srflx = [c for c in node.candidates() if c["type"] == "srflx"]
                assert srflx == [
                    {"type": "srflx", "address": str(node.local_address), "via": f"127.0.0.1:{port}"}
                ]
                assert not [c for c in node.candidates() if c["type"] == "relay"]  # no credentials, no TURN
        finally:
            await service.stop()

    run(body)


def test_turn_carries_a_connection_and_ping_says_relay() -> None:
    async def body() -> None:
        service = StunTurnService(
            StunTurnConfig(listen=LOOP, users={"alice": "s3cret"}, allow_loopback_peers=True)
        )
        await service.start()
        try:
            port = service.addresses[0].port
            config_a = MeshConfig(listen_addr=LOOP, relays=(f"alice:s3cret@127.0.0.1:{port}",))
            async with MeshNode(config_a) as a, MeshNode(MeshConfig(listen_addr=LOOP)) as b:
                relayed = next(c["address"] for c in a.candidates() if c["type"] == "relay")
                conn = await a.connect(b.peer_id, b.local_address, path="relay")
                assert conn.path == "relay"
                await conn.send(b"through TURN")
                incoming = await accepted(b, a.peer_id)
                assert await incoming.receive() == b"through TURN"
                assert str(incoming.remote_address) == relayed  # B talks to A's relayed address
                await incoming.send(b"back")
                assert await conn.receive() == b"back"
                assert (await a.ping(b.peer_id)).path == "relay"
                assert service.stats().get("packets_to_peer", 0) > 0
        finally:
            await service.stop()

    run(body)


def test_a_lost_allocation_stops_routing_and_is_replaced() -> None:
    async def body() -> None:
        config = StunTurnConfig(listen=LOOP, users={"alice": "s3cret"}, allow_loopback_peers=True)
        service = StunTurnService(config)
        await service.start()
        port = service.addresses[0].port
        try:
            config_a = MeshConfig(listen_addr=LOOP, relays=(f"alice:s3cret@127.0.0.1:{port}",))
            async with MeshNode(config_a) as a, MeshNode(MeshConfig(listen_addr=LOOP)) as b:
                conn = await a.connect(b.peer_id, b.local_address, path="relay")
                first = next(c["address"] for c in a.candidates() if c["type"] == "relay")
                # The relay restarts: the node's allocation is gone. The node notices when its
                # allocation times out; force that moment instead of waiting ten minutes.
                await service.stop()
                service = StunTurnService(dataclasses.replace(config, listen=f"127.0.0.1:{port}"))
                await service.start()
                link = a._parts.relays.turn[0]  # type: ignore[union-attr]
                assert link.client is not None
                link.client.handle_timer(link._now() + 7200)  # its refresh is now due
                link._flush()
                # The new server does not know the allocation: it is lost.
                await eventually(lambda: link.error is not None, 15, "the allocation to be lost")
                assert link.error is not None and "Lost" in link.error, link.error
                assert a._parts.endpoint.turn_route(b.local_address) is None  # type: ignore[union-attr]  # no black hole
                await eventually(  # re-allocated (after about a second), and the route restored
                    lambda: link.allocated and a._parts.endpoint.turn_route(b.local_address) is not None,  # type: ignore[union-attr]
                    15,
                    "a new allocation and route",
                )
                second = next(c["address"] for c in a.candidates() if c["type"] == "relay")
                assert second != first
                await conn.send(b"after the restart")
                incoming = b.get_connection(a.peer_id)
                assert incoming is not None
                while await incoming.receive() != b"after the restart":
                    pass
                assert str(incoming.remote_address) == second  # B followed A to its new relayed address
                assert (await a.ping(b.peer_id)).path == "relay"
        finally:
            await service.stop()

    run(body)


def test_wrong_turn_credentials_leave_the_node_working_without_a_relayed_address() -> None:
    async def body() -> None:
        service = StunTurnService(StunTurnConfig(listen=LOOP, users={"alice": "s3cret"}))
        await service.start()
        try:
            port = service.addresses[0].port
            config = MeshConfig(listen_addr=LOOP, relays=(f"alice:wrong@127.0.0.1:{port}",))
            async with MeshNode(config) as a, MeshNode(MeshConfig(listen_addr=LOOP)) as b:
                status = next(iter(a.relay_status()["turn"].values()))
                assert not status["allocated"] and status["error"]
                with pytest.raises(ConnectionFailed, match="no relay"):
                    await a.connect(b.peer_id, b.local_address, path="relay")
                conn = await a.connect(b.peer_id, b.local_address)  # direct still works
                assert conn.path == "direct"
        finally:
            await service.stop()

    run(body)


def test_the_keyed_relay_carries_a_connection_by_peer_id() -> None:
    async def body() -> None:
        server = KeyedRelayServer(KeyedRelayConfig(listen=LOOP))
        await server.start()
        try:
            url = f"tcp://{server.address}"
            config = MeshConfig(listen_addr=LOOP, keyed_relays=(url,))
            async with MeshNode(config) as a, MeshNode(config) as b:
                conn = await a.connect(b.peer_id, b.local_address, path="relay")
                assert conn.path == "relay" and conn.remote_address == RelayAddress(url, b.peer_id)
                for i in range(200):
                    await conn.send(f"message {i}".encode())
                incoming = await accepted(b, a.peer_id)
                assert incoming.path == "relay"
                assert [await incoming.receive() for _ in range(200)] == [
                    f"message {i}".encode() for i in range(200)
                ]
                await incoming.send(b"back")
                assert await conn.receive() == b"back"
                assert (await a.ping(b.peer_id)).path == "relay"
        finally:
            await server.stop()

    run(body)


def test_a_node_starts_and_works_while_its_keyed_relay_is_down() -> None:
    import socket

    async def body() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"tcp://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens here
        config = MeshConfig(listen_addr=LOOP, keyed_relays=(dead,))
        started = asyncio.get_running_loop().time()
        async with MeshNode(config) as a, MeshNode(MeshConfig(listen_addr=LOOP)) as b:
            assert asyncio.get_running_loop().time() - started < 5
            assert a.relay_status()["keyed"][dead]["registered"] is False
            with pytest.raises(ConnectionFailed, match="no relay"):
                await a.connect(b.peer_id, b.local_address, path="relay")
            assert (await a.connect(b.peer_id, b.local_address)).path == "direct"

    run(body)


# -- real processes where the direct path is impossible -------------------------------------------


def _start_mesh(ns, tmp: str, *, relay_args: list[str], node_args: list[str]) -> tuple[str, str, str, str]:  # type: ignore[no-untyped-def]
    relay_port, relay_admin, keyed_port, pa, pb, aa, ab = free_ports(ns, 7)
    ns.python(
        "-m", "coremesh_relay", "--listen", f"127.0.0.1:{relay_port}", "--admin", f"127.0.0.1:{relay_admin}",
        "--keyed-listen", f"127.0.0.1:{keyed_port}", "--allow-loopback-peers", "--user", "alice:s3cret",
        *relay_args, log_path=f"{tmp}/relay.log",
    )  # fmt: skip
    ns.wait_http(f"127.0.0.1:{relay_admin}")
    args = [
        a.replace("RELAY", f"127.0.0.1:{relay_port}").replace("KEYED", f"tcp://127.0.0.1:{keyed_port}")
        for a in node_args
    ]
    for name, port, admin in (("a", pa, aa), ("b", pb, ab)):
        ns.python(
            "-m", "coremesh_node", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{tmp}/{name}",
            "--admin", f"127.0.0.1:{admin}", *args, log_path=f"{tmp}/{name}.log",
        )  # fmt: skip
    for admin in (aa, ab):
        ns.wait_http(f"127.0.0.1:{admin}")
    ns.block_udp_between(pa, pb)  # no direct path between the two nodes
    b_id = ns.admin(f"127.0.0.1:{ab}", "GET", "/v1/status")["peer_id"]
    return f"127.0.0.1:{aa}", f"127.0.0.1:{ab}", b_id, f"127.0.0.1:{pb}"


@pytest.mark.parametrize(
    "node_args",
    [["--relay", "alice:s3cret@RELAY"], ["--keyed-relay", "KEYED"]],
    ids=["turn", "keyed-relay"],
)
def test_nodes_without_a_direct_path_talk_through_the_relay(node_args: list[str]) -> None:
    with private_namespace() as ns, tempfile.TemporaryDirectory() as tmp:
        admin_a, admin_b, b_id, b_addr = _start_mesh(ns, tmp, relay_args=[], node_args=node_args)
        connected = ns.admin(admin_a, "POST", "/v1/connect", {"peer": f"{b_id}@{b_addr}"})
        assert connected["path"] == "relay", connected
        ping = ns.admin(admin_a, "POST", "/v1/ping", {"peer": b_id, "count": 3})
        assert ping["path"] == "relay" and ping["received"] == 3, ping
        for i in range(20):
            ns.admin(admin_a, "POST", "/v1/send", {"peer": b_id, "data": f"hello {i}"})
        got = ns.admin(admin_b, "GET", "/v1/messages?count=20&timeout=10")["messages"]
        assert [m["data"] for m in got] == [f"hello {i}" for i in range(20)]
