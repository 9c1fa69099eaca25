"""The endpoint core: every peer connection of one node, sans-IO.

- :mod:`.endpoint`: :class:`~.endpoint.Endpoint`, the one object a shell feeds with datagrams,
  timers and commands, and drains for datagrams, timers and events; it holds the connection and
  session-index tables, dispatches handshakes, runs identity probes and the probe-socket budget.
- :mod:`.peer`: :class:`~.peer.PeerConnection`, one peer: sessions, handshake retries, rekeying,
  timers, receive, close.
- :mod:`.states`: a connection's states and the transitions allowed between them (the table the
  state diagram in docs/architecture.md is drawn from).
- :mod:`.migration`: :class:`~.migration.PeerPaths`, where one connection's packets go: NAT
  traversal, fallback to a relay, path validation and migration.
- :mod:`.timers`: the deadline heap that finds the next timer among many connections.
- :mod:`.paths`: the kinds of path a packet can take (direct UDP, TURN, keyed relay, probe socket).
- :mod:`.events`: the frozen events the endpoint emits.
"""
