"""Connection monitoring: print every state change of a node's connections."""

import asyncio

from coremesh import ConnectionEvent, MeshConfig, MeshNode


def show(event: ConnectionEvent) -> None:
    reason = f" ({event.reason})" if event.reason else ""
    print(f"{event.peer_id.short()} {event.state.value} {event.address}{reason}")


async def main() -> None:
    config = MeshConfig(listen_addr="127.0.0.1:0")
    async with MeshNode(config) as hub:
        hub.on_connection(show)
        async with MeshNode(config) as spoke:
            conn = await spoke.connect(hub.peer_id, hub.local_address)
            await conn.send(b"ping")
            await conn.close()  # the hub sees a clean close, not a timeout
        await asyncio.sleep(0.1)
        for peer in hub.get_peers():
            print("still connected:", peer.peer_id.short())


if __name__ == "__main__":
    asyncio.run(main())
