"""From a topology to what gets built: namespaces, interfaces, addresses, MACs and routes (pure data).

Every node (router or host) and every network (its bridge, "switch") gets its own namespace named
``PREFIX-NAME`` (switches: ``PREFIX-sw-NAME``). An attachment of a node to a network is one veth pair:
the node's end is ``eth0`` on a host, ``wan0``/``lan0`` on a router; the switch's end is a port of
bridge ``br0``. Addresses are numbered from ``.10`` of a network's first prefix in declaration order
(the router serving a LAN takes ``.1``), unless given explicitly. Nothing here touches the system.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final

from .topology import NO_IMPAIRMENT, Host, LinkSpec, Router, Topology, TopologyError

FIRST_AUTO: Final = 10
GATEWAY: Final = 1


@dataclass(slots=True)
class Interface:
    node: str
    network: str
    ifname: str  # in the node's namespace
    port: str  # the switch's end, in the switch namespace
    mac: str
    ipv4: list[ipaddress.IPv4Interface] = field(default_factory=list)
    ipv6: list[ipaddress.IPv6Interface] = field(default_factory=list)
    link: LinkSpec = NO_IMPAIRMENT


@dataclass(slots=True)
class Route:
    destination: str  # "default" or a prefix
    gateway: str | None  # None: on-link
    ifname: str


@dataclass(slots=True)
class NodePlan:
    name: str
    netns: str
    kind: str  # "router" or "host"
    interfaces: list[Interface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    router: Router | None = None

    def interface(self, network: str) -> Interface:
        for iface in self.interfaces:
            if iface.network == network:
                return iface
        raise KeyError(f"{self.name} has no link to {network!r}")

    @property
    def ipv4(self) -> list[str]:
        return [str(a.ip) for i in self.interfaces for a in i.ipv4]

    @property
    def ipv6(self) -> list[str]:
        return [str(a.ip) for i in self.interfaces for a in i.ipv6]


@dataclass(slots=True)
class SwitchPlan:
    network: str
    netns: str
    ports: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    prefix: str
    topology: Topology
    nodes: dict[str, NodePlan]
    switches: dict[str, SwitchPlan]

    @property
    def namespaces(self) -> list[str]:
        return [s.netns for s in self.switches.values()] + [n.netns for n in self.nodes.values()]

    def members(self, network: str) -> list[Interface]:
        """Every interface attached to ``network``, in attachment order."""
        return [i for n in self.nodes.values() for i in n.interfaces if i.network == network]


def netns_name(prefix: str, node: str) -> str:
    return f"{prefix}-{node}"


def switch_name(prefix: str, network: str) -> str:
    return f"{prefix}-sw-{network}"


def build_plan(topology: Topology, prefix: str) -> Plan:
    nodes: dict[str, NodePlan] = {}
    switches = {n.name: SwitchPlan(n.name, switch_name(prefix, n.name)) for n in topology.networks}
    attachments: list[tuple[NodePlan, str, str, LinkSpec, Host | Router]] = []
    for router in topology.routers:
        node = NodePlan(router.name, netns_name(prefix, router.name), "router", router=router)
        nodes[router.name] = node
        attachments.append((node, router.lan, "lan0", router.lan_link, router))
        attachments.append((node, router.wan, "wan0", router.wan_link, router))
    for host in topology.hosts:
        node = NodePlan(host.name, netns_name(prefix, host.name), "host")
        nodes[host.name] = node
        attachments.append((node, host.network, "eth0", host.link, host))
    net_index = {n.name: i for i, n in enumerate(topology.networks)}
    for node, network, ifname, link, _ in attachments:
        switch = switches[network]
        port = f"p{len(switch.ports)}"
        switch.ports.append(port)
        net, member = net_index[network], len(switch.ports)
        mac = f"02:4e:4c:{net:02x}:{member >> 8:02x}:{member & 0xFF:02x}"
        node.interfaces.append(Interface(node.name, network, ifname, port, mac, link=link))
    _number(topology, nodes, attachments)
    _route(topology, nodes)
    return Plan(prefix, topology, nodes, switches)


def _number(
    topology: Topology,
    nodes: dict[str, NodePlan],
    attachments: list[tuple[NodePlan, str, str, LinkSpec, Host | Router]],
) -> None:
    """Give every interface its addresses: explicit ones first, then the gateway, then the rest."""
    taken: dict[str, set[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
    for net in topology.networks:
        taken[net.name] = set()
        gateway = topology.router_of(net.name)
        if gateway is not None:  # the gateway's .1 / ::1
            taken[net.name].update(p.network_address + GATEWAY for p in net.ipv4)
            taken[net.name].update(p.network_address + GATEWAY for p in net.ipv6)
        explicit = [
            (f"hosts.{h.name}", a)
            for h in topology.hosts
            if h.network == net.name
            for a in (*h.ipv4, *h.ipv6)
        ]
        explicit += [
            (f"routers.{r.name}.wan_ipv4", a)
            for r in topology.routers
            if r.wan == net.name
            for a in r.wan_ipv4
        ]
        for where, text in explicit:
            address = ipaddress.ip_address(text)
            if address in taken[net.name]:
                raise TopologyError(f"{where}: {text} is already used on network {net.name!r}")
            taken[net.name].add(address)

    def allocate(network: str, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network, where: str) -> int:
        for offset in range(FIRST_AUTO, prefix.num_addresses - 1):
            candidate = prefix.network_address + offset
            if candidate not in taken[network]:
                taken[network].add(candidate)
                return offset
        raise TopologyError(f"{where}: network {network!r} ({prefix}) has no free address left")

    # The router serving a LAN is its gateway, at .1 / ::1.
    for router in topology.routers:
        iface = nodes[router.name].interface(router.lan)
        net = topology.network(router.lan)
        for p4 in net.ipv4:
            iface.ipv4.append(ipaddress.IPv4Interface(f"{p4.network_address + GATEWAY}/{p4.prefixlen}"))
        for p6 in net.ipv6:
            iface.ipv6.append(ipaddress.IPv6Interface(f"{p6.network_address + GATEWAY}/{p6.prefixlen}"))
    for node, network, ifname, _, spec in attachments:
        if ifname == "lan0":
            continue
        net = topology.network(network)
        iface = node.interface(network)
        where = f"{'routers' if node.kind == 'router' else 'hosts'}.{node.name}"
        if isinstance(spec, Router):
            explicit4: tuple[str, ...] = spec.wan_ipv4
            explicit6: tuple[str, ...] = ()
            count4, count6 = (1 if net.ipv4 else 0), (1 if net.ipv6 else 0)
        else:
            explicit4, explicit6 = spec.ipv4, spec.ipv6
            count4 = spec.ipv4_count if spec.ipv4_count is not None else (1 if net.ipv4 else 0)
            count6 = spec.ipv6_count if spec.ipv6_count is not None else (1 if net.ipv6 else 0)
        if count4 and not net.ipv4 and not explicit4:
            raise TopologyError(f"{where}.ipv4_count: network {network!r} has no IPv4 prefix")
        if count6 and not net.ipv6 and not explicit6:
            raise TopologyError(f"{where}.ipv6_count: network {network!r} has no IPv6 prefix")
        for text in explicit4:
            p4 = next(p for p in net.ipv4 if ipaddress.IPv4Address(text) in p)
            iface.ipv4.append(ipaddress.IPv4Interface(f"{text}/{p4.prefixlen}"))
        for text in explicit6:
            p6 = next(p for p in net.ipv6 if ipaddress.IPv6Address(text) in p)
            iface.ipv6.append(ipaddress.IPv6Interface(f"{text}/{p6.prefixlen}"))
        for _ in range(count4 - len(explicit4) if not explicit4 else 0):
            p4 = net.ipv4[0]
            iface.ipv4.append(
                ipaddress.IPv4Interface(f"{p4.network_address + allocate(network, p4, where)}/{p4.prefixlen}")
            )
        for _ in range(count6 - len(explicit6) if not explicit6 else 0):
            p6 = net.ipv6[0]
            iface.ipv6.append(
                ipaddress.IPv6Interface(f"{p6.network_address + allocate(network, p6, where)}/{p6.prefixlen}")
            )


def _route(topology: Topology, nodes: dict[str, NodePlan]) -> None:
    """Default routes towards each network's gateway; on-link routes for a network's other prefixes;
    IPv6 routes to every LAN prefix behind a router (IPv6 is routed, not translated)."""
    for node in nodes.values():
        for iface in node.interfaces:
            net = topology.network(iface.network)
            own = {str(a.network) for a in iface.ipv4} | {str(a.network) for a in iface.ipv6}
            for prefix in (*net.ipv4, *net.ipv6):
                if str(prefix) not in own:
                    node.routes.append(Route(str(prefix), None, iface.ifname))
            if node.kind == "router" and iface.ifname == "lan0":
                continue
            gateway = topology.router_of(iface.network)
            if gateway is None:
                continue
            gw_iface = nodes[gateway.name].interface(iface.network)
            if iface.ipv4 and gw_iface.ipv4:
                node.routes.append(Route("default", str(gw_iface.ipv4[0].ip), iface.ifname))
            if iface.ipv6 and gw_iface.ipv6:
                node.routes.append(Route("default", str(gw_iface.ipv6[0].ip), iface.ifname))

    def behind(router: Router) -> list[str]:
        prefixes = [str(p) for p in topology.network(router.lan).ipv6]
        for down in topology.routers:
            if down.wan == router.lan:
                prefixes += behind(down)
        return prefixes

    for router in topology.routers:
        wan = nodes[router.name].interface(router.wan)
        if not wan.ipv6:
            continue
        prefixes = behind(router)
        for other in nodes.values():
            if other.name == router.name:
                continue
            for iface in other.interfaces:
                if iface.network == router.wan and iface.ipv6:
                    for prefix in prefixes:
                        other.routes.append(Route(prefix, str(wan.ipv6[0].ip), iface.ifname))
