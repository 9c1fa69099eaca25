"""What the network around a node looks like: NAT type, reachability, relay latency, host addresses.

- :mod:`.probe`: the sans-IO STUN probe that classifies NAT mapping and filtering.
- :mod:`.report`: the report it produces and how it is printed.
- :mod:`.service`: the asyncio shell that runs a check over real sockets.
- :mod:`.hostaddrs`: the host's own addresses (the node's candidates; all local IPs for the relay).
"""
