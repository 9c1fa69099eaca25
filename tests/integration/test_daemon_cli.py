"""Two real `coremesh-node` processes, operated through the real `coremesh` CLI.

Every process is started with ``sys.executable -m ...``, waited on with a timeout, and stopped by PID
in fixture teardown, also when a test fails.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .daemons import (
    CLI_TIMEOUT,
    Node,
    Nodes,
    assert_one_error_line,
    cli,
    cli_json,
    free_port,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(nodes: Nodes) -> tuple[Node, Node]:
    return nodes.start("a"), nodes.start("b")


# ----------------------------------------------------------------------------------------- tests


def test_status_connect_ping_send_recv_peers(pair: tuple[Node, Node]) -> None:
    a, b = pair
    status = cli_json(a.admin, "status", "--json")
    assert status["peer_id"] == a.peer_id and status["role"] == "node"
    assert a.listen in status["addresses"] and status["admin"] == a.admin
    assert status["nat_type"] == ""  # no STUN server: no netcheck, no NAT type to tell peers

    result = cli(a.admin, "connect", f"{b.peer_id}@{b.listen}")
    assert result.returncode == 0, result.stderr
    assert b.peer_id in result.stdout and "direct" in result.stdout

    ping = cli_json(a.admin, "ping", b.peer_id, "--count", "3", "--json")
    assert ping["path"] == "direct"
    assert isinstance(ping["rtt_ms"], int | float) and ping["rtt_ms"] > 0
    assert ping["sent"] == 3 and ping["received"] == 3

    for text in ("hello from a", "second ✓"):
        result = cli(a.admin, "send", b.peer_id, text)
        assert result.returncode == 0, result.stderr
    result = cli(b.admin, "recv", "--count", "2", "--timeout", "10", "--json")
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert [m["data"] for m in messages] == ["hello from a", "second ✓"]
    assert all(m["from"] == a.peer_id and "encoding" not in m for m in messages)

    # and back the other way, over the connection a opened
    assert cli(b.admin, "send", a.peer_id, "reply").returncode == 0
    (reply,) = [json.loads(line) for line in cli(a.admin, "recv", "--json").stdout.splitlines()]
    assert reply["from"] == b.peer_id and reply["data"] == "reply"

    peers_a = cli_json(a.admin, "peers", "--json")["peers"]
    assert [(p["peer_id"], p["state"], p["path"]) for p in peers_a] == [(b.peer_id, "connected", "direct")]
    peers_b = cli_json(b.admin, "peers", "--json")["peers"]
    assert [(p["peer_id"], p["state"]) for p in peers_b] == [(a.peer_id, "connected")]
    assert cli_json(b.admin, "status", "--json")["connections"] == 1

    text = cli(a.admin, "peers")
    assert text.returncode == 0 and b.peer_id in text.stdout and "connected" in text.stdout

    events = [e["event"] for e in b.log_events()]
    assert "node.ready" in events and "connection.connected" in events


def test_dash_text_escaped_recv_inbox_status_and_connect_timeout(pair: tuple[Node, Node]) -> None:
    a, b = pair
    # The per-call --timeout bounds the handshake (not the node's connect_timeout, 5 s by default):
    # the node's own connect deadline ends it ("no handshake response"). Were the 5 s used, the admin
    # API's limit of timeout + 2 s = 2.5 s would end it first, with its own 504 "no answer from ...".
    silent = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    result = cli(a.admin, "connect", f"{b.peer_id}@{silent}", "--timeout", "0.5")
    assert_one_error_line(result, "no handshake response from")
    assert cli_json(a.admin, "status", "--json")["stats"]["connect_timeouts"] == 1
    assert cli(a.admin, "connect", f"{b.peer_id}@{b.listen}", "--timeout", "0.1e3").returncode == 0

    for text in ("-hello", "two\nlines\x1b[31m"):
        result = cli(a.admin, "send", b.peer_id, text)
        assert result.returncode == 0, result.stderr
    result = cli(b.admin, "recv", "--count", "2", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{a.peer_id}: -hello", f"{a.peer_id}: two\\nlines\\x1b[31m"]

    inbox = cli_json(b.admin, "status", "--json")["inbox"]
    assert inbox["max_bytes"] == 64 * 1024 * 1024 and inbox["bytes"] == 0 and inbox["received"] == 2
    # out of range: refused by the CLI before asking the node
    bad = cli(b.admin, "recv", "--timeout", "301")
    assert bad.returncode == 2
    assert_one_error_line(bad, "--timeout", "0 to 300")


def test_recv_shortfall_prints_then_fails(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert cli(a.admin, "connect", f"{b.peer_id}@{b.listen}").returncode == 0
    assert cli(a.admin, "send", b.peer_id, "only one").returncode == 0
    result = cli(b.admin, "recv", "--count", "2", "--timeout", "1", "--json")  # returns at its timeout
    assert result.returncode == 1
    assert [json.loads(line)["data"] for line in result.stdout.splitlines()] == ["only one"]
    assert_one_error_line(result, "received 1 of 2")


def test_cli_errors(pair: tuple[Node, Node]) -> None:
    a, b = pair
    # a well-formed id of a peer that is not connected
    unknown = cli(a.admin, "ping", b.peer_id, "--json")
    assert_one_error_line(unknown, "no live record of")  # looked up through the DHT first
    assert_one_error_line(cli(a.admin, "send", b.peer_id, "x"), "not connected")
    # malformed id: refused locally, exit 2
    bad = cli(a.admin, "ping", b.peer_id[:-3])
    assert bad.returncode == 2
    assert_one_error_line(bad, "invalid peer id")
    # nobody listening at that address: the connect fails at its own deadline (the node's answer,
    # not the admin API's fallback limit)
    silent = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    result = cli(a.admin, "connect", f"{b.peer_id}@{silent}", "--timeout", "1")
    assert_one_error_line(result, "no handshake response from")
    # node not running
    down = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    assert_one_error_line(cli(down, "status", "--json"), "connection refused")


def test_sigterm_closes_connections_and_exits_0(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert cli(a.admin, "connect", f"{b.peer_id}@{b.listen}").returncode == 0
    wait_for(
        lambda: any(p["state"] == "connected" for p in cli_json(b.admin, "peers", "--json")["peers"]),
        5,
        "b to see a connected",
    )
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(10) == 0, a.log()

    def a_gone_from_b() -> bool:
        peers = cli_json(b.admin, "peers", "--json")["peers"]
        return all(p["peer_id"] != a.peer_id or p["state"] != "connected" for p in peers)

    wait_for(a_gone_from_b, 20, "b to see a's connection closed")
    status = cli_json(b.admin, "status", "--json")
    assert status["connections"] == 0
    assert status["stats"].get("idle_timeouts", 0) == 0  # a closed it; b did not time it out
    events = [e["event"] for e in a.log_events()]
    assert "node.stopping" in events and "node.stopped" in events
    assert "Traceback" not in a.log()
    closed = [e for e in b.log_events() if e["event"] in ("connection.closed", "connection.failed")]
    assert closed and closed[0]["peer_id"] == a.peer_id


def test_sigint_exits_0(nodes: Nodes) -> None:
    a = nodes.start("a", "--log-format", "text")
    a.proc.send_signal(signal.SIGINT)
    assert a.proc.wait(10) == 0
    assert "node.ready" in a.log() and "node.stopped" in a.log() and "Traceback" not in a.log()


def test_connect_flag_dials_at_start_and_retries(nodes: Nodes) -> None:
    b = nodes.start("b")
    # a dials b at start; c dials a peer that is not there yet and keeps retrying
    a = nodes.start("a", "--connect", f"{b.peer_id}@{b.listen}")
    wait_for(
        lambda: any(p["state"] == "connected" for p in cli_json(a.admin, "peers", "--json")["peers"]),
        10,
        "the --connect peer to be connected",
    )
    late_port = free_port(socket.SOCK_DGRAM)
    # the id is b's (any valid id will do: nobody answers at that port, so dials fail and are retried)
    c = nodes.start("c", "--connect", f"{b.peer_id}@127.0.0.1:{late_port}", "--bootstrap", "127.0.0.1:9")
    wait_for(lambda: "dial.failed" in c.log(), 15, "a failed dial to be logged")
    seeds = [e for e in c.log_events() if e["event"] == "bootstrap.seed"]
    assert seeds and seeds[0]["address"] == "127.0.0.1:9"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--listen", "nonsense"], "--listen: "),
        (["--admin", "0.0.0.0:7947"], "--admin-allow-remote"),
        (["--log-format", "xml"], "--log-format"),
        (["--connect", "127.0.0.1:9"], "--connect: "),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coremesh_node", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coremesh-node: error: ") and expected in lines[0]


def test_corrupt_identity_file_exits_2(tmp_path: Path) -> None:
    key = tmp_path / "identity.key"
    key.write_bytes(b"coremesh-ed25519-v1\nnot base64!\n")
    key.chmod(0o600)
    result = subprocess.run(
        [sys.executable, "-m", "coremesh_node", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "identity key" in lines[0] and "Traceback" not in result.stderr


def test_identity_is_kept_across_restarts(nodes: Nodes, tmp_path: Path) -> None:
    first = nodes.start("a")
    stop_process(first.proc)
    assert first.proc.returncode == 0
    again = nodes.start("a")
    assert again.peer_id == first.peer_id


def test_admin_address_in_use_exits_1(nodes: Nodes, tmp_path: Path) -> None:
    a = nodes.start("a")
    result = subprocess.run(
        [sys.executable, "-m", "coremesh_node", "--listen", "127.0.0.1:0", "--admin", a.admin],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 1
    assert "coremesh-node: error: cannot serve the admin API" in result.stderr
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr
