"""pytest helpers: the ``natlab`` fixture and a loud root check (no skips: a missing prerequisite
fails the test)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .lab import Lab, LabError, Node, check_prerequisites
from .runs import cleanup
from .topology import Topology


def require_root() -> None:
    """Fail the test (not skip) when the lab cannot run here."""
    try:
        check_prerequisites()
    except LabError as exc:
        pytest.fail(f"{exc} (the test command installs what it needs: sh scripts/test.sh)")


@pytest.fixture
def natlab() -> Iterator[Callable[..., Lab]]:
    """A factory: ``lab = natlab(topology, **kwargs)`` builds and starts a :class:`Lab`; every lab it
    made is taken down when the test ends, pass or fail. Runs left by killed test processes are
    removed first (only those whose owner is gone)."""
    require_root()
    cleanup()
    labs: list[Lab] = []

    def make(topology: Topology, **kwargs: Any) -> Lab:
        lab = Lab(topology, **kwargs)
        labs.append(lab)
        lab.up()
        return lab

    try:
        yield make
    finally:
        for lab in reversed(labs):
            lab.down()


def start_stun(
    node: Node,
    primary: str = "192.0.2.10",
    alternate: str | None = "192.0.2.11",
    *,
    port: int = 3478,
    admin: str = "127.0.0.1:9641",
    timeout: float = 20.0,
) -> subprocess.Popen[bytes]:
    """Run the project's relay as an RFC 5780 STUN server in ``node`` (``PRIMARY:PORT`` with the
    alternate address ``alternate``) and wait until it answers. Stopped with the lab; its output
    goes to ``LAB.workdir/NODE.stun.log``."""
    listen = f"[{primary}]:{port}" if ":" in primary else f"{primary}:{port}"
    argv = ["-m", "coremesh_relay", "--listen", listen, "--admin", admin, "--log-level", "warning"]
    if alternate:
        argv += ["--alt-address", alternate]
    log = node.lab.workdir / f"{node.name}.stun.log"
    with open(log, "wb") as out:
        proc = node.python(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log.read_text(errors="replace")
            raise LabError(f"the STUN server in {node.name} exited with {proc.returncode}: {err[-500:]}")
        result = node.run(
            [sys.executable, "-m", "coremesh_natlab.rtt", listen, "--count", "1", "--timeout", "0.3"]
        )
        if json.loads(result.stdout)["lost"] == 0:
            return proc
    raise LabError(f"the STUN server in {node.name} did not answer within {timeout}s")
