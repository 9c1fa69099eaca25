"""Netcheck notices a new public address by itself: three namespaces (a LAN host, a router, the
"internet" with a relay on two addresses for RFC 5780), the router's NAT programmed with iptables as
MACHINE.md describes; the router's WAN address changes under a running node, as when an ISP
renumbers, then the host's own address does. (Every NAT kind against netcheck: test_netcheck_natlab.py.)"""

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
HOST_NEW = "10.0.0.3"


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

    def nat(self, port: int, host: str = HOST) -> None:
        """MASQUERADE the host's UDP port ``port`` and forward that port back to ``host`` from
        anyone: a full cone (its filtering tests are answered at once, so each run is short)."""
        r = self.router
        r.run("iptables", "-t", "nat", "-F")
        sport = ("-p", "udp", "--sport", str(port))
        r.iptables("-t", "nat", "-A", "POSTROUTING", "-o", "wan", *sport, "-j", "MASQUERADE")
        r.iptables(
            "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp", "--dport", str(port),
            "-j", "DNAT", "--to-destination", f"{host}:{port}",
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


def start_node(topo: NatTopology, port: int, admin: int, *extra: str) -> str:
    address = f"127.0.0.1:{admin}"
    topo.host.python(
        "-m", "coremesh_node", "--listen", f"0.0.0.0:{port}", "--admin", address,
        "--relay", f"{RELAY}:3478", *extra,
    )  # fmt: skip
    topo.host.wait_http(address)
    return address


def netcheck(topo: NatTopology, admin: str, refresh: bool = False) -> Any:
    return topo.host.admin(admin, "GET", "/v1/netcheck" + ("?refresh=1" if refresh else ""))


def test_a_new_public_address_is_noticed(topology: NatTopology) -> None:
    topology.nat(7200)
    admin = start_node(topology, 7200, 7201, "--netcheck-interval", "8s")  # checks every 2 s
    first = netcheck(topology, admin)
    assert first["public_ipv4"] == f"{WAN}:7200"
    # the ISP renumbers the router: removing the old address flushes its MASQUERADE mappings
    # (in this order: deleting a primary address deletes its secondaries)
    topology.router.run("ip", "addr", "del", f"{WAN}/24", "dev", "wan")
    topology.router.run("ip", "addr", "add", f"{WAN_NEW}/24", "dev", "wan")
    report = next_run(topology, admin, first)
    assert report["trigger"] == "srflx-change", report
    assert report["public_ipv4"] == f"{WAN_NEW}:7200"
    assert report["nat_type"] == "full cone"
    # the host moves to another address on its LAN (a new DHCP lease)
    host = topology.host
    host.run("ip", "addr", "del", f"{HOST}/24", "dev", "eth0")
    host.run("ip", "addr", "add", f"{HOST_NEW}/24", "dev", "eth0")
    host.run("ip", "route", "replace", "default", "via", "10.0.0.1")
    topology.nat(7200, HOST_NEW)
    moved = next_run(topology, admin, report)
    assert moved["trigger"] == "local-address-change", moved
    assert moved["local_address"] == f"{HOST_NEW}:7200"


def next_run(topo: NatTopology, admin: str, after: Any) -> Any:
    """The first report of a run started after ``after``'s (waits up to 30 s)."""
    deadline = time.monotonic() + 30
    report = after
    while time.monotonic() < deadline:
        report = netcheck(topo, admin)
        if report["ran_at"] > after["ran_at"]:
            break
        time.sleep(0.3)
    return report
