"""The runtime over real loopback sockets: its receive loop (with and without GRO), and its probe
sockets (the birthday approach): what the core sends to a ProbeAddress leaves from that socket, what
arrives on it comes back tagged with it, and closing it stops both."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

from coremesh.addr import Address
from coremesh.aio.runtime import UDP_GRO, UDP_SEGMENT, UdpRuntime, open_udp_socket
from coremesh.config import MeshConfig
from coremesh.endpoint import events as ev
from coremesh.endpoint.endpoint import Endpoint
from coremesh.endpoint.paths import ProbeAddress
from coremesh.identity import Identity


def _runtime(seed: int, events: list[ev.Event]) -> UdpRuntime:
    endpoint = Endpoint(Identity(random.Random(seed).randbytes(32)), MeshConfig(), rng=random.Random(seed))
    runtime = UdpRuntime(endpoint, open_udp_socket(Address("127.0.0.1", 0), 1 << 16), events.append)
    runtime.start()
    return runtime


async def _wait_for(predicate: object, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if callable(predicate) and predicate():
            return True
        await asyncio.sleep(0.01)
    return False


def test_a_probe_socket_sends_receives_and_closes() -> None:
    async def main() -> None:
        a_events: list[ev.Event] = []
        b_events: list[ev.Event] = []
        a, b = _runtime(1, a_events), _runtime(2, b_events)
        try:
            a.endpoint.socket_commands.append((True, 7))
            target = ProbeAddress(7, b.local_address)
            nonce = a.endpoint.probe_identity(target)
            a.endpoint.start_probe(nonce, a.now())
            a.pump()
            # B answers the source it saw (the probe socket's port, not A's main socket), and the
            # answer comes back tagged with the probe socket.
            assert await _wait_for(lambda: any(isinstance(e, ev.IdentityResolved) for e in a_events))
            (resolved,) = [e for e in a_events if isinstance(e, ev.IdentityResolved)]
            assert resolved.address == target  # type: ignore[attr-defined]
            assert resolved.peer_id == b.endpoint.peer_id  # type: ignore[attr-defined]
            # Closed: nothing more leaves from it (a counted drop).
            a.endpoint.socket_commands.append((False, 7))
            a.endpoint.transmit(b"\xe0x", target)
            a.pump()
            assert a.endpoint.counters["drop_probe_socket_closed"] == 1
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_one_receive_loop_with_and_without_gro() -> None:
    """Datagrams sent in one GSO call (which a GRO socket may read as one buffer) come out one by
    one, in order, counted once each, whether the runtime reads with GRO or without."""
    sent = [bytes([i]) * 100 for i in range(5)] + [b"\x05" * 40]  # the last one shorter, as GSO allows

    async def receive_all(gro: bool) -> tuple[list[bytes], int, int]:
        got: list[bytes] = []

        def foreign(data: bytes, addr: Address, now: float) -> list[tuple[bytes, Address]]:
            got.append(data)
            return []

        runtime = _runtime(3, [])
        if not gro and runtime.gro:
            runtime.sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 0)
            runtime.gro = False
        runtime.foreign_handler = foreign
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            target = (runtime.local_address.host, runtime.local_address.port)
            try:
                segment = [(socket.IPPROTO_UDP, UDP_SEGMENT, struct.pack("=H", 100))]
                sender.sendmsg(sent, segment, 0, target)
            except OSError:  # no segmentation offload here: the same datagrams one by one
                for data in sent:
                    sender.sendto(data, target)
            assert await _wait_for(lambda: len(got) >= len(sent))
            return got, runtime.datagrams_received, runtime.bytes_received
        finally:
            sender.close()
            runtime.close()

    for gro in (True, False):
        got, count, nbytes = asyncio.run(receive_all(gro))
        assert got == sent
        assert (count, nbytes) == (len(sent), sum(map(len, sent)))
