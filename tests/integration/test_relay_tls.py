"""STUN and TURN over TLS (--cert/--pkey), the way clients behind port-443-only firewalls reach a
relay: a Binding and a TURN allocation through our relay's TLS listener, with our client core."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from coremesh_relay.stunturn import StunTurnService
from coremesh_relay.stunturn_config import StunTurnConfig

from coremesh import stun
from coremesh.addr import normalize_socket_address
from coremesh.turn import client as turn

from ..certs import self_signed


async def read_frame(reader: asyncio.StreamReader, buffer: bytearray) -> bytes:
    while True:
        n = stun.frame_length(buffer)
        if n is not None and len(buffer) >= n:
            frame = bytes(buffer[:n])
            del buffer[:n]
            return frame
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, "the relay closed the TLS connection"
        buffer += chunk


def test_binding_and_allocation_over_tls(tmp_path: Path) -> None:
    async def body() -> None:
        server_ctx, client_ctx = self_signed(tmp_path)
        config = StunTurnConfig(listen="127.0.0.1:0", users={"alice": "s3cret"}, ssl_context=server_ctx)
        service = StunTurnService(config)
        await service.start()
        try:
            port = service.addresses[0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            assert writer.get_extra_info("ssl_object") is not None
            local = normalize_socket_address(writer.get_extra_info("sockname"))
            buffer = bytearray()

            txid = os.urandom(12)
            writer.write(stun.encode(stun.StunMessage(stun.Method.BINDING, stun.StunClass.REQUEST, txid)))
            answer = stun.decode(await read_frame(reader, buffer))
            assert answer.transaction_id == txid and answer.msg_class is stun.StunClass.SUCCESS
            assert answer.get_address(stun.Attr.XOR_MAPPED_ADDRESS) == local

            server = normalize_socket_address(writer.get_extra_info("peername"))
            client = turn.TurnClient(server, "alice", "s3cret", random_bytes=os.urandom, transport="tcp")
            client.allocate(time.time())
            allocated = None
            for _ in range(10):
                for data in client.datagrams_to_send():
                    writer.write(data)
                event = client.next_event()
                if isinstance(event, turn.Allocated):
                    allocated = event
                    break
                assert not isinstance(event, turn.AllocationFailed), event
                client.on_datagram(await read_frame(reader, buffer), time.time())
            assert allocated is not None, "no allocation over TLS"
            assert allocated.relayed_address.host == "127.0.0.1"
            assert service.stats().get("allocations_current", 0) == 1
            writer.close()
        finally:
            await service.stop()

    asyncio.run(asyncio.wait_for(body(), 30))
