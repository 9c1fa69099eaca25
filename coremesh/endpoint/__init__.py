"""The endpoint core: every peer connection of one node, sans-IO.

- :mod:`.endpoint`: :class:`~.endpoint.Endpoint`, the one object a shell feeds with datagrams,
  timers and commands, and drains for datagrams, timers and events.
- :mod:`.paths`: the kinds of path a packet can take (direct UDP, TURN, keyed relay, probe socket).
- :mod:`.events`: the frozen events the endpoint emits.
"""
