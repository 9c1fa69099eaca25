"""Where a peer's packets go: a UDP address, or a relay.

Inside the endpoint core a connection's path is one of these (a :data:`PathAddress`):

* :class:`~coremesh.addr.Address`: UDP to that address, through a TURN allocation when the core
  holds a TURN route for it (how a pending connect falls back to TURN);
* :class:`DirectAddress`: UDP straight to that address, whatever the TURN routes say (connectivity
  checks, and a connection that NAT traversal moved to a direct path);
* :class:`TurnAddress`: a packet that arrived unwrapped from our TURN allocation, so that the core
  can tell it from one that came directly (replies go through the TURN route when there is one);
* :class:`RelayAddress`: the keyed mesh relay, by PeerId;
* :class:`ProbeAddress`: UDP to that address from one of the runtime's extra probe sockets (the
  birthday approach against a random-port symmetric NAT), and what arrives on that socket;
* :class:`RoutedAddress`: through the overlay, by PeerId, hop by hop through other peers
  (``coremesh/routing``); the core wraps such packets in ROUTED packets and seals them into the
  next hop's session, so no shell ever sees one.

What leaves the core (:meth:`~coremesh.endpoint.endpoint.Endpoint.datagrams_to_send`) is resolved
against the core's TURN route table into a :data:`SendAddress`, where each kind names exactly one
way out, so that a shell switches on the type once and never looks a route up: a plain
:class:`~coremesh.addr.Address` is straight UDP, a :class:`TurnAddress` is "wrap for the TURN
allocation at ``server``", a :class:`ProbeAddress` leaves from that probe socket, a
:class:`RelayAddress` goes by the keyed relay.
"""

from __future__ import annotations

from typing import NamedTuple

from ..addr import Address
from ..identity import PeerId


class RelayAddress(NamedTuple):
    """A peer reached through the keyed mesh relay at ``relay`` (its URL)."""

    relay: str
    peer: PeerId

    @property
    def is_ipv6(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"{self.relay}#{self.peer.short()}"


class DirectAddress(NamedTuple):
    """UDP straight to ``address``, never through a relay route."""

    address: Address

    @property
    def is_ipv6(self) -> bool:
        return self.address.is_ipv6

    def __str__(self) -> str:
        return str(self.address)


class TurnAddress(NamedTuple):
    """A peer at ``peer`` whose packets reach us through our TURN allocation at ``server``."""

    server: Address
    peer: Address

    @property
    def is_ipv6(self) -> bool:
        return self.peer.is_ipv6

    def __str__(self) -> str:
        return f"{self.peer} via TURN {self.server}"


class ProbeAddress(NamedTuple):
    """The peer at ``address``, through our probe socket number ``socket`` (not the main one)."""

    socket: int
    address: Address

    @property
    def is_ipv6(self) -> bool:
        return self.address.is_ipv6

    def __str__(self) -> str:
        return f"{self.address} via probe socket {self.socket}"


class RoutedAddress(NamedTuple):
    """``peer`` through the overlay: ROUTED packets forwarded by other peers, along the route
    table's choice, or along ``route`` (the hops to take, the destination last) when the sender
    fixes them (a source route)."""

    peer: PeerId
    route: tuple[PeerId, ...] = ()

    @property
    def is_ipv6(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"routed:{self.peer.short()}"


PathAddress = Address | RelayAddress | DirectAddress | TurnAddress | ProbeAddress | RoutedAddress
SendAddress = Address | RelayAddress | TurnAddress | ProbeAddress


def udp_address(address: PathAddress) -> Address | None:
    """The UDP address of the peer behind a path (None for the keyed relay and routed paths)."""
    if isinstance(address, (RelayAddress, RoutedAddress)):
        return None
    if isinstance(address, DirectAddress):
        return address.address
    if isinstance(address, (TurnAddress, ProbeAddress)):
        return address.peer if isinstance(address, TurnAddress) else address.address
    return address


def path_kind(address: PathAddress) -> str:
    """``keyed``, ``turn``, ``routed`` or ``direct`` (a plain Address may still be TURN-routed by
    the core)."""
    if isinstance(address, RelayAddress):
        return "keyed"
    if isinstance(address, RoutedAddress):
        return "routed"
    if isinstance(address, TurnAddress):
        return "turn"
    return "direct"


def direct_path(target: Address | ProbeAddress) -> PathAddress:
    """Where a check or a direct path to ``target`` goes: straight from our socket (never by a
    relay route), or from the probe socket it names."""
    return target if isinstance(target, ProbeAddress) else DirectAddress(target)


def same_path(a: PathAddress, b: PathAddress) -> bool:
    """Whether packets from ``a`` come by the path we send to at ``b``: a plain and a direct
    address of one UDP endpoint are the same path, and so are two routed paths to one peer; a TURN
    or keyed relay path is only itself."""
    if a == b:
        return True
    if isinstance(a, RoutedAddress) and isinstance(b, RoutedAddress):
        return a.peer == b.peer  # the way back need not be the source route we send along
    direct = (Address, DirectAddress)
    return isinstance(a, direct) and isinstance(b, direct) and udp_address(a) == udp_address(b)
