"""The netcheck report: what the node knows about the network between it and the internet.

Plain frozen data, its JSON form (the admin API's ``GET /v1/netcheck``) and its text form (the
``coremesh netcheck`` command). Mapping and filtering use RFC 4787 / RFC 5780 terms; ``nat_type``
is the friendly name people search for ("port-restricted cone", "symmetric").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

NO_NAT: Final = "no-nat"
UNKNOWN: Final = "unknown"
ENDPOINT_INDEPENDENT: Final = "endpoint-independent"
ADDRESS_DEPENDENT: Final = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT: Final = "address-and-port-dependent"
ENDPOINT_DEPENDENT: Final = "endpoint-dependent"
"""Mapping seen to differ between two servers without an RFC 5780 server to say how exactly."""


def nat_type_name(
    mapping: str, filtering: str, udp_blocked: bool | None = None, port_allocation: str | None = None
) -> str:
    """The classic name of a (mapping, filtering) pair, as STUN clients and forums use it; a
    symmetric NAT says how it allocates ports when that is known (``symmetric (sequential)`` is
    predictable, ``symmetric (random)`` is not: the names the simulator uses too)."""
    if udp_blocked:
        return "UDP blocked"
    if mapping == NO_NAT:
        if filtering in (ENDPOINT_INDEPENDENT, UNKNOWN):
            return "no NAT (open)"
        return "no NAT (firewalled)"
    if mapping in (ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT, ENDPOINT_DEPENDENT):
        if port_allocation in ("sequential", "random"):
            return f"symmetric ({port_allocation})"
        return "symmetric"
    if mapping == ENDPOINT_INDEPENDENT:
        return {
            ENDPOINT_INDEPENDENT: "full cone",
            ADDRESS_DEPENDENT: "restricted cone",
            ADDRESS_AND_PORT_DEPENDENT: "port-restricted cone",
        }.get(filtering, "cone (filtering unknown)")
    return "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLatency:
    """One server as netcheck measured it. ``kind``: ``stun`` (a Binding request over UDP from the
    mesh socket; ``rtt_ms`` is its round trip), ``stun-tcp`` (a Binding request over TCP, tried when
    no UDP answer came) or ``keyed`` (a keyed relay; ``rtt_ms`` is the TCP connect time)."""

    server: str
    kind: str
    rtt_ms: float | None
    mapped: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "kind": self.kind,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "mapped": self.mapped,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class NetcheckReport:
    """One netcheck run. Times are POSIX seconds. Booleans are ``None`` when not measured."""

    mapping: str
    filtering: str
    public_ipv4: str | None
    public_ipv6: str | None
    local_address: str | None
    port_preserving: bool | None
    hairpinning: bool | None
    udp_blocked: bool | None
    relays: tuple[RelayLatency, ...] = ()
    port_allocation: str | None = None
    discovery_server: str | None = None
    trigger: str = "manual"
    ran_at: float = field(default_factory=time.time)
    duration_ms: float = 0.0
    error: str | None = None

    @property
    def nat_type(self) -> str:
        return nat_type_name(self.mapping, self.filtering, self.udp_blocked, self.port_allocation)

    def to_json(self) -> dict[str, Any]:
        return {
            "nat_type": self.nat_type,
            "mapping": self.mapping,
            "filtering": self.filtering,
            "public_ipv4": self.public_ipv4,
            "public_ipv6": self.public_ipv6,
            "local_address": self.local_address,
            "port_preserving": self.port_preserving,
            "port_allocation": self.port_allocation,
            "hairpinning": self.hairpinning,
            "udp_blocked": self.udp_blocked,
            "relays": [r.to_json() for r in self.relays],
            "discovery_server": self.discovery_server,
            "trigger": self.trigger,
            "ran_at": round(self.ran_at, 3),
            "duration_ms": round(self.duration_ms, 3),
            "error": self.error,
        }


def _yes_no(value: object) -> str:
    return "yes" if value is True else "no" if value is False else "unknown"


def format_netcheck(data: dict[str, Any], now: float | None = None) -> str:
    """A report's JSON form as lines a person reads (``coremesh netcheck`` without ``--json``)."""
    now = time.time() if now is None else now
    ran_at = data.get("ran_at")
    age = f"{max(0.0, now - float(ran_at)):.0f}s ago" if isinstance(ran_at, int | float) else "never"
    udp = data.get("udp_blocked")
    lines = [
        f"nat type        {data.get('nat_type', UNKNOWN)}",
        f"mapping         {data.get('mapping', UNKNOWN)}",
        f"filtering       {data.get('filtering', UNKNOWN)}",
        f"public ipv4     {data.get('public_ipv4') or '-'}",
        f"public ipv6     {data.get('public_ipv6') or '-'}",
        f"local address   {data.get('local_address') or '-'}",
        f"port preserved  {_yes_no(data.get('port_preserving'))}",
        f"port allocation {data.get('port_allocation') or 'unknown'}",
        f"hairpinning     {_yes_no(data.get('hairpinning'))}",
        f"udp             {'blocked' if udp is True else 'works' if udp is False else 'unknown'}",
        f"last run        {age} ({data.get('trigger', '-')}, {float(data.get('duration_ms') or 0):.0f} ms)",
    ]
    if data.get("error"):
        lines.append(f"error           {data['error']}")
    relays = data.get("relays") or []
    if relays:
        lines.append("relays")
        for r in relays:
            if not isinstance(r, dict):
                continue
            rtt = r.get("rtt_ms")
            latency = f"{float(rtt):.1f} ms" if isinstance(rtt, int | float) else "no answer"
            extra = f"  ({r['error']})" if r.get("error") else ""
            lines.append(f"  {r.get('kind', '?'):<9} {r.get('server')}  {latency}{extra}")
    return "\n".join(lines)
