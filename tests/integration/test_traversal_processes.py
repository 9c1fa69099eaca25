"""NAT traversal between real `coremesh-node` processes, with a real `coremesh-relay`, in a private
network namespace where iptables cuts and restores the direct path.

The upgrade test starts with the direct path blocked (the connection goes through the relay) and
lifts the block: the nodes find the direct path. The fault test cuts the direct path in the middle
of a transfer: the connection moves to the relay, and back when the path returns, and the receiver
gets every message exactly once, in order.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest

from .netns import Namespace, free_ports, private_namespace

FAST = ["--path-dead-after", "1s", "--traversal-retry-max", "2s", "--connect-timeout", "3s"]

# Sends COUNT numbered messages through the node's admin API, PACE seconds apart, in one process.
DRIVER = """
import json, sys, time, urllib.request
admin, peer, count, pace = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
for i in range(count):
    body = json.dumps({"peer": peer, "data": "m%05d" % i, "timeout": 30}).encode()
    req = urllib.request.Request("http://" + admin + "/v1/send", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=40).read()
    time.sleep(pace)
print("done")
"""


class Mesh:
    def __init__(self, ns: Namespace, tmp: str, node_args: list[str]) -> None:
        self.ns = ns
        relay_port, relay_admin, keyed_port, self.pa, self.pb, aa, ab = free_ports(ns, 7)
        ns.python(
            "-m", "coremesh_relay", "--listen", f"127.0.0.1:{relay_port}",
            "--admin", f"127.0.0.1:{relay_admin}", "--keyed-listen", f"127.0.0.1:{keyed_port}",
            "--allow-loopback-peers", "--user", "alice:s3cret",
            log_path=f"{tmp}/relay.log",
        )  # fmt: skip
        ns.wait_http(f"127.0.0.1:{relay_admin}")
        args = [
            a.replace("RELAY", f"127.0.0.1:{relay_port}").replace("KEYED", f"tcp://127.0.0.1:{keyed_port}")
            for a in node_args
        ]
        for name, port, admin in (("a", self.pa, aa), ("b", self.pb, ab)):
            ns.python(
                "-m", "coremesh_node", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{tmp}/{name}",
                "--admin", f"127.0.0.1:{admin}", *FAST, *args, log_path=f"{tmp}/{name}.log",
            )  # fmt: skip
        self.admin_a, self.admin_b = f"127.0.0.1:{aa}", f"127.0.0.1:{ab}"
        for admin in (self.admin_a, self.admin_b):
            ns.wait_http(admin)
        self.a_id = ns.admin(self.admin_a, "GET", "/v1/status")["peer_id"]
        self.b_id = ns.admin(self.admin_b, "GET", "/v1/status")["peer_id"]
        self.b_addr = f"127.0.0.1:{self.pb}"

    def _rules(self, action: str) -> None:
        for src, dst in ((self.pa, self.pb), (self.pb, self.pa)):
            rule = ["INPUT", "-p", "udp", "--sport", str(src), "--dport", str(dst), "-j", "DROP"]
            self.ns.iptables(action, *rule)

    def cut(self) -> None:
        """Drop the direct path between the nodes, both directions (the relay still works)."""
        self._rules("-A")

    def restore(self) -> None:
        self._rules("-D")

    def via(self, admin: str, peer: str) -> tuple[str | None, str | None]:
        peers = self.ns.admin(admin, "GET", "/v1/peers")["peers"]
        for p in peers:
            if p["peer_id"] == peer:
                return p.get("via"), p.get("reason")
        return None, None

    def both(self) -> tuple[str | None, str | None]:
        return self.via(self.admin_a, self.b_id)[0], self.via(self.admin_b, self.a_id)[0]

    def checks_failed(self) -> bool:
        """Both sides ran a whole round of direct checks and none was answered (their reason says so)."""
        reasons = (self.via(self.admin_a, self.b_id)[1], self.via(self.admin_b, self.a_id)[1])
        return all(r is not None and "direct checks failed" in r for r in reasons)

    def received(self) -> int:
        """Messages B's inbox has taken in so far (a counter: the test reads the inbox only at the end)."""
        return int(self.ns.admin(self.admin_b, "GET", "/v1/status")["inbox"]["received"])


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("node_args", "relayed"),
    [(["--relay", "alice:s3cret@RELAY"], "turn"), (["--keyed-relay", "KEYED"], "keyed")],
    ids=["turn", "keyed-relay"],
)
def test_a_relayed_connection_upgrades_to_direct_when_the_path_opens(
    node_args: list[str], relayed: str
) -> None:
    with private_namespace("cmtrav") as ns, tempfile.TemporaryDirectory() as tmp:
        mesh = Mesh(ns, tmp, node_args)
        mesh.cut()
        connected = ns.admin(mesh.admin_a, "POST", "/v1/connect", {"peer": f"{mesh.b_id}@{mesh.b_addr}"})
        assert connected["path"] == "relay", connected
        # Still relayed once a whole round of direct checks has run against the cut path (and failed).
        wait(mesh.checks_failed, 15, "a failed round of direct checks on both sides")
        ping = ns.admin(mesh.admin_a, "POST", "/v1/ping", {"peer": mesh.b_id})
        assert ping["path"] == "relay" and ping["via"] == relayed, ping
        assert ping["reason"], ping  # says why it is relayed
        mesh.restore()
        wait(lambda: mesh.both() == ("direct", "direct"), 15, "both sides on the direct path")
        ping = ns.admin(mesh.admin_a, "POST", "/v1/ping", {"peer": mesh.b_id})
        assert ping["path"] == "direct" and ping["reason"] is None, ping
        ns.admin(mesh.admin_a, "POST", "/v1/send", {"peer": mesh.b_id, "data": "direct now"})
        got = ns.admin(mesh.admin_b, "GET", "/v1/messages?count=1&timeout=10")["messages"]
        assert [m["data"] for m in got] == ["direct now"]


def test_fault_direct_path_cut_mid_transfer_moves_to_the_relay_and_back_without_loss() -> None:
    count = 400
    with private_namespace("cmtrav") as ns, tempfile.TemporaryDirectory() as tmp:
        mesh = Mesh(ns, tmp, ["--keyed-relay", "KEYED"])
        ns.admin(mesh.admin_a, "POST", "/v1/connect", {"peer": f"{mesh.b_id}@{mesh.b_addr}"})
        assert mesh.both() == ("direct", "direct")
        driver = ns.spawn(sys.executable, "-c", DRIVER, mesh.admin_a, mesh.b_id, str(count), "0.01")
        wait(lambda: mesh.received() > 0, 15, "the transfer to start")
        mesh.cut()
        at_cut = mesh.received()  # the direct path is cut: whatever comes after came over the relay
        assert 0 < at_cut < count, f"not cut mid-transfer: {at_cut} of {count} received at the cut"
        wait(lambda: mesh.via(mesh.admin_a, mesh.b_id)[0] == "keyed", 15, "A on the relay")
        wait(lambda: mesh.via(mesh.admin_b, mesh.a_id)[0] == "keyed", 15, "B on the relay")
        _, reason = mesh.via(mesh.admin_a, mesh.b_id)
        assert reason, "a relayed connection says why"
        wait(lambda: mesh.received() > at_cut, 15, "messages to arrive over the relay")
        mesh.restore()
        wait(lambda: mesh.both() == ("direct", "direct"), 20, "both sides back on the direct path")
        assert driver.wait(timeout=60) == 0
        got: list[str] = []
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            batch = ns.admin(mesh.admin_b, "GET", f"/v1/messages?count={count - len(got)}&timeout=5")
            got += [m["data"] for m in batch["messages"]]
        assert got == [f"m{i:05d}" for i in range(count)]  # not one lost, duplicated or reordered
        stats = ns.admin(mesh.admin_a, "GET", "/v1/status")["stats"]
        assert stats.get("path_switches_to_keyed", 0) >= 1 and stats.get("path_switches_to_direct", 0) >= 1


_LAB_CALL = "\n".join(
    [
        "import json, sys, urllib.request",
        "req = urllib.request.Request('http://127.0.0.1:7947' + sys.argv[2], method=sys.argv[1],",
        "    data=(sys.argv[3].encode() if len(sys.argv) > 3 else None),",
        "    headers={'Content-Type': 'application/json'})",
        "print(urllib.request.urlopen(req, timeout=30).read().decode())",
    ]
)


def admin(host: Any, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the admin API of the node in a NAT-lab host (it listens on 127.0.0.1:7947 there)."""
    args = [method, path] + ([json.dumps(body)] if body is not None else [])
    return json.loads(host.run([sys.executable, "-c", _LAB_CALL, *args]).stdout)


def lab_via(host: Any) -> str | None:
    peers = admin(host, "GET", "/v1/peers")["peers"]
    return peers[0]["via"] if peers else None


def lab_received(host: Any) -> int:
    """Messages the node's inbox has taken in so far (the tests read the inbox only at the end)."""
    return int(admin(host, "GET", "/v1/status")["inbox"]["received"])


def test_nat_rebinding_mid_transfer_migrates_the_session() -> None:
    """Behind a symmetric NAT that forgets its mappings (conntrack flushed, as after a router
    reboot or a mapping timeout), the node's packets leave from a new port: the peer validates
    the new address and follows; no message is lost, duplicated or reordered."""
    from coremesh_natlab import Lab, pair
    from coremesh_natlab.testing import require_root

    from .nat_matrix import NODE_PORT, READY, run_script, start_node, start_relay

    require_root()
    count = 300
    with tempfile.TemporaryDirectory() as tmp, Lab(pair("symmetric", "full-cone")) as lab:
        start_relay(lab, tmp)
        a, b = lab.host("a"), lab.host("b")
        for host in (a, b):
            start_node(host, tmp, ["--path-dead-after", "1s"])
        run_script(a, READY, "--no-netcheck")
        b_id = run_script(b, READY, "--no-netcheck")["peer_id"]
        admin(a, "POST", "/v1/connect", {"peer": f"{b_id}@{lab.public_ipv4('b')}:{NODE_PORT}"})
        wait(lambda: admin(a, "GET", "/v1/peers")["peers"][0]["via"] == "direct", 10, "a direct path")
        before = admin(b, "GET", "/v1/peers")["peers"][0]["address"]
        driver = a.popen(
            [
                sys.executable,
                "-c",
                DRIVER,
                "127.0.0.1:7947",
                b_id,
                str(count),
                "0.01",
            ]
        )
        wait(lambda: lab_received(b) > 0, 15, "the transfer to start")
        lab.router("nat_a").run(["conntrack", "-F"])  # the NAT forgets: new mappings, new ports
        at_flush = lab_received(b)
        assert at_flush < count, f"not mid-transfer: {at_flush} of {count} received at the flush"
        assert driver.wait(timeout=60) == 0
        got: list[str] = []
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            got += [
                m["data"]
                for m in admin(b, "GET", f"/v1/messages?count={count - len(got)}&timeout=5")["messages"]
            ]
        assert got == [f"m{i:05d}" for i in range(count)]
        after = admin(b, "GET", "/v1/peers")["peers"][0]
        assert after["address"] != before and after["via"] == "direct", (before, after)
        stats = admin(b, "GET", "/v1/status")["stats"]
        assert stats.get("path_switches_to_direct", 0) + stats.get("address_changes", 0) >= 1, stats


def test_fault_on_the_nat_lab_cut_between_two_port_restricted_nats_and_back() -> None:
    """The fault test behind real NATs: two port-restricted cones, the connection punched direct;
    everything between the two hosts is dropped mid-transfer (nft), the connection moves to the
    keyed relay, and back to the direct path when the cut is lifted; not one message lost,
    duplicated or reordered."""
    from coremesh_natlab import Lab, pair
    from coremesh_natlab.testing import require_root

    from .nat_matrix import NODE_PORT, READY, run_script, start_node, start_relay

    require_root()
    count = 400
    with (
        tempfile.TemporaryDirectory() as tmp,
        Lab(pair("port-restricted-cone", "port-restricted-cone")) as lab,
    ):
        start_relay(lab, tmp)
        a, b = lab.host("a"), lab.host("b")
        for host in (a, b):
            start_node(host, tmp, FAST)
        run_script(a, READY, "--no-netcheck")
        b_id = run_script(b, READY, "--no-netcheck")["peer_id"]
        admin(a, "POST", "/v1/connect", {"peer": f"{b_id}@{lab.public_ipv4('b')}:{NODE_PORT}"})
        wait(lambda: lab_via(a) == "direct" and lab_via(b) == "direct", 15, "the punched direct path")
        driver = a.popen([sys.executable, "-c", DRIVER, "127.0.0.1:7947", b_id, str(count), "0.01"])
        wait(lambda: lab_received(b) > 0, 15, "the transfer to start")
        lab.cut("a", "b")
        at_cut = lab_received(b)  # nothing passes between a and b now: what comes after is relayed
        assert 0 < at_cut < count, f"not cut mid-transfer: {at_cut} of {count} received at the cut"
        wait(lambda: lab_via(a) == "keyed" and lab_via(b) == "keyed", 15, "both on the keyed relay")
        assert admin(a, "GET", "/v1/peers")["peers"][0]["reason"]
        wait(lambda: lab_received(b) > at_cut, 15, "messages to arrive over the relay")
        lab.restore("a", "b")
        wait(lambda: lab_via(a) == "direct" and lab_via(b) == "direct", 20, "both back on the direct path")
        assert driver.wait(timeout=60) == 0
        got: list[str] = []
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            batch = admin(b, "GET", f"/v1/messages?count={count - len(got)}&timeout=5")["messages"]
            got += [m["data"] for m in batch]
        assert got == [f"m{i:05d}" for i in range(count)]
