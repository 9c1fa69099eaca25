"""The birthday approach (HyperDHT-style) for a cone NAT facing a random-port symmetric NAT.

Ordinary checks cannot connect a port-restricted cone to a symmetric NAT that allocates ports at
random: the cone admits only the exact address and port it sent to, and the symmetric side's port
towards the cone is unknown (one of ~64 000). Two sets of guesses make a collision likely instead:

* the symmetric side (the *opener*) opens ``sockets`` extra UDP sockets and sends one probe from
  each to the cone's server-reflexive address: each probe creates a mapping (a random public port)
  whose filter admits the cone's address, and the cone's mapping being endpoint-independent, that
  address is the one the cone's own probes leave from;
* the cone side (the *sprayer*) sends probes from its one socket to ``ports`` distinct random
  ports of the opener's public IP, paced: each opens its own filter for that port.

When a sprayed port is one of the opener's mappings, the probe reaches that probe socket (or, when
it arrived before the opener's probe, the opener's probe gets through the filter it opened): the
two sides then talk through that socket and the cone's one mapping. With ``n`` mappings and ``m``
distinct ports among ``P``, the chance of no collision is about ``(1 - n/P)**m``; with the defaults
(256 sockets, 2048 ports, P = 64 512) a collision happens in 99.97 % of attempts, for at most
2 304 probes (about 250 kB) and ``timeout`` seconds.

This module decides which side does what, which ports to try, the pacing, the budget and when the
attempt is over; the probes themselves are authenticated PATH_CHALLENGE frames sent by the
endpoint, and the sockets belong to the asyncio shell. Time is passed in, randomness injected.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass

from ..addr import Address

__all__ = [
    "BirthdayAction",
    "BirthdayAttempt",
    "BirthdayConfig",
    "CloseSockets",
    "OpenSockets",
    "Role",
    "SendProbe",
    "birthday_role",
    "success_probability",
]

PORT_MIN = 1024
PORT_MAX = 65535


@dataclass(frozen=True, kw_only=True, slots=True)
class BirthdayConfig:
    """Bounds of one attempt (seconds, sockets, packets)."""

    sockets: int = 256  # probe sockets the symmetric side opens (closed when the attempt ends)
    ports: int = 2048  # distinct destination ports the cone side probes
    open_interval: float = 0.002  # the opener's probes, one per socket, this far apart (~0.5 s)
    spray_interval: float = 0.002  # the sprayer's probes this far apart (500 per second, ~4.1 s)
    timeout: float = 6.0  # the whole attempt, on both sides
    retry_initial: float = 30.0  # after a failed attempt, the next no sooner; doubles...
    retry_max: float = 600.0  # ...up to this
    max_attempts: int = 2  # attempts at once per node (each holds up to ``sockets`` sockets)

    def __post_init__(self) -> None:
        if not 1 <= self.sockets <= 1024:
            raise ValueError("sockets must be 1..1024")
        if not 1 <= self.max_attempts <= 8:
            raise ValueError("max_attempts must be 1..8")
        if not 1 <= self.ports <= PORT_MAX - PORT_MIN + 1:
            raise ValueError("ports must be 1..64512")
        for name in ("open_interval", "spray_interval", "timeout", "retry_initial"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be >= retry_initial")


class Role(enum.Enum):
    OPENER = "opener"  # random-port symmetric NAT: many sockets, one destination
    SPRAYER = "sprayer"  # cone NAT: one socket, many destination ports


def _is_cone(nat: str) -> bool:
    n = nat.lower()
    return "cone" in n or "cgnat" in n


def _is_random_symmetric(nat: str) -> bool:
    n = nat.lower()
    return "symmetric" in n and "random" in n


def birthday_role(local_nat: str, remote_nat: str) -> Role | None:
    """Our role when one side is a random-port symmetric NAT and the other a cone, else None
    (both symmetric: the cone's fixed address is missing; both cones: ordinary checks work)."""
    if _is_random_symmetric(local_nat) and _is_cone(remote_nat):
        return Role.OPENER
    if _is_cone(local_nat) and _is_random_symmetric(remote_nat):
        return Role.SPRAYER
    return None


def success_probability(sockets: int, ports: int, space: int = PORT_MAX - PORT_MIN + 1) -> float:
    """The chance that ``ports`` distinct random ports hit one of ``sockets`` random mappings."""
    miss = 1.0
    for k in range(min(ports, space)):
        miss *= max(0.0, 1.0 - sockets / (space - k))
    return 1.0 - miss


@dataclass(frozen=True, slots=True)
class OpenSockets:
    """Open ``count`` probe sockets (numbered 0 .. count-1) for this attempt."""

    count: int


@dataclass(frozen=True, slots=True)
class SendProbe:
    """Send an authenticated probe to ``address``: from probe socket ``socket``, or from the
    node's own socket when it is None."""

    socket: int | None
    address: Address


@dataclass(frozen=True, slots=True)
class CloseSockets:
    """Close the probe sockets, all but ``keep`` (the one that carries the connection now)."""

    keep: int | None


BirthdayAction = OpenSockets | SendProbe | CloseSockets


class BirthdayAttempt:
    """One attempt, on one side. Inputs: :meth:`handle_timer`, :meth:`on_hit`, :meth:`cancel`;
    outputs: :meth:`next_action`, :meth:`get_timer`, :attr:`done`, :attr:`succeeded`."""

    def __init__(
        self,
        config: BirthdayConfig,
        role: Role,
        target: Address,
        rng: random.Random,
        now: float,
    ) -> None:
        """``target``: the cone's server-reflexive address (opener), or any address on the
        symmetric side's public IP (sprayer: only its host is used)."""
        self.config = config
        self.role = role
        self.target = target
        self.started_at = now
        self.deadline = now + config.timeout
        self.done = False
        self.succeeded = False
        self.hit: tuple[int | None, Address] | None = None
        self.probes_sent = 0
        self._actions: deque[BirthdayAction] = deque()
        self._next_at: float | None = now
        if role is Role.OPENER:
            self._plan: list[tuple[int | None, Address]] = [(i, target) for i in range(config.sockets)]
            self._interval = config.open_interval
            self._actions.append(OpenSockets(config.sockets))
        else:
            ports = rng.sample(range(PORT_MIN, PORT_MAX + 1), config.ports)
            self._plan = [(None, Address(target.host, p)) for p in ports]
            self._interval = config.spray_interval
        self._plan.reverse()  # popped from the end

    @property
    def probes_left(self) -> int:
        return len(self._plan)

    def next_action(self) -> BirthdayAction | None:
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        if self.done:
            return None
        return self.deadline if self._next_at is None else min(self._next_at, self.deadline)

    def handle_timer(self, now: float) -> None:
        if self.done:
            return
        if now >= self.deadline:
            self._finish(success=False)
            return
        # Catch up on what is due (a late timer), but never more than a burst of 16 at once.
        burst = 0
        while self._next_at is not None and now >= self._next_at and burst < 16:
            if not self._plan:
                self._next_at = None  # all probes out: wait for an answer until the deadline
                break
            socket, address = self._plan.pop()
            self._actions.append(SendProbe(socket, address))
            self.probes_sent += 1
            burst += 1
            self._next_at += self._interval
        if self._next_at is not None and not self._plan:
            self._next_at = None

    def on_hit(self, socket: int | None, address: Address, now: float) -> None:
        """An authenticated packet of the peer crossed: on probe socket ``socket`` from
        ``address`` (opener), or answered from ``address`` (sprayer)."""
        if self.done:
            return
        self.hit = (socket, address)
        self._finish(success=True)

    def cancel(self) -> None:
        """The connection ended or went direct otherwise: close everything."""
        if not self.done:
            self._finish(success=False)

    def _finish(self, *, success: bool) -> None:
        self.done = True
        self.succeeded = success
        self._plan.clear()
        self._next_at = None
        if self.role is Role.OPENER:
            keep = self.hit[0] if success and self.hit is not None else None
            self._actions.append(CloseSockets(keep))
