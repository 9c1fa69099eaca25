"""The netcheck core against real Binding server cores through the toy NAT of the natdiscovery tests,
in memory, time advanced by hand from timer to timer (a run with three timeouts takes microseconds)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.netcheck.probe import NETCHECK_TRANSACTION, NetcheckProbe, ProbePhase, ProbeResult
from coremesh.netcheck.report import NetcheckReport, RelayLatency, format_netcheck, nat_type_name
from coremesh.stun import BindingServer, Method, StunClass, StunMessage, decode, encode

from .test_stun_natdiscovery import BEHAVIOURS, INSIDE, OTHER, PRIMARY, PUBLIC_IP, ToyNat

PLAIN = Address("192.0.2.50", 3478)  # a second server, without RFC 5780
PLAIN_V6 = Address("2001:db8::50", 3478)
INSIDE_V6 = Address("2001:db8:1::2", 5000)


@dataclass
class World:
    """One client behind ``nat`` (or none) and several Binding servers; each datagram takes
    ``delay`` seconds one way. IPv6 is never translated (a NAT is an IPv4 matter)."""

    servers: list[BindingServer]
    nat: ToyNat | None
    delay: float = 0.0
    down: set[Address] = field(default_factory=set)
    queue: list[tuple[float, bytes, Address]] = field(default_factory=list)
    now: float = 0.0

    def run(self, probe: NetcheckProbe, now: float = 0.0) -> ProbeResult:
        for _ in range(10_000):
            self._send(probe, now)
            if probe.done:
                break
            timers = [t for t in (probe.next_timer(), *(q[0] for q in self.queue)) if t is not None]
            now = min(timers)
            due = [q for q in self.queue if q[0] <= now]
            self.queue = [q for q in self.queue if q[0] > now]
            for _, data, src in due:
                probe.on_datagram(data, src, now)
            probe.handle_timer(now)
        self.now = now
        assert probe.result is not None
        return probe.result

    def _send(self, probe: NetcheckProbe, now: float) -> None:
        for data, dst in probe.datagrams_to_send():
            local = INSIDE_V6 if dst.is_ipv6 else INSIDE
            src = local if self.nat is None or dst.is_ipv6 else self.nat.outbound(local, dst)
            for server in self.servers:
                if dst in server.local_addresses and dst not in self.down:
                    for reply in server.handle(data, src, dst, now):
                        inside = reply.dst
                        if self.nat is not None and not reply.dst.is_ipv6:
                            inside = self.nat.inbound(reply.via, reply.dst)
                        if inside == local:
                            self.queue.append((now + 2 * self.delay, reply.data, reply.via))
            nat = self.nat
            if (
                nat is not None
                and nat.hairpinning
                and dst.host == PUBLIC_IP
                and nat.owner.get(dst.port) == local
            ):
                self.queue.append((now, data, src))


def servers(*, plain: bool = True, v6: bool = False) -> list[BindingServer]:
    out = [BindingServer("test", other_address=OTHER, primary_address=PRIMARY)]
    if plain:
        out.append(BindingServer("plain", primary_address=PLAIN))
    if v6:
        out.append(BindingServer("v6", primary_address=PLAIN_V6))
    return out


def probe(*targets: Address, **kwargs: object) -> NetcheckProbe:
    local = {t: (INSIDE_V6 if t.is_ipv6 else INSIDE) for t in targets}
    args: dict[str, object] = {"random_bytes": random.Random(7).randbytes, "local_addresses": local}
    args.update(kwargs)
    return NetcheckProbe(targets, 0.0, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("mapping", BEHAVIOURS)
@pytest.mark.parametrize("filtering", BEHAVIOURS)
@pytest.mark.parametrize("hairpinning", [False, True])
def test_the_report_matches_the_nat(mapping: str, filtering: str, hairpinning: bool) -> None:
    nat = ToyNat(mapping, filtering, hairpinning=hairpinning)
    result = World(servers(), nat).run(probe(PRIMARY, PLAIN))
    assert (result.mapping, result.filtering) == (mapping, filtering)
    assert result.discovery_server == PRIMARY  # the RFC 5780 one, though listed with another
    assert result.public_ipv4 is not None and result.public_ipv4.host == PUBLIC_IP
    assert result.local_address == INSIDE
    assert result.port_preserving is False  # the toy NAT maps 5000 to 40000+
    assert result.hairpinning is hairpinning
    assert [a.server for a in result.answers] == [PRIMARY, PLAIN]
    assert all(a.mapped is not None and a.error is None for a in result.answers)
    assert result.answers[0].other == OTHER and result.answers[1].other is None


def test_names_of_the_nat_types() -> None:
    eim, adf, apdf = BEHAVIOURS
    assert nat_type_name(eim, eim) == "full cone"
    assert nat_type_name(eim, adf) == "restricted cone"
    assert nat_type_name(eim, apdf) == "port-restricted cone"
    assert nat_type_name(adf, apdf) == nat_type_name(apdf, eim) == "symmetric"
    assert nat_type_name("endpoint-dependent", "unknown") == "symmetric"
    assert nat_type_name("no-nat", eim) == "no NAT (open)"
    assert nat_type_name("no-nat", apdf) == "no NAT (firewalled)"
    assert nat_type_name("unknown", "unknown", udp_blocked=True) == "UDP blocked"
    assert nat_type_name("unknown", "unknown") == "unknown"


def test_no_nat_preserves_the_port_and_skips_hairpinning() -> None:
    result = World(servers(plain=False), None).run(probe(PRIMARY))
    assert (result.mapping, result.filtering) == ("no-nat", "endpoint-independent")
    assert result.public_ipv4 == INSIDE == result.local_address
    assert result.port_preserving is True
    assert result.hairpinning is None


def test_round_trip_time_per_server() -> None:
    result = World(servers(), None, delay=0.02).run(probe(PRIMARY, PLAIN))
    assert [a.rtt for a in result.answers] == [pytest.approx(0.04), pytest.approx(0.04)]


def test_binding_requests_go_to_every_server_at_once_then_discovery() -> None:
    p = probe(PRIMARY, PLAIN, PLAIN_V6)
    assert sorted(str(dst) for _, dst in p.datagrams_to_send()) == sorted(
        str(a) for a in (PRIMARY, PLAIN, PLAIN_V6)
    )
    assert p.phase is ProbePhase.BINDING
    assert p.datagrams_to_send() == []  # drained


def test_dual_stack_reports_both_public_addresses() -> None:
    nat = ToyNat("endpoint-independent", "address-and-port-dependent")
    result = World(servers(v6=True), nat).run(probe(PRIMARY, PLAIN, PLAIN_V6))
    assert result.public_ipv4 is not None and result.public_ipv4.host == PUBLIC_IP
    assert result.public_ipv6 == INSIDE_V6
    assert result.discovery_server == PRIMARY  # IPv4 is where the NAT is


def test_without_rfc5780_two_servers_still_tell_a_symmetric_nat() -> None:
    both_plain = [BindingServer("a", primary_address=PRIMARY), BindingServer("b", primary_address=PLAIN)]
    symmetric = World(both_plain, ToyNat("address-dependent", "endpoint-independent"))
    result = symmetric.run(probe(PRIMARY, PLAIN))
    assert (result.mapping, result.filtering) == ("endpoint-dependent", "unknown")
    both_plain = [BindingServer("a", primary_address=PRIMARY), BindingServer("b", primary_address=PLAIN)]
    cone = World(both_plain, ToyNat("endpoint-independent", "endpoint-independent"))
    assert cone.run(probe(PRIMARY, PLAIN)).mapping == "endpoint-independent"


def test_one_plain_server_without_a_nat_still_says_no_nat() -> None:
    result = World([BindingServer("a", primary_address=PLAIN)], None).run(probe(PLAIN))
    assert result.mapping == "no-nat" and result.port_preserving is True


def test_no_answer_ends_after_the_transaction_timeout() -> None:
    world = World(servers(), None, down={PRIMARY, PLAIN})
    p = probe(PRIMARY, PLAIN)
    result = world.run(p)
    assert not result.answered
    assert (result.mapping, result.filtering) == ("unknown", "unknown")
    assert [a.error for a in result.answers] == ["no answer", "no answer"]
    assert result.public_ipv4 is None and result.port_preserving is None
    assert p.discovery is None  # nothing to discover against


def test_one_server_down_does_not_stop_the_others() -> None:
    world = World(servers(), ToyNat("endpoint-independent", "endpoint-independent"), down={PLAIN})
    result = world.run(probe(PRIMARY, PLAIN))
    assert result.mapping == "endpoint-independent"
    assert result.answers[1].rtt is None and result.answers[1].error == "no answer"


def test_discover_false_runs_the_binding_phase_only() -> None:
    p = probe(PRIMARY, discover=False)
    result = World(servers(plain=False), ToyNat("endpoint-independent", "endpoint-independent")).run(p)
    assert p.discovery is None and result.filtering == "unknown"
    assert result.public_ipv4 is not None


def test_an_error_response_is_reported() -> None:
    p = probe(PLAIN)
    ((data, _),) = p.datagrams_to_send()
    response = decode(data).response(StunClass.ERROR)
    response.add_error(400, "Bad Request")
    assert p.on_datagram(encode(response), PLAIN, 0.01)
    assert p.result is not None and p.result.answers[0].error == "error 400"


def test_unrelated_datagrams_are_not_taken() -> None:
    p = probe(PRIMARY)
    other = StunMessage(Method.BINDING, StunClass.SUCCESS, bytes(12))
    assert not p.on_datagram(encode(other), PRIMARY, 0.0)
    assert not p.on_datagram(b"\x00\x01garbage", PRIMARY, 0.0)
    assert not p.on_datagram(b"", PRIMARY, 0.0)
    assert p.phase is ProbePhase.BINDING


def test_bad_server_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="no servers"):
        probe()
    with pytest.raises(ValueError, match="at most"):
        probe(*(Address("192.0.2.1", 1000 + i) for i in range(17)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 3))
def test_fuzz_no_datagram_makes_it_raise(data: bytes, phase_steps: int) -> None:
    world = World(servers(), ToyNat("endpoint-independent", "address-dependent"))
    p = probe(PRIMARY, PLAIN)
    for _ in range(phase_steps):  # go part of the way into the run
        world._send(p, 0.0)
        for _, reply, src in world.queue:
            p.on_datagram(reply, src, 0.0)
        world.queue.clear()
    p.on_datagram(data, PRIMARY, 0.0)
    p.on_datagram(b"\x01\x01" + data, OTHER, 0.0)
    world.run(p)


def test_transaction_timing_is_bounded() -> None:
    """Three tests end by a timeout (filtering II and III, hairpinning): they cost two timeouts of
    seconds (hairpinning runs beside the filtering tests), not the two minutes of RFC 8489's
    defaults."""
    nat = ToyNat("address-and-port-dependent", "address-and-port-dependent", hairpinning=False)
    world = World(servers(plain=False), nat)
    world.run(probe(PRIMARY))
    config = NETCHECK_TRANSACTION
    one_timeout = config.rto * (1 + 2) + config.rm * config.rto
    assert world.now == pytest.approx(2 * one_timeout)
    assert world.now < 4.0


def test_report_json_and_text() -> None:
    report = NetcheckReport(
        mapping="endpoint-independent",
        filtering="address-and-port-dependent",
        public_ipv4="198.51.100.1:40000",
        public_ipv6=None,
        local_address="10.0.0.2:5000",
        port_preserving=False,
        hairpinning=False,
        udp_blocked=False,
        relays=(RelayLatency(server="192.0.2.1:3478", kind="stun", rtt_ms=12.3456, mapped="x"),),
        trigger="periodic",
        ran_at=1000.0,
        duration_ms=1234.5,
    )
    data = report.to_json()
    assert data["nat_type"] == "port-restricted cone"
    assert data["relays"][0]["rtt_ms"] == 12.346
    text = format_netcheck(data, now=1030.0)
    assert "port-restricted cone" in text and "30s ago (periodic" in text
    assert "192.0.2.1:3478  12.3 ms" in text
    assert "udp             works" in text
    assert "unknown" in format_netcheck({}, now=0.0)


@dataclass
class RandomPortNat(ToyNat):
    """The toy NAT, handing out a random port for every new mapping."""

    rng: random.Random = field(default_factory=lambda: random.Random(3))

    def outbound(self, src: Address, dst: Address) -> Address:
        from .test_stun_natdiscovery import MAPPING_KEY

        if MAPPING_KEY[self.mapping](src, dst) not in self.ports:
            self.next_port = self.rng.randrange(1024, 65536)
        return super().outbound(src, dst)


@pytest.mark.parametrize("mapping", ["address-dependent", "address-and-port-dependent"])
def test_port_allocation_of_a_symmetric_nat(mapping: str) -> None:
    sequential = World(servers(), ToyNat(mapping, "address-and-port-dependent")).run(probe(PRIMARY, PLAIN))
    assert sequential.port_allocation == "sequential"  # the toy NAT counts up by 7
    assert (
        nat_type_name(mapping, "address-and-port-dependent", False, "sequential") == "symmetric (sequential)"
    )
    randomly = World(servers(), RandomPortNat(mapping, "address-and-port-dependent")).run(
        probe(PRIMARY, PLAIN)
    )
    assert randomly.port_allocation == "random"
    assert nat_type_name(mapping, "endpoint-independent", False, "random") == "symmetric (random)"


def test_port_allocation_of_a_cone_and_no_nat() -> None:
    assert World(servers(), None).run(probe(PRIMARY)).port_allocation == "preserve"
    cone = World(servers(), ToyNat("endpoint-independent", "endpoint-independent")).run(probe(PRIMARY, PLAIN))
    assert cone.port_allocation is None  # one mapping, not the local port: nothing to tell
    assert nat_type_name("endpoint-independent", "endpoint-independent", False, "random") == "full cone"
