"""Netcheck behind real NATs: three namespaces (a LAN host, a router, the "internet" with a relay
on two addresses for RFC 5780), the router's NAT programmed with iptables as MACHINE.md describes.
Each NAT behaviour configured must be the one netcheck reports, and a new public address (the
router's WAN address changes, as when an ISP renumbers) is noticed by the node on its own."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .netns import Namespace, require_root_tools

pytestmark = pytest.mark.integration
RELAY = "198.51.100.10"
RELAY_ALT = "198.51.100.11"
WAN = "198.51.100.1"
WAN_NEW = "198.51.100.2"
HOST = "10.0.0.2"


class NatTopology:
    def __init__(self) -> None:
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.host = Namespace(f"cmnat-h-{tag}")
        self.router = Namespace(f"cmnat-r-{tag}")
        self.wan = Namespace(f"cmnat-w-{tag}")
        self.all = (self.host, self.router, self.wan)

    def build(self) -> None:
        for ns in self.all:
            subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
            ns.run("ip", "link", "set", "lo", "up")
        h, r, w = self.host, self.router, self.wan
        r.run("ip", "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", h.name)
        r.run("ip", "link", "add", "wan", "type", "veth", "peer", "name", "eth0", "netns", w.name)
        h.run("ip", "addr", "add", f"{HOST}/24", "dev", "eth0")
        h.run("ip", "link", "set", "eth0", "up")
        h.run("ip", "route", "add", "default", "via", "10.0.0.1")
        r.run("ip", "addr", "add", "10.0.0.1/24", "dev", "lan")
        r.run("ip", "addr", "add", f"{WAN}/24", "dev", "wan")
        r.run("ip", "link", "set", "lan", "up")
        r.run("ip", "link", "set", "wan", "up")
        r.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for address in (RELAY, RELAY_ALT):
            w.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
        w.run("ip", "link", "set", "eth0", "up")
        # a home router drops unsolicited new packets on its WAN side
        r.iptables("-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")

    def nat(self, port: int, *masquerade: str, opened: str | None = None) -> None:
        """NAT for the host's UDP port ``port``: MASQUERADE (endpoint-independent mapping,
        address-and-port-dependent filtering), with extra options (``--random-fully``:
        endpoint-dependent mapping). ``opened`` lets packets in to that port (which MASQUERADE
        preserves) from anyone (``"endpoint-independent"``: a full cone) or from any port of an IP
        the host has sent to (``"address-dependent"``: a restricted cone; the ``recent`` match
        keeps the IPs)."""
        r, sport = self.router, ("-p", "udp", "--sport", str(port))
        r.iptables("-t", "nat", "-A", "POSTROUTING", "-o", "wan", *sport, "-j", "MASQUERADE", *masquerade)
        if opened is None:
            return
        only_known: tuple[str, ...] = ()
        if opened == "address-dependent":
            name = f"sent{port}"
            r.iptables(
                "-A", "FORWARD", "-i", "lan", *sport, "-m", "recent", "--name", name, "--set", "--rdest"
            )
            only_known = ("-m", "recent", "--name", name, "--rcheck", "--rsource")
        r.iptables(
            "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp", "--dport", str(port),
            *only_known, "-j", "DNAT", "--to-destination", f"{HOST}:{port}",
        )  # fmt: skip

    def destroy(self) -> None:
        for ns in self.all:
            ns.stop_all()
        for ns in self.all:
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


@pytest.fixture
def topology() -> Iterator[NatTopology]:
    require_root_tools()
    topo = NatTopology()
    try:
        topo.build()
        topo.wan.python(
            "-m", "coremesh_relay", "--listen", f"{RELAY}:3478", "--alt-address", RELAY_ALT,
            "--admin", "127.0.0.1:9641", "--data-dir", f"/tmp/{topo.wan.name}-relay",
        )  # fmt: skip
        topo.wan.wait_http("127.0.0.1:9641")
        yield topo
    finally:
        topo.destroy()


def spawn_node(topo: NatTopology, port: int, admin: int, *extra: str) -> str:
    address = f"127.0.0.1:{admin}"
    topo.host.python(
        "-m", "coremesh_node", "--listen", f"0.0.0.0:{port}", "--admin", address,
        "--relay", f"{RELAY}:3478", *extra,
    )  # fmt: skip
    return address


def start_node(topo: NatTopology, port: int, admin: int, *extra: str) -> str:
    address = spawn_node(topo, port, admin, *extra)
    topo.host.wait_http(address)
    return address


def netcheck(topo: NatTopology, admin: str, refresh: bool = False) -> Any:
    return topo.host.admin(admin, "GET", "/v1/netcheck" + ("?refresh=1" if refresh else ""))


def test_each_nat_behaviour_is_reported_as_configured(topology: NatTopology) -> None:
    eim, adf, apdf = "endpoint-independent", "address-dependent", "address-and-port-dependent"
    cases = [
        # (MASQUERADE options, filter opened by the router, mapping, filtering, nat type)
        ((), None, eim, apdf, "port-restricted cone"),
        (("--random-fully",), None, apdf, apdf, "symmetric"),
        ((), eim, eim, eim, "full cone"),
        ((), adf, eim, adf, "restricted cone"),
    ]
    # one host port per case, each with its own NAT rules, all measured at once
    admins = []
    for i, (options, opened, *_) in enumerate(cases):
        topology.nat(7000 + i, *options, opened=opened)
        admins.append(spawn_node(topology, 7000 + i, 7100 + i))
    for i, (options, _, mapping, filtering, name) in enumerate(cases):
        port = 7000 + i
        topology.host.wait_http(admins[i])
        report = netcheck(topology, admins[i])
        got = (report["mapping"], report["filtering"], report["nat_type"])
        assert got == (mapping, filtering, name), report
        assert report["public_ipv4"].startswith(WAN + ":"), report
        assert report["local_address"] == f"{HOST}:{port}"
        assert report["hairpinning"] is False  # plain MASQUERADE does not hairpin
        assert report["udp_blocked"] is False and report["discovery_server"] == f"{RELAY}:3478"
        if options:
            assert report["port_preserving"] is False  # --random-fully picks random ports
        else:
            assert report["port_preserving"] is True and report["public_ipv4"] == f"{WAN}:{port}"


def test_a_new_public_address_is_noticed(topology: NatTopology) -> None:
    topology.nat(7200)
    admin = start_node(topology, 7200, 7201, "--netcheck-interval", "8s")  # checks every 2 s
    first = netcheck(topology, admin)
    assert first["public_ipv4"] == f"{WAN}:7200"
    # the ISP renumbers the router: removing the old address flushes its MASQUERADE mappings
    # (in this order: deleting a primary address deletes its secondaries)
    topology.router.run("ip", "addr", "del", f"{WAN}/24", "dev", "wan")
    topology.router.run("ip", "addr", "add", f"{WAN_NEW}/24", "dev", "wan")
    deadline = time.monotonic() + 30
    report = first
    while time.monotonic() < deadline:
        report = netcheck(topology, admin)
        if report["ran_at"] != first["ran_at"] and report["trigger"] != "start":
            break
        time.sleep(0.5)
    assert report["trigger"] == "srflx-change", report
    assert report["public_ipv4"] == f"{WAN_NEW}:7200"
    assert report["nat_type"] == "port-restricted cone"
