"""Padding and cover traffic over real sockets: two MeshNodes on loopback with a small UDP proxy
between them that records every datagram it carries (its size, its direction, when)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from coremesh import MeshConfig, MeshNode
from coremesh.addr import Address
from coremesh.secure import wire

from .aio import eventually, run

BUCKETS = (128, 256, 512, 1024)
SIZES = {*BUCKETS, 1200}
RATE = 20.0


@dataclass
class Proxy(asyncio.DatagramProtocol):
    """Forwards between the one client that talks to ``front`` and ``server``, from ``back``."""

    server: tuple[str, int]
    log: list[tuple[float, str, bytes]] = field(default_factory=list)
    front: asyncio.DatagramTransport | None = None
    back: asyncio.DatagramTransport | None = None
    client: tuple[str, int] | None = None


class _Side(asyncio.DatagramProtocol):
    def __init__(self, proxy: Proxy, outward: bool) -> None:
        self.proxy = proxy
        self.outward = outward  # True: from the client (front) to the server (back)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        p = self.proxy
        now = asyncio.get_running_loop().time()
        if self.outward:
            p.client = addr
            p.log.append((now, "a->b", data))
            assert p.back is not None
            p.back.sendto(data, p.server)
        elif p.client is not None and addr == p.server:
            p.log.append((now, "b->a", data))
            assert p.front is not None
            p.front.sendto(data, p.client)


async def start_proxy(server: Address) -> tuple[Proxy, Address]:
    loop = asyncio.get_running_loop()
    proxy = Proxy((server.host, server.port))
    front, _ = await loop.create_datagram_endpoint(lambda: _Side(proxy, True), local_addr=("127.0.0.1", 0))
    back, _ = await loop.create_datagram_endpoint(lambda: _Side(proxy, False), local_addr=("127.0.0.1", 0))
    proxy.front, proxy.back = front, back
    host, port = front.get_extra_info("sockname")[:2]
    return proxy, Address(host, port)


def transport(proxy: Proxy, direction: str, start: float, end: float) -> list[int]:
    return [
        len(d)
        for t, side, d in proxy.log
        if side == direction and start <= t < end and d[0] == wire.PacketType.TRANSPORT
    ]


CONFIG = MeshConfig(
    listen_addr="127.0.0.1:0",
    enable_nat_traversal=False,  # stay on the proxied path
    dht=False,
    heartbeat_interval=1.0,
    idle_timeout=10.0,
    padding_buckets=BUCKETS,
    cover_rate=RATE,
)


def test_padded_nodes_keep_bucket_sizes_and_a_steady_rate_through_a_proxy() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with MeshNode(CONFIG) as a, MeshNode(CONFIG) as b:
            proxy, via = await start_proxy(b.local_address)
            try:
                conn = await a.connect(b.peer_id, via)
                await eventually(lambda: b.get_connection(a.peer_id) is not None, what="b's side")
                incoming = b.get_connection(a.peer_id)
                assert incoming is not None
                await asyncio.sleep(0.5)  # the handshake's own packets are behind us
                idle_start = loop.time()
                await asyncio.sleep(2.0)
                busy_start = loop.time()
                sent = [f"message {i} ".encode() * (1 + 37 * i) for i in range(10)]
                for data in sent:
                    await conn.send(data)
                    await asyncio.sleep(0.2)
                got = [await incoming.receive() for _ in sent]
                busy_end = loop.time()
                assert got == sent
                for direction in ("a->b", "b->a"):
                    every = transport(proxy, direction, 0.0, busy_end)
                    assert every and set(every) <= SIZES, (direction, sorted(set(every)))
                    for start, end in ((idle_start, busy_start), (busy_start, busy_end)):
                        count = len(transport(proxy, direction, start, end))
                        slots = (end - start) * RATE
                        # One packet per slot: cover fills the empty ones. (A loaded machine may run
                        # a slot late: the schedule then restarts rather than bursting.)
                        assert 0.5 * slots <= count <= 1.1 * slots + 12, (direction, count, slots)
                assert a.stats()["cover_packets_sent"] > 0 and b.stats()["cover_packets_received"] > 0
            finally:
                assert proxy.front is not None and proxy.back is not None
                proxy.front.close()
                proxy.back.close()

    run(body)
