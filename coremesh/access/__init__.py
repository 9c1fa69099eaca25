"""Access control and abuse resistance, sans-IO: who may talk to this node and how much, consulted
by :mod:`coremesh.endpoint` before any per-peer state is created (docs/access.md).

``acl``: allow and deny lists by PeerId. ``cookies`` and ``handshake_guard``: handshake floods
(cookie replies and mac2 under load, per-source rate limits, exact replays dropped before any
Diffie-Hellman). ``scopes``: resource limits, in total, per source host and per peer (connections,
unconfirmed handshakes, send buffers, unread messages, forwarded bytes).
"""
