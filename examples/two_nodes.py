"""Two nodes on loopback exchange messages over an encrypted, reliable connection."""

import asyncio

from coremesh import MeshConfig, MeshNode


async def main() -> None:
    config = MeshConfig(listen_addr="127.0.0.1:0")
    async with MeshNode(config) as alice, MeshNode(config) as bob:
        # Until discovery is configured, a peer is dialed by id and address.
        conn = await alice.connect(bob.peer_id, bob.local_address)
        await conn.send(b"hello bob")

        incoming = bob.get_connection(alice.peer_id)
        assert incoming is not None
        print("bob got:", await incoming.receive())
        await incoming.send(b"hello alice")
        print("alice got:", await conn.receive())
        print("rtt:", f"{await conn.ping() * 1000:.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
