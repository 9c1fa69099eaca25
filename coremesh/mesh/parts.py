"""``NodeParts``: what a started node runs on, shared by the rooms of :mod:`coremesh.mesh`.

The dialer, the candidate set and the connection registry each need the socket runtime and the
endpoint core (and some the relays or the DHT), but none of them needs the node itself. The node
fills these parts in ``start()`` and clears them in ``stop()``; the rooms read them here, so they
all see the same state and none imports :class:`~coremesh.mesh.node.MeshNode`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LocalProtocolError

if TYPE_CHECKING:
    from ..aio.dht import DhtService
    from ..aio.relays import RelayManager
    from ..aio.runtime import UdpRuntime
    from ..endpoint.endpoint import Endpoint


class NodeParts:
    """The running parts of one node; ``runtime`` is None while it is stopped.

    ``endpoint`` outlives a ``stop()`` (its counters and last snapshots stay readable) and is
    replaced by the next ``start()``.
    """

    def __init__(self) -> None:
        self.runtime: UdpRuntime | None = None
        self.endpoint: Endpoint | None = None
        self.relays: RelayManager | None = None
        self.dht: DhtService | None = None
        self.stopping = False  # set by stop(): background loops end

    def require_running(self) -> tuple[UdpRuntime, Endpoint]:
        if self.runtime is None or self.endpoint is None:
            raise not_started()
        return self.runtime, self.endpoint


def not_started() -> LocalProtocolError:
    """The error for an operation that needs a started node."""
    return LocalProtocolError("node is not started (use 'async with MeshNode(...)' or await start())")
