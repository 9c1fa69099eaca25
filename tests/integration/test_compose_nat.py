"""The NAT-emulated compose topology of docs/deploy.md (compose/docker-compose.nat.yml), run with
``docker-compose`` (v1) or ``docker compose`` (v2), whichever the machine has.

Each node sits on its own network behind a router container that NATs it with the NAT lab's own rules
(``python -m coremesh_natlab.router``, the same plan and rules as the lab's namespaces); the bootstrap
and the relay are on the emulated internet. The pair behind port-restricted cone NATs ends up direct
(hole punching through both routers); the pair behind symmetric NATs stays relayed, and ``coremesh ping
--json`` says so (``via``) and why (``reason``). ``down -v`` afterwards, also on failure, leaves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .composeproject import Project, compose_project, run, wait_until

pytestmark = pytest.mark.integration

COMPOSE_FILE = "compose/docker-compose.nat.yml"
NODES = ("cone-a", "cone-b", "sym-a", "sym-b")
ROUTER_WAN = {"cone-a": "198.51.100.101", "cone-b": "198.51.100.102", "sym-a": "198.51.100.103"}


@pytest.fixture
def project() -> Iterator[Project]:
    with compose_project(COMPOSE_FILE) as p:
        yield p


def _json(project: Project, service: str, *args: str) -> Any:
    result = project.service_cli(service, *args, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _mapped(status: Any) -> str | None:
    """The node's address as the relay sees it (its TURN allocation's mapped address), once allocated."""
    if status is None:
        return None
    turn = list(status["relays"]["turn"].values())
    return turn[0]["mapped"] if turn and turn[0]["allocated"] else None


# A process may end between the listing and the read (this very exec's helpers): skip it.
PROC = """
import pathlib
for p in pathlib.Path('/proc').glob('[0-9]*'):
    try:
        cmd = (p / 'cmdline').read_bytes().split(b'\\0')
        if any(c.endswith(b'coremesh-node') for c in cmd[:2]) and b'coremesh_natlab.router' not in cmd:
            f = dict(l.split(':', 1) for l in (p / 'status').read_text().splitlines())
            print(f['Uid'].split()[0], f['CapEff'].strip())
    except (FileNotFoundError, ProcessLookupError):
        continue
"""


def _node_process(project: Project, service: str) -> tuple[str, ...]:
    """(uid, effective capabilities) of the coremesh-node process in ``service``'s container."""
    out = project("exec", "-T", service, "python3", "-c", PROC).stdout.split()
    return tuple(out)


# A fresh machine builds the base and four images first (minutes); later runs take about half a minute.
@pytest.mark.timeout(1200)
def test_cone_pair_goes_direct_and_symmetric_pair_stays_relayed(project: Project) -> None:
    project("up", "-d", "--build", timeout=900)
    project.remember_volumes()
    assert len(project.containers(all_states=False)) == 10  # bootstrap, relay, 4 routers, 4 nodes

    ids, mapped = {}, {}
    for node in NODES:
        status = wait_until(lambda n=node: _json(project, n, "status"), 90, f"{node}'s admin API")
        ids[node] = status["peer_id"]
        mapped[node] = wait_until(lambda n=node: _mapped(_json(project, n, "status")), 90, f"{node}'s TURN")
    # The node process runs as the coremesh user without capabilities (NET_ADMIN was for its route only).
    for node in NODES:
        assert _node_process(project, node) == ("10001", "0000000000000000"), node
    # Every node reaches the internet through its own router's NAT, never around it.
    for node, wan in ROUTER_WAN.items():
        assert mapped[node].split(":")[0] == wan, mapped
    for node in NODES:
        wait_until(
            lambda n=node: (
                (_json(project, n, "status") or {"dht": {"routing_table_size": 0}})["dht"][
                    "routing_table_size"
                ]
                >= 1
            ),
            60,
            f"{node} to join the DHT",
        )
    for a, b in (("cone-a", "cone-b"), ("sym-a", "sym-b")):
        for x, y in ((a, b), (b, a)):
            wait_until(lambda x=x, y=y: _json(project, x, "lookup", ids[y]), 60, f"{y}'s record from {x}")

    # Cone NATs: the first pings may go through a relay while the direct checks run; then direct.
    cone = wait_until(
        lambda: (p := _json(project, "cone-a", "ping", ids["cone-b"])) and p["via"] == "direct" and p,
        60,
        "cone-a -> cone-b to go direct",
    )
    assert cone["received"] == 1 and cone["reason"] is None, cone

    # Symmetric NATs: the direct checks fail (a new port per destination), the pair stays relayed and the
    # ping says why once the checks have run.
    def relayed_with_reason() -> Any:
        p = _json(project, "sym-a", "ping", ids["sym-b"])
        return p if p and "failed" in (p["reason"] or "") else None

    sym = wait_until(relayed_with_reason, 60, "sym-a -> sym-b direct checks to fail")
    assert sym["received"] == 1 and sym["via"] in ("turn", "keyed"), sym
    again = _json(project, "sym-b", "ping", ids["sym-a"])
    assert again["received"] == 1 and again["via"] in ("turn", "keyed") and again["reason"], again

    # SIGTERM (docker stop) ends every service, the routers too, cleanly: exit status 0, not 137.
    running = project.containers(all_states=False)
    project("stop", "--timeout", "20")
    codes = {c: run(["docker", "inspect", "-f", "{{.State.ExitCode}}", c]).stdout.strip() for c in running}
    assert set(codes.values()) == {"0"}, codes
