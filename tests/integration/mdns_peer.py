"""Run inside a test's namespace by test_mdns.py: a MeshNode with mDNS on finds PEERID on the local
network, connects to it by its PeerId alone and sends TEXT; it also publishes two malformed
announcements (no id, a bad id) and reports whether they were dropped. Prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from coremesh import MeshConfig, MeshNode
from coremesh.discovery.mdns import SERVICE_TYPE, MdnsDiscovery
from coremesh.identity import PeerId


async def main(peer_text: str, text: str) -> dict[str, object]:
    peer = PeerId.from_text(peer_text)
    config = MeshConfig(listen_addr="127.0.0.1:0", mdns=True, mdns_interfaces=("127.0.0.1",))
    hostile = AsyncZeroconf(interfaces=["127.0.0.1"])
    for name, props in (("noid", {"v": "1"}), ("badid", {"id": "not-a-peer-id", "v": "1"})):
        info = AsyncServiceInfo(
            SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=9, properties=props, parsed_addresses=["127.0.0.1"]
        )
        await hostile.async_register_service(info)
    try:
        async with MeshNode(config) as node:
            t0 = time.monotonic()
            conn = await node.connect(peer, timeout=10.0)  # waits for mDNS to find it (see below)
            found_s = time.monotonic() - t0
            await conn.send(text.encode())
            await asyncio.sleep(0.2)
            service = next(s for s in node.discovery_services if isinstance(s, MdnsDiscovery))
            for _ in range(50):  # the malformed announcements resolve in the background
                if service.counters["drop_no_id"] and service.counters["drop_bad_id"]:
                    break
                await asyncio.sleep(0.1)
            return {
                "connected_to": conn.peer_id.to_text(),
                "address": str(conn.remote_address),
                "path": conn.path,
                "seconds": round(found_s, 3),
                "counters": dict(service.counters),
                "peers": [p.peer_id.to_text() for p in await node.discovered_peers()],
            }
    finally:
        await hostile.async_close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), 30))))
