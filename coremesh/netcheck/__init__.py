"""What the network around a node looks like: NAT type, reachability, relay latency, host addresses.

Sans-IO; its asyncio shell, which runs a check over the node's own socket, is :mod:`coremesh.aio.netcheck`.

- :mod:`.probe`: the sans-IO STUN probe that classifies NAT mapping and filtering.
- :mod:`.report`: the report it produces and how it is printed.
- :mod:`.hostaddrs`: the host's own addresses (the node's candidates; all local IPs for the relay).
"""
