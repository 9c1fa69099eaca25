"""The DiscoveryService plugin interface on loopback: a node connects to a bare PeerId through the
addresses its registered services give, started and stopped with the node."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from coremesh import MeshConfig, MeshNode, PeerNotFound
from coremesh.addr import Address
from coremesh.discovery import DiscoveredPeer, DiscoveryService, StaticDiscovery
from coremesh.errors import MeshError
from coremesh.identity import Identity, PeerId
from coremesh.mesh.dialer import DISCOVERY_POLL

pytestmark = pytest.mark.integration
T = TypeVar("T")
NO_DHT = MeshConfig(listen_addr="127.0.0.1:0", dht=False)
LOOP = MeshConfig(listen_addr="127.0.0.1:0")


def run(fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(bounded())


class Recording:
    """A service that records its lifecycle and can fail on demand."""

    name = "recording"

    def __init__(self, *, fail_start: bool = False, fail_discover: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_start = fail_start
        self.fail_discover = fail_discover

    async def start(self, node: MeshNode) -> None:
        self.calls.append(f"start:{node.is_running}")
        if self.fail_start:
            raise MeshError("cannot start")

    async def discover_peers(self) -> list[DiscoveredPeer]:
        self.calls.append("discover")
        if self.fail_discover:
            raise OSError("network is down")
        return []

    async def stop(self) -> None:
        self.calls.append("stop")


def dead_address() -> Address:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return Address("127.0.0.1", s.getsockname()[1])


def test_connect_by_peer_id_through_a_discovery_service() -> None:
    async def body() -> None:
        async with MeshNode(LOOP) as b:
            static = StaticDiscovery([(b.peer_id, [dead_address(), b.local_address])])
            recording = Recording(fail_discover=True)  # one broken source does not hide the others
            a = MeshNode(LOOP).with_discovery(static).with_discovery(recording)
            assert isinstance(static, DiscoveryService) and a.discovery_services == [static, recording]
            async with a:
                conn = await a.connect(b.peer_id, timeout=2.0)  # the dead address first, then the live one
                assert conn.remote_address == b.local_address
                await conn.send(b"hello")
                incoming = b.get_connection(a.peer_id)
                assert incoming is not None and await incoming.receive() == b"hello"
                assert await a.connect(b.peer_id.to_text()) is conn  # already connected
            assert recording.calls[0] == "start:True" and recording.calls[-1] == "stop"

    run(body)


class Late(Recording):
    """Knows ``peer`` (at ``address``) from its ``answer_at``-th ask on: an mDNS browse that is
    answered a moment after the connect began."""

    name = "late"

    def __init__(self, peer: PeerId, address: Address, answer_at: int) -> None:
        super().__init__()
        self.peer, self.address, self.answer_at = peer, address, answer_at

    async def discover_peers(self) -> list[DiscoveredPeer]:
        await super().discover_peers()
        if self.calls.count("discover") < self.answer_at:
            return []
        return [DiscoveredPeer(peer_id=self.peer, addresses=(self.address,), source=self.name)]


def test_an_unknown_peer_id_fails_at_the_timeout_and_a_late_answer_is_waited_for() -> None:
    async def body() -> None:
        asked = Recording()
        async with MeshNode(LOOP).with_discovery(asked) as a:
            # The services are asked until the timeout; the DHT (no other member) has no record;
            # then the connect gives up (the run's own bound catches a connect that never ends).
            with pytest.raises(PeerNotFound, match="no live record of"):
                await a.connect(Identity.generate().peer_id, timeout=0.5)
            # Asked once per poll until the timeout, never after it: the poll count is a clock that
            # a loaded machine can only slow down (fewer asks), so a connect past 0.5 s shows here.
            assert 1 <= asked.calls.count("discover") <= 0.5 / DISCOVERY_POLL + 2, asked.calls
        async with MeshNode(LOOP) as b:
            late = Late(b.peer_id, b.local_address, answer_at=3)
            async with MeshNode(LOOP).with_discovery(late) as a:
                # Not known at the first ask nor the second: asked again until the third answers.
                conn = await a.connect(b.peer_id, timeout=20.0)
                assert conn.remote_address == b.local_address
                assert late.calls.count("discover") == 3
        async with MeshNode(NO_DHT) as plain:  # no discovery at all: the old, immediate error
            with pytest.raises(PeerNotFound, match="PEERID@HOST:PORT"):
                await plain.connect(Identity.generate().peer_id)

    run(body)


def test_a_service_that_fails_to_start_does_not_stop_the_node() -> None:
    async def body() -> None:
        broken = Recording(fail_start=True)
        async with MeshNode(LOOP).with_discovery(broken) as a:
            assert a.is_running
            assert await a.discovered_peers() == []
        assert broken.calls == ["start:True", "discover", "stop"]

    run(body)


def test_discovered_peers_are_bounded_and_frozen() -> None:
    pid = Identity.generate().peer_id
    many = tuple(Address("192.0.2.1", 1000 + i) for i in range(40))
    peer = DiscoveredPeer(peer_id=pid, addresses=many + many, source="x")
    assert len(peer.addresses) == 16 and peer.addresses[0] == many[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        peer.source = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        DiscoveredPeer(peer_id="abc", addresses=(), source="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        DiscoveredPeer(peer_id=pid, addresses=("192.0.2.1:1",), source="x")  # type: ignore[arg-type]
