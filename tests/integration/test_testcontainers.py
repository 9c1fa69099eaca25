"""coremesh.testing in use, as a user's test uses it: a bootstrap, a relay and nodes in containers
(testcontainers), driven through the ``coremesh_cluster`` fixture and the ``coremesh`` CLI inside them.

The images are built FROM the local base ``coremesh-base:bookworm`` (scripts/docker-base.sh; no image
registry is needed) and reused while the tree is unchanged. Docker and its daemon are installed and
started by scripts/test.sh: a missing one fails these tests, it never skips them.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest

from coremesh.testing.containers import ClusterError, ClusterOptions, CoreMeshCluster, leftovers

# The first test of a fresh machine builds the base and the images inside its fixture.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
pytest_plugins = ["coremesh.testing.pytest_plugin"]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "coremesh-base:bookworm"


@pytest.fixture
def coremesh_cluster_options() -> ClusterOptions:
    """Three nodes on the local base image, built from this checkout."""
    try:
        from testcontainers.core.docker_client import DockerClient

        DockerClient().client.ping()
    except Exception as exc:
        pytest.fail(
            f"no docker daemon answers ({exc}): scripts/test.sh installs docker.io and starts dockerd"
        )
    base = subprocess.run(
        ["sh", "scripts/docker-base.sh", BASE_IMAGE], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if base.returncode != 0:
        pytest.fail(f"scripts/docker-base.sh failed:\n{base.stdout}\n{base.stderr}")
    return ClusterOptions(nodes=3, base_image=BASE_IMAGE, build_context=ROOT)


def exchange(sender: Any, receiver: Any, text: str) -> None:
    """``sender`` sends ``text`` to ``receiver`` directly; ``receiver`` reads it from its inbox."""
    sent = sender.cli("send", receiver.peer_id, text)
    assert sent["path"] == "direct", sent
    received = receiver.cli("recv", "--timeout", "10")
    assert received["from"] == sender.peer_id and received["data"] == text, received


def test_nodes_meet_through_the_bootstrap_and_outlive_the_relay_and_the_bootstrap(
    coremesh_cluster: CoreMeshCluster,
) -> None:
    mesh = coremesh_cluster
    a, b, c = mesh.nodes
    ids = {node.name: node.peer_id for node in mesh.nodes}
    assert all(ids.values()) and len(set(ids.values())) == 3, ids
    assert mesh.bootstrap.peer_id and mesh.bootstrap.peer_id not in ids.values()
    for node in mesh.nodes:
        status = node.cli("status")
        assert status["peer_id"] == node.peer_id and status["bootstrap"] == ["bootstrap:7946"], status

    # The fixture waited until every record is in the DHT, published through the bootstrap.
    for seeker, sought in ((a, b), (b, c), (c, a)):
        record = seeker.cli("lookup", sought.peer_id)
        assert record["peer_id"] == sought.peer_id and record["addresses"], record

    # By PeerId alone: a reaches b and c, directly on the cluster network.
    for peer in (b, c):
        connected = a.cli("connect", peer.peer_id)
        assert connected["peer_id"] == peer.peer_id and connected["path"] == "direct", connected
    exchange(a, b, "hello over testcontainers")
    exchange(c, a, "hello back")

    # The relay goes away: connected nodes carry on.
    mesh.relay.stop()
    assert not mesh.relay.running
    exchange(a, b, "no relay needed")
    ping = a.cli("ping", c.peer_id)
    assert ping["received"] == 1 and ping["via"] == "direct", ping

    # Then the bootstrap: still connected pairs talk, and c reaches b at an address it knows.
    mesh.bootstrap.stop()
    assert not mesh.bootstrap.running
    exchange(b, a, "no bootstrap needed")
    exchange(a, c, "still here")
    connected = c.cli("connect", f"{b.peer_id}@{b.address}")
    assert connected["peer_id"] == b.peer_id and connected["path"] == "direct", connected
    exchange(c, b, "found you without the bootstrap")
    assert not mesh.relay.running and not mesh.bootstrap.running


def test_a_restarted_bootstrap_keeps_its_peer_id_and_an_interrupted_block_leaves_nothing_behind(
    coremesh_cluster_options: ClusterOptions,
) -> None:
    cluster = dataclasses.replace(coremesh_cluster_options, nodes=1).cluster()
    with pytest.raises(KeyboardInterrupt), cluster:
        bootstrap = cluster.bootstrap
        before = bootstrap.peer_id
        old_container = bootstrap.container().get_wrapped_container().id
        assert before and leftovers(cluster.id)["volumes"]

        bootstrap.restart()  # a new container on the same volume
        assert bootstrap.container().get_wrapped_container().id != old_container
        assert bootstrap.peer_id == before
        assert bootstrap.admin("/v1/status")["peer_id"] == before
        raise KeyboardInterrupt  # as if ^C hit the test here
    assert leftovers(cluster.id) == {"containers": [], "networks": [], "volumes": []}


def test_a_node_that_cannot_start_fails_the_cluster_loudly_and_leaves_nothing_behind(
    coremesh_cluster_options: ClusterOptions,
) -> None:
    bad = {"COREMESH_LISTEN": "not-an-address"}
    options = dataclasses.replace(coremesh_cluster_options, nodes=1, env=bad)
    cluster = options.cluster()
    with pytest.raises(ClusterError, match="node-1 did not start") as failure:
        cluster.start()
    assert "not-an-address" in str(failure.value), failure.value  # the node's own complaint, from its log
    assert leftovers(cluster.id) == {"containers": [], "networks": [], "volumes": []}
