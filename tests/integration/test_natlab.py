"""The NAT lab measured from inside: every configured NAT behaviour is what an RFC 5780 client sees.

Real namespaces (root). The project's relay runs as the STUN server (two addresses) on the emulated
internet; the project's discovery client (coremesh.stun.natdiscovery) runs in each host over a real
UDP socket (``python -m coremesh_natlab.probe``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from coremesh_natlab import Lab, Link, NatSpec, example, pair, runs
from coremesh_natlab.testing import natlab, require_root, start_stun
from coremesh_natlab.topology import Host, Network, Router, Topology, from_dict

from .daemons import wait_for

__all__ = ["natlab"]  # the fixture

pytestmark = pytest.mark.integration

EIM, AD, APD = "endpoint-independent", "address-dependent", "address-and-port-dependent"
STUN = "192.0.2.10:3478"

BEHAVIOURS: dict[str, NatSpec] = {
    "eim_eif": NatSpec(EIM, EIM, hairpinning=True),
    "eim_adf": NatSpec(EIM, AD),
    "eim_apdf": NatSpec(EIM, APD, hairpinning=True),
    "eim_rnd": NatSpec(EIM, APD, ports="random"),
    "adm_eif": NatSpec(AD, EIM, ports="random"),
    "adm_adf": NatSpec(AD, AD, ports="random", hairpinning=True),
    "adm_apdf": NatSpec(AD, APD, ports="random"),
    "apdm_eif": NatSpec(APD, EIM, ports="random"),
    "apdm_adf": NatSpec(APD, AD, ports="random"),
    "apdm_apdf": NatSpec(APD, APD, ports="random", hairpinning=True),
    "apdm_seq": NatSpec(APD, APD, ports="sequential"),
    "blocked": NatSpec(udp_blocked=True),
    "timeout": NatSpec(EIM, EIM, mapping_timeout=3),
}


def zoo() -> Topology:
    """One router and one host per behaviour, all on one internet with the STUN server; plus
    ``imp`` (a host on the internet whose link the tests impair)."""
    networks = [Network("internet", (ipaddress.IPv4Network("192.0.2.0/24"),))]
    routers, hosts = (
        [],
        [Host("stun", "internet", ipv4=("192.0.2.10", "192.0.2.11")), Host("imp", "internet")],
    )
    for index, (name, spec) in enumerate(BEHAVIOURS.items(), start=1):
        lan = f"l{index}"
        networks.append(Network(lan, (ipaddress.IPv4Network(f"10.{index}.0.0/24"),)))
        routers.append(Router(router_of(name), "internet", lan, nat=spec))
        hosts.append(Host(f"h_{name}"[:12], lan))
    return Topology("zoo", tuple(networks), tuple(routers), tuple(hosts))


def host_of(name: str) -> str:
    return f"h_{name}"[:12]


def router_of(name: str) -> str:
    return f"r{list(BEHAVIOURS).index(name) + 1}"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab(zoo(), seed=7) as running:
        start_stun(running.host("stun"))
        yield running


@pytest.fixture(scope="module")
def measured(lab: Lab) -> dict[str, dict[str, object]]:
    """The discovery client's verdict in every host, run in parallel."""
    procs = {
        name: lab.host(host_of(name)).python(
            ["-m", "coremesh_natlab.probe", STUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name in BEHAVIOURS
        if name != "timeout"
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{name}: {err[-800:]}"
        results[name] = json.loads(out)
    return results


def expected(name: str) -> tuple[str, str]:
    """What RFC 5780 measures for a configured NAT. One exception: with address-dependent mapping
    and endpoint-independent filtering, filtering test II's answer (from the alternate address and
    port) opens a session through the first mapping, so mapping test III, sent to that same address
    and port, reuses it, and the client concludes address-and-port-dependent mapping. A NAT that
    keeps sessions behaves the same; docs/natlab.md says so."""
    spec = BEHAVIOURS[name]
    if (spec.mapping, spec.filtering) == (AD, EIM):
        return APD, EIM
    return spec.mapping, spec.filtering


def test_measured_mapping_and_filtering_equal_the_configured_ones(
    measured: dict[str, dict[str, object]],
) -> None:
    wrong = {
        name: (result["mapping"], result["filtering"])
        for name, result in measured.items()
        if name != "blocked" and (result["mapping"], result["filtering"]) != expected(name)
    }
    assert not wrong, f"measured (mapping, filtering) differ from the configuration: {wrong}"


def test_hairpinning_is_measured_as_configured(measured: dict[str, dict[str, object]]) -> None:
    seen = {name: result["hairpinning"] for name, result in measured.items() if name != "blocked"}
    assert seen == {name: BEHAVIOURS[name].hairpinning for name in seen}


def test_public_address_is_the_routers_wan_and_ports_follow_the_allocation(
    lab: Lab, measured: dict[str, dict[str, object]]
) -> None:
    for name, result in measured.items():
        if name == "blocked":
            continue
        public, local = str(result["public_address"]), str(result["local"])
        assert public.rsplit(":", 1)[0] == lab.public_ipv4(host_of(name)), name
        preserved = public.rsplit(":", 1)[1] == local.rsplit(":", 1)[1]
        assert preserved == (BEHAVIOURS[name].ports == "preserve"), f"{name}: {local} -> {public}"


def test_udp_blocked_gets_no_answer(measured: dict[str, dict[str, object]]) -> None:
    assert measured["blocked"]["public_address"] is None
    assert measured["blocked"]["mapping"] == "unknown"


def test_sequential_ports_step_by_one_per_new_mapping(lab: Lab) -> None:
    out = lab.host(host_of("apdm_seq")).run(
        [sys.executable, "-m", "coremesh_natlab.probe", "--mapped", "5", STUN]
    )
    ports = [int(a.rsplit(":", 1)[1]) for a in json.loads(out.stdout)]
    assert [b - a for a, b in itertools.pairwise(ports)] == [1, 1, 1, 1], ports
    out = lab.host(host_of("apdm_apdf")).run(
        [sys.executable, "-m", "coremesh_natlab.probe", "--mapped", "5", STUN]
    )
    ports = [int(a.rsplit(":", 1)[1]) for a in json.loads(out.stdout)]
    assert [b - a for a, b in itertools.pairwise(ports)] != [1, 1, 1, 1], ports  # random


# Learns its public address from STUN and prints every datagram that comes in. A line on stdin asks
# STUN again: its answer marks the end (what was sent to the old mapping before has arrived by then).
LISTENER = """
import os, select, socket, sys
from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode
from coremesh.stun.attributes import Attr
STUN = ("192.0.2.10", 3478)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0))
s.sendto(encode(StunMessage(Method.BINDING, StunClass.REQUEST, os.urandom(12))), STUN)
print(decode(s.recv(2048)).get_address(Attr.XOR_MAPPED_ADDRESS), flush=True)
asked = False
while ready := select.select([s, sys.stdin], [], [], 30)[0]:
    if sys.stdin in ready and not asked:
        sys.stdin.readline()
        s.sendto(encode(StunMessage(Method.BINDING, StunClass.REQUEST, os.urandom(12))), STUN)
        asked = True
    if s in ready:
        data, source = s.recvfrom(2048)
        if asked and source == STUN:
            print("end", flush=True)
            break
        print(data.decode(errors="replace"), flush=True)
"""
SENDER = "import socket,sys;s=socket.socket(2,2);s.bind(('192.0.2.11',5000));h,p=sys.argv[1].rsplit(':',1);"
SENDER += "s.sendto(sys.argv[2].encode(),(h,int(p)))"


def test_a_mapping_expires_after_its_timeout(lab: Lab) -> None:
    host, router = lab.host(host_of("timeout")), lab.router(router_of("timeout"))
    assert router.run(["cat", "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"]).stdout.strip() == "3"
    listener = host.python(["-c", LISTENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert listener.stdin is not None and listener.stdout is not None
    mapped = listener.stdout.readline().strip()
    stun = lab.host("stun")
    stun.run([sys.executable, "-c", SENDER, mapped, "early"])  # endpoint-independent filtering: let in
    assert listener.stdout.readline().strip() == "early"
    host_ip = host.ipv4[0]

    def mapping_gone() -> bool:
        """Neither the NAT's mapping table nor its connection tracking knows the host any more."""
        mappings = router.run(["nft", "list", "map", "ip", "natlab_nat", "mappings"]).stdout
        tracked = router.run(["conntrack", "-L", "-p", "udp"], check=False).stdout
        return host_ip not in mappings and host_ip not in tracked

    wait_for(mapping_gone, 15, "the idle mapping to expire (3 s timeout)")
    stun.run([sys.executable, "-c", SENDER, mapped, "late"])
    listener.stdin.write("\n")  # ask STUN again: its answer comes after "late" (if that got in)
    listener.stdin.flush()
    out, _ = listener.communicate(timeout=30)
    assert out.split() == ["end"], out  # "late" found no mapping


@pytest.fixture
def imp(lab: Lab) -> Iterator[Link]:
    """The link of host ``imp`` on the module's lab, left unimpaired (no delay, no loss, not cut from
    the STUN server) after the test, also when it fails: the next tests share the lab."""
    link = lab.link("imp")
    try:
        yield link
    finally:
        link.set(latency_ms=0, jitter_ms=0, loss=0)
        lab.restore("imp", "stun")


def impairment_rules(lab: Lab) -> dict[str, str]:
    """Where the lab loads link impairments, in every namespace: the raw tables (packets queued to a
    delay element) and the ``natlab_link`` table (loss)."""
    dump = "iptables -t raw -S; ip6tables -t raw -S; nft list table inet natlab_link 2>/dev/null || true"
    return {name: node.run(["sh", "-c", dump]).stdout for name, node in lab.nodes.items()}


def test_delay_is_applied_to_a_link_and_removed_again(lab: Lab, imp: Link) -> None:
    host = lab.host("imp")
    unimpaired = impairment_rules(lab)
    imp.set(latency_ms=30)
    result = json.loads(host.run([sys.executable, "-m", "coremesh_natlab.rtt", STUN, "--count", "5"]).stdout)
    assert result["lost"] == 0 and min(result["rtt_ms"]) >= 60, result  # 30 ms each way
    assert impairment_rules(lab) != unimpaired  # packets go through the delay element
    imp.set(latency_ms=60)  # the running element re-reads its configuration (acknowledged)
    result = json.loads(host.run([sys.executable, "-m", "coremesh_natlab.rtt", STUN, "--count", "5"]).stdout)
    assert result["lost"] == 0 and min(result["rtt_ms"]) >= 120, result  # at once, from the first ping
    imp.set(latency_ms=0)
    assert impairment_rules(lab) == unimpaired  # ...and no longer (the RTT: benchmarks/natlab_setup.py)
    result = json.loads(host.run([sys.executable, "-m", "coremesh_natlab.rtt", STUN, "--count", "5"]).stdout)
    assert result["lost"] == 0, result


def test_loss_is_applied_to_a_link_and_removed_again(lab: Lab, imp: Link) -> None:
    host = lab.host("imp")
    imp.set(loss=0.3)
    argv = [sys.executable, "-m", "coremesh_natlab.rtt", STUN, "--count", "30", "--timeout", "0.5"]
    lossy = json.loads(host.run(argv).stdout)
    # 1 - 0.7 * 0.7 = 51 % of round trips lost on average (15.3 of 30, standard deviation 2.7)
    assert 3 < lossy["lost"] < 30, lossy
    imp.set(loss=0)
    argv = [sys.executable, "-m", "coremesh_natlab.rtt", STUN, "--count", "30", "--timeout", "5"]
    assert json.loads(host.run(argv, timeout=200).stdout)["lost"] == 0


def test_cut_drops_everything_between_two_nodes_until_restored(lab: Lab, imp: Link) -> None:
    host = lab.host("imp")
    argv = [sys.executable, "-m", "coremesh_natlab.rtt", STUN, "--count", "3", "--timeout", "0.3"]
    lab.cut("imp", "stun")
    assert json.loads(host.run(argv).stdout)["lost"] == 3
    lab.restore("imp", "stun")
    argv = [sys.executable, "-m", "coremesh_natlab.rtt", STUN, "--count", "3", "--timeout", "5"]
    assert json.loads(host.run(argv).stdout)["lost"] == 0


PUNCHER = """
import os, select, socket, sys, time
from coremesh.stun.attributes import Attr
from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0))
req = StunMessage(Method.BINDING, StunClass.REQUEST, os.urandom(12))
s.sendto(encode(req), ("192.0.2.10", 3478))
print(decode(s.recv(2048)).get_address(Attr.XOR_MAPPED_ADDRESS), flush=True)
host, port = sys.stdin.readline().strip().rsplit(":", 1)
end, got = time.monotonic() + 2.0, False
while time.monotonic() < end:
    s.sendto(b"punch", (host, int(port)))
    if select.select([s], [], [], 0.05)[0] and s.recv(100) == b"punch":
        got = True
print("direct" if got else "nothing", flush=True)
"""


def punch(lab: Lab, one: str, other: str) -> tuple[str, str]:
    """Both hosts learn their public address from STUN, swap them, and send to each other."""
    procs = [
        lab.host(host_of(name)).python(
            ["-c", PUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for name in (one, other)
    ]
    mapped = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
    for proc, peer in zip(procs, reversed(mapped), strict=True):
        proc.stdin.write(peer + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
    first, second = (p.communicate(timeout=10)[0].split()[-1] for p in procs)
    return first, second


def test_hole_punching_works_between_cones_and_not_against_a_symmetric_nat(lab: Lab) -> None:
    """The lab is realistic where it matters: two cone NATs (even port-restricted) let a
    simultaneous punch through; a symmetric NAT facing a port-restricted cone does not."""
    assert punch(lab, "eim_apdf", "eim_adf") == ("direct", "direct")
    assert punch(lab, "apdm_apdf", "eim_apdf") == ("nothing", "nothing")


def test_rebind_gives_a_host_a_new_public_port(lab: Lab) -> None:
    host = lab.host(host_of("eim_rnd"))
    code = (
        "import os, socket, sys\n"
        "from coremesh.stun.attributes import Attr\n"
        "from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 0)); s.settimeout(2)\n"
        "for line in sys.stdin:\n"
        "    req = StunMessage(Method.BINDING, StunClass.REQUEST, os.urandom(12))\n"
        "    s.sendto(encode(req), ('192.0.2.10', 3478))\n"
        "    print(decode(s.recv(2048)).get_address(Attr.XOR_MAPPED_ADDRESS), flush=True)\n"
    )
    proc = host.python(["-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    before = proc.stdout.readline().strip()
    lab.rebind(router_of("eim_rnd"))
    proc.stdin.write("\n")
    proc.stdin.close()
    after = proc.stdout.readline().strip()
    proc.wait(timeout=10)
    assert before.rsplit(":", 1)[0] == after.rsplit(":", 1)[0] and before != after, (before, after)


# -- other topologies -------------------------------------------------------------------------


def test_nested_nat_shows_the_carrier_grade_nats_address(natlab: Callable[..., Lab]) -> None:
    lab = natlab(example("cgnat"))
    start_stun(lab.host("stun"))
    out = lab.host("a").run([sys.executable, "-m", "coremesh_natlab.probe", STUN]).stdout
    result = json.loads(out)
    assert result["public_address"].rsplit(":", 1)[0] == lab.public_ipv4("a") == lab.router("cgn").ipv4[-1]
    assert (result["mapping"], result["filtering"]) == (EIM, APD)  # home: cone; CGN: cone (random ports)


# Prints every datagram that comes in; a line on stdin makes it send to argv[1] port 7000 (opening
# the firewall for that address and port) and print "sent"; a datagram "end" ends it.
LISTENER6 = """
import select, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", 7000))
print("ready", flush=True)
while ready := select.select([s, sys.stdin], [], [], 30)[0]:
    if sys.stdin in ready and sys.stdin.readline():
        s.sendto(b"hello", (sys.argv[1], 7000))
        print("sent", flush=True)
    if s in ready:
        data = s.recv(100).decode(errors="replace")
        print(data, flush=True)
        if data == "end":
            break
"""
SENDER6 = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind((sys.argv[5], int(sys.argv[3])))
s.sendto(sys.argv[4].encode(), (sys.argv[1], int(sys.argv[2])))
"""


def test_ipv6_firewall_drops_unsolicited_and_passes_replies(natlab: Callable[..., Lab]) -> None:
    """Stateful firewall, no NAT (address-and-port-dependent filtering): only what answers a's
    own packets (same remote address and port) comes in."""
    lab = natlab(example("dual-stack"))
    a, stun = lab.host("a"), lab.host("stun")
    target, stun_addr = a.ipv6[0], stun.ipv6[0]
    listener = a.python(
        ["-c", LISTENER6, stun_addr], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert listener.stdin is not None and listener.stdout is not None
    assert listener.stdout.readline().strip() == "ready"
    stun.run([sys.executable, "-c", SENDER6, target, "7000", "7002", "unsolicited", stun_addr])
    listener.stdin.write("\n")  # now a sends to stun:7000
    listener.stdin.flush()
    before: list[str] = []
    while (line := listener.stdout.readline().strip()) not in ("sent", ""):
        before.append(line)
    assert line == "sent" and before == [], before  # the unsolicited packet was dropped
    stun.run([sys.executable, "-c", SENDER6, target, "7000", "7000", "reply", stun_addr])
    stun.run([sys.executable, "-c", SENDER6, target, "7000", "7001", "other-port", stun_addr])
    stun.run([sys.executable, "-c", SENDER6, target, "7000", "7000", "end", stun_addr])  # after the others
    out, _ = listener.communicate(timeout=30)
    assert out.split() == ["reply", "end"], out
    # Behind two such firewalls (and two symmetric IPv4 NATs), a simultaneous IPv6 punch goes direct.
    b = lab.host("b")
    punchers = [
        here.python(["-c", PUNCHER6, there.ipv6[0]], stdout=subprocess.PIPE, text=True)
        for here, there in ((a, b), (b, a))
    ]
    assert [p.communicate(timeout=10)[0].strip() for p in punchers] == ["direct", "direct"]


PUNCHER6 = """
import select, socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", 7100))
end, got = time.monotonic() + 1.5, False
while time.monotonic() < end:
    s.sendto(b"punch", (sys.argv[1], 7100))
    if select.select([s], [], [], 0.05)[0] and s.recv(100) == b"punch":
        got = True
print("direct" if got else "nothing")
"""


def test_ipv6_filtering_is_measured_as_configured(natlab: Callable[..., Lab]) -> None:
    topology = from_dict(
        {
            "name": "v6",
            "networks": {
                "internet": {"ipv4": "192.0.2.0/24", "ipv6": "2001:db8::/64"},
                "lan_a": {"ipv6": "2001:db8:1::/64"},
                "lan_b": {"ipv6": "2001:db8:2::/64"},
            },
            "routers": {
                "fw_a": {"wan": "internet", "lan": "lan_a", "ipv6_filtering": EIM},
                "fw_b": {"wan": "internet", "lan": "lan_b"},
            },
            "hosts": {
                "stun": {"network": "internet", "ipv6": ["2001:db8::10", "2001:db8::11"], "ipv4_count": 0},
                "a": {"network": "lan_a"},
                "b": {"network": "lan_b"},
            },
        }
    )
    lab = natlab(topology)
    start_stun(lab.host("stun"), "2001:db8::10", "2001:db8::11")
    verdicts = {}
    for name in ("a", "b"):
        out = (
            lab.host(name).run([sys.executable, "-m", "coremesh_natlab.probe", "[2001:db8::10]:3478"]).stdout
        )
        result = json.loads(out)
        verdicts[name] = (result["mapping"], result["filtering"])
    assert verdicts == {"a": ("no-nat", EIM), "b": ("no-nat", APD)}


# -- cleanup ------------------------------------------------------------------------------------


def test_nothing_is_left_after_the_lab_even_on_an_exception() -> None:
    require_root()
    topology = example("port-restricted-cone")
    started: dict[int, str | None] = {}
    with pytest.raises(RuntimeError, match="boom"), Lab(topology) as lab:
        prefix = lab.prefix
        lab.host("a").popen(["sleep", "60"])
        lab.link("nat_a").set(latency_ms=5)  # delay elements run too
        for netns in lab.plan.namespaces:
            started |= {pid: runs.process_start(pid) for pid in runs.namespace_pids(netns)}
        raise RuntimeError("boom")
    assert len(started) >= 3  # sleep and at least two delay elements
    assert all(runs.process_start(pid) != start for pid, start in started.items())  # all gone
    assert not [ns for ns in runs.list_namespaces() if ns.startswith(prefix + "-")]
    assert runs.read(prefix) is None
    assert not runs.state_path(prefix).exists() and not (runs.STATE_DIR / prefix).exists()


def test_cleanup_removes_the_run_of_a_killed_process() -> None:
    require_root()
    code = (
        "import sys, time\n"
        "from coremesh_natlab import Lab, example\n"
        "lab = Lab(example('full-cone'), prefix=sys.argv[1]); lab.up()\n"
        "lab.link('nat_a').set(latency_ms=5)\n"
        "print('up', flush=True); time.sleep(60)\n"
    )
    prefix = f"cmnlkill{time.monotonic_ns() % 10_000:04d}"
    proc = subprocess.Popen([sys.executable, "-c", code, prefix], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        proc.kill()
        proc.wait()
        assert [ns for ns in runs.list_namespaces() if ns.startswith(prefix + "-")]
        assert runs.read(prefix) is not None and runs.read(prefix).stale  # type: ignore[union-attr]
        removed = runs.cleanup()
        assert prefix in removed
        assert not [ns for ns in runs.list_namespaces() if ns.startswith(prefix + "-")]
        assert runs.read(prefix) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        runs.destroy(prefix)


def test_topology_errors_name_the_field() -> None:
    bad = {
        "networks": {"internet": {"ipv4": "192.0.2.0/24"}, "lan": {"ipv4": "10.0.0.0/24"}},
        "routers": {"r": {"wan": "internet", "lan": "lan", "nat": {"mapping": "cone"}}},
    }
    with pytest.raises(ValueError, match=r"^routers\.r\.nat\.mapping: expected one of"):
        from_dict(bad)


def test_cli_up_list_exec_cleanup_down(tmp_path: Path) -> None:
    require_root()
    cli = [sys.executable, "-m", "coremesh_natlab.cli"]
    prefix = f"cmnlcli{time.monotonic_ns() % 10_000:04d}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)

    try:
        up = run("up", "full-cone", "--prefix", prefix)
        assert up.returncode == 0, up.stderr
        assert f"netns {prefix}-a: eth0 10.1.0.10/24" in up.stdout and "192.0.2.11" in up.stdout
        listing = run("list")
        assert f"{prefix}  full-cone  detached" in listing.stdout
        inside = run("exec", "a", "--prefix", prefix, "--", "ip", "-br", "addr")
        assert "10.1.0.10/24" in inside.stdout, inside.stderr
        assert prefix not in run("cleanup").stdout  # left up on purpose: not stale
        # Links and cuts of a run that another process brought up.
        assert run("link", "--prefix", prefix, "a", "--latency-ms", "20", "--loss", "0.1").returncode == 0
        raw = run("exec", "--prefix", prefix, "nat_a", "--", "iptables", "-t", "raw", "-S").stdout
        assert "NFQUEUE" in raw and "--mac-source" in raw  # a's link, outbound, delayed at its router
        assert run("link", "--prefix", prefix, "nobody").returncode == 2
        assert run("cut", "--prefix", prefix, "a", "b").returncode == 0
        cut = ["exec", "--prefix", prefix, "a", "--", "nft", "list", "set", "inet", "natlab_cut", "cut4"]
        assert "192.0.2.13" in run(*cut).stdout  # b's NAT
        assert run("restore", "--prefix", prefix, "a", "b").returncode == 0
        assert "192.0.2.13" not in run(*cut).stdout
        mine = [ns for ns in runs.list_namespaces() if ns.startswith(prefix + "-")]
        inside = {pid: runs.process_start(pid) for ns in mine for pid in runs.namespace_pids(ns)}
        assert inside  # the delay elements `link` started
        down = run("down", prefix)
        assert down.returncode == 0 and f"removed {prefix}" in down.stdout
        assert not [ns for ns in runs.list_namespaces() if ns.startswith(prefix + "-")]
        assert all(runs.process_start(pid) != start for pid, start in inside.items())
        assert run("down", prefix).returncode == 1
    finally:
        runs.destroy(prefix)
    bad = tmp_path / "bad.toml"
    bad.write_text('[networks.internet]\nipv4 = "192.0.2.0/24"\n[hosts.h]\nnetwork = "nowhere"\n')
    show = run("show", str(bad))
    assert show.returncode == 2 and "hosts.h.network: no network named 'nowhere'" in show.stderr


def test_a_lab_can_be_built_from_a_coroutine() -> None:
    """pyroute2's synchronous API refuses to run inside an event loop; the lab builds in a thread."""
    require_root()

    async def body() -> str:
        with Lab(pair("full-cone", None)) as lab:
            return lab.host("a").run(["ip", "-br", "addr", "show", "eth0"]).stdout

    assert "10.1.0.10/24" in asyncio.run(body())
