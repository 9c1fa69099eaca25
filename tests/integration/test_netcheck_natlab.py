"""Netcheck behind every NAT of the NAT lab (coremesh_natlab): one topology with a router of each
kind, a host behind each running a real `coremesh-node`, and a real `coremesh-relay` with an RFC 5780
alternate address on the emulated internet. What each node reports must be what its router was
configured to do."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from coremesh_natlab import Lab, from_dict
from coremesh_natlab.testing import natlab  # noqa: F401  (the fixture)

from .netns import Namespace

pytestmark = pytest.mark.integration
EIM, ADF, APDF = "endpoint-independent", "address-dependent", "address-and-port-dependent"
HAIRPIN_CONE = {"mapping": EIM, "filtering": APDF, "hairpinning": True}

# host -> (router's NAT: a preset or a table, or None for a host on the internet itself;
#          expected mapping, filtering, nat_type, hairpinning)
CASES: dict[str, tuple[Any, str, str, str, bool | None]] = {
    "open": (None, "no-nat", EIM, "no NAT (open)", None),
    "fullcone": ("full-cone", EIM, EIM, "full cone", False),
    "restricted": ("restricted-cone", EIM, ADF, "restricted cone", False),
    "portrestr": ("port-restricted-cone", EIM, APDF, "port-restricted cone", False),
    "hairpin": (HAIRPIN_CONE, EIM, APDF, "port-restricted cone", True),
    "addrdep": ("address-dependent", ADF, ADF, "symmetric (random)", False),
    "symmetric": ("symmetric", APDF, APDF, "symmetric (random)", False),
    "sequential": ("symmetric-sequential", APDF, APDF, "symmetric (sequential)", False),
}


def topology() -> Any:
    data: dict[str, Any] = {
        "name": "netcheck",
        "networks": {"internet": {"ipv4": ["192.0.2.0/24", "198.51.100.0/24"]}},
        "routers": {},
        "hosts": {"stun": {"network": "internet", "ipv4": ["192.0.2.10", "192.0.2.11"]}},
    }
    for i, (host, (nat, *_)) in enumerate([*CASES.items(), ("blocked", ("udp-blocked",))]):
        if nat is None:
            data["hosts"][host] = {"network": "internet"}
            continue
        data["networks"][f"lan{i}"] = {"ipv4": f"10.{i}.0.0/24"}
        data["routers"][f"r{i}"] = {"wan": "internet", "lan": f"lan{i}", "nat": nat}
        data["hosts"][host] = {"network": f"lan{i}"}
    return from_dict(data)


def test_netcheck_reports_what_each_nat_does(natlab: Callable[..., Lab]) -> None:  # noqa: F811
    lab = natlab(topology())
    stun = lab.host("stun")
    relay = ["-m", "coremesh_relay", "--listen", "192.0.2.10:3478", "--alt-address", "192.0.2.11"]
    relay += ["--keyed-listen", "192.0.2.10:8443", "--admin", "127.0.0.1:9641"]
    relay += ["--data-dir", str(lab.workdir / "relay")]
    stun.python(relay, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    Namespace(stun.netns).wait_http("127.0.0.1:9641")
    hosts = [*CASES, "blocked"]
    for host in hosts:  # every node at once: they measure in parallel
        keyed = ["--keyed-relay", "tcp://192.0.2.10:8443"] if host == "blocked" else []
        lab.host(host).python(
            ["-m", "coremesh_node", "--listen", "0.0.0.0:7946", "--admin", "127.0.0.1:7947",
             "--relay", "192.0.2.10:3478", *keyed],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    reports = {}
    for host in hosts:
        ns = Namespace(lab.host(host).netns)
        ns.wait_http("127.0.0.1:7947")
        reports[host] = ns.admin("127.0.0.1:7947", "GET", "/v1/netcheck")
    table = "\n".join(
        f"{h:<11} {r['nat_type']:<22} {r['mapping']:<27} {r['filtering']:<27} hairpin={r['hairpinning']}"
        f" public={r['public_ipv4']} {r['duration_ms']:.0f} ms"
        for h, r in reports.items()
    )
    print("\n" + table)
    for host, (_, mapping, filtering, name, hairpinning) in CASES.items():
        report = reports[host]
        got = (report["mapping"], report["filtering"], report["nat_type"], report["hairpinning"])
        assert got == (mapping, filtering, name, hairpinning), f"{host}: {report}\n{table}"
        node = lab.host(host)
        assert report["public_ipv4"].split(":")[0] == node.public_ipv4, report
        assert report["local_address"] == f"{node.address}:7946"
        assert report["udp_blocked"] is False
        preserving = host in ("open", "fullcone", "restricted", "portrestr", "hairpin")
        assert report["port_preserving"] is preserving
        if preserving:
            assert report["port_allocation"] == "preserve"
    blocked = reports["blocked"]
    assert blocked["udp_blocked"] is True and blocked["nat_type"] == "UDP blocked", blocked
    assert [r["kind"] for r in blocked["relays"]] == ["stun", "stun-tcp", "keyed"]
    assert blocked["relays"][0]["error"] == "no answer"
    assert blocked["relays"][1]["rtt_ms"] > 0 and blocked["relays"][2]["rtt_ms"] > 0
