"""Access control, sans-IO: who may talk to this node and how much (docs/access.md).

Consulted by :mod:`coremesh.endpoint` before any per-peer state is created.
"""
