"""The paths of one peer connection: where its packets go, and how that changes.

:class:`PeerPaths` owns the address a connection sends to, the NAT traversal agent that looks for
a direct path (:mod:`coremesh.traversal`), the relay path to fall back to, and path migration: a
packet from a new address is followed at once on a relay, after validation (a PATH_CHALLENGE
answered) on a direct path, or at once and on probation when it looks like a NAT rebinding of the
direct path we are on (reverted if the challenge goes unanswered; RFC 9000 §9.3).

The reliable stream is path-independent, so moving never loses or reorders anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..addr import Address
from ..errors import DecodeError
from ..traversal import (
    Candidate,
    Candidates,
    CandidateType,
    CloseProbeSockets,
    Mode,
    OpenProbeSockets,
    PathChallenge,
    PathResponse,
    SendCandidates,
    SendChallenge,
    Target,
    TraversalAgent,
    UseDirect,
    UseRelay,
    decode_path_frames,
)
from . import events as ev
from .paths import (
    DirectAddress,
    PathAddress,
    ProbeAddress,
    TurnAddress,
    direct_path,
    path_kind,
    same_path,
    udp_address,
)
from .states import ConnState

if TYPE_CHECKING:
    from .peer import PeerConnection

MIGRATION_VALIDATION_TIME: Final = 1.0  # an unvalidated new address must answer a challenge in time
MIGRATION_BLOCK_TIME: Final = 10.0  # an address that failed validation is not followed again for this long
MAX_BLOCKED: Final = 16
INTERNAL_PATH_PING: Final = (1 << 64) - 2  # PING token of a path switch (its PONG is ignored)


class PeerPaths:
    """Where one connection's packets go, its traversal agent, and its path migrations."""

    def __init__(self, conn: PeerConnection, address: PathAddress) -> None:
        self.conn = conn
        self.endpoint = conn.endpoint
        self.address = address  # where we send
        self.agent: TraversalAgent | None = None  # exists once the connection is up
        self.relay_path: PathAddress | None = None  # where to fall back when the direct path dies
        # A NAT rebinding followed on probation: (previous address, new target, validation deadline).
        self.migration: tuple[PathAddress, Target, float] | None = None
        self.pending_switch: Target | None = None  # a direct address to take once validated
        self.blocked: dict[Target, float] = {}  # addresses that failed validation, until when
        self.since = 0.0  # when the connection last moved to a path

    # -- while connecting ---------------------------------------------------------------------

    def aim(self, address: PathAddress) -> None:
        """Before the connection is up: the handshake goes (or went) by ``address``."""
        self.address = address

    # -- what the path is ---------------------------------------------------------------------

    def kind_of(self, address: PathAddress) -> str:
        """``direct``, ``turn`` or ``keyed``: how packets to ``address`` travel."""
        kind = path_kind(address)
        if kind != "direct" or isinstance(address, (DirectAddress, ProbeAddress)):
            return kind
        assert isinstance(address, Address)
        if self.endpoint.turn_route(address) is not None or self.is_peer_relay(address):
            return "turn"  # by our TURN route, or to the peer's TURN relayed address
        return "direct"

    def is_peer_relay(self, address: Address) -> bool:
        """Whether ``address`` is one of the peer's TURN relayed candidates."""
        agent = self.agent
        cand = agent.remote.get(address) if agent is not None else None
        return cand is not None and cand.kind is CandidateType.RELAY

    def kind(self) -> str:
        return self.kind_of(self.address)

    def reason(self) -> str | None:
        """Why the connection is relayed (None when it is direct)."""
        if self.kind() == "direct":
            return None
        if self.conn.pinned:
            return "pinned to the relay (connected with path=relay)"
        if self.agent is None:
            return "NAT traversal is disabled"
        return self.agent.reason

    # -- traversal ----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The connection is up: start looking for a direct path (if traversal is on)."""
        ep = self.endpoint
        if not ep.traversal_enabled:
            return
        kind = self.kind_of(self.address)
        if kind != "direct":
            self.relay_path = self.address
        self.agent = TraversalAgent(
            ep.traversal_config,
            controlling=ep.peer_id.key < self.conn.peer_id.key,
            rng=ep.rng,
            now=now,
            direct=udp_address(self.address) if kind == "direct" else None,
            pinned=self.conn.pinned,
            probe_base=ep.next_probe_base(),
        )
        self.agent.has_fallback = self.relay_path is not None
        self.agent.set_local(ep.local_candidates, ep.nat_type, now)
        self.agent.start(now)
        self.run_agent(now)

    def set_local(self, candidates: tuple[Candidate, ...], nat_type: str, now: float) -> None:
        if self.agent is not None:
            self.agent.set_local(candidates, nat_type, now)
            self.run_agent(now)

    def set_fallback(self, address: PathAddress) -> bool:
        """A relay path to fall back to (e.g. the keyed relay); False if there is one already."""
        if self.relay_path is not None:
            return False
        self.relay_path = address
        if self.agent is not None:
            self.agent.has_fallback = True
        return True

    def on_ack_progress(self, now: float) -> None:
        if self.agent is not None:
            self.agent.on_ack_progress(now)

    def next_timer(self) -> float | None:
        times: list[float] = []
        if self.agent is not None:
            t = self.agent.get_timer(self.conn.stream.oldest_unacked_sent_at())
            if t is not None:
                times.append(t)
        if self.migration is not None:
            times.append(self.migration[2])
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        if self.migration is not None and now >= self.migration[2]:
            self.revert_migration(now)
        if self.agent is not None:
            self.agent.handle_timer(now, self.conn.stream.oldest_unacked_sent_at())
            self.run_agent(now)

    def close(self) -> None:
        """The connection ended: stop the agent and give its probe sockets back."""
        agent = self.agent
        if agent is None:
            return
        agent.close()
        while (action := agent.next_action()) is not None:
            if isinstance(action, CloseProbeSockets):
                self.endpoint.close_probe_sockets(action.ids)

    def run_agent(self, now: float) -> None:
        agent = self.agent
        if agent is None:
            return
        ep = self.endpoint
        conn = self.conn
        while (action := agent.next_action()) is not None:
            if isinstance(action, SendChallenge):
                conn.send_path([PathChallenge(action.token)], direct_path(action.address))
                ep.counters["path_challenges_sent"] += 1
            elif isinstance(action, SendCandidates):
                frame = Candidates(
                    action.round, action.reply, agent.mode is Mode.PINNED, ep.nat_type, ep.local_candidates
                )
                conn.send_path([frame], self.address)
            elif isinstance(action, UseDirect):
                self.switch_to(direct_path(action.address), now, None)
            elif isinstance(action, UseRelay) and self.relay_path is not None:
                self.switch_to(self.relay_path, now, action.reason)
            elif isinstance(action, OpenProbeSockets):
                if not ep.open_probe_sockets(action.ids):
                    agent.cancel_birthday(now, f"the node's {ep.max_probe_sockets} probe sockets are in use")
            elif isinstance(action, CloseProbeSockets):
                ep.close_probe_sockets(action.ids)

    # -- moving -------------------------------------------------------------------------------

    def switch_to(self, address: PathAddress, now: float, reason: str | None) -> None:
        """Send on another path from now on. The stream is path-independent: nothing is lost or
        reordered; what was in flight goes again on the new path."""
        ep = self.endpoint
        conn = self.conn
        old = self.address
        if old == address:
            return
        if self.kind_of(old) != "direct" and self.kind_of(address) == "direct":
            self.relay_path = old
        self.address = address
        self.migration = None
        self.pending_switch = None
        self.since = now
        if self.agent is not None:
            self.agent.has_fallback = self.relay_path is not None
        conn.stream.on_path_changed(now)
        if conn.state is ConnState.CONNECTED:
            # An ack-eliciting packet on the new path at once: the peer follows on it (and we get
            # a first RTT sample of the path).
            conn.stream.send_ping(INTERNAL_PATH_PING, now)
        kind = self.kind_of(address)
        ep.counters[f"path_switches_to_{kind}"] += 1
        ep.emit(ev.AddressChanged(peer_id=conn.peer_id, old=old, new=address))
        ep.emit(ev.PathChanged(peer_id=conn.peer_id, address=address, kind=kind, reason=reason))
        ep.mark_dirty(conn)

    def on_new_address(self, addr: PathAddress, now: float) -> None:
        """The newest authenticated packet came from another address than we send to.

        A relay path (keyed relay, TURN, or the path we came from) is followed at once: only the
        peer can send there, the relay having authenticated it. A direct address is followed once
        validated (a PATH_CHALLENGE answered): an on-path attacker replaying a packet from its own
        address must not redirect the connection. A NAT rebinding of a direct path is followed at
        once and reverted if the new address does not validate (RFC 9000 §9.3)."""
        ep = self.endpoint
        peer_id = self.conn.peer_id
        agent = self.agent
        udp = udp_address(addr)
        target: Target | None = addr if isinstance(addr, ProbeAddress) else udp
        # How the packet came (not how we would send there): a plain address arrived directly even
        # when we route it through TURN, since TURN deliveries are tagged TurnAddress.
        kind = "direct" if isinstance(addr, Address) and not self.is_peer_relay(addr) else self.kind_of(addr)
        if agent is None or agent.mode is Mode.PINNED or agent.remote_pinned:
            # No traversal on this connection: follow the peer wherever it sends from.
            old, self.address = self.address, addr
            ep.counters["address_changes"] += 1
            ep.emit(ev.AddressChanged(peer_id=peer_id, old=old, new=addr))
            return
        if (
            kind != "direct"
            or udp is None
            or (self.relay_path is not None and same_path(addr, self.relay_path))
        ):
            was_direct = self.kind() == "direct"
            if was_direct and now < self.since + ep.traversal_config.dead_after:
                # Packets the peer sent on the relay before it saw ours on the direct path: the
                # peer only leaves a direct path after dead_after without acknowledgements.
                ep.counters["relay_packets_after_switch"] += 1
                return
            self.switch_to(addr, now, "the peer moved to the relay" if was_direct else None)
            if was_direct:
                agent.adopt_relay(
                    now, "the peer moved back to the relay (its direct checks or liveness failed)"
                )
            return
        assert target is not None
        if agent.is_validated(target):
            self.switch_to(direct_path(target), now, None)
            agent.adopt_direct(target, now)
            return
        until = self.blocked.get(target)
        if until is not None and now < until:
            return
        if self.kind() == "direct" and self.relay_path is None:
            # A NAT rebinding: follow at once (the session must survive it), validate, revert on failure.
            old = self.address
            routed = isinstance(addr, Address) and ep.turn_route(addr) is not None
            self.address = DirectAddress(udp) if isinstance(old, DirectAddress) or routed else addr
            self.migration = (old, target, now + MIGRATION_VALIDATION_TIME)
            ep.counters["address_changes"] += 1
            ep.emit(ev.AddressChanged(peer_id=peer_id, old=old, new=self.address))
            if agent.direct is not None:
                agent.direct = target
        else:
            self.pending_switch = target
        agent.validate(target, now)
        self.run_agent(now)

    def revert_migration(self, now: float) -> None:
        assert self.migration is not None
        previous, new, _ = self.migration
        self.migration = None
        self.blocked[new] = now + MIGRATION_BLOCK_TIME
        while len(self.blocked) > MAX_BLOCKED:
            del self.blocked[next(iter(self.blocked))]
        old, self.address = self.address, previous
        if self.agent is not None and self.agent.direct is not None:
            self.agent.direct = previous if isinstance(previous, ProbeAddress) else udp_address(previous)
        self.endpoint.counters["migrations_reverted"] += 1
        self.endpoint.emit(ev.AddressChanged(peer_id=self.conn.peer_id, old=old, new=previous))

    def on_path_packet(self, plaintext: bytes, addr: PathAddress, now: float) -> None:
        ep = self.endpoint
        try:
            frames = decode_path_frames(plaintext)
        except DecodeError:
            ep.counters["drop_malformed_path_frames"] += 1
            return
        agent = self.agent
        udp = udp_address(addr)
        target: Target | None = addr if isinstance(addr, ProbeAddress) else udp
        for frame in frames:
            if isinstance(frame, PathChallenge):
                ep.counters["path_challenges_answered"] += 1
                # Back the way it came: from the probe socket it arrived on, or from our socket.
                reply = direct_path(target) if target is not None else addr
                self.conn.send_path([PathResponse(frame.token)], reply)
                if agent is not None and target is not None and not isinstance(addr, TurnAddress):
                    agent.on_challenge(target, now)
            elif isinstance(frame, PathResponse):
                if agent is None:
                    continue
                validated = agent.on_response(frame.token, now)
                if validated is None:
                    ep.counters["drop_unknown_path_response"] += 1
                    continue
                if self.migration is not None and self.migration[1] == validated:
                    self.migration = None
                if self.pending_switch == validated and self.kind() != "direct":
                    self.switch_to(direct_path(validated), now, None)
                    agent.adopt_direct(validated, now)
            elif isinstance(frame, Candidates) and agent is not None:
                current = udp_address(self.address)
                relayed = {c.address for c in frame.candidates if c.kind is CandidateType.RELAY}
                if agent.mode is Mode.DIRECT and current in relayed:
                    # We took the peer's TURN relayed address for a direct one: we are relayed.
                    self.relay_path = self.address
                    agent.adopt_relay(now, "connected through the peer's TURN relay")
                agent.on_candidates(
                    frame.round, frame.reply, frame.pinned, frame.nat_type, frame.candidates, now
                )
        self.run_agent(now)
