"""RFC 5780 NAT behaviour discovery: the client and the Binding server wired together in memory,
through a toy NAT whose mapping and filtering behaviours (RFC 4787) are tables. Time is advanced
by hand from timer to timer, so a test that waits for several 39.5 s timeouts takes microseconds."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from coremesh.addr import Address
from coremesh.stun import (
    BindingServer,
    Method,
    NatBehavior,
    NatBehaviorDiscovery,
    StunClass,
    StunMessage,
    TransactionConfig,
    encode,
)
from coremesh.stun.natdiscovery import TRANSITIONS, Outcome, Phase

PRIMARY = Address("192.0.2.1", 3478)
OTHER = Address("192.0.2.2", 3479)
INSIDE = Address("10.0.0.2", 5000)
PUBLIC_IP = "198.51.100.1"

# how the NAT keys a mapping, given (internal source, destination)
MAPPING_KEY: dict[str, Callable[[Address, Address], tuple[object, ...]]] = {
    "endpoint-independent": lambda src, dst: (src,),
    "address-dependent": lambda src, dst: (src, dst.host),
    "address-and-port-dependent": lambda src, dst: (src, dst),
}
# whether an inbound packet from ``remote`` passes, given the endpoints the mapping has sent to
FILTER: dict[str, Callable[[Address, set[Address]], bool]] = {
    "endpoint-independent": lambda remote, sent_to: True,
    "address-dependent": lambda remote, sent_to: remote.host in {a.host for a in sent_to},
    "address-and-port-dependent": lambda remote, sent_to: remote in sent_to,
}
BEHAVIOURS = list(MAPPING_KEY)


@dataclass
class ToyNat:
    mapping: str
    filtering: str
    hairpinning: bool = False
    next_port: int = 40000
    ports: dict[tuple[object, ...], int] = field(default_factory=dict)
    owner: dict[int, Address] = field(default_factory=dict)
    sent_to: dict[int, set[Address]] = field(default_factory=dict)

    def outbound(self, src: Address, dst: Address) -> Address:
        key = MAPPING_KEY[self.mapping](src, dst)
        port = self.ports.get(key)
        if port is None:
            port = self.ports[key] = self.next_port
            self.next_port += 7
            self.owner[port] = src
            self.sent_to[port] = set()
        self.sent_to[port].add(dst)
        return Address(PUBLIC_IP, port)

    def inbound(self, remote: Address, dst: Address) -> Address | None:
        if dst.host != PUBLIC_IP or dst.port not in self.owner:
            return None
        if not FILTER[self.filtering](remote, self.sent_to[dst.port]):
            return None
        return self.owner[dst.port]


@dataclass
class World:
    """One client behind ``nat`` (or none), one Binding server; datagrams move at once."""

    server: BindingServer
    nat: ToyNat | None
    client_local: Address = INSIDE
    delivered: int = 0

    def run(self, client: NatBehaviorDiscovery, now: float = 0.0) -> NatBehavior:
        for _ in range(10_000):
            self._flush(client, now)
            if client.done:
                break
            timer = client.next_timer()
            assert timer is not None and timer >= now
            now = timer
            client.handle_timer(now)
        assert client.result is not None
        return client.result

    def _flush(self, client: NatBehaviorDiscovery, now: float) -> None:
        while True:
            out = client.datagrams_to_send()
            if not out:
                return
            for data, dst in out:
                self._from_client(client, data, dst, now)

    def _from_client(self, client: NatBehaviorDiscovery, data: bytes, dst: Address, now: float) -> None:
        src = self.client_local if self.nat is None else self.nat.outbound(self.client_local, dst)
        if dst in self.server.local_addresses:
            for reply in self.server.handle(data, src, dst, now):
                self._to_client(client, reply.data, reply.via, reply.dst, now)
        elif (
            self.nat is not None
            and self.nat.hairpinning
            and dst.host == PUBLIC_IP
            and self.nat.owner.get(dst.port) == self.client_local
        ):
            self.delivered += 1
            client.on_datagram(data, src, now)

    def _to_client(
        self, client: NatBehaviorDiscovery, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        inside = dst if self.nat is None else self.nat.inbound(src, dst)
        if inside == self.client_local:
            self.delivered += 1
            client.on_datagram(data, src, now)


def rfc5780_server() -> BindingServer:
    return BindingServer("test", other_address=OTHER, primary_address=PRIMARY)


def discovery(**kwargs: object) -> NatBehaviorDiscovery:
    args: dict[str, object] = {"random_bytes": random.Random(5).randbytes, "local_address": INSIDE}
    args.update(kwargs)
    return NatBehaviorDiscovery(PRIMARY, 0.0, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("mapping", BEHAVIOURS)
@pytest.mark.parametrize("filtering", BEHAVIOURS)
@pytest.mark.parametrize("hairpinning", [False, True])
def test_verdict_matches_the_nat(mapping: str, filtering: str, hairpinning: bool) -> None:
    nat = ToyNat(mapping, filtering, hairpinning)
    world = World(rfc5780_server(), nat)
    client = discovery()
    result = world.run(client)
    assert (result.mapping, result.filtering) == (mapping, filtering)
    assert result.hairpinning is hairpinning
    assert result.public_address == Address(PUBLIC_IP, 40000)
    assert result.other_address == OTHER
    assert client.phase is Phase.DONE and client.done
    # the filtering tests ran before mapping tests II and III
    phases = [p for p, _ in client.log]
    assert phases.index(Phase.FILTERING_II) < phases.index(Phase.MAPPING_II)


def test_timings_follow_the_transactions() -> None:
    """With the RFC 8489 defaults a filtering test that gets no answer costs 39.5 s."""
    nat = ToyNat("address-and-port-dependent", "address-and-port-dependent", False)
    client = discovery()
    world = World(rfc5780_server(), nat)
    world.run(client)
    assert client.log == [
        (Phase.MAPPING_I, Outcome.BEHIND_NAT),
        (Phase.FILTERING_II, Outcome.NO_RESPONSE),
        (Phase.FILTERING_III, Outcome.NO_RESPONSE),
        (Phase.MAPPING_II, Outcome.NEW_MAPPING),
        (Phase.MAPPING_III, Outcome.NEW_MAPPING),
        (Phase.HAIRPINNING, Outcome.NO_RESPONSE),
    ]
    fast = TransactionConfig(rto=0.05, rc=3, rm=4)
    quick = discovery(config=fast)
    World(rfc5780_server(), ToyNat("address-and-port-dependent", "address-and-port-dependent")).run(quick)
    assert quick.result is not None and quick.result.filtering == "address-and-port-dependent"


def test_no_nat() -> None:
    world = World(rfc5780_server(), None)
    client = discovery()
    result = world.run(client)
    assert result == NatBehavior("no-nat", "endpoint-independent", INSIDE, None, OTHER)
    assert [p for p, _ in client.log] == [Phase.MAPPING_I, Phase.FILTERING_II]


def test_unknown_local_address_still_classifies() -> None:
    world = World(rfc5780_server(), ToyNat("endpoint-independent", "address-dependent"))
    result = world.run(discovery(local_address=None))
    assert (result.mapping, result.filtering) == ("endpoint-independent", "address-dependent")


def test_server_without_alternate_address() -> None:
    world = World(
        BindingServer("test", primary_address=PRIMARY),
        ToyNat("endpoint-independent", "endpoint-independent", True),
    )
    client = discovery()
    result = world.run(client)
    assert result == NatBehavior("unknown", "unknown", Address(PUBLIC_IP, 40000), True, None)
    assert client.log[0] == (Phase.MAPPING_I, Outcome.NO_OTHER_ADDRESS)


def test_server_unreachable() -> None:
    class Silent(BindingServer):
        def handle(self, data: bytes, src: Address, local: Address, now: float) -> list:  # type: ignore[type-arg]
            return []

    world = World(Silent("test", other_address=OTHER, primary_address=PRIMARY), None)
    client = discovery(test_hairpinning=False)
    result = world.run(client)
    assert result == NatBehavior("unknown", "unknown", None, None, None)
    assert client.log == [(Phase.MAPPING_I, Outcome.NO_RESPONSE)]


def test_hairpinning_can_be_skipped() -> None:
    world = World(rfc5780_server(), ToyNat("endpoint-independent", "endpoint-independent", True))
    result = world.run(discovery(test_hairpinning=False))
    assert result.hairpinning is None and result.mapping == "endpoint-independent"


def test_unrelated_datagrams_are_not_consumed() -> None:
    client = discovery()
    ((data, dst),) = client.datagrams_to_send()
    assert dst == PRIMARY
    assert not client.on_datagram(b"garbage", PRIMARY, 0.1)
    stranger = StunMessage(Method.BINDING, StunClass.SUCCESS, bytes(12))
    assert not client.on_datagram(encode(stranger), PRIMARY, 0.1)
    assert not client.on_datagram(data, PRIMARY, 0.1)  # our own request, but not in the hairpin test
    error = StunMessage(Method.BINDING, StunClass.ERROR, data[8:20])
    error.add_error(500)
    assert client.on_datagram(encode(error), PRIMARY, 0.2)
    assert client.result == NatBehavior("unknown", "unknown", None, None, None)


def test_transition_table_is_complete() -> None:
    reachable = {Phase.MAPPING_I} | set(TRANSITIONS.values())
    assert reachable == set(Phase)
    for phase in Phase:
        if phase is not Phase.DONE:
            assert any(p is phase for p, _ in TRANSITIONS), phase
    # mapping tests record same/new mapping, filtering tests answered/not
    assert (Phase.MAPPING_III, Outcome.SAME_MAPPING) in TRANSITIONS
    assert (Phase.FILTERING_III, Outcome.ANSWERED) in TRANSITIONS
