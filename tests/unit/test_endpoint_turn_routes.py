"""The endpoint core's TURN route table: every datagram leaves the core with the one way out it
takes (a plain address is straight UDP, a TurnAddress is "wrap for that allocation"), and the
runtime sends by type alone, with no route lookup of its own."""

from __future__ import annotations

import asyncio
import random
import socket

from coremesh.addr import Address
from coremesh.aio.runtime import UdpRuntime, open_udp_socket
from coremesh.config import MeshConfig
from coremesh.endpoint import events as ev
from coremesh.endpoint.endpoint import Endpoint
from coremesh.endpoint.paths import DirectAddress, PathAddress, ProbeAddress, RelayAddress, TurnAddress
from coremesh.identity import Identity

PEER = Address("192.0.2.7", 4000)
SERVER = Address("198.51.100.1", 3478)
OTHER_SERVER = Address("198.51.100.2", 3478)


def _endpoint(seed: int = 1) -> Endpoint:
    return Endpoint(Identity(random.Random(seed).randbytes(32)), MeshConfig(), rng=random.Random(seed))


def _probe_to(endpoint: Endpoint, address: PathAddress, now: float = 0.0) -> list[tuple[bytes, object]]:
    """Send an identity probe to ``address`` through the core and drain what leaves it."""
    endpoint.start_probe(endpoint.probe_identity(address), now)
    return list(endpoint.datagrams_to_send(now))


def test_a_plain_address_leaves_straight_until_a_turn_route_names_a_server() -> None:
    endpoint = _endpoint()
    assert [dst for _, dst in _probe_to(endpoint, PEER)] == [PEER]
    endpoint.set_turn_route(PEER, SERVER)
    assert endpoint.turn_route(PEER) == SERVER
    assert [dst for _, dst in _probe_to(endpoint, PEER)] == [TurnAddress(SERVER, PEER)]
    endpoint.clear_turn_route(PEER)
    assert endpoint.turn_route(PEER) is None
    assert [dst for _, dst in _probe_to(endpoint, PEER)] == [PEER]


def test_a_direct_address_always_leaves_as_a_plain_one() -> None:
    endpoint = _endpoint()
    endpoint.set_turn_route(PEER, SERVER)
    assert [dst for _, dst in _probe_to(endpoint, DirectAddress(PEER))] == [PEER]


def test_a_reply_to_a_turn_delivery_follows_the_route_of_its_peer() -> None:
    endpoint = _endpoint()
    came = TurnAddress(OTHER_SERVER, PEER)
    assert endpoint.send_address(came) == PEER  # no route: straight, as the runtime always did
    endpoint.set_turn_route(PEER, OTHER_SERVER)
    assert endpoint.send_address(came) is came
    endpoint.set_turn_route(PEER, SERVER)
    assert endpoint.send_address(came) == TurnAddress(SERVER, PEER)


def test_probe_and_keyed_relay_paths_pass_unchanged() -> None:
    endpoint = _endpoint()
    endpoint.set_turn_route(PEER, SERVER)
    probe = ProbeAddress(3, PEER)
    relay = RelayAddress("tcp://127.0.0.1:1", endpoint.peer_id)
    assert endpoint.send_address(probe) is probe
    assert endpoint.send_address(relay) is relay


def test_a_lost_allocation_clears_only_the_routes_through_it() -> None:
    endpoint = _endpoint()
    second = Address("192.0.2.8", 4000)
    endpoint.set_turn_route(PEER, SERVER)
    endpoint.set_turn_route(second, OTHER_SERVER)
    endpoint.clear_turn_routes_via(SERVER)
    assert endpoint.turn_route(PEER) is None
    assert endpoint.turn_route(second) == OTHER_SERVER


class _PrefixingAllocation:
    """Stands in for a TURN allocation's framing: a visible prefix instead of ChannelData."""

    def wrap(self, data: bytes, peer: Address, now: float) -> bytes:
        return b"TURN:" + str(peer).encode() + b":" + data


def test_the_runtime_wraps_for_the_allocation_the_core_names_and_counts_a_missing_one() -> None:
    async def main() -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        server_address = Address("127.0.0.1", server.getsockname()[1])
        events: list[ev.Event] = []
        endpoint = _endpoint()
        runtime = UdpRuntime(endpoint, open_udp_socket(Address("127.0.0.1", 0), 1 << 16), events.append)
        runtime.start()
        try:
            runtime.turn_links[server_address] = _PrefixingAllocation()
            endpoint.set_turn_route(PEER, server_address)
            runtime.send_raw(b"\xe0hello", TurnAddress(server_address, PEER))
            loop = asyncio.get_running_loop()
            data = await asyncio.wait_for(loop.sock_recv(server, 2048), 5.0)
            assert data == b"TURN:" + str(PEER).encode() + b":\xe0hello"
            # A route to a server the shell holds no allocation for: a counted drop, not a traceback.
            endpoint.set_turn_route(PEER, OTHER_SERVER)
            runtime.send_raw(b"\xe0lost", TurnAddress(server_address, PEER))
            assert endpoint.counters["drop_relay_unavailable"] == 1
        finally:
            runtime.close()
            server.close()

    asyncio.run(main())
