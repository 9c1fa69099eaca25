"""Events the endpoint core emits, drained with ``Endpoint.next_event()``.

Frozen, keyword-only dataclasses: the asyncio shell, the simulator and tests consume the same events.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..identity import PeerId
from ..routing.flood import Delivery
from .paths import PathAddress


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerConnected:
    peer_id: PeerId
    address: PathAddress
    initiator: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerDisconnected:
    """The connection ended. ``clean`` is True for a close by either side, False for a failure."""

    peer_id: PeerId
    reason: str
    clean: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectFailed:
    peer_id: PeerId
    address: PathAddress
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageReceived:
    peer_id: PeerId
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class PongReceived:
    peer_id: PeerId
    token: int
    rtt: float


@dataclass(frozen=True, kw_only=True, slots=True)
class SendReady:
    """The peer's send buffer has room again (back-pressure released)."""

    peer_id: PeerId


@dataclass(frozen=True, kw_only=True, slots=True)
class AddressChanged:
    """An authenticated packet arrived from a new address (NAT rebinding, roaming)."""

    peer_id: PeerId
    old: PathAddress
    new: PathAddress


@dataclass(frozen=True, kw_only=True, slots=True)
class IdentityResolved:
    """Answer to ``Endpoint.probe_identity``: which peer id the address claims (``None``: no answer)."""

    address: PathAddress
    nonce: int
    peer_id: PeerId | None


@dataclass(frozen=True, kw_only=True, slots=True)
class PathChanged:
    """NAT traversal moved a connection: to a direct path, or back to a relay (``reason`` says why)."""

    peer_id: PeerId
    address: PathAddress
    kind: str  # "direct", "turn" or "keyed"
    reason: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class OverlayDelivered:
    """A broadcast or a multicast for this node arrived through the overlay."""

    delivery: Delivery


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteProbeAnswered:
    """The answer to a route probe (traceroute): who answered, whether it is the destination."""

    destination: PeerId
    nonce: int
    hop_limit: int
    responder: PeerId
    reached: bool
    rtt: float


Event = (
    PeerConnected
    | PeerDisconnected
    | ConnectFailed
    | MessageReceived
    | PongReceived
    | SendReady
    | AddressChanged
    | IdentityResolved
    | PathChanged
    | OverlayDelivered
    | RouteProbeAnswered
)
