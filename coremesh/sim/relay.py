"""A keyed relay and a node harness for the simulator.

:class:`SimRelay` forwards datagrams between registered peers by PeerId, like the keyed relay
service but over simulated UDP (register: ``G`` + key; forward: ``R`` + peer key + packet).
:class:`SimNode` wraps an :class:`~coremesh.endpoint.endpoint.Endpoint` so that it can sit on a
:class:`~coremesh.sim.network.SimNetwork`: it sends :class:`~coremesh.endpoint.paths.RelayAddress`
destinations through the relay, keeps its registration (and so its NAT mapping) alive, and collects
the endpoint's events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..addr import Address
from ..endpoint import events as ev
from ..endpoint.endpoint import Endpoint
from ..endpoint.paths import ProbeAddress, RelayAddress, TurnAddress
from ..identity import PeerId

if TYPE_CHECKING:
    from .network import SimNetwork

__all__ = ["SimNode", "SimRelay"]

RELAY_URL: Final = "sim://relay"
REGISTER_EVERY: Final = 5.0
_KEY: Final = 32


class SimRelay:
    """Forwards ``R`` datagrams to the registered address of the named peer."""

    def __init__(self) -> None:
        self.peers: dict[bytes, Address] = {}
        self._out: list[tuple[bytes, Address]] = []
        self.forwarded = 0

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if data[:1] == b"G" and len(data) == 1 + _KEY:
            self.peers[data[1:]] = addr
        elif data[:1] == b"R" and len(data) > 1 + _KEY:
            sender = next((k for k, a in self.peers.items() if a == addr), None)
            target = self.peers.get(data[1 : 1 + _KEY])
            if sender is not None and target is not None:
                self._out.append((b"R" + sender + data[1 + _KEY :], target))
                self.forwarded += 1

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None


class SimNode:
    """An endpoint on the simulated network, with an optional keyed relay."""

    def __init__(self, endpoint: Endpoint, relay: Address | None = None) -> None:
        self.endpoint = endpoint
        self.relay = relay
        self.events: list[ev.Event] = []
        self._out: list[tuple[bytes, Address]] = []
        self._register_at: float | None = 0.0 if relay is not None else None
        self._net: SimNetwork | None = None
        self.address: Address | None = None
        self._next_probe_port = 40000
        self._probes: dict[int, _SimProbeSocket] = {}

    @property
    def peer_id(self) -> PeerId:
        return self.endpoint.peer_id

    def relay_address(self, peer: PeerId) -> RelayAddress:
        return RelayAddress(RELAY_URL, peer)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if self.relay is not None and addr == self.relay:
            if data[:1] == b"R" and len(data) > 1 + _KEY:
                src = PeerId(data[1 : 1 + _KEY])
                self.endpoint.receive_datagram(data[1 + _KEY :], RelayAddress(RELAY_URL, src), now)
            return
        self.endpoint.receive_datagram(data, addr, now)

    def use_probe_sockets(self, net: SimNetwork, address: Address) -> None:
        """Give this node (attached at ``address`` on ``net``) probe sockets for the birthday
        approach, on its host; without them the probes are counted drops."""
        self._net, self.address = net, address

    def probe_sockets_open(self) -> int:
        return len(self._probes)

    def _probe_commands(self) -> None:
        commands = self.endpoint.socket_commands
        while commands:
            opening, ident = commands.popleft()
            net, address = self._net, self.address
            if net is None or address is None:
                continue
            if opening and ident not in self._probes:
                self._next_probe_port += 1
                probe = _SimProbeSocket(self, ident, Address(address.host, self._next_probe_port))
                self._probes[ident] = probe
                net.attach(probe.address, probe)
            elif not opening and ident in self._probes:
                net.detach(self._probes.pop(ident).address)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        if self.endpoint.socket_commands:
            self._probe_commands()
        out: list[tuple[bytes, Address]] = list(self._out)
        self._out = []
        for data, dst in self.endpoint.datagrams_to_send(now):
            if isinstance(dst, RelayAddress):
                if self.relay is not None:
                    out.append((b"R" + dst.peer.key + data, self.relay))
            elif isinstance(dst, TurnAddress):
                self.endpoint.counters["drop_relay_unavailable"] += 1  # the simulator has no TURN
            elif isinstance(dst, ProbeAddress):
                probe = self._probes.get(dst.socket)
                if probe is None or self._net is None:
                    self.endpoint.counters["drop_probe_socket_closed"] += 1
                else:
                    self._net.send_from(probe.address, data, dst.address)
            else:
                out.append((data, dst))
        while (event := self.endpoint.next_event()) is not None:
            self.events.append(event)
        return out

    def get_timer(self) -> float | None:
        t = self.endpoint.get_timer()
        r = self._register_at
        if r is not None and (t is None or r < t):
            return r
        return t

    def handle_timer(self, now: float) -> None:
        if self._register_at is not None and now >= self._register_at and self.relay is not None:
            self._out.append((b"G" + self.endpoint.peer_id.key, self.relay))
            self._register_at = now + REGISTER_EVERY
        self.endpoint.handle_timer(now)

    # -- helpers for tests ----------------------------------------------------------------------

    def of(self, kind: type[ev.Event]) -> list[ev.Event]:
        return [e for e in self.events if isinstance(e, kind)]

    def messages(self) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, ev.MessageReceived)]


class _SimProbeSocket:
    """One probe socket of a :class:`SimNode`: what arrives is tagged with its id for the node's
    endpoint (replies go back through it), what the endpoint sends through it leaves from here."""

    def __init__(self, node: SimNode, ident: int, address: Address) -> None:
        self.node = node
        self.ident = ident
        self.address = address
        self._received = False

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.node.endpoint.receive_datagram(data, ProbeAddress(self.ident, addr), now)
        self._received = True

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        # What the node does with the datagram goes out now, from the node (or its probe sockets).
        node = self.node
        if self._received and node._net is not None and node.address is not None:
            self._received = False
            node._net.flush_at(node.address)
        return []

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None
