"""natlab/router.py: the container router's one-router plan gives the lab's own rules for a NAT preset,
and bad arguments are a one-line error (exit 1), never a traceback. Applying them in a container is
tests/integration/test_compose_nat.py."""

from __future__ import annotations

import random

import pytest
from coremesh_natlab.plan import build_plan
from coremesh_natlab.router import RouterError, main, one_router_plan
from coremesh_natlab.rules import router_iptables, router_nft
from coremesh_natlab.topology import pair

WAN, LAN = "198.51.100.0/24", "10.77.1.0/24"


@pytest.mark.parametrize("preset", ["port-restricted-cone", "symmetric", "full-cone", "restricted-cone"])
def test_a_preset_means_what_it_means_in_the_lab(preset: str) -> None:
    """The same preset gives the same rules as in the lab's namespaces, up to the addresses."""
    plan, node = one_router_plan(preset, WAN, LAN, "198.51.100.101")
    assert node.router is not None and node.interface("wan").ifname == "wan0"
    lab = build_plan(pair(preset, preset), "t")
    lab_node = lab.nodes["nat_a"]
    lab_wan = str(lab_node.interface("internet").ipv4[0].ip)

    def same(text: str, wan: str, lan: str) -> str:
        return text.replace(wan, "WAN").replace(lan, "LAN")

    ours = same(router_iptables(plan, node, random.Random(1)), "198.51.100.101", LAN)
    theirs = same(router_iptables(lab, lab_node, random.Random(1)), lab_wan, "10.1.0.0/24")
    assert ours == theirs
    assert same(router_nft(plan, node), "198.51.100.101", LAN) == same(
        router_nft(lab, lab_node), lab_wan, "10.1.0.0/24"
    )


def test_cone_keeps_the_port_and_symmetric_randomises_it() -> None:
    cone = router_iptables(
        *one_router_plan("port-restricted-cone", WAN, LAN, "198.51.100.101"), random.Random()
    )
    sym = router_iptables(*one_router_plan("symmetric", WAN, LAN, "198.51.100.103"), random.Random())
    assert "--random-fully" not in cone and "--random-fully" in sym
    for rules in (cone, sym):  # unsolicited new packets on the WAN side are dropped, as home routers do
        assert "-A INPUT -i wan0 -m conntrack --ctstate INVALID,NEW -j DROP" in rules


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("no-such-nat", WAN, LAN, "198.51.100.1"), "unknown preset"),
        (("symmetric", "198.51.100.7/24", LAN, "198.51.100.1"), "bad prefix"),
        (("symmetric", WAN, "not-a-prefix", "198.51.100.1"), "bad prefix"),
    ],
)
def test_bad_arguments_are_a_typed_error(args: tuple[str, str, str, str], message: str) -> None:
    with pytest.raises(RouterError, match=message):
        one_router_plan(*args)


def test_the_command_line_reports_bad_input_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "--via", "not-an-address", "--", "true"]) == 1
    assert main(["gateway", "--via", "10.77.1.2", "--user", "coremesh"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("router: ") for line in err), err
    assert "Traceback" not in "".join(err)
