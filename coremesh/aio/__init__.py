"""The asyncio shells: the only part of the library that owns sockets, tasks and timers.

- :mod:`.runtime`: the UDP sockets of one node around the endpoint core.
- :mod:`.relays`: the TURN allocations and keyed relay clients a node keeps.
- :mod:`.keyedrelay`: one keyed relay client over TCP, TLS or WebSocket.
- :mod:`.wsqueue`: a bounded frame queue shared by the keyed relay client and server.
"""
