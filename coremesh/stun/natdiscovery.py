"""NAT behaviour discovery (RFC 5780 sections 4.3-4.5), a sans-IO client state machine.

Given a STUN server that reports OTHER-ADDRESS (one that runs with an alternate address), the client
classifies the NAT between it and the server with RFC 4787's terms, sending every request from one
local socket:

========================  ===================================================  ======================
test                      request                                              conclusion
========================  ===================================================  ======================
mapping I                 to the primary address                               public address; equal
                                                                               to the local address:
                                                                               no NAT
filtering II              to the primary, CHANGE-REQUEST change IP and port    answered: endpoint-
                                                                               independent filtering
filtering III             to the primary, CHANGE-REQUEST change port           answered: address-
                                                                               dependent; else
                                                                               address-and-port-dep.
mapping II                to the alternate IP, primary port                    same mapping as I:
                                                                               endpoint-independent
mapping III               to the alternate IP and port                         same as II: address-
                                                                               dependent; else
                                                                               address-and-port-dep.
hairpinning               to our own public address                            our request comes
                                                                               back: hairpinning
========================  ===================================================  ======================

The filtering tests run before mapping tests II and III on purpose: those send to the alternate
address, and the NAT would then let the alternate address's answers through, so an address-dependent
or address-and-port-dependent filter would pass filtering test II afterwards. A filtering test
concludes by the transaction timing out (RFC 8489 section 6.2.1; pass a shorter
:class:`~coremesh.stun.transaction.TransactionConfig` for a quicker run).

When there is no NAT, mapping is ``"no-nat"``, mapping tests II and III and the hairpinning test are
skipped, and filtering still reports what the filtering tests measured (a firewall may filter
without translating): ``"endpoint-independent"`` when nothing filters. If the server does not
answer, or does not report OTHER-ADDRESS, what could not be measured is ``"unknown"``.

The transitions live in one table, :data:`TRANSITIONS`: (phase, outcome) -> next phase.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

from ..addr import Address
from ..errors import DecodeError
from .attributes import Attr
from .message import Method, StunClass, StunMessage, decode
from .transaction import (
    DEFAULT_CONFIG,
    RandomBytes,
    StunTransaction,
    TransactionConfig,
    TransactionResult,
    TransactionTable,
    new_transaction_id,
)

Behavior = Literal[
    "endpoint-independent", "address-dependent", "address-and-port-dependent", "no-nat", "unknown"
]
ENDPOINT_INDEPENDENT: Final = "endpoint-independent"
ADDRESS_DEPENDENT: Final = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT: Final = "address-and-port-dependent"


@dataclass(frozen=True, slots=True)
class NatBehavior:
    """The verdict. ``hairpinning`` is ``None`` when not tested (no NAT, no public address, or
    disabled)."""

    mapping: Behavior
    filtering: Behavior
    public_address: Address | None
    hairpinning: bool | None
    other_address: Address | None = None


class Phase(enum.Enum):
    MAPPING_I = "mapping test I"
    FILTERING_II = "filtering test II"
    FILTERING_III = "filtering test III"
    MAPPING_II = "mapping test II"
    MAPPING_III = "mapping test III"
    HAIRPINNING = "hairpinning test"
    DONE = "done"


class Outcome(enum.Enum):
    """What a phase's test found, as far as the next step is concerned."""

    NO_RESPONSE = "no response"
    NO_OTHER_ADDRESS = "no OTHER-ADDRESS"  # mapping I: the server does not do RFC 5780
    NO_NAT = "no NAT"  # mapping I: mapped address == local address
    BEHIND_NAT = "behind a NAT"
    ANSWERED = "answered"
    SAME_MAPPING = "same mapping"
    NEW_MAPPING = "new mapping"
    ERROR = "error response"


TRANSITIONS: Final[dict[tuple[Phase, Outcome], Phase]] = {
    (Phase.MAPPING_I, Outcome.NO_RESPONSE): Phase.DONE,
    (Phase.MAPPING_I, Outcome.ERROR): Phase.DONE,
    (Phase.MAPPING_I, Outcome.NO_OTHER_ADDRESS): Phase.HAIRPINNING,
    (Phase.MAPPING_I, Outcome.NO_NAT): Phase.FILTERING_II,
    (Phase.MAPPING_I, Outcome.BEHIND_NAT): Phase.FILTERING_II,
    (Phase.FILTERING_II, Outcome.ANSWERED): Phase.MAPPING_II,
    (Phase.FILTERING_II, Outcome.NO_RESPONSE): Phase.FILTERING_III,
    (Phase.FILTERING_II, Outcome.ERROR): Phase.MAPPING_II,
    (Phase.FILTERING_III, Outcome.ANSWERED): Phase.MAPPING_II,
    (Phase.FILTERING_III, Outcome.NO_RESPONSE): Phase.MAPPING_II,
    (Phase.FILTERING_III, Outcome.ERROR): Phase.MAPPING_II,
    (Phase.MAPPING_II, Outcome.SAME_MAPPING): Phase.HAIRPINNING,
    (Phase.MAPPING_II, Outcome.NEW_MAPPING): Phase.MAPPING_III,
    (Phase.MAPPING_II, Outcome.NO_RESPONSE): Phase.HAIRPINNING,
    (Phase.MAPPING_II, Outcome.ERROR): Phase.HAIRPINNING,
    (Phase.MAPPING_III, Outcome.SAME_MAPPING): Phase.HAIRPINNING,
    (Phase.MAPPING_III, Outcome.NEW_MAPPING): Phase.HAIRPINNING,
    (Phase.MAPPING_III, Outcome.NO_RESPONSE): Phase.HAIRPINNING,
    (Phase.MAPPING_III, Outcome.ERROR): Phase.HAIRPINNING,
    (Phase.HAIRPINNING, Outcome.ANSWERED): Phase.DONE,
    (Phase.HAIRPINNING, Outcome.NO_RESPONSE): Phase.DONE,
}
"""Phase transitions. With no NAT, MAPPING_II and HAIRPINNING are skipped (they have nothing to
measure), so the phase after the filtering tests is DONE."""


class NatBehaviorDiscovery:
    """Runs the RFC 5780 tests against ``server`` (its primary address) from one local socket.

    ``local_address`` is the socket's own address as the host sees it (needed to recognise "no
    NAT"; ``None`` if unknown, e.g. bound to a wildcard). Feed it with :meth:`on_datagram` and
    :meth:`handle_timer`; send what :meth:`datagrams_to_send` returns; read :attr:`result` once
    :attr:`done`.
    """

    def __init__(
        self,
        server: Address,
        now: float,
        *,
        random_bytes: RandomBytes,
        local_address: Address | None = None,
        config: TransactionConfig = DEFAULT_CONFIG,
        software: str | None = None,
        test_hairpinning: bool = True,
    ) -> None:
        self.server = server
        self.local_address = local_address
        self.config = config
        self.software = software
        self.test_hairpinning = test_hairpinning
        self.phase = Phase.MAPPING_I
        self.result: NatBehavior | None = None
        self.log: list[tuple[Phase, Outcome]] = []
        self._random_bytes = random_bytes
        self._table = TransactionTable()
        self._current: StunTransaction | None = None
        self._mapping: Behavior = "unknown"
        self._filtering: Behavior = "unknown"
        self._public: Address | None = None
        self._other: Address | None = None
        self._mapped_ii: Address | None = None
        self._hairpinning: bool | None = None
        self._no_nat = False
        self._start(now)

    @property
    def done(self) -> bool:
        return self.result is not None

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        return self._table.datagrams_to_send()

    def next_timer(self) -> float | None:
        return self._table.next_timer()

    def handle_timer(self, now: float) -> None:
        for result in self._table.handle_timer(now):
            self._finished(result, now)

    def on_datagram(self, data: bytes, src: Address, now: float) -> bool:
        """Offer one datagram received on the socket; True if it belonged to the discovery."""
        try:
            msg = decode(data)
        except DecodeError:
            return False
        current = self._current
        if (
            self.phase is Phase.HAIRPINNING
            and current is not None
            and msg.msg_class is StunClass.REQUEST
            and msg.transaction_id == current.transaction_id
        ):  # our own request, come back through the NAT
            self._table.cancel(current.transaction_id)
            self._hairpinning = True
            self._advance(Outcome.ANSWERED, now)
            return True
        result = self._table.on_response(msg)
        if result is None:
            return False
        self._finished(result, now)
        return True

    # -- the steps ---------------------------------------------------------------------------

    def _destination(self) -> tuple[Address, bool, bool]:
        """Where the current phase sends, and its CHANGE-REQUEST flags (change IP, change port)."""
        phase, server, other = self.phase, self.server, self._other
        if phase is Phase.FILTERING_II:
            return server, True, True
        if phase is Phase.FILTERING_III:
            return server, False, True
        if phase is Phase.MAPPING_II:
            assert other is not None
            return Address(other.host, server.port), False, False
        if phase is Phase.MAPPING_III:
            assert other is not None
            return other, False, False
        if phase is Phase.HAIRPINNING:
            assert self._public is not None
            return self._public, False, False
        return server, False, False

    def _start(self, now: float) -> None:
        dst, change_ip, change_port = self._destination()
        request = StunMessage(Method.BINDING, StunClass.REQUEST, new_transaction_id(self._random_bytes))
        if change_ip or change_port:
            request.add_change_request(change_ip, change_port)
        if self.software:
            request.add_text(Attr.SOFTWARE, self.software)
        self._current = self._table.start(StunTransaction(request, dst, now, config=self.config))

    def _finished(self, result: TransactionResult, now: float) -> None:
        if self._current is None or result.transaction_id != self._current.transaction_id:
            return
        self._advance(self._judge(result), now)

    def _judge(self, result: TransactionResult) -> Outcome:
        """Record what the current phase's test found, and name the outcome."""
        response = result.response
        if response is None:
            if self.phase is Phase.FILTERING_III:
                self._filtering = ADDRESS_AND_PORT_DEPENDENT
            elif self.phase is Phase.HAIRPINNING:
                self._hairpinning = False
            return Outcome.NO_RESPONSE
        if response.msg_class is not StunClass.SUCCESS:
            return Outcome.ERROR
        try:
            mapped = response.get_address(Attr.XOR_MAPPED_ADDRESS) or response.get_address(
                Attr.MAPPED_ADDRESS
            )
            other = response.get_address(Attr.OTHER_ADDRESS) if self.phase is Phase.MAPPING_I else None
        except DecodeError:
            return Outcome.ERROR
        phase = self.phase
        if phase is Phase.MAPPING_I:
            if mapped is None:
                return Outcome.ERROR
            self._public = mapped
            self._no_nat = mapped == self.local_address
            if self._no_nat:
                self._mapping = "no-nat"
            if other is None or other.host == self.server.host or other.port == self.server.port:
                return Outcome.NO_OTHER_ADDRESS
            self._other = other
            return Outcome.NO_NAT if self._no_nat else Outcome.BEHIND_NAT
        if phase is Phase.FILTERING_II:
            self._filtering = ENDPOINT_INDEPENDENT
            return Outcome.ANSWERED
        if phase is Phase.FILTERING_III:
            self._filtering = ADDRESS_DEPENDENT
            return Outcome.ANSWERED
        if mapped is None:
            return Outcome.ERROR
        if phase is Phase.MAPPING_II:
            self._mapped_ii = mapped
            if mapped == self._public:
                self._mapping = ENDPOINT_INDEPENDENT
                return Outcome.SAME_MAPPING
            return Outcome.NEW_MAPPING
        # MAPPING_III
        self._mapping = ADDRESS_DEPENDENT if mapped == self._mapped_ii else ADDRESS_AND_PORT_DEPENDENT
        return Outcome.SAME_MAPPING if mapped == self._mapped_ii else Outcome.NEW_MAPPING

    def _advance(self, outcome: Outcome, now: float) -> None:
        self.log.append((self.phase, outcome))
        self._current = None
        nxt = TRANSITIONS[(self.phase, outcome)]
        if nxt is Phase.MAPPING_II and self._no_nat:
            nxt = Phase.DONE
        if nxt is Phase.HAIRPINNING and (not self.test_hairpinning or self._no_nat or self._public is None):
            nxt = Phase.DONE
        self.phase = nxt
        if nxt is Phase.DONE:
            self.result = NatBehavior(
                mapping=self._mapping,
                filtering=self._filtering,
                public_address=self._public,
                hairpinning=self._hairpinning,
                other_address=self._other,
            )
            return
        self._start(now)
