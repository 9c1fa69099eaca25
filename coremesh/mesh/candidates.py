"""``LocalCandidates``: where peers can reach this node, and what its NAT is.

One room for everything a node says about its own reachability: the addresses it listens on and
advertises, the candidates it publishes in its DHT record and gives the endpoint for NAT traversal
(host, server-reflexive, relayed), and its NAT type, which netcheck measures (the netcheck service
lives here too, since its report is what the NAT type comes from).
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from ..addr import Address, parse_address
from ..config import MeshConfig
from ..errors import InvalidAddress
from ..netcheck.hostaddrs import host_addresses
from ..traversal import Candidate, CandidateType
from .parts import NodeParts

if TYPE_CHECKING:
    from ..aio.netcheck import Netchecker
    from ..netcheck.report import NetcheckReport

CANDIDATE_REFRESH = 2.0  # seconds between looks at our candidates (relays re-allocate, interfaces change)
_CANDIDATE_TYPES = {"host": CandidateType.HOST, "srflx": CandidateType.SRFLX, "relay": CandidateType.RELAY}


def listen_addresses(bound: Address) -> list[Address]:
    """The bound address(es); a wildcard listen also lists its loopback addresses."""
    if bound.host == "::":
        return [Address("127.0.0.1", bound.port), Address("::1", bound.port), bound]
    if bound.host == "0.0.0.0":
        return [Address("127.0.0.1", bound.port), bound]
    return [bound]


class LocalCandidates:
    """This node's addresses and candidates, its NAT type, and the netcheck that measures it."""

    def __init__(self, parts: NodeParts, config: MeshConfig, rng: random.Random) -> None:
        self._parts = parts
        self._config = config
        self._rng = rng
        self._nat_type = ""
        self._nat_type_set = False
        self.netcheck: Netchecker | None = None

    # -- addresses -----------------------------------------------------------------------------

    def listen_addresses(self) -> list[Address]:
        runtime = self._parts.runtime
        return [] if runtime is None else listen_addresses(runtime.local_address)

    def advertised_addresses(self) -> list[Address]:
        """``advertise_addresses`` if configured, else the bound address (a wildcard expanded to
        the host's addresses, see :mod:`..netcheck.hostaddrs`)."""
        if self._config.advertised:
            return list(self._config.advertised)
        if self._parts.runtime is None:
            return []
        return host_addresses(self._parts.runtime.local_address)

    def record_addresses(self) -> list[tuple[str, str]]:
        """The candidates this node publishes in its signed record, best first."""
        out = [("host", str(a)) for a in self.advertised_addresses()]
        relays = self._parts.relays
        if relays is not None:
            for cand in relays.candidates():
                kind = "srflx" if cand["type"] == "srflx" else "relay"
                out.append((kind, cand["address"]))
            out.extend(("keyed", url) for url in relays.registered_keyed_urls())
        return out

    def candidates(self) -> list[dict[str, str]]:
        """Host, server-reflexive and relayed candidates, as the admin API shows them."""
        out = [{"type": "host", "address": str(a)} for a in self.listen_addresses()]
        if self._parts.relays is not None:
            out.extend(self._parts.relays.candidates())
        return out

    # -- NAT type and traversal candidates ------------------------------------------------------

    @property
    def announced_nat_type(self) -> str:
        endpoint = self._parts.endpoint
        return endpoint.nat_type if endpoint is not None else ""

    def set_nat_type(self, description: str) -> None:
        self._nat_type = description[:48]
        self._nat_type_set = True  # given by hand: netcheck results no longer override it
        self.refresh()

    def _traversal_candidates(self) -> list[Candidate]:
        """Our candidates for NAT traversal: the listen addresses (the interface addresses when
        listening on a wildcard), then what the relays report."""
        runtime, relays = self._parts.runtime, self._parts.relays
        if runtime is None:
            return []
        bound = runtime.local_address
        out = [Candidate(CandidateType.HOST, a) for a in host_addresses(bound, include_loopback=False)]
        if relays is not None:
            for entry in relays.candidates():
                kind = _CANDIDATE_TYPES.get(entry["type"])
                try:
                    address = parse_address(entry["address"])
                except InvalidAddress:
                    continue
                if kind is not None:
                    out.append(Candidate(kind, address))
        return out

    def refresh(self) -> None:
        """Give the endpoint our current candidates and NAT type, if they changed."""
        runtime, endpoint = self._parts.runtime, self._parts.endpoint
        if runtime is None or endpoint is None:
            return
        candidates = self._traversal_candidates()
        if tuple(candidates) != endpoint.local_candidates or self._nat_type != endpoint.nat_type:
            endpoint.set_local_candidates(candidates, self._nat_type, runtime.now())
            runtime.pump()

    async def keep_current(self) -> None:
        """Refresh every ``CANDIDATE_REFRESH`` seconds, taking up netcheck's NAT type, until stop."""
        while not self._parts.stopping:
            await asyncio.sleep(CANDIDATE_REFRESH)
            report = self.netcheck.last if self.netcheck is not None else None
            if report is not None and report.error is None and not self._nat_type_set:
                self._nat_type = report.nat_type[:48]  # what netcheck measured, told to peers
            self.refresh()

    # -- netcheck ------------------------------------------------------------------------------

    def start_netcheck(self) -> None:
        """Start the netcheck service when STUN servers are configured (``stun_servers``, or the
        ``relays``): periodic runs, and a cheap check for a changed address between them."""
        runtime, _ = self._parts.require_running()
        servers = self._config.stun_addresses
        if not servers:
            return
        from ..aio.netcheck import Netchecker

        relays = self._parts.relays
        interval = self._config.netcheck_interval
        self.netcheck = Netchecker(
            runtime,
            servers,
            keyed_urls=self._config.keyed_relay_urls,
            keyed_registered=lambda: relays is not None and relays.keyed_relay() is not None,
            interval=interval or 300.0,
            # between runs, a cheap check for a changed address every quarter interval (<= 30 s)
            watch_interval=max(0.5, min(30.0, interval / 4)) if interval else 30.0,
            rng=self._rng,
        )
        self.netcheck.start(periodic=bool(interval))

    async def netcheck_report(self, refresh: bool) -> NetcheckReport:
        from ..errors import NetcheckError

        self._parts.require_running()
        if self.netcheck is None:
            raise NetcheckError(
                "netcheck needs a STUN server: configure stun_servers or relays (--stun-server / --relay)"
            )
        return await self.netcheck.report(refresh)

    async def stop_netcheck(self) -> None:
        if self.netcheck is not None:
            await self.netcheck.stop()
            self.netcheck = None
