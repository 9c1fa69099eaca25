"""A keyed relay and a node harness for the simulator.

:class:`SimRelay` forwards datagrams between registered peers by PeerId, like the keyed relay
service but over simulated UDP (register: ``G`` + key; forward: ``R`` + peer key + packet).
:class:`SimNode` wraps an :class:`~coremesh.endpoint.Endpoint` so that it can sit on a
:class:`~coremesh.sim.network.SimNetwork`: it sends :class:`~coremesh.paths.RelayAddress`
destinations through the relay, keeps its registration (and so its NAT mapping) alive, and collects
the endpoint's events.
"""

from __future__ import annotations

from typing import Final

from .. import events as ev
from ..addr import Address
from ..endpoint import Endpoint
from ..identity import PeerId
from ..paths import DirectAddress, RelayAddress, TurnAddress

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

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out: list[tuple[bytes, Address]] = list(self._out)
        self._out = []
        for data, dst in self.endpoint.datagrams_to_send(now):
            if isinstance(dst, RelayAddress):
                if self.relay is not None:
                    out.append((b"R" + dst.peer.key + data, self.relay))
            elif isinstance(dst, TurnAddress):
                out.append((data, dst.peer))
            elif isinstance(dst, DirectAddress):
                out.append((data, dst.address))
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
