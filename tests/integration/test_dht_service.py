"""The DHT's asyncio shell over real loopback sockets: the own record's sequence number across
restarts, and DHT datagrams that reach the node by a path other than its main socket."""

from __future__ import annotations

import asyncio
import random
import socket
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from coremesh import MeshConfig, MeshNode
from coremesh.addr import Address
from coremesh.aio import dht as dht_service
from coremesh.aio.dht import DhtService
from coremesh.aio.runtime import UdpRuntime, open_udp_socket
from coremesh.dht import DhtConfig, DhtNode
from coremesh.endpoint.endpoint import Endpoint
from coremesh.endpoint.events import Event
from coremesh.endpoint.paths import ProbeAddress, RelayAddress
from coremesh.identity import Identity

from .aio import eventually

pytestmark = pytest.mark.integration

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]], timeout: float = 90.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


def _stats(node: MeshNode) -> dict[str, int]:
    stats: dict[str, int] = node.dht_status()["stats"]
    return stats


@pytest.mark.parametrize("crashed", [False, True], ids=["stopped", "crashed"])
def test_a_restart_with_the_clock_set_back_publishes_a_record_the_holders_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crashed: bool
) -> None:
    """A node restarted on its data dir with its wall clock ten minutes behind (and on a new port)
    still publishes a record newer than the one the network holds: the holder stores it (no STALE)
    and serves the new address. ``crashed``: the node died before it saved its routing table (the
    snapshot, which also holds the own record, is gone); the sequence number alone survives."""

    async def body() -> None:
        holder = MeshNode(MeshConfig(listen_addr="127.0.0.1:0"))
        await holder.start()
        try:
            config = MeshConfig(
                listen_addr="127.0.0.1:0",
                data_dir=tmp_path / "a",
                bootstrap_peers=(str(holder.local_address),),
            )
            first = MeshNode(config)
            await first.start()
            try:
                await eventually(
                    lambda: _stats(holder).get("records_accepted", 0) == 1, 20, "the first record stored"
                )
                old = await holder.lookup(first.peer_id, timeout=10)
                first_address = first.local_address
            finally:
                await first.stop()
            assert old.addresses == (("host", str(first_address)),)
            if crashed:
                (tmp_path / "a" / dht_service.SNAPSHOT_FILE).unlink()

            # The same data dir, the wall clock set back by ten minutes.
            behind = types.SimpleNamespace(time=lambda: time.time() - 600.0)
            monkeypatch.setattr(dht_service, "time", behind)
            again = MeshNode(config)
            await again.start()
            try:
                assert again.peer_id == first.peer_id and again.local_address != first_address
                await eventually(
                    lambda: (
                        _stats(holder).get("records_accepted", 0) >= 2
                        or _stats(holder).get("drop_stale_seq", 0) >= 1
                    ),
                    20,
                    "the holder to answer the second STORE",
                )
                stats = _stats(holder)
                assert stats.get("drop_stale_seq", 0) == 0, stats
                assert stats["records_accepted"] == 2, stats
                new = await holder.lookup(again.peer_id, timeout=10)
                assert new.seq > old.seq
                assert new.addresses == (("host", str(again.local_address)),)
            finally:
                await again.stop()
        finally:
            await holder.stop()

    run(body)


def test_a_seed_given_by_host_name_answers_and_the_node_joins_through_it() -> None:
    """``--bootstrap NAME:PORT`` (a compose service name): the seed's answer comes from its IP, and the
    node accepts it (the name was resolved before the PING), so it joins through the seed's answer
    instead of waiting for the seed to contact it first."""

    async def body() -> None:
        seed = MeshNode(MeshConfig(listen_addr="127.0.0.1:0"))
        await seed.start()
        try:
            node = MeshNode(
                MeshConfig(
                    listen_addr="127.0.0.1:0", bootstrap_peers=(f"localhost:{seed.local_address.port}",)
                )
            )
            await node.start()
            try:
                await eventually(
                    lambda: _stats(node).get("routing_table_size", 0) >= 1, 20, "the node to join"
                )
                stats = _stats(node)
                assert stats.get("drop_unsolicited_response", 0) == 0, stats
                assert stats.get("request_timeout", 0) == 0, stats
            finally:
                await node.stop()
        finally:
            await seed.stop()

    run(body)


# -- DHT datagrams by another path than the main socket ---------------------------------------------


class _Dht:
    """A DhtService on its own UdpRuntime (what MeshNode wires), on 127.0.0.1."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.identity = Identity(rng.randbytes(32))
        config = MeshConfig(listen_addr="127.0.0.1:0")
        self.endpoint = Endpoint(self.identity, config, rng=rng)
        self.events: list[Event] = []
        sock = open_udp_socket(Address("127.0.0.1", 0), 1 << 16)
        self.runtime = UdpRuntime(self.endpoint, sock, self.events.append)
        self.runtime.start()
        self.service = DhtService(
            self.identity,
            config,
            self.runtime,
            addresses=lambda: [("host", str(self.runtime.local_address))],
            connected_peers=lambda: [],
            rng=rng,
        )
        self.service.start(())

    async def close(self) -> None:
        await self.service.stop()
        self.runtime.close()


class _Peer:
    """A sans-IO DhtNode on a plain UDP socket, driven by hand: the other side of each test."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.loop = asyncio.get_running_loop()
        self.node = DhtNode(
            Identity(rng.randbytes(32)), DhtConfig(), rng=rng, wall_offset=time.time() - self.loop.time()
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = Address(*self.sock.getsockname())

    def send(self, wrap: Callable[[bytes], bytes] = lambda d: d, to: Address | None = None) -> None:
        for data, addr in self.node.datagrams_to_send(self.loop.time()):
            self.sock.sendto(wrap(data), to or addr)

    async def receive(self) -> tuple[bytes, Address]:
        try:
            data, sockaddr = await asyncio.wait_for(self.loop.sock_recvfrom(self.sock, 65536), 10)
        except TimeoutError:
            raise AssertionError("no answer within 10 s") from None
        return data, Address(*sockaddr)

    def close(self) -> None:
        self.sock.close()


def test_without_a_data_dir_a_restarted_node_never_signs_a_lower_sequence_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same MeshNode stopped and started again with its wall clock set back: no data dir holds
    the number, the node itself does."""

    async def body() -> None:
        node = MeshNode(MeshConfig(listen_addr="127.0.0.1:0"))
        await node.start()
        assert node._parts.dht is not None and node._parts.dht.core.own_record is not None
        first = node._parts.dht.core.own_record.seq
        await node.stop()
        behind = types.SimpleNamespace(time=lambda: time.time() - 600.0)
        monkeypatch.setattr(dht_service, "time", behind)
        await node.start()
        try:
            assert node._parts.dht is not None and node._parts.dht.core.own_record is not None
            assert node._parts.dht.core.own_record.seq > first
        finally:
            await node.stop()

    run(body)


def test_the_core_follows_a_wall_clock_stepped_after_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sealed requests carry the wall clock and a peer refuses one outside its replay window: a
    clock stepped after the start (NTP at boot) is followed within a maintenance tick, not at the
    next restart."""

    async def body() -> None:
        node = MeshNode(MeshConfig(listen_addr="127.0.0.1:0"))
        await node.start()
        try:
            assert node._parts.dht is not None
            core = node._parts.dht.core
            loop = asyncio.get_running_loop()
            assert abs(core.wall_offset + loop.time() - time.time()) < 1.0
            ahead = types.SimpleNamespace(time=lambda: time.time() + 7200.0)
            monkeypatch.setattr(dht_service, "time", ahead)
            await eventually(
                lambda: abs(core.wall_offset + loop.time() - (time.time() + 7200.0)) < 1.0,
                3 * dht_service.ADDRESS_CHECK_INTERVAL,
                "the core's wall clock to follow the step",
            )
        finally:
            await node.stop()

    run(body)


def test_a_dht_request_on_a_probe_socket_is_answered_from_that_socket() -> None:
    """A peer that knows us by a probe socket's address (the birthday approach moved our connection
    there) sends a DHT PING to it: the DHT answers, from that very socket, and the peer verifies us."""

    async def body() -> None:
        a, peer = _Dht(1), _Peer(2)
        try:
            a.endpoint.socket_commands.append((True, 7))
            a.runtime.pump()
            a.endpoint.transmit(b"\xe0hello", ProbeAddress(7, peer.address))
            a.runtime.pump()
            _, probe = await peer.receive()  # where the probe socket is
            assert probe != a.runtime.local_address
            peer.node.bootstrap([probe], peer.loop.time())
            peer.send()
            data, source = await peer.receive()
            assert source == probe  # from the probe socket, not the main one
            peer.node.receive_datagram(data, source, peer.loop.time())
            assert peer.node.routing_table() == [(a.identity.peer_id, probe)]
            assert a.endpoint.counters["drop_unknown_type"] == 0
        finally:
            await a.close()
            peer.close()

    run(body)


def test_a_dht_request_through_our_turn_allocation_is_answered() -> None:
    """A DHT datagram unwrapped from our TURN allocation (here a one-byte wrapper standing in for
    ChannelData, unwrapped by the runtime's foreign handler) reaches the DHT, which answers it."""

    async def body() -> None:
        a, peer = _Dht(3), _Peer(4)
        try:

            def unwrap(data: bytes, addr: Address, now: float) -> list[tuple[bytes, Address]]:
                return [(data[1:], addr)] if data[:1] == b"\x40" else []

            a.runtime.foreign_handler = unwrap
            target = a.runtime.local_address
            peer.node.bootstrap([target], peer.loop.time())
            peer.send(wrap=lambda d: b"\x40" + d)
            data, source = await peer.receive()
            assert source == target
            peer.node.receive_datagram(data, source, peer.loop.time())
            assert peer.node.routing_table() == [(a.identity.peer_id, target)]
            assert a.endpoint.counters["drop_unknown_type"] == 0
        finally:
            await a.close()
            peer.close()

    run(body)


def test_a_dht_datagram_by_the_keyed_relay_is_a_counted_dht_drop() -> None:
    """The keyed relay gives no UDP address to verify or answer: the DHT counts the datagram (it is
    not taken for an unknown mesh packet)."""

    async def body() -> None:
        a, peer = _Dht(5), _Peer(6)
        try:
            peer.node.bootstrap([a.runtime.local_address], peer.loop.time())
            ((ping, _),) = peer.node.datagrams_to_send(peer.loop.time())
            a.runtime.deliver(ping, RelayAddress("wss://relay.invalid/", peer.node.peer_id))
            assert a.endpoint.counters["drop_unknown_type"] == 0
            assert a.service.status()["stats"]["drop_via_keyed_relay"] == 1
        finally:
            await a.close()
            peer.close()

    run(body)
