"""The compose contract of docs/deploy.md, run as a user runs it, with ``docker-compose`` (v1) or
``docker compose`` (v2), whichever the machine has.

From the repository root: ``up -d --build --scale node=3`` on the local base image
(``scripts/docker-base.sh``; no image registry is needed), then the operator CLI inside the node
containers with its defaults: the nodes find each other by PeerId through the bootstrap (they were given
nothing but its name), talk directly on the compose network, and keep doing so once the relay container
is killed. ``down -v`` afterwards, also on failure, must leave no container, network or volume of the
project. Docker, compose and the daemon are installed and started by scripts/test.sh; a missing one
fails these tests, it never skips them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .composeproject import Project, compose_project, run, wait_until

pytestmark = pytest.mark.integration

COMPOSE_FILE = "compose/docker-compose.yml"
NODES = 3


@pytest.fixture
def project() -> Iterator[Project]:
    with compose_project(COMPOSE_FILE) as p:
        yield p


# The first run builds the base (debootstrap) and the images: minutes on a fresh machine, beyond the
# suite's 120 s default; later runs take about 20 s.
@pytest.mark.timeout(1200)
def test_compose_mesh_finds_peers_through_the_bootstrap_and_outlives_the_relay(project: Project) -> None:
    project("up", "-d", "--build", "--scale", f"node={NODES}", timeout=900)
    project.remember_volumes()
    assert len(project.containers(all_states=False)) == NODES + 2

    def status(index: int) -> Any:
        result = project.cli(index, "status", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    ids = {}
    for i in range(1, NODES + 1):
        st = wait_until(lambda i=i: status(i), 60, f"node {i}'s admin API")
        # Given nothing but the bootstrap's name: its PeerId comes from its signed DHT answer.
        assert st["bootstrap"] == ["bootstrap:7946"], st
        ids[i] = st["peer_id"]
    assert len(set(ids.values())) == NODES
    bootstrap_id = wait_until(project.bootstrap_status, 60, "the bootstrap's admin API")["peer_id"]

    # Every node joined the DHT through its only seed, the bootstrap (whose answer it accepted).
    for i in range(1, NODES + 1):
        dht = wait_until(lambda i=i: joined(status(i)), 60, f"node {i} to join the DHT")
        assert dht["stats"].get("drop_unsolicited_response", 0) == 0, dht
    # Each node's record is in the DHT (published through the bootstrap) before anyone dials by PeerId.
    for i in range(2, NODES + 1):
        wait_until(
            lambda i=i: project.cli(1, "lookup", ids[i], check=False).returncode == 0,
            60,
            f"node {i}'s record",
        )

    # Node 1 reaches node 2 by PeerId alone, directly on the compose network.
    connected = project.cli_json(1, "connect", ids[2])
    assert connected["path"] == "direct", connected
    sent = project.cli_json(1, "send", ids[2], "hello over compose")
    assert sent["path"] == "direct", sent
    received = json.loads(project.cli(2, "recv", "--timeout", "10").stdout)
    assert received["from"] == ids[1] and received["data"] == "hello over compose", received

    # The relay goes away; the mesh carries on, also for a pair that was never connected before.
    project("kill", "relay")
    assert not _running(project), "the relay still runs after kill"
    ping = project.cli_json(3, "ping", ids[2])
    assert ping["received"] == 1 and ping["via"] == "direct" and ping["reason"] is None, ping
    sent = project.cli_json(3, "send", ids[2], "no relay needed")
    assert sent["path"] == "direct", sent
    received = json.loads(project.cli(2, "recv", "--timeout", "10").stdout)
    assert received["from"] == ids[3] and received["data"] == "no relay needed", received
    again = project.cli_json(1, "ping", ids[2])
    assert again["received"] == 1 and again["via"] == "direct", again
    assert not _running(project), "the killed relay came back: the mesh was not tested without it"

    # A new bootstrap container keeps the identity (named volume): pinned PeerIds stay valid.
    project("up", "-d", "--no-deps", "--force-recreate", "bootstrap", timeout=180)
    project.remember_volumes()
    assert (
        wait_until(project.bootstrap_status, 60, "the new bootstrap's admin API")["peer_id"] == bootstrap_id
    )

    # SIGTERM (docker stop) ends every service cleanly, well within the timeout: exit status 0, not 137.
    running = project.containers(all_states=False)
    project("stop", "--timeout", "20")
    codes = {c: run(["docker", "inspect", "-f", "{{.State.ExitCode}}", c]).stdout.strip() for c in running}
    assert set(codes.values()) == {"0"}, codes


def joined(status: Any) -> Any:
    """A node's ``dht`` status once its routing table holds a contact, else None."""
    return status["dht"] if status is not None and status["dht"]["routing_table_size"] >= 1 else None


def _running(project: Project) -> bool:
    container = project("ps", "-q", "relay").stdout.strip()
    if not container:
        return False
    out = run(["docker", "inspect", "-f", "{{.State.Running}}", container], check=False)
    return out.stdout.strip() == "true"
