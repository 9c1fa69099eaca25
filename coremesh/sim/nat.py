"""RFC 4787 NAT behaviours as pure tables, for the simulator.

A :class:`Nat` translates a private source to a public mapping on the way out and a public
destination back to the private host on the way in. It never reads a clock (``now`` is passed in)
and takes its randomness (random port allocation) from an injected ``random.Random``, so a
simulated run stays a pure function of its seed. Behaviours (RFC 4787 §4.1, §5):

* mapping: endpoint-independent, address-dependent, or address-and-port-dependent (symmetric);
* filtering: the same three, deciding which remote endpoints may send in through a mapping;
* port allocation: preserve the private port when free, sequential, or random;
* mapping timeout (refreshed by outbound traffic only, RFC 4787 REQ-6), hairpinning off.

:class:`SimNetwork` applies the tables when a NAT is added with :meth:`SimNetwork.add_nat`.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from ..addr import Address

__all__ = [
    "ADDRESS_RESTRICTED",
    "FULL_CONE",
    "PORT_RESTRICTED",
    "SYMMETRIC_RANDOM",
    "SYMMETRIC_SEQUENTIAL",
    "Behaviour",
    "Dependence",
    "Nat",
    "PortAllocation",
]


class Dependence(enum.Enum):
    """What a mapping or a filter depends on, besides the private endpoint."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS = "address-dependent"
    ADDRESS_AND_PORT = "address-and-port-dependent"


class PortAllocation(enum.Enum):
    PRESERVE = "preserve"
    SEQUENTIAL = "sequential"
    RANDOM = "random"


@dataclass(frozen=True, slots=True)
class Behaviour:
    mapping: Dependence
    filtering: Dependence
    ports: PortAllocation = PortAllocation.PRESERVE
    timeout: float = 120.0

    @property
    def name(self) -> str:
        if self.mapping is not Dependence.ENDPOINT_INDEPENDENT:
            return f"symmetric ({self.ports.value})"
        return {
            Dependence.ENDPOINT_INDEPENDENT: "full cone",
            Dependence.ADDRESS: "address-restricted cone",
            Dependence.ADDRESS_AND_PORT: "port-restricted cone",
        }[self.filtering]


FULL_CONE = Behaviour(Dependence.ENDPOINT_INDEPENDENT, Dependence.ENDPOINT_INDEPENDENT)
ADDRESS_RESTRICTED = Behaviour(Dependence.ENDPOINT_INDEPENDENT, Dependence.ADDRESS)
PORT_RESTRICTED = Behaviour(Dependence.ENDPOINT_INDEPENDENT, Dependence.ADDRESS_AND_PORT)
SYMMETRIC_SEQUENTIAL = Behaviour(
    Dependence.ADDRESS_AND_PORT, Dependence.ADDRESS_AND_PORT, PortAllocation.SEQUENTIAL
)
SYMMETRIC_RANDOM = Behaviour(Dependence.ADDRESS_AND_PORT, Dependence.ADDRESS_AND_PORT, PortAllocation.RANDOM)


def _key(dependence: Dependence, remote: Address) -> tuple[str, int] | tuple[str] | tuple[()]:
    if dependence is Dependence.ENDPOINT_INDEPENDENT:
        return ()
    if dependence is Dependence.ADDRESS:
        return (remote.host,)
    return (remote.host, remote.port)


@dataclass(slots=True)
class _Mapping:
    private: Address
    public_port: int
    expires: float
    allowed: dict[tuple[str, int] | tuple[str] | tuple[()], float] = field(default_factory=dict)


class Nat:
    """One NAT router: a public IPv4 address in front of private hosts."""

    def __init__(
        self, public_ip: str, behaviour: Behaviour, rng: random.Random, *, first_port: int = 20000
    ) -> None:
        self.public_ip = public_ip
        self.behaviour = behaviour
        self._rng = rng
        self._next_port = first_port
        self._by_key: dict[tuple[Address, tuple[str, int] | tuple[str] | tuple[()]], _Mapping] = {}
        self._by_port: dict[int, _Mapping] = {}
        self.dropped_inbound = 0

    def outbound(self, src: Address, dst: Address, now: float) -> Address:
        """The public source of a packet from private ``src`` to ``dst`` (creating a mapping)."""
        b = self.behaviour
        key = (src, _key(b.mapping, dst))
        mapping = self._by_key.get(key)
        if mapping is not None and mapping.expires <= now:
            self._forget(key, mapping)
            mapping = None
        if mapping is None:
            mapping = _Mapping(src, self._allocate(src.port), 0.0)
            self._by_key[key] = mapping
            self._by_port[mapping.public_port] = mapping
        mapping.expires = now + b.timeout
        mapping.allowed[_key(b.filtering, dst)] = now + b.timeout
        return Address(self.public_ip, mapping.public_port)

    def inbound(self, src: Address, public_port: int, now: float) -> Address | None:
        """The private destination of a packet from ``src`` to our public port, or None (dropped)."""
        mapping = self._by_port.get(public_port)
        if mapping is None or mapping.expires <= now:
            self.dropped_inbound += 1
            return None
        until = mapping.allowed.get(_key(self.behaviour.filtering, src))
        if until is None or until <= now:
            self.dropped_inbound += 1
            return None
        return mapping.private

    def _allocate(self, private_port: int) -> int:
        ports = self.behaviour.ports
        if ports is PortAllocation.PRESERVE and private_port not in self._by_port:
            return private_port
        if ports is PortAllocation.RANDOM:
            while True:
                port = self._rng.randrange(1024, 65536)
                if port not in self._by_port:
                    return port
        while self._next_port in self._by_port:
            self._next_port += 1
        port = self._next_port
        self._next_port += 1
        return port

    def _forget(
        self, key: tuple[Address, tuple[str, int] | tuple[str] | tuple[()]], mapping: _Mapping
    ) -> None:
        del self._by_key[key]
        if self._by_port.get(mapping.public_port) is mapping:
            del self._by_port[mapping.public_port]
