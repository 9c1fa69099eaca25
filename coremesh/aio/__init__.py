"""The asyncio shells: the only part of the library that owns sockets, tasks and timers.

- :mod:`.runtime`: the UDP sockets of one node around the endpoint core.
- :mod:`.relays`: the TURN allocations and keyed relay clients a node keeps.
- :mod:`.keyedrelay`: one keyed relay client over TCP, TLS or WebSocket.
- :mod:`.dht`: the DHT node's shell: its datagrams on the node's socket, lookups as awaitables,
  republishing and the saved routing table.
- :mod:`.netcheck`: runs netchecks over the node's socket, periodically and on address changes.
- :mod:`.timer`: :class:`~.timer.CoreTimer`, the one way every shell re-arms its core's timer.
- :mod:`.wsqueue`: a bounded frame queue shared by the keyed relay client and server.
"""
