"""Driving a compose file as a user does, with ``docker-compose`` (v1) or ``docker compose`` (v2),
whichever the machine has: a project with a unique ``-p`` name, built on the local base image
(``scripts/docker-base.sh``), and ``down -v`` afterwards, also on failure, that must leave no container,
network or volume of the project. Shared by test_compose.py and test_compose_nat.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "coremesh-base:bookworm"


def compose_command() -> list[str]:
    """``docker-compose`` if installed, else ``docker compose``; fails the test when neither works."""
    if shutil.which("docker") is None:
        pytest.fail("docker is not installed: scripts/test.sh installs docker.io (apt)")
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if v2.returncode == 0:
        return ["docker", "compose"]
    pytest.fail("neither docker-compose nor `docker compose` is installed: scripts/test.sh installs it")


def run(
    cmd: list[str], *, timeout: float = 120, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def wait_until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


@dataclass
class Project:
    """One compose project (a unique ``-p`` name) of ``file``, driven from the repository root."""

    compose: list[str]
    name: str
    env: dict[str, str]
    file: str = "compose/docker-compose.yml"
    volumes: set[str] = field(default_factory=set)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [*self.compose, "-f", self.file, "-p", self.name, *args],
            check=check,
            timeout=timeout,
            env=self.env,
        )

    def cli(self, index: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``coremesh ARGS --json`` inside node container ``index`` (1-based), with the CLI's defaults."""
        return self("exec", "-T", f"--index={index}", "node", "coremesh", *args, "--json", check=check)

    def service_cli(self, service: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``coremesh ARGS --json`` inside the container of ``service``, with the CLI's defaults."""
        return self("exec", "-T", service, "coremesh", *args, "--json", check=check)

    def bootstrap_status(self) -> Any:
        """The bootstrap's ``status --json`` (its admin API is on loopback in its container), or None."""
        result = self(
            "exec",
            "-T",
            "bootstrap",
            "coremesh",
            "--admin",
            "127.0.0.1:7948",
            "status",
            "--json",
            check=False,
        )
        return json.loads(result.stdout) if result.returncode == 0 else None

    def cli_json(self, index: int, *args: str) -> Any:
        return json.loads(self.cli(index, *args).stdout)

    def containers(self, *, all_states: bool = True) -> list[str]:
        flags = ["-a"] if all_states else []
        out = run(["docker", "ps", "-q", *flags, "--filter", f"label=com.docker.compose.project={self.name}"])
        return out.stdout.split()

    def remember_volumes(self) -> None:
        """The volumes the project's containers mount, the anonymous ones too (v1 labels those not)."""
        for container in self.containers():
            out = run(
                ["docker", "inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", container], check=False
            )
            self.volumes.update(out.stdout.split())


@contextmanager
def compose_project(file: str) -> Iterator[Project]:
    """A fresh project of ``file`` on the local base image; ``down -v`` at the end must leave nothing."""
    compose = compose_command()
    if run(["docker", "info"], check=False, timeout=30).returncode != 0:
        pytest.fail("no docker daemon answers: scripts/test.sh starts dockerd when none does")
    run(["sh", "scripts/docker-base.sh", BASE_IMAGE], timeout=600)
    env = dict(os.environ, COREMESH_BASE_IMAGE=BASE_IMAGE)
    p = Project(compose, f"cmtest{uuid.uuid4().hex[:10]}", env, file)
    try:
        yield p
    finally:
        p.remember_volumes()
        p("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=180)
        label = f"label=com.docker.compose.project={p.name}"
        left = {
            "containers": p.containers(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split()
            + [
                v
                for v in sorted(p.volumes)
                if run(["docker", "volume", "inspect", v], check=False).returncode == 0
            ],
        }
        assert not any(left.values()), f"down -v left behind: {left}"
