"""The sans-IO traversal agent of one connection: candidate pairs, paced checks, nomination,
liveness of the direct path, fallback and retries.

The connection first runs on whatever path its handshake found (direct, a TURN route, or the keyed
relay). The agent then tries to move it to a direct path, after ICE (RFC 8445) reduced to one
component and one socket:

* both peers send their candidates over the connection (authenticated, on the current path) and
  answer the other's with their own: that exchange starts the checks on both sides at nearly the
  same moment, which is what opens both NATs (simultaneous hole punching);
* a check is a PATH_CHALLENGE sent straight to a remote candidate (never through a relay); its
  PATH_RESPONSE proves that our packets reach the peer there (RFC 9000 §8.2). One check leaves every
  ``check_interval`` (Ta), the best pair first (RFC 8445 priorities), each pair retransmitted with
  backoff a bounded number of times;
* a check that arrives from an address we did not know is a peer-reflexive candidate, and is
  answered by a *triggered* check back to it (what gets through an address-restricted NAT facing a
  symmetric one);
* the controlling side (lower PeerId) nominates: the best validated pair, ``nomination_delay`` after
  the first success. The controlled side follows when packets of the connection arrive from a
  validated address (the endpoint's address migration);
* on a direct path, packets left unacknowledged for ``dead_after`` (and liveness probes unanswered)
  move the connection back to the relay path it came from; the controlling side retries with
  exponential backoff while relayed.

Inputs: :meth:`set_local`, :meth:`on_candidates`, :meth:`on_challenge`, :meth:`on_response`,
:meth:`adopt_direct`, :meth:`adopt_relay`, :meth:`handle_timer`; outputs: :meth:`next_action` and
:meth:`get_timer`. Time is always passed in; randomness comes from the injected ``random.Random``.
State is bounded: ``max_pairs`` pairs, and outstanding check tokens are capped.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ..addr import Address
from ..endpoint.paths import ProbeAddress
from .birthday import BirthdayAttempt, BirthdayConfig, CloseSockets, OpenSockets, Role, birthday_role
from .candidates import Candidate, CandidateType, candidate_priority, is_usable_remote, pair_priority

__all__ = [
    "CloseProbeSockets",
    "Mode",
    "OpenProbeSockets",
    "Pair",
    "PairState",
    "SendCandidates",
    "SendChallenge",
    "Target",
    "TraversalAction",
    "TraversalAgent",
    "TraversalConfig",
    "UseDirect",
    "UseRelay",
]

# Where a check or a direct path goes: a UDP address from the node's socket, or from a probe socket.
Target = Address | ProbeAddress
PROBE_IDS = 1024  # probe socket ids reserved per connection (BirthdayConfig.sockets is at most this)


@dataclass(frozen=True, kw_only=True, slots=True)
class TraversalConfig:
    """Timers and bounds of the agent (seconds)."""

    check_interval: float = 0.02  # Ta: one check at most this often (RFC 8445 §14.2 says >= 5 ms)
    check_rto: float = 0.1  # first retransmission of a pair's check; doubles
    check_tries: int = 5  # transmissions per pair and round
    max_pairs: int = 24
    max_tokens: int = 256
    nomination_delay: float = 0.1  # wait for a better pair after the first success
    candidates_resend: float = 1.0
    candidates_tries: int = 4
    retry_initial: float = 2.0  # while relayed, a new round after this long; doubles...
    retry_max: float = 30.0  # ...up to this
    dead_after: float = 3.0  # a direct path with data unacknowledged this long is dead
    probe_interval: float = 0.5  # liveness probes of a direct path that stopped acknowledging
    predict_ports: int = 24  # ports tried above a symmetric NAT's mapping (a busy host uses many)
    birthday: BirthdayConfig = field(default_factory=BirthdayConfig)  # its sockets, ports, time
    enable_birthday: bool = True  # cone vs random-port symmetric: many sockets x many ports

    def __post_init__(self) -> None:
        for name in ("check_interval", "check_rto", "candidates_resend", "retry_initial", "dead_after"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be >= retry_initial")
        if not 1 <= self.check_tries <= 16 or not 1 <= self.max_pairs <= 256:
            raise ValueError("check_tries must be 1..16 and max_pairs 1..256")


class Mode(enum.Enum):
    RELAYED = "relayed"  # on a relay path; direct checks run in rounds
    DIRECT = "direct"
    PINNED = "pinned"  # this connection never goes direct (path="relay" asked for)


class PairState(enum.Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(slots=True)
class Pair:
    remote: Candidate
    priority: int
    state: PairState = PairState.WAITING
    sent: int = 0
    next_at: float = 0.0
    triggered: bool = False
    rtt: float | None = None


@dataclass(frozen=True, slots=True)
class SendChallenge:
    """Send PATH_CHALLENGE(token) straight to ``address`` (bypassing any relay route)."""

    address: Target
    token: bytes


@dataclass(frozen=True, slots=True)
class SendCandidates:
    """Send our candidates on the connection's current path."""

    round: int
    reply: bool


@dataclass(frozen=True, slots=True)
class UseDirect:
    """Move the connection to the direct path at ``address`` (validated)."""

    address: Target


@dataclass(frozen=True, slots=True)
class UseRelay:
    """The direct path died: go back to the relay path."""

    reason: str


@dataclass(frozen=True, slots=True)
class OpenProbeSockets:
    """Open these probe sockets (ids for :class:`~coremesh.endpoint.paths.ProbeAddress`)."""

    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CloseProbeSockets:
    """Close these probe sockets (unknown or closed ids are ignored)."""

    ids: tuple[int, ...]


TraversalAction = SendChallenge | SendCandidates | UseDirect | UseRelay | OpenProbeSockets | CloseProbeSockets


def _predictable(nat_type: str) -> bool:
    """Worth predicting ports: a symmetric NAT that netcheck found sequential, or whose port
    allocation it could not tell (against a random one the predicted checks fail, bounded)."""
    return "symmetric" in nat_type.lower() and "random" not in nat_type.lower()


class TraversalAgent:
    """Direct-path search and upkeep for one connection."""

    def __init__(
        self,
        config: TraversalConfig,
        *,
        controlling: bool,
        rng: random.Random,
        now: float,
        direct: Address | None = None,
        pinned: bool = False,
        probe_base: int = 0,
    ) -> None:
        self.config = config
        self.controlling = controlling
        self._rng = rng
        self.mode = Mode.PINNED if pinned else (Mode.DIRECT if direct is not None else Mode.RELAYED)
        self.direct: Target | None = direct
        self.has_fallback = False  # the endpoint knows a relay path to fall back to
        self.local: tuple[Candidate, ...] = ()
        self.local_nat = ""
        self.remote: dict[Address, Candidate] = {}
        self.remote_nat = ""
        self.remote_pinned = False
        self.pairs: dict[Address, Pair] = {}
        self.validated: OrderedDict[Target, float] = OrderedDict()
        self._tokens: OrderedDict[bytes, tuple[Target, float, bool]] = (
            OrderedDict()
        )  # -> (addr, sent, liveness)
        self._actions: deque[TraversalAction] = deque()
        self._round = 0
        self._cand_round: int | None = None  # our unanswered announcement
        self._cand_tries = 0
        self._cand_at: float | None = None
        self._checking = False
        self._next_check_at = now
        self._first_success_at: float | None = None
        self._retry_delay = config.retry_initial
        self._retry_at: float | None = None
        self._probe_at: float | None = None
        self._last_alive = now  # last proof that the direct path carries traffic both ways
        self.rounds = 0
        self.reason: str | None = None if self.mode is not Mode.RELAYED else "direct checks not run yet"
        self.checks_sent = 0
        # The birthday approach: one attempt at a time, with backoff between attempts.
        self.birthday: BirthdayAttempt | None = None
        self.birthday_attempts = 0
        self.birthday_successes = 0
        self._probe_base = probe_base
        self._probe_open: set[int] = set()  # ids of probe sockets we asked for and not closed
        self._birthday_after = now
        self._checks_failed = False
        self._birthday_note: str | None = None  # why the last attempt did not connect
        self._birthday_delay = config.birthday.retry_initial

    # -- inputs --------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The connection is up: announce our candidates (and, relayed, keep trying)."""
        self._announce(now)
        if self.mode is Mode.RELAYED:
            self._schedule_retry(now)

    def set_local(
        self, candidates: list[Candidate] | tuple[Candidate, ...], nat_type: str, now: float
    ) -> None:
        cands = tuple(dict.fromkeys(candidates))[:16]
        if cands == self.local and nat_type == self.local_nat:
            return
        self.local, self.local_nat = cands, nat_type
        for pair in self.pairs.values():
            pair.priority = self._priority(pair.remote)
        if self._round:  # already announced once: the peer needs the new list
            self._announce(now)

    def on_candidates(
        self,
        round_: int,
        reply: bool,
        pinned: bool,
        nat_type: str,
        candidates: tuple[Candidate, ...],
        now: float,
    ) -> None:
        self.remote_pinned = pinned
        self.remote_nat = nat_type
        if pinned and self.mode is Mode.RELAYED:
            self.reason = "the peer pinned this connection to the relay (path=relay): no direct checks"
        fresh: dict[Address, Candidate] = {}
        for cand in candidates:
            if is_usable_remote(cand.address):
                fresh.setdefault(cand.address, cand)
        # Peer-reflexive candidates learned from checks stay; the announced ones are replaced.
        for addr, cand in self.remote.items():
            if cand.kind is CandidateType.PRFLX and addr not in fresh:
                fresh[addr] = cand
        if _predictable(nat_type) and self.config.predict_ports:
            for cand in candidates:
                if cand.kind is CandidateType.SRFLX:
                    for k in range(1, self.config.predict_ports + 1):
                        port = cand.address.port + k
                        if port < 65536:
                            fresh.setdefault(
                                Address(cand.address.host, port),
                                Candidate(CandidateType.PREDICTED, Address(cand.address.host, port)),
                            )
        # Bounded, announced and learned candidates first; predicted ports fill what is left, less
        # some room for peer-reflexive candidates that checks will reveal.
        room = self.config.max_pairs - 4
        kept = [c for c in fresh.values() if c.kind is not CandidateType.PREDICTED][: self.config.max_pairs]
        guesses = [c for c in fresh.values() if c.kind is CandidateType.PREDICTED]
        kept += guesses[: max(0, room - len(kept))]
        self.remote = {c.address: c for c in kept}
        if not reply:
            self._actions.append(SendCandidates(round_, True))
        elif round_ == self._cand_round:
            self._cand_round = None
            self._cand_at = None
        if self.mode is Mode.RELAYED and not pinned:
            self._start_checks(now)

    def on_challenge(self, source: Target, now: float) -> None:
        """An authenticated PATH_CHALLENGE came from ``source`` (the endpoint answers it)."""
        if self.mode is Mode.PINNED or self.remote_pinned:
            return
        if isinstance(source, ProbeAddress) or self._birthday_host(source):
            # A birthday collision: the peer's probe crossed both NATs. Check that path back (what
            # arrived on a probe socket is not a pair of the ordinary checks).
            self._birthday_hit(source, now)
            if isinstance(source, ProbeAddress):
                if self.mode is Mode.RELAYED:
                    self._challenge(source, now, liveness=False)
                return
        if source not in self.remote and is_usable_remote(source):
            if len(self.remote) >= self.config.max_pairs or len(self.pairs) >= self.config.max_pairs:
                # What a real check came from beats a guess: make room by dropping a predicted port.
                guesses = [a for a, c in self.remote.items() if c.kind is CandidateType.PREDICTED]
                while guesses and (
                    len(self.remote) >= self.config.max_pairs or len(self.pairs) >= self.config.max_pairs
                ):
                    guess = guesses.pop()
                    del self.remote[guess]
                    self.pairs.pop(guess, None)
            if len(self.remote) < self.config.max_pairs:
                self.remote[source] = Candidate(CandidateType.PRFLX, source)
        if self.mode is not Mode.RELAYED:
            return
        pair = self.pairs.get(source)
        if pair is None:
            if source not in self.remote:
                return
            pair = self._add_pair(self.remote[source])
            if pair is None:
                return
        if pair.state in (PairState.WAITING, PairState.FAILED):
            # A triggered check: the peer's packet just opened our NAT towards it (RFC 8445 §7.3.1.4).
            pair.state = PairState.WAITING
            pair.triggered = True
            pair.sent = min(pair.sent, self.config.check_tries - 2)
            self._checking = True

    def on_response(self, token: bytes, now: float) -> Target | None:
        """A PATH_RESPONSE: returns the address it validates, or None if the token is unknown."""
        entry = self._tokens.pop(token, None)
        if entry is None:
            return None
        address, sent_at, _liveness = entry
        self.validated[address] = now
        self.validated.move_to_end(address)
        while len(self.validated) > self.config.max_pairs:
            self.validated.popitem(last=False)
        if address == self.direct:
            self._last_alive = now
        pair = self.pairs.get(address) if isinstance(address, Address) else None
        if pair is not None and pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.SUCCEEDED
            pair.rtt = now - sent_at
            if self._first_success_at is None:
                self._first_success_at = now
        elif pair is None and (isinstance(address, ProbeAddress) or self._birthday_host(address)):
            # A birthday path answered: no better pair will come (ordinary checks failed), so the
            # controlling side takes it at once.
            self._birthday_hit(address, now)
            if self.controlling and self.mode is Mode.RELAYED:
                self._actions.append(UseDirect(address))
                self.adopt_direct(address, now)
        return address

    def validate(self, address: Target, now: float) -> None:
        """Check one address now (the endpoint migrating to an address it has not validated)."""
        self._challenge(address, now, liveness=False)

    def is_validated(self, address: Target) -> bool:
        return address in self.validated

    def on_ack_progress(self, now: float) -> None:
        """The peer acknowledged new data: whatever path we send on works."""
        if self.mode is Mode.DIRECT:
            self._last_alive = now

    def adopt_direct(self, address: Target, now: float) -> None:
        """The connection now sends to ``address`` directly (our nomination, or the peer's)."""
        if self.mode is Mode.PINNED:
            return
        self._end_birthday(keep=address.socket if isinstance(address, ProbeAddress) else None)
        self.mode = Mode.DIRECT
        self.direct = address
        self._last_alive = now
        self._probe_at = None
        self._retry_at = None
        self._retry_delay = self.config.retry_initial
        self._checking = False
        self.reason = None

    def adopt_relay(self, now: float, reason: str | None = None) -> None:
        """The connection is back on a relay path (we fell back, or the peer did)."""
        if self.mode is Mode.PINNED:
            return
        was_direct = self.mode is Mode.DIRECT
        self.mode = Mode.RELAYED
        self.direct = None
        self._end_birthday(keep=None)
        self._first_success_at = None
        if reason is not None:
            self.reason = reason
        elif was_direct:
            self.reason = "the peer moved back to the relay"
        for pair in self.pairs.values():
            pair.state = PairState.WAITING
            pair.sent = 0
        self.validated.clear()
        self._schedule_retry(now)

    # -- outputs -------------------------------------------------------------------------------

    def next_action(self) -> TraversalAction | None:
        return self._actions.popleft() if self._actions else None

    def get_timer(self, oldest_unacked: float | None) -> float | None:
        times: list[float] = []
        if self._cand_at is not None:
            times.append(self._cand_at)
        if self._checking:
            times.append(max(self._next_check_at, self._earliest_due()))
        if self._first_success_at is not None and self.mode is Mode.RELAYED and self.controlling:
            times.append(self._first_success_at + self.config.nomination_delay)
        if self._retry_at is not None and self.mode is Mode.RELAYED:
            times.append(self._retry_at)
        if self.birthday is not None and (t := self.birthday.get_timer()) is not None:
            times.append(t)
        if self.mode is Mode.DIRECT and self.has_fallback and oldest_unacked is not None:
            stalled = max(oldest_unacked, self._last_alive)
            times.append(stalled + self.config.dead_after)
            times.append(
                self._probe_at if self._probe_at is not None else stalled + self.config.probe_interval
            )
        return min(times) if times else None

    def handle_timer(self, now: float, oldest_unacked: float | None) -> None:
        cfg = self.config
        if self._cand_at is not None and now >= self._cand_at and self._cand_round is not None:
            if self._cand_tries >= cfg.candidates_tries:
                self._cand_at = None
                self._cand_round = None
            else:
                self._send_candidates(now)
        if self.mode is Mode.DIRECT:
            self._liveness(now, oldest_unacked)
            if self.controlling:
                self._maybe_upgrade(now)
        if self._checking:
            self._run_checks(now)
        if self.birthday is not None:
            self.birthday.handle_timer(now)
            self._drain_birthday(now)
        if self.mode is Mode.RELAYED:
            first = self._first_success_at
            if (
                self.controlling
                and first is not None
                and (now >= first + cfg.nomination_delay or not self._checking)
            ):
                self._nominate(now)
            if self._retry_at is not None and now >= self._retry_at:
                self._retry_at = None
                self._schedule_retry(now)  # the next one, in case this round fails as well
                self._announce(now)
                self._start_checks(now)

    # -- internals -----------------------------------------------------------------------------

    def _announce(self, now: float) -> None:
        self._round += 1
        self._cand_round = self._round
        self._cand_tries = 0
        self._send_candidates(now)

    def _send_candidates(self, now: float) -> None:
        assert self._cand_round is not None
        self._cand_tries += 1
        self._cand_at = now + self.config.candidates_resend
        self._actions.append(SendCandidates(self._cand_round, False))

    def _priority(self, remote: Candidate) -> int:
        family = [c for c in self.local if c.address.is_ipv6 == remote.address.is_ipv6]
        local = max((candidate_priority(c) for c in family), default=candidate_priority(remote))
        theirs = candidate_priority(remote)
        return pair_priority(local, theirs) if self.controlling else pair_priority(theirs, local)

    def _add_pair(self, cand: Candidate) -> Pair | None:
        if cand.kind is CandidateType.RELAY or len(self.pairs) >= self.config.max_pairs:
            return None  # the relay path exists already; checks are for direct paths
        if not any(c.address.is_ipv6 == cand.address.is_ipv6 for c in self.local) and self.local:
            return None  # we have no address of that family
        pair = Pair(cand, self._priority(cand))
        self.pairs[cand.address] = pair
        return pair

    def _start_checks(self, now: float) -> None:
        if self.mode is not Mode.RELAYED or self.remote_pinned:
            return
        for addr in [a for a in self.pairs if a not in self.remote]:
            del self.pairs[addr]
        for cand in sorted(self.remote.values(), key=candidate_priority, reverse=True):
            if cand.address not in self.pairs:
                self._add_pair(cand)
        if not self.pairs:
            self.reason = "direct checks impossible: the peer announced no candidate we can reach"
            return
        for pair in self.pairs.values():
            if pair.state is PairState.FAILED:  # checks still in flight finish their own round
                pair.state = PairState.WAITING
                pair.sent = 0
                pair.next_at = now
        self._checking = True
        self._next_check_at = max(self._next_check_at, now)
        self.rounds += 1
        if self._checks_failed:  # a whole round of ordinary checks went unanswered
            self._maybe_birthday(now)

    def _earliest_due(self) -> float:
        due = [
            p.next_at for p in self.pairs.values() if p.state in (PairState.WAITING, PairState.IN_PROGRESS)
        ]
        return min(due) if due else self._next_check_at

    def _run_checks(self, now: float) -> None:
        cfg = self.config
        active = [p for p in self.pairs.values() if p.state in (PairState.WAITING, PairState.IN_PROGRESS)]
        for pair in active:
            if pair.state is PairState.IN_PROGRESS and pair.sent >= cfg.check_tries and now >= pair.next_at:
                pair.state = PairState.FAILED
                if self.mode is Mode.RELAYED and not any(
                    p.state is PairState.SUCCEEDED for p in self.pairs.values()
                ):
                    self.reason = self._failure_reason()
        if now >= self._next_check_at:
            due = [
                p
                for p in self.pairs.values()
                if p.state in (PairState.WAITING, PairState.IN_PROGRESS)
                and p.next_at <= now
                and p.sent < cfg.check_tries
            ]
            if due:
                pair = max(due, key=lambda p: (p.triggered, p.priority))
                pair.triggered = False
                pair.sent += 1
                pair.state = PairState.IN_PROGRESS
                pair.next_at = now + cfg.check_rto * (2 ** (pair.sent - 1))
                self._challenge(pair.remote.address, now, liveness=False)
                self._next_check_at = now + cfg.check_interval
        if not any(p.state in (PairState.WAITING, PairState.IN_PROGRESS) for p in self.pairs.values()):
            self._checking = False
            if self.mode is not Mode.RELAYED:
                return
            answered = sum(1 for p in self.pairs.values() if p.state is PairState.SUCCEEDED)
            if not answered:
                self.reason = self._failure_reason()
                self._checks_failed = True
                # At once: the order of the two sides' probes does not matter, as long as the
                # opener's sockets are open (an attempt) or the sprayer's filters (the NAT timeout).
                self._maybe_birthday(now)
            elif not self.controlling:
                self.reason = (
                    f"direct checks: {answered} candidate(s) of the peer answered; waiting for the "
                    "peer (controlling side) to nominate"
                )
            if self._retry_at is None:
                self._schedule_retry(now)

    def _failure_reason(self) -> str:
        failed = sorted(self.pairs.values(), key=lambda p: p.priority, reverse=True)
        tried = ", ".join(str(p.remote) for p in failed[:6])
        more = f" and {len(failed) - 6} more" if len(failed) > 6 else ""
        nat = []
        if self.local_nat:
            nat.append(f"our NAT: {self.local_nat}")
        if self.remote_nat:
            nat.append(f"peer NAT: {self.remote_nat}")
        natinfo = f"; {', '.join(nat)}" if nat else "; NAT types unknown"
        birthday = f"; {self._birthday_note}" if self._birthday_note else ""
        return (
            f"direct checks failed (round {self.rounds}): no answer from {tried}{more} "
            f"after {self.config.check_tries} probes each{natinfo}{birthday}"
        )

    def _challenge(self, address: Target, now: float, *, liveness: bool) -> None:
        token = self._rng.getrandbits(64).to_bytes(8, "big")
        self._tokens[token] = (address, now, liveness)
        limit = self.config.max_tokens
        if self.birthday is not None:  # every probe of an attempt may be answered
            limit += self.config.birthday.sockets + self.config.birthday.ports
        while len(self._tokens) > limit:
            self._tokens.popitem(last=False)
        self.checks_sent += 1
        self._actions.append(SendChallenge(address, token))

    def _best_validated(self) -> Pair | None:
        ok = [p for p in self.pairs.values() if p.state is PairState.SUCCEEDED]
        return max(ok, key=lambda p: p.priority) if ok else None

    def _nominate(self, now: float) -> None:
        best = self._best_validated()
        if best is None:
            return
        self._actions.append(UseDirect(best.remote.address))
        self.adopt_direct(best.remote.address, now)

    def _maybe_upgrade(self, now: float) -> None:
        best = self._best_validated()
        current = self.pairs.get(self.direct) if isinstance(self.direct, Address) else None
        if (
            best is not None
            and current is not None
            and best is not current
            and best.priority > current.priority
        ):
            self._actions.append(UseDirect(best.remote.address))
            self.adopt_direct(best.remote.address, now)

    def _liveness(self, now: float, oldest_unacked: float | None) -> None:
        if not self.has_fallback or oldest_unacked is None or self.direct is None:
            self._probe_at = None
            return
        cfg = self.config
        stalled = max(oldest_unacked, self._last_alive)
        if now >= stalled + cfg.dead_after:
            reason = (
                f"direct path to {self.direct} stopped answering: nothing acknowledged for "
                f"{cfg.dead_after:g}s; back on the relay, retrying"
            )
            self._actions.append(UseRelay(reason))
            self.adopt_relay(now, reason)
            return
        if now >= stalled + cfg.probe_interval and (self._probe_at is None or now >= self._probe_at):
            self._challenge(self.direct, now, liveness=True)
            self._probe_at = now + cfg.probe_interval

    # -- the birthday approach --------------------------------------------------------------------

    def _maybe_birthday(self, now: float) -> None:
        cfg = self.config
        if not cfg.enable_birthday or self.birthday is not None or now < self._birthday_after:
            return
        role = birthday_role(self.local_nat, self.remote_nat)
        if role is None or self.mode is not Mode.RELAYED:
            return
        srflx = [
            c.address for c in self.remote.values() if c.kind is CandidateType.SRFLX and not c.address.is_ipv6
        ]
        if not srflx:
            return
        self.birthday = BirthdayAttempt(cfg.birthday, role, srflx[0], self._rng, now)
        self.birthday_attempts += 1
        self._drain_birthday(now)

    def _birthday_host(self, address: Target) -> bool:
        """A plain address on the random symmetric peer's public IP, during our spraying."""
        b = self.birthday
        return (
            b is not None
            and b.role is Role.SPRAYER
            and isinstance(address, Address)
            and address.host == b.target.host
            and address != b.target
        )

    def _birthday_hit(self, source: Target, now: float) -> None:
        b = self.birthday
        if b is None or b.done:
            return
        if isinstance(source, ProbeAddress):
            if b.role is not Role.OPENER or source.socket not in self._probe_open:
                return
            b.on_hit(source.socket - self._probe_base, source.address, now)
        else:
            b.on_hit(None, source, now)
        self.birthday_successes += 1
        self._drain_birthday(now)

    def _drain_birthday(self, now: float) -> None:
        b = self.birthday
        if b is None:
            return
        base = self._probe_base
        while (action := b.next_action()) is not None:
            if isinstance(action, OpenSockets):
                ids = tuple(base + i for i in range(min(action.count, PROBE_IDS)))
                self._probe_open.update(ids)
                self._actions.append(OpenProbeSockets(ids))
            elif isinstance(action, CloseSockets):
                keep = None if action.keep is None else base + action.keep
                self._close_probes(keep)
            else:
                target: Target = (
                    action.address
                    if action.socket is None
                    else ProbeAddress(base + action.socket, action.address)
                )
                self._challenge(target, now, liveness=False)
        if b.done:
            self.birthday = None
            if not b.succeeded:
                self._birthday_note = (
                    f"birthday attempt {self.birthday_attempts} ({b.role.value}, {b.probes_sent} probes "
                    f"in {b.config.timeout:g}s) found no path, next in {self._birthday_delay:g}s"
                )
                if self.mode is Mode.RELAYED:
                    self.reason = self._failure_reason()
                self._birthday_after = now + self._birthday_delay
                self._birthday_delay = min(self._birthday_delay * 2, self.config.birthday.retry_max)

    def _end_birthday(self, keep: int | None) -> None:
        """The connection settled (direct or relayed): stop an attempt, close the sockets it does
        not use (``keep``: the probe socket the connection now sends from)."""
        if self.birthday is not None:
            self.birthday.cancel()
            while self.birthday.next_action() is not None:
                pass
            self.birthday = None
        self._close_probes(keep)

    def _close_probes(self, keep: int | None) -> None:
        ids = tuple(sorted(i for i in self._probe_open if i != keep))
        if ids:
            self._probe_open.difference_update(ids)
            self._actions.append(CloseProbeSockets(ids))

    def cancel_birthday(self, now: float, why: str) -> None:
        """The node cannot run this attempt now (its probe-socket budget is in use): the next
        round tries again."""
        self._end_birthday(keep=None)
        self.birthday_attempts -= 1
        self._birthday_note = f"birthday attempt skipped: {why}"

    def close(self) -> None:
        """The connection is gone: every probe socket goes."""
        self._end_birthday(keep=None)

    def _schedule_retry(self, now: float) -> None:
        # Both sides retry (a lost exchange must not end the attempts), the controlled side more
        # slowly; only the controlling side nominates.
        jitter = (0.9 + 0.2 * self._rng.random()) * (1.0 if self.controlling else 1.5)
        self._retry_at = now + self._retry_delay * jitter
        self._retry_delay = min(self._retry_delay * 2, self.config.retry_max)
