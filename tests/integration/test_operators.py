"""What an operator meets when running the three services: one process per data dir, exit codes,
the node's Prometheus metrics and the CLI against a service that is not a node. Real processes only.

Every process is started with ``sys.executable -m ...``, waited on with a timeout, and stopped by PID
in fixture teardown, also when a test fails.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .daemons import CLI_TIMEOUT, Node, Nodes, cli, free_port, http_get, wait_for

pytestmark = pytest.mark.integration

# module, program name, extra flags every start of it needs
SERVICES = {
    "node": ("coremesh_node", "coremesh-node", ()),
    "bootstrap": ("coremesh_bootstrap", "coremesh-bootstrap", ()),
    # The relay also listens on TCP at --listen: keep to UDP so only a free UDP port is needed.
    "relay": ("coremesh_relay", "coremesh-relay", ("--no-tcp",)),
}


def start(nodes: Nodes, kind: str, name: str, *extra: str) -> Node:
    module, _, flags = SERVICES[kind]
    return nodes.start(name, *flags, *extra, module=module)


def run_service(kind: str, *args: str) -> subprocess.CompletedProcess[str]:
    module, _, flags = SERVICES[kind]
    return subprocess.run(
        [sys.executable, "-m", module, *flags, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def one_error_line(result: subprocess.CompletedProcess[str], prog: str) -> str:
    """The failed run's only stderr line besides JSON log records (``PROG: error: ...``), checked: no
    traceback, nothing else."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not _is_log_record(line)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def _is_log_record(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def free_udp() -> str:
    return f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"


def free_tcp() -> str:
    return f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"


# ----------------------------------------------------------------------------- one data dir, one process


@pytest.mark.parametrize("kind", SERVICES)
def test_a_data_dir_belongs_to_one_process(nodes: Nodes, tmp_path: Path, kind: str) -> None:
    _, prog, _ = SERVICES[kind]
    first = start(nodes, kind, "a")
    data_dir = tmp_path / "a"

    second = run_service(kind, "--listen", free_udp(), "--data-dir", str(data_dir), "--admin", free_tcp())
    assert second.returncode == 1, second.stderr
    line = one_error_line(second, prog)
    assert str(data_dir) in line and f"PID {first.proc.pid}" in line, line

    # The first one never noticed: still running, same identity, still ready.
    assert first.proc.poll() is None
    status, body = http_get(first.admin, "/readyz")
    assert status == 200 and body["peer_id"] == first.peer_id

    # Killed without a chance to clean up: its lock file stays behind, and does not block.
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert (data_dir / "lock").read_text().strip() == str(first.proc.pid)
    again = start(nodes, kind, "a")
    assert again.peer_id == first.peer_id
    assert (data_dir / "lock").read_text().strip() == str(again.proc.pid)


# ------------------------------------------------------------------------------------------ exit codes
# One rule for the three services: 2 for a bad command line or configuration (argparse's code), 1 for a
# failure to start at runtime (an address in use, a data dir held by another process, ...).


@pytest.mark.parametrize("kind", SERVICES)
def test_udp_address_in_use_exits_1(tmp_path: Path, kind: str) -> None:
    _, prog, _ = SERVICES[kind]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        result = run_service(
            kind, "--listen", taken, "--data-dir", str(tmp_path / "d"), "--admin", free_tcp()
        )
    assert result.returncode == 1, result.stderr
    line = one_error_line(result, prog)
    assert taken in line and "in use" in line, line


@pytest.mark.parametrize("kind", SERVICES)
def test_admin_address_in_use_exits_1(tmp_path: Path, kind: str) -> None:
    _, prog, _ = SERVICES[kind]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        result = run_service(
            kind, "--listen", free_udp(), "--data-dir", str(tmp_path / "d"), "--admin", taken
        )
    assert result.returncode == 1, result.stderr
    line = one_error_line(result, prog)
    assert f"cannot serve the admin API on {taken}" in line and "in use" in line, line


@pytest.mark.parametrize("kind", SERVICES)
@pytest.mark.parametrize("args", [["--no-such-flag"], ["--log-format", "xml"], ["--listen", "nonsense"]])
def test_usage_errors_exit_2(tmp_path: Path, kind: str, args: list[str]) -> None:
    _, prog, _ = SERVICES[kind]
    result = run_service(kind, "--data-dir", str(tmp_path / "d"), *args)
    assert result.returncode == 2, result.stderr
    one_error_line(result, prog)


# ---------------------------------------------------------------------------------------- node metrics


def scrape(admin: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics`` parsed with prometheus_client's parser: (sample name, labels) -> value."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_node_metrics_follow_its_traffic(nodes: Nodes) -> None:
    a = nodes.start("a")
    b = nodes.start("b", "--bootstrap", a.listen)  # b joins the DHT through a: DHT traffic both ways
    stranger = nodes.start("c").peer_id  # a real id, but not the key at b's address
    before = scrape(a.admin)
    assert value(before, "coremesh_node_ready") == 1
    assert value(before, "coremesh_node_connections", path="direct") == 0
    assert value(before, "coremesh_node_handshakes_total", result="ok") == 0
    assert ("process_resident_memory_bytes", ()) in before

    assert cli(a.admin, "connect", f"{b.peer_id}@{b.listen}").returncode == 0
    assert cli(a.admin, "ping", b.peer_id, "--count", "3").returncode == 0
    assert cli(a.admin, "send", b.peer_id, "hello, metrics").returncode == 0
    assert cli(b.admin, "recv", "--timeout", "10").returncode == 0
    wrong = cli(a.admin, "connect", f"{stranger}@{b.listen}", "--timeout", "3")
    assert wrong.returncode == 1, wrong.stderr

    wait_for(
        lambda: http_get(a.admin, "/v1/status")[1]["dht"]["routing_table_size"] >= 1, 20, "b in a's table"
    )
    after, at_b = scrape(a.admin), scrape(b.admin)
    assert value(after, "coremesh_node_connections", path="direct") == 1
    assert value(at_b, "coremesh_node_connections", path="direct") == 1
    for direction in ("sent", "received"):
        key = ("coremesh_node_packets_total", (("direction", direction),))
        assert after[key] > before[key], direction
        wire = ("coremesh_node_bytes_total", (("direction", direction),))
        # Every datagram carries at least a header, and the message itself went over the wire.
        assert after[wire] - before[wire] >= after[key] - before[key] + len("hello, metrics"), direction
    assert value(after, "coremesh_node_payload_bytes_total", direction="sent") == len("hello, metrics")
    assert value(after, "coremesh_node_messages_total", direction="sent") == 1
    assert value(at_b, "coremesh_node_payload_bytes_total", direction="received") == len("hello, metrics")
    assert value(at_b, "coremesh_node_messages_total", direction="received") == 1
    assert value(after, "coremesh_node_handshakes_total", result="ok") >= 1
    assert value(after, "coremesh_node_handshakes_total", result="failed") >= 1
    assert value(after, "coremesh_node_handshakes_started_total") >= 2
    # The DHT and the traversal are counted too (a node runs both by default).
    assert value(after, "coremesh_node_dht_routing_table_size") >= 1
    assert value(after, "coremesh_node_dht_bytes_total", direction="sent") > 0
    assert ("coremesh_node_path_switches_total", (("to", "direct"),)) in after
    drops = [k for k in after if k[0] == "coremesh_node_drops_total"]
    assert all(dict(labels)["layer"] in ("mesh", "dht") for _, labels in drops)


# ----------------------------------------------------------------------- the CLI against other services


def test_cli_against_a_relay_and_a_bootstrap_says_what_they_are(nodes: Nodes) -> None:
    relay = start(nodes, "relay", "r")
    boot = start(nodes, "bootstrap", "b")

    status = cli(relay.admin, "status")
    assert status.returncode == 0, status.stderr
    assert "None" not in status.stdout and "role         relay (stun_turn)" in status.stdout
    assert f"peer_id      {relay.peer_id}" in status.stdout  # it has a --data-dir: the keyed identity
    assert relay.listen in status.stdout

    for admin, prog, argv, lacks in (
        (relay.admin, "coremesh-relay", ["peers"], "it has no peers"),
        (relay.admin, "coremesh-relay", ["ping", boot.peer_id], "it does not ping peers"),
        (boot.admin, "coremesh-bootstrap", ["netcheck"], "it does not run netcheck"),
    ):
        result = cli(admin, *argv)
        assert result.returncode == 1, result.stderr
        assert result.stderr == (
            f"coremesh: error: this is a {prog}, not a coremesh-node: {lacks} (try `coremesh status`)\n"
        )

    # Without the CLI (curl): the 404 itself says which service this is and what it serves.
    code, body = http_get(relay.admin, "/v1/peers")
    assert code == 404 and body["code"] == "not_found"
    assert body["error"] == (
        "GET /v1/peers: Not Found: this is a coremesh-relay, it serves "
        "GET /healthz, GET /readyz, GET /metrics, GET /v1/status"
    )
    code, body = http_get(boot.admin, "/v1/netcheck")
    assert code == 404 and "this is a coremesh-bootstrap, it serves" in body["error"]
    assert "GET /v1/lookup" in body["error"]

    status = cli(boot.admin, "status")
    assert status.returncode == 0 and f"peer_id      {boot.peer_id}" in status.stdout
    assert "role         bootstrap" in status.stdout and "dht          0 contacts" in status.stdout
    assert cli(boot.admin, "peers").stdout == "no peers\n"  # a bootstrap has peers
