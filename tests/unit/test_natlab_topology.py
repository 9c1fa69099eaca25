"""The NAT lab's pure parts: topology checking, the build plan and the rendered rules (no root)."""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
from typing import Any

import pytest
from coremesh_natlab import PRESETS, TOPOLOGIES, NatSpec, TopologyError, from_dict, load, pair
from coremesh_natlab.plan import build_plan
from coremesh_natlab.rules import SEQUENTIAL_RING, link_nft, link_raw, router_iptables, router_nft
from coremesh_natlab.topology import FILTERINGS, MAPPINGS, LinkSpec, to_dict
from hypothesis import given
from hypothesis import strategies as st


def base() -> dict[str, Any]:
    return {
        "networks": {"internet": {"ipv4": "192.0.2.0/24"}, "lan": {"ipv4": "10.0.0.0/24"}},
        "routers": {"r": {"wan": "internet", "lan": "lan"}},
        "hosts": {"h": {"network": "lan"}, "s": {"network": "internet"}},
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["routers"]["r"].update(nat={"mapping": "cone"}), r"routers\.r\.nat\.mapping"),
        (
            lambda d: d["routers"]["r"].update(nat={"ports": "preserve", "mapping": MAPPINGS[2]}),
            r"\.nat\.ports",
        ),
        (lambda d: d["routers"]["r"].update(nat="fullcone"), r"routers\.r\.nat: unknown preset"),
        (lambda d: d["routers"]["r"].update(nat={"mapping_timeout": 1}), r"\.nat\.mapping_timeout"),
        (lambda d: d["routers"]["r"].update(lan="nowhere"), r"routers\.r\.lan: no network"),
        (lambda d: d["routers"]["r"].update(wan_link={"loss": 2}), r"routers\.r\.wan_link\.loss"),
        (lambda d: d["routers"]["r"].update(colour="red"), r"routers\.r\.colour: unknown field"),
        (lambda d: d["hosts"]["h"].update(network=3), r"hosts\.h\.network"),
        (lambda d: d["hosts"]["h"].update(ipv4=["192.0.2.7"]), r"hosts\.h\.ipv4: 192\.0\.2\.7 is in none"),
        (lambda d: d["hosts"]["h"].update(link={"jitter_ms": 5}), r"hosts\.h\.link\.jitter_ms"),
        (lambda d: d["networks"]["lan"].update(ipv4="10.0.0.1/24"), r"networks\.lan\.ipv4"),
        (lambda d: d["networks"]["lan"].update(ipv4="2001:db8::/64"), r"networks\.lan\.ipv4"),
        (lambda d: d["hosts"].update(r={"network": "lan"}), r"hosts\.r: the name is used twice"),
        (lambda d: d["hosts"].update(Bad={"network": "lan"}), r"hosts\.Bad: names are"),
        (lambda d: d.update(extra=1), r"^extra: unknown field"),
    ],
)
def test_a_bad_topology_is_refused_naming_the_field(change: Any, field: str) -> None:
    data = base()
    change(data)
    with pytest.raises(TopologyError, match=field):
        from_dict(data)


def test_routers_that_serve_each_other_are_a_loop() -> None:
    data = base()
    data["networks"]["lan2"] = {"ipv4": "10.9.0.0/24"}
    data["routers"] = {"r": {"wan": "lan2", "lan": "lan"}, "q": {"wan": "lan", "lan": "lan2"}}
    with pytest.raises(TopologyError, match="loop"):
        from_dict(data)


@pytest.mark.parametrize("path", sorted(TOPOLOGIES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_topology_loads_and_plans(path: Any) -> None:
    plan = build_plan(load(path), "t")
    assert plan.nodes and len(set(plan.namespaces)) == len(plan.namespaces)


def test_addresses_gateways_and_routes() -> None:
    plan = build_plan(pair("full-cone", None, ipv6=True), "t")
    nat_a, a, b, stun = (plan.nodes[n] for n in ("nat_a", "a", "b", "stun"))
    assert a.ipv4 == ["10.1.0.10"] and nat_a.interface("lan_a").ipv4[0].ip.exploded == "10.1.0.1"
    assert stun.ipv4 == ["192.0.2.10", "192.0.2.11"]
    assert nat_a.interface("internet").ipv4[0].ip.exploded == "192.0.2.12" and b.ipv4 == ["192.0.2.13"]
    assert ("default", "10.1.0.1") in {(r.destination, r.gateway) for r in a.routes}
    assert ("2001:db8:1::/64", "2001:db8::a") in {(r.destination, r.gateway) for r in stun.routes}
    assert ("198.51.100.0/24", None) in {(r.destination, r.gateway) for r in stun.routes}  # on-link
    macs = [i.mac for n in plan.nodes.values() for i in n.interfaces]
    assert len(set(macs)) == len(macs)


def test_nested_nat_routes_up_through_the_carrier() -> None:
    plan = build_plan(load(TOPOLOGIES / "cgnat.toml"), "t")
    home = plan.nodes["home_a"]
    assert ("default", "100.64.0.1") in {(r.destination, r.gateway) for r in home.routes}


def rules_for(spec: NatSpec, seed: int = 1) -> tuple[str, str]:
    plan = build_plan(pair(spec, "full-cone"), "t")
    node = plan.nodes["nat_a"]
    return router_iptables(plan, node, random.Random(seed)), router_nft(plan, node)


def test_mapping_rules() -> None:
    ipt, _ = rules_for(NatSpec())
    assert "-p udp -j SNAT --to-source 192.0.2.12\n" in ipt
    ipt, _ = rules_for(NatSpec(ports="random"))
    assert re.search(r"-p udp -j SNAT --to-source 192\.0\.2\.12:\d+-\d+/\d+", ipt)
    ipt, _ = rules_for(NatSpec(MAPPINGS[2], ports="random"))
    assert "--random-fully" in ipt
    ipt, _ = rules_for(NatSpec(MAPPINGS[2], ports="sequential"))
    ports = [
        int(p) for p in re.findall(r"--mode nth --every \d+ --packet 0 -j SNAT --to-source [\d.]+:(\d+)", ipt)
    ]
    assert len(ports) == SEQUENTIAL_RING and ports == list(range(ports[0], ports[0] + SEQUENTIAL_RING))
    ipt, _ = rules_for(NatSpec(MAPPINGS[1], ports="random"))
    ranges = re.findall(r"-d ([\d.]+)/?\d* .*-j SNAT --to-source [\d.]+:(\d+)-(\d+)", ipt)
    assert {r[0] for r in ranges} >= {"192.0.2.10", "192.0.2.11", "192.0.2.13"}  # stun twice, nat_b
    spans = sorted((int(lo), int(hi)) for _, lo, hi in ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans)), "ranges must not overlap"


def test_filtering_rules() -> None:
    _, nft = rules_for(NatSpec(filtering=FILTERINGS[0]))
    assert 'iifname "wan0" ip daddr 192.0.2.12 meta l4proto udp dnat ip to udp dport map @mappings' in nft
    _, nft = rules_for(NatSpec(filtering=FILTERINGS[1]))
    assert "udp dport . ip saddr @contacted dnat ip to udp dport map @mappings" in nft
    _, nft = rules_for(NatSpec(filtering=FILTERINGS[2]))
    assert "dnat" not in nft  # conntrack alone: only replies come back


def test_router_basics_hairpinning_and_udp_blocked() -> None:
    ipt, _ = rules_for(NatSpec())
    assert "-A INPUT -i wan0 -m conntrack --ctstate INVALID,NEW -j DROP" in ipt
    assert "-A INPUT -i lan0 -d 192.0.2.12 -j DROP" in ipt  # no hairpinning
    ipt, nft = rules_for(NatSpec(hairpinning=True, udp_blocked=True))
    assert "-A FORWARD -i lan0 -o lan0 -m conntrack --ctstate DNAT -j ACCEPT" in ipt
    assert 'iifname "lan0" ip daddr 192.0.2.12' in nft
    assert "-A FORWARD -i lan0 -o wan0 -p udp -j DROP" in ipt


def test_link_rules_apply_at_the_receiver() -> None:
    plan = build_plan(pair("full-cone", "full-cone", wan_link=LinkSpec(latency_ms=25, loss=0.25)), "t")
    stun, nat_a = plan.nodes["stun"], plan.nodes["nat_a"]
    mac = nat_a.interface("internet").mac
    assert f'iifname "eth0" ether saddr {mac} numgen random mod 1000000 < 250000 drop' in link_nft(plan, stun)
    assert f"-A PREROUTING -i eth0 -m mac --mac-source {mac} -j NFQUEUE --queue-num 0" in link_raw(plan, stun)
    assert "-A PREROUTING -i wan0 -j NFQUEUE" in link_raw(plan, nat_a)
    assert "NFQUEUE" not in link_raw(plan, plan.nodes["a"])


@given(
    mapping=st.sampled_from(MAPPINGS),
    filtering=st.sampled_from(FILTERINGS),
    ports=st.sampled_from(["preserve", "random", "sequential"]),
    hairpinning=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_every_valid_nat_renders_ports_in_range(
    mapping: str, filtering: str, ports: str, hairpinning: bool, seed: int
) -> None:
    spec = NatSpec(mapping, filtering, ports, hairpinning)
    try:
        spec.check("nat")
    except TopologyError:
        return
    ipt, nft = rules_for(spec, seed)
    for lo, hi in re.findall(r"--to-source [\d.]+:(\d+)-(\d+)", ipt):
        assert 1024 <= int(lo) <= int(hi) <= 65535
    for port in re.findall(r"--to-source [\d.]+:(\d+)\s", ipt):
        assert 1024 <= int(port) <= 65535
    assert nft.count("{") == nft.count("}")


def test_presets_are_valid() -> None:
    for name, spec in PRESETS.items():
        spec.check(name)


@pytest.mark.parametrize("path", sorted(TOPOLOGIES.glob("*.toml")), ids=lambda p: p.stem)
def test_to_dict_round_trips_through_json(path: Any) -> None:
    topology = load(path)
    assert from_dict(json.loads(json.dumps(to_dict(topology)))) == topology


def test_an_address_used_twice_on_a_network_is_refused() -> None:
    data = base()
    data["hosts"]["s"]["ipv4"] = ["192.0.2.20"]
    data["hosts"]["t"] = {"network": "internet", "ipv4": ["192.0.2.20"]}
    with pytest.raises(
        TopologyError, match=r"^hosts\.t: 192\.0\.2\.20 is already used on network 'internet'"
    ):
        build_plan(from_dict(data), "t")
    data = base()
    data["hosts"]["h"]["ipv4"] = ["10.0.0.1"]  # the gateway's
    with pytest.raises(TopologyError, match=r"^hosts\.h: 10\.0\.0\.1 is already used"):
        build_plan(from_dict(data), "t")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    ["name", "networks", "routers", "hosts", "internet", "lan", "ipv4", "ipv6", "wan", "nat", "network",
     "mapping", "filtering", "ports", "link", "loss", "latency_ms", "ipv4_count", "wan_link", "r", "h"]
)  # fmt: skip
SHAPED = st.recursive(
    JSON_VALUES,
    lambda inner: st.dictionaries(FIELDS, inner, max_size=5),
    max_leaves=30,
)


@given(data=st.dictionaries(FIELDS, SHAPED, max_size=4))
def test_any_input_gives_a_topology_or_a_topology_error(data: dict[str, Any]) -> None:
    """Fuzz: whatever the file holds, reading and planning it never fails another way."""
    with contextlib.suppress(TopologyError):
        build_plan(from_dict(data), "t")


WORDS = st.sampled_from(["internet", "lan", "192.0.2.9", "10.0.0.9", "random", *PRESETS, *MAPPINGS])
NAT_KEYS = FIELDS | st.sampled_from(["hairpinning", "mapping_timeout", "udp_blocked", "preset"])
NAT_TABLE = st.dictionaries(NAT_KEYS, JSON_VALUES | WORDS, max_size=5)


@given(
    kind=st.sampled_from(["hosts", "routers", "networks"]),
    table=st.dictionaries(FIELDS, JSON_VALUES | WORDS | NAT_TABLE | st.lists(WORDS, max_size=3), max_size=6),
)
def test_any_table_gives_a_topology_or_a_topology_error(kind: str, table: dict[str, Any]) -> None:
    """Fuzz closer to valid input: one extra host, router or network with arbitrary fields."""
    data = base()
    data[kind]["x"] = table
    with contextlib.suppress(TopologyError):
        build_plan(from_dict(data), "t")
