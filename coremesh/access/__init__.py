"""Access control and abuse resistance, sans-IO: what the endpoint consults before any per-peer state.

``cookies`` and ``handshake_guard``: handshake floods (cookie replies and mac2 under load, per-source
rate limits, exact replays dropped before any Diffie-Hellman); docs/access.md.
"""
