"""TURN (RFC 8656): a sans-IO server core, a sans-IO client core, and their policies.

- :class:`TurnServer` / :class:`TurnServerConfig` (``server.py``): allocations, permissions,
  channels, authentication, quotas, relay ports, bandwidth caps; inputs in, effects out.
- :class:`TurnClient` (``client.py``): one allocation on one server, driven by the node.
- :class:`PeerPolicy` (``policy.py``): which peers may be relayed to.

See ``docs/turn.md``.
"""

from __future__ import annotations

from .allocation import FiveTuple, Transport
from .client import (
    Allocated,
    AllocationFailed,
    AllocationLost,
    ClientState,
    PermissionFailed,
    TurnClient,
    TurnClientEvent,
)
from .policy import IpRange, PeerPolicy, parse_ip_range
from .server import (
    CloseRelay,
    Effect,
    OpenRelay,
    SendFromRelay,
    SendToClient,
    TurnServer,
    TurnServerConfig,
    stun_method,
)

__all__ = [
    "Allocated",
    "AllocationFailed",
    "AllocationLost",
    "ClientState",
    "CloseRelay",
    "Effect",
    "FiveTuple",
    "IpRange",
    "OpenRelay",
    "PeerPolicy",
    "PermissionFailed",
    "SendFromRelay",
    "SendToClient",
    "Transport",
    "TurnClient",
    "TurnClientEvent",
    "TurnServer",
    "TurnServerConfig",
    "parse_ip_range",
    "stun_method",
]
