"""Declared topologies: networks, NAT routers and hosts, as checked frozen dataclasses.

A topology is data. It is read from TOML or JSON (:func:`load`, :func:`from_dict`) or built in Python
(:func:`pair` builds the two-NATs-and-a-STUN-server shape the traversal tests use). Every problem is
a :class:`TopologyError` whose message names the field (``routers.nat_a.nat.mapping: ...``).

File format (TOML; JSON has the same shape)::

    name = "cone-vs-symmetric"

    [networks.internet]
    ipv4 = ["192.0.2.0/24", "198.51.100.0/24"]   # a string or a list; the first one numbers hosts
    ipv6 = "2001:db8::/64"

    [networks.lan_a]
    ipv4 = "10.1.0.0/24"

    [routers.nat_a]
    wan = "internet"                             # the upstream network
    lan = "lan_a"                                # the network it serves (its gateway)
    nat = "port-restricted-cone"                 # a preset name, or a table (below)
    wan_link = { latency_ms = 25, jitter_ms = 2, loss = 0.01 }

    [routers.nat_b.nat]
    mapping = "address-and-port-dependent"
    filtering = "address-and-port-dependent"
    ports = "sequential"
    hairpinning = false
    mapping_timeout = 30
    udp_blocked = false

    [hosts.a]
    network = "lan_a"
    link = { latency_ms = 5 }

    [hosts.stun]
    network = "internet"
    ipv4 = ["192.0.2.10", "192.0.2.11"]          # explicit; or ipv4_count = 2
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

MAPPINGS: Final = ("endpoint-independent", "address-dependent", "address-and-port-dependent")
FILTERINGS: Final = MAPPINGS
PORTS: Final = ("preserve", "random", "sequential")
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,11}$")
"""Node and network names: short, because namespace names are ``PREFIX-NAME``."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TopologyError(ValueError):
    """A topology that cannot be built; the message starts with the offending field."""


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """Impairments of one attachment of a node to a network, each way: one-way latency and jitter
    (milliseconds) and loss (a probability, 0..1)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0

    def check(self, where: str) -> None:
        for name in ("latency_ms", "jitter_ms"):
            value = getattr(self, name)
            if not 0 <= value <= 10_000:
                raise TopologyError(f"{where}.{name}: expected 0..10000 ms, got {value!r}")
        if self.jitter_ms > 0 and self.latency_ms < self.jitter_ms:
            raise TopologyError(f"{where}.jitter_ms: must not exceed latency_ms ({self.latency_ms})")
        if not 0 <= self.loss <= 1:
            raise TopologyError(f"{where}.loss: expected a probability 0..1, got {self.loss!r}")

    @property
    def impaired(self) -> bool:
        return self.latency_ms > 0 or self.jitter_ms > 0 or self.loss > 0

    @property
    def delayed(self) -> bool:
        return self.latency_ms > 0 or self.jitter_ms > 0


NO_IMPAIRMENT: Final = LinkSpec()


@dataclass(frozen=True, slots=True)
class NatSpec:
    """One router's NAT after RFC 4787.

    ``ports``: ``preserve`` keeps the host's port when free (endpoint-independent mapping only);
    ``random`` gives a port unrelated to the host's (for endpoint-independent mapping a fixed
    per-router shift, so the mapping stays stable; for dependent mappings a fresh port per mapping);
    ``sequential`` hands out ports in increasing order, one per new mapping (the predictable
    symmetric NAT; address-and-port-dependent mapping only).
    """

    mapping: str = "endpoint-independent"
    filtering: str = "address-and-port-dependent"
    ports: str = "preserve"
    hairpinning: bool = False
    mapping_timeout: int = 120
    udp_blocked: bool = False

    def check(self, where: str) -> None:
        if self.mapping not in MAPPINGS:
            raise TopologyError(
                f"{where}.mapping: expected one of {', '.join(MAPPINGS)}; got {self.mapping!r}"
            )
        if self.filtering not in FILTERINGS:
            raise TopologyError(
                f"{where}.filtering: expected one of {', '.join(FILTERINGS)}; got {self.filtering!r}"
            )
        if self.ports not in PORTS:
            raise TopologyError(f"{where}.ports: expected one of {', '.join(PORTS)}; got {self.ports!r}")
        if self.ports == "preserve" and self.mapping != "endpoint-independent":
            raise TopologyError(
                f"{where}.ports: 'preserve' needs endpoint-independent mapping (a dependent mapping "
                "needs a new port per destination); use 'random' or 'sequential'"
            )
        if self.ports == "sequential" and self.mapping != "address-and-port-dependent":
            raise TopologyError(f"{where}.ports: 'sequential' needs address-and-port-dependent mapping")
        if not isinstance(self.hairpinning, bool):
            raise TopologyError(f"{where}.hairpinning: expected true or false")
        if not isinstance(self.udp_blocked, bool):
            raise TopologyError(f"{where}.udp_blocked: expected true or false")
        if not isinstance(self.mapping_timeout, int) or not 2 <= self.mapping_timeout <= 86_400:
            raise TopologyError(
                f"{where}.mapping_timeout: expected 2..86400 seconds, got {self.mapping_timeout!r}"
            )


PRESETS: Final[Mapping[str, NatSpec]] = {
    "full-cone": NatSpec("endpoint-independent", "endpoint-independent"),
    "restricted-cone": NatSpec("endpoint-independent", "address-dependent"),
    "port-restricted-cone": NatSpec("endpoint-independent", "address-and-port-dependent"),
    "address-dependent": NatSpec("address-dependent", "address-dependent", ports="random"),
    "symmetric": NatSpec("address-and-port-dependent", "address-and-port-dependent", ports="random"),
    "symmetric-sequential": NatSpec(
        "address-and-port-dependent", "address-and-port-dependent", ports="sequential"
    ),
    "udp-blocked": NatSpec(udp_blocked=True),
}
"""Common NAT kinds by their old (RFC 3489) names, plus the predictable symmetric NAT."""


@dataclass(frozen=True, slots=True)
class Network:
    """An L2 segment (a bridge). Without a router serving it, it is (part of) the internet."""

    name: str
    ipv4: tuple[ipaddress.IPv4Network, ...] = ()
    ipv6: tuple[ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True, slots=True)
class Router:
    """A NAT router: WAN side on ``wan``, gateway of ``lan``. IPv4 is translated (``nat``); IPv6 is
    routed without translation through a stateful firewall (``ipv6_filtering``)."""

    name: str
    wan: str
    lan: str
    nat: NatSpec = field(default_factory=NatSpec)
    ipv6_filtering: str = "address-and-port-dependent"
    wan_ipv4: tuple[str, ...] = ()
    wan_link: LinkSpec = NO_IMPAIRMENT
    lan_link: LinkSpec = NO_IMPAIRMENT


@dataclass(frozen=True, slots=True)
class Host:
    """An end host on one network. ``ipv4``/``ipv6``: explicit addresses; otherwise ``*_count``
    addresses are numbered automatically (``None``: one if the network has that family)."""

    name: str
    network: str
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    ipv4_count: int | None = None
    ipv6_count: int | None = None
    link: LinkSpec = NO_IMPAIRMENT


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    networks: tuple[Network, ...]
    routers: tuple[Router, ...] = ()
    hosts: tuple[Host, ...] = ()

    def __post_init__(self) -> None:
        validate(self)

    def network(self, name: str) -> Network:
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(name)

    def router_of(self, network: str) -> Router | None:
        """The router whose LAN is ``network`` (``None`` for the internet)."""
        return next((r for r in self.routers if r.lan == network), None)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.routers) + tuple(h.name for h in self.hosts)


def validate(topo: Topology) -> None:
    if not isinstance(topo.name, str) or not topo.name:
        raise TopologyError("name: expected a non-empty string")
    if not topo.networks:
        raise TopologyError("networks: at least one network is needed")
    seen: set[str] = set()
    for kind, names in (
        ("networks", [n.name for n in topo.networks]),
        ("routers", [r.name for r in topo.routers]),
        ("hosts", [h.name for h in topo.hosts]),
    ):
        for name in names:
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise TopologyError(f"{kind}.{name}: names are 1-12 of a-z, 0-9, _ and start with a letter")
            if name in seen:
                raise TopologyError(
                    f"{kind}.{name}: the name is used twice (networks, routers, hosts share names)"
                )
            seen.add(name)
    nets = {n.name: n for n in topo.networks}
    for net in topo.networks:
        if not net.ipv4 and not net.ipv6:
            raise TopologyError(f"networks.{net.name}: give ipv4 and/or ipv6")
        prefixes: list[IPNetwork] = [*net.ipv4, *net.ipv6]
        for prefix in prefixes:
            if prefix.num_addresses < 4:
                raise TopologyError(f"networks.{net.name}: {prefix} is too small")
    served: dict[str, str] = {}
    for router in topo.routers:
        where = f"routers.{router.name}"
        for side in ("wan", "lan"):
            if getattr(router, side) not in nets:
                raise TopologyError(f"{where}.{side}: no network named {getattr(router, side)!r}")
        if router.wan == router.lan:
            raise TopologyError(f"{where}.lan: must differ from wan")
        if router.lan in served:
            raise TopologyError(f"{where}.lan: {router.lan!r} is already served by {served[router.lan]!r}")
        served[router.lan] = router.name
        router.nat.check(f"{where}.nat")
        if router.ipv6_filtering not in FILTERINGS:
            raise TopologyError(f"{where}.ipv6_filtering: expected one of {', '.join(FILTERINGS)}")
        router.wan_link.check(f"{where}.wan_link")
        router.lan_link.check(f"{where}.lan_link")
        if nets[router.lan].ipv4 and not nets[router.wan].ipv4:
            raise TopologyError(f"{where}.wan: the LAN has IPv4 but the WAN network {router.wan!r} has none")
        _check_addresses(f"{where}.wan_ipv4", router.wan_ipv4, nets[router.wan].ipv4)
    # Every network must lead to the internet without loops: follow lan -> wan upwards.
    by_lan = {r.lan: r for r in topo.routers}
    for router in topo.routers:
        hops, up = 0, router.wan
        while up in by_lan:
            up, hops = by_lan[up].wan, hops + 1
            if hops > len(topo.routers):
                raise TopologyError(f"routers.{router.name}.wan: routers form a loop")
    for host in topo.hosts:
        where = f"hosts.{host.name}"
        if host.network not in nets:
            raise TopologyError(f"{where}.network: no network named {host.network!r}")
        net = nets[host.network]
        _check_addresses(f"{where}.ipv4", host.ipv4, net.ipv4)
        _check_addresses(f"{where}.ipv6", host.ipv6, net.ipv6)
        for family in ("ipv4_count", "ipv6_count"):
            count = getattr(host, family)
            if count is not None and (not isinstance(count, int) or not 0 <= count <= 16):
                raise TopologyError(f"{where}.{family}: expected 0..16, got {count!r}")
        host.link.check(f"{where}.link")


def _check_addresses(where: str, addresses: tuple[str, ...], prefixes: tuple[IPNetwork, ...]) -> None:
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise TopologyError(f"{where}: {text!r} is not an IP address") from None
        if not any(address in prefix for prefix in prefixes):
            raise TopologyError(f"{where}: {text} is in none of the network's prefixes")


# -- reading ---------------------------------------------------------------------------------


def load(path: str | Path) -> Topology:
    """Read a ``.toml`` or ``.json`` topology file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(f"{path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise TopologyError(f"{path}: {exc}") from None
    data.setdefault("name", path.stem)
    return from_dict(data)


def from_dict(data: Mapping[str, Any]) -> Topology:
    _only(data, "", {"name", "networks", "routers", "hosts"})
    networks = tuple(_network(name, body) for name, body in _table(data, "networks").items())
    routers = tuple(_router(name, body) for name, body in _table(data, "routers").items())
    hosts = tuple(_host(name, body) for name, body in _table(data, "hosts").items())
    return Topology(name=data.get("name", "topology"), networks=networks, routers=routers, hosts=hosts)


def to_dict(topology: Topology) -> dict[str, Any]:
    """The inverse of :func:`from_dict` (JSON-able; ``from_dict(to_dict(t)) == t``)."""

    def link(spec: LinkSpec) -> dict[str, float]:
        return {k: getattr(spec, k) for k in ("latency_ms", "jitter_ms", "loss") if getattr(spec, k)}

    def nat(spec: NatSpec) -> dict[str, Any]:
        names = ("mapping", "filtering", "ports", "hairpinning", "mapping_timeout", "udp_blocked")
        return {k: getattr(spec, k) for k in names}

    return {
        "name": topology.name,
        "networks": {
            n.name: {"ipv4": [str(p) for p in n.ipv4], "ipv6": [str(p) for p in n.ipv6]}
            for n in topology.networks
        },
        "routers": {
            r.name: {
                "wan": r.wan,
                "lan": r.lan,
                "nat": nat(r.nat),
                "ipv6_filtering": r.ipv6_filtering,
                "wan_ipv4": list(r.wan_ipv4),
                "wan_link": link(r.wan_link),
                "lan_link": link(r.lan_link),
            }
            for r in topology.routers
        },
        "hosts": {
            h.name: {
                "network": h.network,
                "ipv4": list(h.ipv4),
                "ipv6": list(h.ipv6),
                "link": link(h.link),
                **({"ipv4_count": h.ipv4_count} if h.ipv4_count is not None else {}),
                **({"ipv6_count": h.ipv6_count} if h.ipv6_count is not None else {}),
            }
            for h in topology.hosts
        },
    }


def _table(data: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise TopologyError(f"{where}{key}: expected a table")
    return value


def _only(data: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise TopologyError(f"{where.rstrip('.') or 'topology'}: expected a table")
    for key in data:
        if key not in allowed:
            raise TopologyError(f"{where}{key}: unknown field (known: {', '.join(sorted(allowed))})")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TopologyError(f"{where}: expected a string or a list of strings")


def _network(name: str, body: Any) -> Network:
    where = f"networks.{name}."
    _only(body, where, {"ipv4", "ipv6"})
    v4: list[IPNetwork] = []
    v6: list[IPNetwork] = []
    for family, out in (("ipv4", v4), ("ipv6", v6)):
        for text in _strings(body.get(family, []), where + family):
            try:
                prefix = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise TopologyError(f"{where}{family}: {exc}") from None
            if prefix.version != int(family[-1]):
                raise TopologyError(f"{where}{family}: {text} is not an {family.upper()} prefix")
            out.append(prefix)
    return Network(name, tuple(v4), tuple(v6))  # type: ignore[arg-type]


def _link(body: Any, where: str) -> LinkSpec:
    _only(body, where + ".", {"latency_ms", "jitter_ms", "loss"})
    try:
        return LinkSpec(**{k: float(v) for k, v in body.items()})
    except (TypeError, ValueError):
        raise TopologyError(f"{where}: latency_ms, jitter_ms and loss are numbers") from None


def nat_spec(body: Any, where: str = "nat") -> NatSpec:
    """A :class:`NatSpec` from a preset name or a table of fields (over the defaults)."""
    if isinstance(body, str):
        if body not in PRESETS:
            raise TopologyError(f"{where}: unknown preset {body!r} (known: {', '.join(PRESETS)})")
        return PRESETS[body]
    fields = {"preset", "mapping", "filtering", "ports", "hairpinning", "mapping_timeout", "udp_blocked"}
    _only(body, where + ".", fields)
    base = nat_spec(body["preset"], where + ".preset") if "preset" in body else NatSpec()
    spec = replace(base, **{k: v for k, v in body.items() if k != "preset"})
    spec.check(where)
    return spec


def _router(name: str, body: Any) -> Router:
    where = f"routers.{name}."
    _only(body, where, {"wan", "lan", "nat", "ipv6_filtering", "wan_ipv4", "wan_link", "lan_link"})
    for key in ("wan", "lan"):
        if not isinstance(body.get(key), str):
            raise TopologyError(f"{where}{key}: expected a network name")
    return Router(
        name=name,
        wan=body["wan"],
        lan=body["lan"],
        nat=nat_spec(body.get("nat", {}), where + "nat"),
        ipv6_filtering=body.get("ipv6_filtering", "address-and-port-dependent"),
        wan_ipv4=_strings(body.get("wan_ipv4", []), where + "wan_ipv4"),
        wan_link=_link(body.get("wan_link", {}), where + "wan_link"),
        lan_link=_link(body.get("lan_link", {}), where + "lan_link"),
    )


def _host(name: str, body: Any) -> Host:
    where = f"hosts.{name}."
    _only(body, where, {"network", "ipv4", "ipv6", "ipv4_count", "ipv6_count", "link"})
    if not isinstance(body.get("network"), str):
        raise TopologyError(f"{where}network: expected a network name")
    return Host(
        name=name,
        network=body["network"],
        ipv4=_strings(body.get("ipv4", []), where + "ipv4"),
        ipv6=_strings(body.get("ipv6", []), where + "ipv6"),
        ipv4_count=body.get("ipv4_count"),
        ipv6_count=body.get("ipv6_count"),
        link=_link(body.get("link", {}), where + "link"),
    )


# -- builders --------------------------------------------------------------------------------

INTERNET_V4: Final = ipaddress.IPv4Network("192.0.2.0/24")
INTERNET_V4_B: Final = ipaddress.IPv4Network("198.51.100.0/24")
INTERNET_V6: Final = ipaddress.IPv6Network("2001:db8::/64")
STUN_V4: Final = ("192.0.2.10", "192.0.2.11")
STUN_V6: Final = ("2001:db8::10", "2001:db8::11")


def pair(
    nat_a: NatSpec | str | None,
    nat_b: NatSpec | str | None,
    *,
    wan_link: LinkSpec = NO_IMPAIRMENT,
    ipv6: bool = False,
    name: str = "pair",
) -> Topology:
    """Hosts ``a`` and ``b``, each behind its own router (``nat_a``/``nat_b``; ``None``: the host
    sits on the internet directly), and host ``stun`` on the internet with two addresses
    (192.0.2.10 and .11) for an RFC 5780 server. ``wan_link`` impairs both routers' (or hosts')
    internet links. ``ipv6``: every network is dual-stack (hosts behind the routers' firewalls)."""
    v6 = (INTERNET_V6,) if ipv6 else ()
    networks = [Network("internet", (INTERNET_V4, INTERNET_V4_B), v6)]
    routers: list[Router] = []
    hosts = [Host("stun", "internet", ipv4=STUN_V4, ipv6=STUN_V6 if ipv6 else ())]
    for index, (host, spec) in enumerate((("a", nat_a), ("b", nat_b)), start=1):
        if spec is None:
            hosts.append(Host(host, "internet", link=wan_link))
            continue
        nat = nat_spec(spec, f"nat_{host}") if isinstance(spec, str) else spec
        lan_v6 = (ipaddress.IPv6Network(f"2001:db8:{index}::/64"),) if ipv6 else ()
        networks.append(Network(f"lan_{host}", (ipaddress.IPv4Network(f"10.{index}.0.0/24"),), lan_v6))
        routers.append(Router(f"nat_{host}", "internet", f"lan_{host}", nat=nat, wan_link=wan_link))
        hosts.append(Host(host, f"lan_{host}"))
    return Topology(name=name, networks=tuple(networks), routers=tuple(routers), hosts=tuple(hosts))
