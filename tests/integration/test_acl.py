"""Allow and deny lists on real `coremesh-node` processes over loopback, operated through the real
`coremesh` CLI (docs/access.md): a closed mesh refuses a peer in the handshake and counts it, a deny
at run time cuts an open connection, an allow lets a peer in, a restart keeps what was changed, and
a closed middle node carries nothing through the overlay for a peer it does not allow.

Every node runs without the DHT, so a node reaches another only at an address it is given, or by
PeerId through the overlay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coremesh.identity import load_or_create_identity

from .daemons import Node, Nodes, assert_one_error_line, cli, cli_json, stop_process, wait_for
from .test_routing_cli import metrics

pytestmark = pytest.mark.integration

CONVERGE_TIMEOUT = 30.0


def peer_ids(tmp_path: Path, *names: str) -> list[str]:
    """The ids the nodes will have: their identity keys, made in their data dirs before they start."""
    return [load_or_create_identity(tmp_path / name).peer_id.to_text() for name in names]


def connect(node: Node, other: Node, *extra: str) -> Any:
    return cli(node.admin, "connect", f"{other.peer_id}@{other.listen}", "--timeout", "3", *extra)


def connected(node: Node, other: Node) -> bool:
    peers = cli_json(node.admin, "peers", "--json")["peers"]
    return any(p["peer_id"] == other.peer_id and p["state"] == "connected" for p in peers)


def drops(node: Node, reason: str) -> float:
    return metrics(node.admin).get(f"coremesh_node_drops_total{{layer=mesh}}{{reason={reason}}}", 0.0)


def test_a_closed_mesh_refuses_then_admits_cuts_and_keeps_its_lists(nodes: Nodes, tmp_path: Path) -> None:
    _, b_id, c_id = peer_ids(tmp_path, "a", "b", "c")
    a = nodes.start("a", "--no-dht", "--allow", b_id)
    b, c = nodes.start("b", "--no-dht"), nodes.start("c", "--no-dht")
    acl = cli_json(a.admin, "acl", "--json")
    assert (acl["mode"], acl["allow"], acl["deny"]) == ("closed", [b_id], [])

    assert connect(b, a).returncode == 0  # on the allow-list
    refused = connect(c, a)
    assert_one_error_line(refused, "cannot connect to", a.peer_id, "it refuses this node (its access lists)")
    assert drops(a, "acl_not_allowed") >= 1  # every retry of c's handshake, counted by reason
    assert not connected(a, c) and not connected(c, a)
    assert cli_json(a.admin, "acl", "--json")["decisions"]["not_allowed"] >= 1
    # a itself does not dial a peer its lists refuse: a typed error, before any packet.
    assert_one_error_line(connect(a, c), "refused by the access list", "not on the allow-list")
    assert metrics(a.admin)["coremesh_node_mesh_acl_connects_refused_total"] == 1

    allowed = cli(a.admin, "allow", c_id)
    assert allowed.returncode == 0 and allowed.stdout.startswith(f"allowed {c_id}"), allowed.stderr
    assert connect(c, a).returncode == 0
    assert connected(a, c)

    denied = cli_json(a.admin, "deny", b_id, "--json")  # b's open connection is cut now
    assert denied["connections_closed"] == 1 and denied["deny"] == [b_id] and denied["allow"] == [c_id]
    wait_for(lambda: not connected(b, a), 10, "b to see its connection to a closed")
    assert not connected(a, b)
    before = drops(a, "acl_denied")
    assert connect(b, a).returncode != 0
    assert drops(a, "acl_denied") > before
    assert metrics(a.admin)["coremesh_node_mesh_acl_connections_closed_total"] == 1

    # A restart with the same flags keeps what the CLI changed (DATA_DIR/acl.json).
    stop_process(a.proc)
    a = nodes.start("a", "--no-dht", "--allow", b_id)
    acl = cli_json(a.admin, "acl", "--json")
    assert (acl["mode"], acl["allow"], acl["deny"]) == ("closed", [c_id], [b_id])
    assert acl["saved_to"] == str(tmp_path / "a" / "acl.json")
    assert connect(c, a).returncode == 0
    assert connect(b, a).returncode != 0
    assert drops(a, "acl_denied") >= 1


def test_a_closed_middle_node_carries_nothing_for_a_peer_it_does_not_allow(
    nodes: Nodes, tmp_path: Path
) -> None:
    # a - b - d - c: b allows only its neighbours a and d; a asks for c by PeerId alone, so only the
    # overlay can carry it, through b.
    a_id, _, d_id, c_id = peer_ids(tmp_path, "a", "b", "d", "c")
    a, d, c = (nodes.start(name, "--no-dht") for name in "adc")
    b = nodes.start("b", "--no-dht", "--allow", a_id, "--allow", d_id)
    for x, y in ((a, b), (b, d), (c, d)):
        assert connect(x, y).returncode == 0

    def a_routes_to_c() -> bool:
        return any(r["destination"] == c_id for r in cli_json(a.admin, "routes", "--json")["routes"])

    wait_for(a_routes_to_c, CONVERGE_TIMEOUT, "a route from a to c (through b and d)")
    refused = cli(a.admin, "connect", c_id, "--path", "routed", "--timeout", "3")
    assert_one_error_line(refused, c_id)
    assert drops(b, "acl_forward") >= 1  # b refused to forward a's handshake to c
    assert not connected(a, c) and not connected(c, a)
    assert metrics(d.admin)["coremesh_node_forwarded_packets_total"] == 0  # nothing got past b

    # The control: once b allows c, the same request goes through b and d.
    assert cli(b.admin, "allow", c_id).returncode == 0
    joined = cli(a.admin, "connect", c_id, "--path", "routed", "--timeout", "5")
    assert joined.returncode == 0, joined.stderr
    assert connected(a, c)
    assert metrics(d.admin)["coremesh_node_forwarded_packets_total"] > 0
