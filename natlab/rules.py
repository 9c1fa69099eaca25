"""Firewall and NAT rules as text, rendered from the plan (pure functions; nothing is applied here).

A router gets three things, all inside its own namespace:

* ``iptables-restore`` input (:func:`router_iptables`): the IPv4 filter (drop unsolicited new
  inbound on the WAN, forward LAN to WAN, let replies and deliberate DNATs back in) and the source
  NAT whose rules choose the **mapping** behaviour and the port allocation;
* an nftables table ``ip natlab_nat`` (:func:`router_nft`) that learns every mapping (external port
  -> host address and port) and the remote addresses each mapping has sent to, and DNATs unsolicited
  inbound packets through a mapping when the **filtering** behaviour allows it; it also hairpins;
* an nftables table ``ip6 natlab_fw``: the stateful IPv6 firewall (no translation).

Mapping, after RFC 4787 (``ports`` in parentheses):

* endpoint-independent (preserve): ``SNAT --to-source WAN``; Linux keeps the source port when the
  resulting tuple is free, and keeps it per host port whatever the destination;
* endpoint-independent (random): ``SNAT --to-source WAN:LO-HI/0``: a fixed shift of the port into a
  range that the hosts' ephemeral ports do not use, the same for every destination;
* address-dependent (random): one such range per known public destination address (an address of
  the lab), so the port depends on the destination address only; other destinations get
  ``--random-fully``;
* address-and-port-dependent (random): ``SNAT --random-fully`` (a fresh random port per 5-tuple);
* address-and-port-dependent (sequential): a ring of ``statistic --mode nth`` rules, each mapping to
  one port, so new mappings take ports LO, LO+1, LO+2, ... (wrapping after :data:`SEQUENTIAL_RING`).

Filtering: address-and-port-dependent is plain conntrack (only replies come back); for
address-dependent the table DNATs inbound packets from any port of an address the mapping has sent
to; for endpoint-independent, from anyone.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from typing import Final

from .plan import Interface, NodePlan, Plan

SEQUENTIAL_RING: Final = 256
EIM_RANGE: Final = 10_000
ND_TYPES: Final = "{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }"


def router_sysctls(node: NodePlan) -> dict[str, str]:
    """Forwarding set explicitly (a new namespace may inherit 1), and the mapping timeout as the
    namespace's conntrack UDP timeouts."""
    assert node.router is not None
    timeout = str(node.router.nat.mapping_timeout)
    return {
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.forwarding": "1",
        "net.netfilter.nf_conntrack_udp_timeout": timeout,
        "net.netfilter.nf_conntrack_udp_timeout_stream": timeout,
    }


def host_sysctls() -> dict[str, str]:
    return {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"}


def _lan_prefixes(plan: Plan, node: NodePlan) -> list[str]:
    assert node.router is not None
    return [str(p) for p in plan.topology.network(node.router.lan).ipv4]


def _wan_ip(node: NodePlan) -> str:
    assert node.router is not None
    return str(node.interface(node.router.wan).ipv4[0].ip)


def public_destinations(plan: Plan, node: NodePlan) -> list[str]:
    """IPv4 addresses outside ``node``'s LAN that its hosts may send to: every address of the lab
    that is not behind ``node`` (address-dependent mapping gives each its own port range)."""
    assert node.router is not None
    lan = [ipaddress.IPv4Network(p) for p in _lan_prefixes(plan, node)]
    own = set(node.ipv4)
    found: list[str] = []
    for other in plan.nodes.values():
        for address in other.ipv4:
            ip = ipaddress.IPv4Address(address)
            if address not in own and not any(ip in p for p in lan) and address not in found:
                found.append(address)
    return found


def mapping_rules(plan: Plan, node: NodePlan, match: str, rng: random.Random) -> list[str]:
    """The UDP source NAT rules for one exit (``match``: ``-o wan0`` or the hairpin match)."""
    assert node.router is not None
    nat, wan = node.router.nat, _wan_ip(node)
    sources = ",".join(_lan_prefixes(plan, node))
    head = f"-A POSTROUTING {match} -s {sources} -p udp"
    if nat.mapping == "endpoint-independent":
        if nat.ports == "preserve":
            return [f"{head} -j SNAT --to-source {wan}"]
        low = rng.randrange(1024, 32768 - EIM_RANGE)
        return [f"{head} -j SNAT --to-source {wan}:{low}-{low + EIM_RANGE - 1}/{low}"]
    if nat.mapping == "address-dependent":
        destinations = [] if " -d " in f" {match}" else public_destinations(plan, node)
        size = max(16, min(1000, 40_000 // max(1, len(destinations))))
        base = rng.randrange(1024, 1024 + size)
        rules = [
            f"{head} -d {dst} -j SNAT --to-source {wan}:{base + i * size}-{base + (i + 1) * size - 1}/{base}"
            for i, dst in enumerate(destinations)
        ]
        return [*rules, f"{head} -j SNAT --to-source {wan} --random-fully"]
    if nat.ports == "sequential":
        low = rng.randrange(20_000, 40_000)
        return [
            f"{head} -m statistic --mode nth --every {SEQUENTIAL_RING - i} --packet 0 "
            f"-j SNAT --to-source {wan}:{low + i}"
            for i in range(SEQUENTIAL_RING)
        ]
    return [f"{head} -j SNAT --to-source {wan} --random-fully"]


def router_iptables(plan: Plan, node: NodePlan, rng: random.Random) -> str:
    """``iptables-restore`` input for a router's IPv4 filter and NAT."""
    assert node.router is not None
    nat, wan = node.router.nat, _wan_ip(node)
    sources = ",".join(_lan_prefixes(plan, node))
    filt = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        # Unsolicited new packets to the router itself are dropped, as home routers do: otherwise
        # a peer's early punch creates a conntrack entry that makes the NAT re-map the host.
        "-A INPUT -i wan0 -m conntrack --ctstate INVALID,NEW -j DROP",
        "-A FORWARD -m conntrack --ctstate INVALID -j DROP",
    ]
    if not nat.hairpinning:
        filt.append(f"-A INPUT -i lan0 -d {wan} -j DROP")
    if nat.udp_blocked:
        filt.append("-A FORWARD -i lan0 -o wan0 -p udp -j DROP")
    filt += [
        "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A FORWARD -i lan0 -o wan0 -j ACCEPT",
        "-A FORWARD -i wan0 -o lan0 -m conntrack --ctstate DNAT -j ACCEPT",
    ]
    if nat.hairpinning:
        filt.append("-A FORWARD -i lan0 -o lan0 -m conntrack --ctstate DNAT -j ACCEPT")
    filt.append("COMMIT")
    nat_rules = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    nat_rules.append(":POSTROUTING ACCEPT [0:0]")
    nat_rules += mapping_rules(plan, node, "-o wan0", random.Random(rng.random()))
    if nat.hairpinning:
        hairpin = f"-o lan0 -d {sources} -m conntrack --ctstate DNAT"
        nat_rules += mapping_rules(plan, node, hairpin, random.Random(rng.random()))
        nat_rules.append(f"-A POSTROUTING {hairpin} -s {sources} -j SNAT --to-source {wan}")
    nat_rules += [f"-A POSTROUTING -o wan0 -s {sources} -j SNAT --to-source {wan}", "COMMIT"]
    return "\n".join(filt + nat_rules) + "\n"


def router_nft(plan: Plan, node: NodePlan) -> str:
    """The nftables tables of a router: mapping learning + inbound filtering (IPv4) and the IPv6
    firewall."""
    assert node.router is not None
    router = node.router
    nat, timeout = router.nat, router.nat.mapping_timeout
    lines: list[str] = []
    if plan.topology.network(router.lan).ipv4:
        wan = _wan_ip(node)
        lines += [
            "table ip natlab_nat {",
            "  map mappings {",
            "    type inet_service : ipv4_addr . inet_service",
            f"    flags dynamic,timeout; timeout {timeout}s; size 65535",
            "  }",
            "  set contacted {",
            "    type inet_service . ipv4_addr",
            f"    flags dynamic,timeout; timeout {timeout}s; size 65535",
            "  }",
            "  chain learn {",
            "    type filter hook postrouting priority srcnat + 10; policy accept;",
            f'    oifname "wan0" meta l4proto udp ct direction original ct status snat ip saddr {wan} '
            "update @mappings { udp sport : ct original ip saddr . ct original proto-src }",
            f'    oifname "wan0" meta l4proto udp ct direction original ct status snat ip saddr {wan} '
            "update @contacted { udp sport . ip daddr }",
            "  }",
            "  chain inbound {",
            "    type nat hook prerouting priority dstnat - 10; policy accept;",
        ]
        if nat.filtering == "endpoint-independent":
            lines.append(
                f'    iifname "wan0" ip daddr {wan} meta l4proto udp dnat ip to udp dport map @mappings'
            )
        elif nat.filtering == "address-dependent":
            lines.append(
                f'    iifname "wan0" ip daddr {wan} meta l4proto udp udp dport . ip saddr @contacted '
                "dnat ip to udp dport map @mappings"
            )
        if nat.hairpinning:
            lines.append(
                f'    iifname "lan0" ip daddr {wan} meta l4proto udp dnat ip to udp dport map @mappings'
            )
        lines += ["  }", "}"]
    if plan.topology.network(router.lan).ipv6:
        lines += _ipv6_firewall(router.ipv6_filtering, timeout, nat.udp_blocked)
    return "\n".join(lines) + "\n"


def _ipv6_firewall(filtering: str, timeout: int, udp_blocked: bool) -> list[str]:
    lines = [
        "table ip6 natlab_fw {",
        "  set open {",
        "    type ipv6_addr . inet_service",
        f"    flags dynamic,timeout; timeout {timeout}s; size 65535",
        "  }",
        "  set contacted {",
        "    type ipv6_addr . inet_service . ipv6_addr",
        f"    flags dynamic,timeout; timeout {timeout}s; size 65535",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state invalid drop",
    ]
    if udp_blocked:
        lines.append('    iifname "lan0" oifname "wan0" meta l4proto udp drop')
    lines += [
        "    ct state established,related accept",
        "    meta l4proto ipv6-icmp accept",
        '    iifname "lan0" oifname "wan0" meta l4proto udp update @open { ip6 saddr . udp sport }',
        '    iifname "lan0" oifname "wan0" meta l4proto udp update @contacted '
        "{ ip6 saddr . udp sport . ip6 daddr }",
        '    iifname "lan0" oifname "wan0" accept',
    ]
    if filtering == "endpoint-independent":
        lines.append('    iifname "wan0" oifname "lan0" meta l4proto udp ip6 daddr . udp dport @open accept')
    elif filtering == "address-dependent":
        lines.append(
            '    iifname "wan0" oifname "lan0" meta l4proto udp '
            "ip6 daddr . udp dport . ip6 saddr @contacted accept"
        )
    lines += [
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        '    iifname "wan0" ct state new meta l4proto { tcp, udp } drop',
        "  }",
        "}",
    ]
    return lines


# -- links -------------------------------------------------------------------------------------


def delay_config(plan: Plan, node: NodePlan) -> dict[str, dict[str, list[float]]]:
    """What the delay element in ``node``'s namespace holds packets for: its own links, inbound
    (by interface), and its neighbours' links, outbound from them (by their MAC)."""
    ifaces = {i.ifname: [i.link.latency_ms, i.link.jitter_ms] for i in node.interfaces if i.link.delayed}
    macs: dict[str, list[float]] = {}
    for iface in node.interfaces:
        for other in plan.members(iface.network):
            if other.node != node.name and other.link.delayed:
                macs[other.mac] = [other.link.latency_ms, other.link.jitter_ms]
    return {"ifaces": ifaces, "macs": macs}


def _neighbours(plan: Plan, node: NodePlan) -> Iterable[tuple[Interface, Interface]]:
    for iface in node.interfaces:
        for other in plan.members(iface.network):
            if other.node != node.name:
                yield iface, other


def link_nft(plan: Plan, node: NodePlan) -> str:
    """The table ``inet natlab_link`` of one namespace: the loss of this node's links and of its
    neighbours' links, as random drops where a packet is received (a DROP on the sending side would
    make ``sendto`` fail with EPERM), before conntrack sees the packet."""
    rules = [f"    meta l4proto ipv6-icmp icmpv6 type {ND_TYPES} accept"]
    for iface in node.interfaces:
        if iface.link.loss > 0:
            rules.append(f'    iifname "{iface.ifname}" {_lose(iface.link.loss)} drop')
    for iface, other in _neighbours(plan, node):
        if other.link.loss > 0:
            match = f'iifname "{iface.ifname}" ether saddr {other.mac}'
            rules.append(f"    {match} {_lose(other.link.loss)} drop")
    return (
        "\n".join(
            [
                "table inet natlab_link",
                "delete table inet natlab_link",
                "table inet natlab_link {",
                "  chain pre {",
                "    type filter hook prerouting priority -350; policy accept;",
                *rules,
                "  }",
                "}",
            ]
        )
        + "\n"
    )


def link_raw(plan: Plan, node: NodePlan, queue: int = 0, *, ipv6: bool = False) -> str:
    """``iptables-restore`` (``ip6tables-restore``) input for the ``raw`` table: packets that cross
    a delayed link (this node's, inbound; a neighbour's, from its MAC) go to NFQUEUE ``queue``,
    where the delay element (:mod:`coremesh_natlab.delayd`) holds them. (This kernel has no nft
    ``queue`` expression; the xtables NFQUEUE target works.)"""
    lines = ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    if ipv6:
        for kind in ("neighbour-solicitation", "neighbour-advertisement", "router-solicitation"):
            lines.append(f"-A PREROUTING -p ipv6-icmp --icmpv6-type {kind} -j ACCEPT")
        lines.append("-A PREROUTING -p ipv6-icmp --icmpv6-type router-advertisement -j ACCEPT")
    target = f"-j NFQUEUE --queue-num {queue}"
    for iface in node.interfaces:
        if iface.link.delayed:
            lines.append(f"-A PREROUTING -i {iface.ifname} {target}")
    for iface, other in _neighbours(plan, node):
        if other.link.delayed:
            lines.append(f"-A PREROUTING -i {iface.ifname} -m mac --mac-source {other.mac} {target}")
    return "\n".join([*lines, "COMMIT"]) + "\n"


def _lose(probability: float) -> str:
    return f"numgen random mod 1000000 < {round(probability * 1_000_000)}"


def needs_delay(plan: Plan, node: NodePlan) -> bool:
    config = delay_config(plan, node)
    return bool(config["ifaces"] or config["macs"])


CUT_TABLE: Final = """table inet natlab_cut {
  set cut4 { type ipv4_addr; }
  set cut6 { type ipv6_addr; }
  chain pre {
    type filter hook prerouting priority -390; policy accept;
    ip saddr @cut4 drop
    ip6 saddr @cut6 drop
  }
}
"""
"""Every node has this table; :meth:`Lab.cut` fills the sets with the addresses of the other side."""
