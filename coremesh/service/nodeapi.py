"""What the node's admin API accepts, shared by the server (``coremesh_node.admin``) and its client
(the ``coremesh`` CLI), so that the CLI refuses locally, as a usage error, what the node would refuse.

Ranges are ``(low, high)``, inclusive.
"""

from __future__ import annotations

from typing import Final

CONNECT_TIMEOUT_RANGE: Final = (0.1, 300.0)  # seconds
CONNECT_PATHS: Final = ("auto", "direct", "relay", "routed")
SEND_TIMEOUT_RANGE: Final = (0.1, 300.0)
PING_COUNT_RANGE: Final = (1, 1000)
PING_TIMEOUT_RANGE: Final = (0.01, 60.0)  # per ping
PING_INTERVAL_RANGE: Final = (0.0, 10.0)
RECV_TIMEOUT_RANGE: Final = (0.0, 300.0)
LOOKUP_TIMEOUT_RANGE: Final = (0.1, 30.0)
MAX_RECV_COUNT: Final = 1_000_000
ROUTE_TIMEOUT_RANGE: Final = (0.1, 10.0)  # `coremesh route`: the wait for each hop's answer
ROUTE_MAX_HOPS: Final = 32  # a trace probes at most this many hops (MeshNode.trace)

# Multicast group names: 1 to GROUP_NAME_MAX characters, letters, digits and ``. _ - : /``, starting
# with a letter or a digit, so that a name is one shell word and one safe line on a terminal.
GROUP_NAME_MAX: Final = 64
_GROUP_FIRST: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_GROUP_CHARS: Final = _GROUP_FIRST | frozenset("._-:/")


def group_name_error(name: object) -> str | None:
    """Why ``name`` is not a valid multicast group name, or None if it is."""
    if not isinstance(name, str) or not name:
        return "a group name is required"
    if len(name) > GROUP_NAME_MAX:
        return f"a group name is at most {GROUP_NAME_MAX} characters, got {len(name)}"
    if name[0] not in _GROUP_FIRST or not set(name) <= _GROUP_CHARS:
        allowed = "letters, digits and . _ - : / (starting with a letter or digit)"
        return f"a group name is {allowed}, got {name!r}"
    return None
