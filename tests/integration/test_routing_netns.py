"""Overlay routing between real node daemons where only neighbours can reach each other.

Each node has its own network namespace, linked by veth pairs to its neighbours only, IP forwarding
off: the only way from one end of a line to the other is through the overlay (ROUTED packets
carried by the nodes between). A line A-B-C, and a ring whose link is cut in the middle of a
transfer.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from .overlaynet import overlay_net


def _messages(net: Any, node: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Take ``count`` messages out of ``node``'s inbox, waiting up to ``timeout``."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        answer = net.admin(node, "GET", f"/v1/messages?timeout=2&count={count - len(got)}")
        got += answer["messages"]
    return got


def test_a_line_carries_messages_end_to_end_through_the_middle_node(tmp_path: Path) -> None:
    with overlay_net(tmp_path, ["a", "b", "c"], [("a", "b"), ("b", "c")]) as net:
        net.start()
        c_id, b_id = net.peer_ids["c"], net.peer_ids["b"]
        # A cannot reach C's addresses at all (no route in its namespace): only through B.
        unreachable = net.ns["a"].run("ip", "route", "get", net.addresses[("c", "b")], check=False)
        assert unreachable.returncode != 0
        ping = net.wait("a routed ping from a to c", lambda: net.cli_json("a", "ping", c_id), timeout=40)
        assert ping["path"] == "routed" and ping["via"] == "routed"
        assert ping["hops"] == [b_id]
        assert ping["received"] >= 1
        sent = net.admin("a", "POST", "/v1/send", {"peer": c_id, "data": "hello through b"})
        assert sent["path"] == "routed"
        got = _messages(net, "c", 1)
        assert [m["data"] for m in got] == ["hello through b"]
        assert got[0]["from"] == net.peer_ids["a"]
        # B forwarded them and never saw a message of its own.
        stats_b = net.admin("b", "GET", "/v1/status")
        assert _counter(stats_b, "forwarded_packets") > 0
        assert net.admin("b", "GET", "/v1/messages?timeout=0")["messages"] == []

        # A broadcast from a reaches b and c (not only a's neighbour), each exactly once.
        assert net.cli("a", "broadcast", "to everyone").returncode == 0
        for node in ("b", "c"):
            got = _messages(net, node, 1)
            assert [(m["kind"], m["data"], m["from"]) for m in got] == [
                ("broadcast", "to everyone", net.peer_ids["a"])
            ]
        # A multicast to a group only c joined: b carries it, only c delivers it.
        assert net.cli("c", "join", "ops.alerts").returncode == 0
        # Sent once a knows a member (until c's signed membership reaches it, it goes nowhere: 0).
        net.wait(
            "a multicast that leaves a",
            lambda: net.cli_json("a", "multicast", "ops.alerts", "disk full")["neighbours"] >= 1,
        )
        got = _messages(net, "c", 1)
        assert [(m["kind"], m.get("group"), m["data"]) for m in got] == [
            ("multicast", "ops.alerts", "disk full")
        ]
        for node in ("a", "b", "c"):  # nothing else arrived anywhere: no duplicate, no stray copy
            assert net.admin(node, "GET", "/v1/messages?timeout=0.5")["messages"] == [], node
        assert _counter(net.admin("b", "GET", "/v1/status"), "multicasts_forwarded") >= 1


def _counter(status: dict[str, Any], name: str) -> int:
    for key in ("stats", "counters", "traffic"):
        table = status.get(key)
        if isinstance(table, dict) and name in table:
            return int(table[name])
    raise AssertionError(f"{name} not in status: {json.dumps(status)[:800]}")


SENDER = r"""
import json, sys, time, urllib.request
admin, peer, count, gap = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
for i in range(count):
    body = json.dumps({"peer": peer, "data": f"m{i:04d}", "timeout": 60}).encode()
    req = urllib.request.Request(f"http://{admin}/v1/send", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=90).read()
    print(time.time(), i, flush=True)
    time.sleep(gap)
"""


def test_a_ring_repairs_a_cut_link_mid_transfer_with_nothing_lost(tmp_path: Path) -> None:
    names = ["a", "b", "c", "d", "e"]
    ring = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "a")]
    with overlay_net(tmp_path, names, ring) as net:
        net.start()
        c_id = net.peer_ids["c"]
        net.wait("a routed connection from a to c", lambda: net.cli_json("a", "ping", c_id), timeout=40)
        # Two ways round the ring: the short one through b, a backup through e and d.
        routes = net.wait(
            "a's route to c with a backup",
            lambda: [
                r for r in net.cli_json("a", "routes")["routes"] if r["destination"] == c_id and r["backups"]
            ],
        )
        first_hop = {net.peer_ids[n]: n for n in names}[routes[0]["next_hop"]]
        assert first_hop == "b"
        count = 120
        log = tmp_path / "sender.out"
        sender = net.ns["a"].python(
            "-c", SENDER, "127.0.0.1:7401", c_id, str(count), "0.02", log_path=str(log)
        )
        net.wait("the transfer under way", lambda: len(log.read_text().splitlines()) >= 30)
        cut_at = time.time()
        net.cut("a", "b")
        got = _messages(net, "c", count, timeout=60)
        sender.wait(timeout=60)
        assert [m["data"] for m in got] == [
            f"m{i:04d}" for i in range(count)
        ]  # none lost, duplicated or reordered
        arrivals = [cut_at] + [m["ts"] for m in got if m["ts"] > cut_at]
        assert len(arrivals) > 1, "nothing arrived after the cut"
        stall = max(b - a for a, b in itertools.pairwise(arrivals))
        print(f"repair: delivery stalled {stall:.2f}s at most after the cut ({len(arrivals) - 1} after it)")
        routes = net.cli_json("a", "routes")["routes"]
        now = {r["destination"]: r for r in routes}[c_id]
        assert now["next_hop"] == net.peer_ids["e"]
        assert now["hops"] == [net.peer_ids["e"], net.peer_ids["d"], c_id]
