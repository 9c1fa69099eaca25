"""What the node's admin API accepts, shared by the server (``coremesh_node.admin``) and its client
(the ``coremesh`` CLI), so that the CLI refuses locally, as a usage error, what the node would refuse.

Ranges are ``(low, high)``, inclusive.
"""

from __future__ import annotations

from typing import Final

CONNECT_TIMEOUT_RANGE: Final = (0.1, 300.0)  # seconds
CONNECT_PATHS: Final = ("auto", "direct", "relay")
SEND_TIMEOUT_RANGE: Final = (0.1, 300.0)
PING_COUNT_RANGE: Final = (1, 1000)
PING_TIMEOUT_RANGE: Final = (0.01, 60.0)  # per ping
PING_INTERVAL_RANGE: Final = (0.0, 10.0)
RECV_TIMEOUT_RANGE: Final = (0.0, 300.0)
LOOKUP_TIMEOUT_RANGE: Final = (0.1, 30.0)
MAX_RECV_COUNT: Final = 1_000_000
