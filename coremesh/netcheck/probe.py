"""One netcheck run over the node's socket, as a sans-IO state machine.

Two phases, both sent from the one local socket whose NAT mapping the mesh uses:

1. ``BINDING``: a Binding request to every server at once. Each answer gives that server's round
   trip, the server-reflexive address it saw, and whether it speaks RFC 5780 (OTHER-ADDRESS).
2. ``DISCOVERY``: the RFC 5780 tests of :class:`~coremesh.stun.natdiscovery.NatBehaviorDiscovery`
   against one server that answered: an IPv4 one with OTHER-ADDRESS if there is one (NATs are an
   IPv4 matter), else the first that answered. At the same time, behind a NAT, the hairpinning
   test: a request to our own public address, which passes if it comes back to us. It runs beside
   the filtering tests rather than after them (it sends nothing to the server, so it cannot open
   the NAT's filter for the server's other addresses), which saves one timeout per run.

The binding phase runs first and to completion, so that the discovery's filtering tests are not
disturbed by other requests in flight (see natdiscovery's module doc on test order). Without an
RFC 5780 server, the binding answers still say something: a mapped address equal to the local one
means no NAT, two servers on different IPs that saw different mappings mean an
endpoint-dependent ("symmetric") mapping, the same mapping an endpoint-independent one.

Feed it like any core here: :meth:`on_datagram`, :meth:`handle_timer`; drain
:meth:`datagrams_to_send`; arm :meth:`next_timer`; read :attr:`result` once :attr:`done`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ..addr import Address
from ..errors import DecodeError
from ..stun.attributes import Attr
from ..stun.message import Method, StunClass, StunMessage, decode
from ..stun.natdiscovery import NatBehavior, NatBehaviorDiscovery
from ..stun.transaction import (
    RandomBytes,
    StunTransaction,
    TransactionConfig,
    TransactionResult,
    TransactionTable,
    new_transaction_id,
)
from .report import ENDPOINT_DEPENDENT, ENDPOINT_INDEPENDENT, NO_NAT, UNKNOWN

NETCHECK_TRANSACTION: Final = TransactionConfig(rto=0.25, rc=3, rm=4)
"""Sends at 0, 0.25 and 0.75 s, gives up at 1.75 s: a filtering test concludes by a timeout, and
the RFC 8489 default (39.5 s) would make one netcheck last minutes."""
MAX_SERVERS: Final = 16
SEQUENTIAL_WINDOW: Final = 8
"""Ports per observed mapping within which a dependent mapping's ports count as sequential: a
run creates a few mappings unseen (the hairpinning request's), and other hosts behind the same NAT
take ports too. Random allocation lands this close by chance well under 1% of the time."""


class ProbePhase(enum.Enum):
    BINDING = "binding"
    DISCOVERY = "discovery"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class ServerAnswer:
    """One server's answer to the binding phase. ``rtt`` in seconds, ``None`` without an answer;
    taken from the last transmission when there were retransmissions (an upper bound)."""

    server: Address
    rtt: float | None
    mapped: Address | None
    other: Address | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    answers: tuple[ServerAnswer, ...]
    mapping: str
    filtering: str
    public_ipv4: Address | None
    public_ipv6: Address | None
    local_address: Address | None
    port_preserving: bool | None
    hairpinning: bool | None
    discovery_server: Address | None
    behavior: NatBehavior | None
    port_allocation: str | None = None

    @property
    def answered(self) -> bool:
        return any(a.mapped is not None for a in self.answers)


class NetcheckProbe:
    """Measures the NAT between the local socket and ``servers``.

    ``local_addresses`` maps each server to the local address (IP the host routes through to that
    server, and the socket's port) that a server would see without a NAT. ``discover=False`` runs
    the binding phase only (a cheap check whether the public address changed).
    """

    def __init__(
        self,
        servers: Sequence[Address],
        now: float,
        *,
        random_bytes: RandomBytes,
        local_addresses: Mapping[Address, Address] | None = None,
        config: TransactionConfig = NETCHECK_TRANSACTION,
        discover: bool = True,
        test_hairpinning: bool = True,
    ) -> None:
        unique = list(dict.fromkeys(servers))
        if not unique:
            raise ValueError("NetcheckProbe: no servers")
        if len(unique) > MAX_SERVERS:
            raise ValueError(f"NetcheckProbe: at most {MAX_SERVERS} servers")
        self.servers = tuple(unique)
        self.local_addresses = dict(local_addresses or {})
        self.config = config
        self.discover = discover
        self.test_hairpinning = test_hairpinning
        self.phase = ProbePhase.BINDING
        self.result: ProbeResult | None = None
        self.discovery: NatBehaviorDiscovery | None = None
        self._random_bytes = random_bytes
        self._table = TransactionTable()
        self._sent: dict[bytes, StunTransaction] = {}
        self._server_of: dict[bytes, Address] = {}
        self._answers: dict[Address, ServerAnswer] = {}
        self._hairpin = TransactionTable()
        self._hairpin_id: bytes | None = None
        self._hairpinning: bool | None = None
        self._observed: list[Address] = []  # every mapped address a response of this run reported
        for server in self.servers:
            request = StunMessage(Method.BINDING, StunClass.REQUEST, new_transaction_id(random_bytes))
            txn = self._table.start(StunTransaction(request, server, now, config=config))
            self._sent[txn.transaction_id] = txn
            self._server_of[txn.transaction_id] = server

    @property
    def done(self) -> bool:
        return self.result is not None

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out = self._table.datagrams_to_send() + self._hairpin.datagrams_to_send()
        if self.discovery is not None:
            out.extend(self.discovery.datagrams_to_send())
        return out

    def next_timer(self) -> float | None:
        timers = [self._table.next_timer(), self._hairpin.next_timer()]
        if self.discovery is not None:
            timers.append(self.discovery.next_timer())
        present = [t for t in timers if t is not None]
        return min(present) if present else None

    def handle_timer(self, now: float) -> None:
        for result in self._table.handle_timer(now):
            self._binding_done(result, now)
        self._binding_over(now)
        if self._hairpin.handle_timer(now):
            self._hairpinning = False
        if self.discovery is not None:
            self.discovery.handle_timer(now)
        self._check_discovery()

    def on_datagram(self, data: bytes, src: Address, now: float) -> bool:
        """Offer one datagram from the socket; True if it belonged to this run."""
        if self.phase is ProbePhase.DISCOVERY and self.discovery is not None:
            if self._hairpin_came_back(data):
                taken = True
            else:
                taken = self.discovery.on_datagram(data, src, now)
                if taken:
                    self._observe(data)
            self._check_discovery()
            return taken
        if self.phase is not ProbePhase.BINDING:
            return False
        try:
            msg = decode(data)
        except DecodeError:
            return False
        result = self._table.on_response(msg)
        if result is None:
            return False
        self._binding_done(result, now)
        self._binding_over(now)
        return True

    # -- the steps ---------------------------------------------------------------------------

    def _binding_done(self, result: TransactionResult, now: float) -> None:
        server = self._server_of[result.transaction_id]
        txn = self._sent[result.transaction_id]
        answer = self._answers[server] = _answer(server, result, now - txn.send_times[-1])
        if answer.mapped is not None:
            self._observed.append(answer.mapped)

    def _observe(self, data: bytes) -> None:
        try:
            msg = decode(data)
            mapped = msg.get_address(Attr.XOR_MAPPED_ADDRESS) or msg.get_address(Attr.MAPPED_ADDRESS)
        except DecodeError:
            return
        if mapped is not None and msg.msg_class is StunClass.SUCCESS:
            self._observed.append(mapped)

    def _binding_over(self, now: float) -> None:
        if len(self._table) == 0 and self.phase is ProbePhase.BINDING:
            self._start_discovery(now)

    def _start_discovery(self, now: float) -> None:
        server = self._discovery_server()
        if not self.discover or server is None:
            self._finish()
            return
        self.phase = ProbePhase.DISCOVERY
        self.discovery = NatBehaviorDiscovery(
            server,
            now,
            random_bytes=self._random_bytes,
            local_address=self.local_addresses.get(server),
            config=self.config,
            test_hairpinning=False,  # done here, in parallel
        )
        mapped = self._answers[server].mapped
        if self.test_hairpinning and mapped is not None and mapped != self.local_addresses.get(server):
            request = StunMessage(Method.BINDING, StunClass.REQUEST, new_transaction_id(self._random_bytes))
            self._hairpin_id = request.transaction_id
            self._hairpin.start(StunTransaction(request, mapped, now, config=self.config))

    def _hairpin_came_back(self, data: bytes) -> bool:
        """Our hairpinning request, come back through the NAT to our own socket."""
        if self._hairpin_id is None or len(self._hairpin) == 0:
            return False
        try:
            msg = decode(data)
        except DecodeError:
            return False
        if msg.msg_class is not StunClass.REQUEST or msg.transaction_id != self._hairpin_id:
            return False
        self._hairpin.cancel(self._hairpin_id)
        self._hairpinning = True
        return True

    def _discovery_server(self) -> Address | None:
        answered = [self._answers[s] for s in self.servers if self._answers[s].mapped is not None]
        for want_v4, want_other in ((True, True), (False, True), (True, False), (False, False)):
            for a in answered:
                if a.server.is_ipv6 != want_v4 and (a.other is not None or not want_other):
                    return a.server
        return None

    def _check_discovery(self) -> None:
        if (
            self.phase is ProbePhase.DISCOVERY
            and self.discovery is not None
            and self.discovery.done
            and len(self._hairpin) == 0
        ):
            self._finish()

    def _finish(self) -> None:
        self.phase = ProbePhase.DONE
        answers = tuple(self._answers[s] for s in self.servers)
        behavior = self.discovery.result if self.discovery is not None else None
        server = self.discovery.server if self.discovery is not None else None
        mapping: str = behavior.mapping if behavior is not None else UNKNOWN
        filtering: str = behavior.filtering if behavior is not None else UNKNOWN
        if mapping == UNKNOWN:
            mapping = self._mapping_from_answers(answers)
        public: dict[bool, Address | None] = {False: None, True: None}
        if behavior is not None and behavior.public_address is not None:
            public[behavior.public_address.is_ipv6] = behavior.public_address
        for a in answers:
            if a.mapped is not None and public[a.mapped.is_ipv6] is None:
                public[a.mapped.is_ipv6] = a.mapped
        reference = server or next((a.server for a in answers if a.mapped is not None), None)
        local = self.local_addresses.get(reference) if reference is not None else None
        mine = public[local.is_ipv6] if local is not None else None
        preserving = None if local is None or mine is None else mine.port == local.port
        self.result = ProbeResult(
            answers=answers,
            mapping=mapping,
            filtering=filtering,
            public_ipv4=public[False],
            public_ipv6=public[True],
            local_address=local,
            port_preserving=preserving,
            hairpinning=self._hairpinning,
            discovery_server=server,
            behavior=behavior,
            port_allocation=_port_allocation(mapping, mine, preserving, self._observed),
        )

    def _mapping_from_answers(self, answers: tuple[ServerAnswer, ...]) -> str:
        """Mapping behaviour as far as plain Binding answers from several servers tell it."""
        seen = [a for a in answers if a.mapped is not None]
        if any(a.mapped == self.local_addresses.get(a.server) for a in seen):
            return NO_NAT
        for family in (False, True):
            same = [a for a in seen if a.server.is_ipv6 == family]
            if len({a.server.host for a in same}) < 2:
                continue
            return ENDPOINT_INDEPENDENT if len({a.mapped for a in same}) == 1 else ENDPOINT_DEPENDENT
        return UNKNOWN


def _port_allocation(
    mapping: str, public: Address | None, preserving: bool | None, observed: list[Address]
) -> str | None:
    """How the NAT picks ports: ``preserve`` (the local port), ``sequential`` (a dependent
    mapping whose ports lie close together: predictable), ``random``; None when one mapping cannot
    tell."""
    if public is None:
        return None
    if preserving:
        return "preserve"
    if mapping in (NO_NAT, ENDPOINT_INDEPENDENT, UNKNOWN):
        return None
    ports = sorted({a.port for a in observed if a.host == public.host})
    if len(ports) < 2:
        return None
    return "sequential" if ports[-1] - ports[0] <= SEQUENTIAL_WINDOW * len(ports) else "random"


def _answer(server: Address, result: TransactionResult, rtt: float) -> ServerAnswer:
    response = result.response
    if response is None:
        return ServerAnswer(server, None, None, None, "no answer")
    if response.msg_class is not StunClass.SUCCESS:
        try:
            code = response.get_error()
        except DecodeError:
            code = None
        detail = f"error {code[0]}" if code is not None else "error response"
        return ServerAnswer(server, rtt, None, None, detail)
    try:
        mapped = response.get_address(Attr.XOR_MAPPED_ADDRESS) or response.get_address(Attr.MAPPED_ADDRESS)
        other = response.get_address(Attr.OTHER_ADDRESS)
    except DecodeError:
        return ServerAnswer(server, rtt, None, None, "malformed answer")
    if mapped is None:
        return ServerAnswer(server, rtt, None, None, "answer without a mapped address")
    if other is not None and (other.host == server.host or other.port == server.port):
        other = None  # not a usable RFC 5780 alternate
    return ServerAnswer(server, rtt, mapped, other)
