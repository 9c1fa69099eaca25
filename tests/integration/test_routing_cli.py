"""Overlay routing operated through the real `coremesh` CLI: three `coremesh-node` processes in a line
a — b — c (a and c are never told each other's address, and run without the DHT), so everything
between a and c goes through b (docs/routing.md).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coremesh.identity import Identity

from .daemons import Node, Nodes, assert_one_error_line, cli, cli_json, wait_for

pytestmark = pytest.mark.integration

CONVERGE_TIMEOUT = 30.0


@pytest.fixture
def line(nodes: Nodes) -> tuple[Node, Node, Node]:
    a, b, c = (nodes.start(name, "--no-dht") for name in "abc")
    for x in (a, c):
        result = cli(x.admin, "connect", f"{b.peer_id}@{b.listen}")
        assert result.returncode == 0, result.stderr

    def a_routes_to_c() -> bool:
        return any(r["destination"] == c.peer_id for r in cli_json(a.admin, "routes", "--json")["routes"])

    wait_for(a_routes_to_c, CONVERGE_TIMEOUT, "a route from a to c")
    return a, b, c


def metrics(admin: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def recv_all(node: Node, timeout: float = 0.0) -> list[dict[str, Any]]:
    result = cli(node.admin, "recv", "--count", "0", "--timeout", f"{timeout:g}", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_routes_route_and_a_routed_ping(line: tuple[Node, Node, Node]) -> None:
    a, b, c = line
    (to_c,) = [r for r in cli_json(a.admin, "routes", "--json")["routes"] if r["destination"] == c.peer_id]
    assert to_c["next_hop"] == b.peer_id and to_c["hops"] == [b.peer_id, c.peer_id]
    assert to_c["metric"] > 0 and to_c["age_s"] >= 0
    text = cli(a.admin, "routes")
    assert text.returncode == 0 and c.peer_id in text.stdout and "NEXT_HOP" in text.stdout

    trace = cli_json(a.admin, "route", c.peer_id, "--json")
    assert trace["reached"] is True
    assert [h["peer_id"] for h in trace["hops"]] == [b.peer_id, c.peer_id]
    assert all(h["rtt_ms"] > 0 for h in trace["hops"])

    # Not connected, no DHT: the ping connects through b, by the routing table. On loopback a and c
    # may then punch a direct path over the routed session's signalling: the ping goes either way,
    # and says which consistently.
    ping = cli_json(a.admin, "ping", c.peer_id, "--count", "2", "--json")
    assert ping["received"] == 2
    assert (ping["path"], ping["hops"]) in (("routed", [b.peer_id]), ("direct", []))

    assert cli(a.admin, "send", c.peer_id, "hello c").returncode == 0
    got = recv_all(c, timeout=10)
    assert [(m["from"], m["data"], m["kind"]) for m in got] == [(a.peer_id, "hello c", "direct")]
    at_b = metrics(b.admin)  # the trace and the routed handshake went through b
    assert at_b["coremesh_node_forwarded_packets_total"] > 0 and at_b["coremesh_node_routes"] >= 2
    assert at_b["coremesh_node_forwarded_bytes_total"] > at_b["coremesh_node_forwarded_packets_total"]


def test_broadcast_and_multicast_reach_whom_they_should(line: tuple[Node, Node, Node]) -> None:
    a, b, c = line
    joined = cli_json(c.admin, "join", "chat", "--json")
    assert joined == {"group": "chat", "groups": ["chat"]}
    assert cli(c.admin, "groups").stdout == "chat\n"

    sent = cli_json(a.admin, "broadcast", "to everyone", "--json")
    assert sent["neighbours"] == 1
    for node in (b, c):
        got = recv_all(node, timeout=10)
        assert [(m["from"], m["data"], m["kind"]) for m in got] == [(a.peer_id, "to everyone", "broadcast")]
        assert "group" not in got[0]

    # c's membership reaches a through b: multicast until one arrives (each is delivered once).
    received: list[dict[str, Any]] = []

    def c_got_a_multicast() -> bool:
        assert cli(a.admin, "multicast", "chat", "to the group").returncode == 0
        received.extend(recv_all(c, timeout=0.5))
        return bool(received)

    wait_for(c_got_a_multicast, CONVERGE_TIMEOUT, "a multicast from a to c's group")
    assert {(m["from"], m["data"], m["kind"], m["group"]) for m in received} == {
        (a.peer_id, "to the group", "multicast", "chat")
    }
    assert recv_all(b) == []  # b forwards the group's messages but is not a member: never delivers
    at_c = metrics(c.admin)
    assert at_c["coremesh_node_deliveries_total{kind=broadcast}"] == 1
    assert at_c["coremesh_node_deliveries_total{kind=multicast}"] >= 1

    left = cli_json(c.admin, "leave", "chat", "--json")
    assert left == {"group": "chat", "groups": []}


def test_connect_by_route(line: tuple[Node, Node, Node]) -> None:
    a, _, c = line
    result = cli(a.admin, "connect", c.peer_id, "--path", "routed")  # by PeerId alone, through b
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"connected to {c.peer_id}") and "path routed" in result.stdout
    nobody = Identity(bytes(32)).peer_id.to_text()  # a valid id no node of the mesh has
    assert_one_error_line(cli(a.admin, "connect", nobody, "--path", "routed"), "no route")
