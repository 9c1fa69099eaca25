"""Real daemon processes (``coremesh-node``, ``coremesh-bootstrap``) for integration tests.

Every process is started with ``sys.executable -m ...``, waited on with a timeout, and stopped by PID
(``Nodes.stop_all``, called from fixture teardown), also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 20.0
CLI_TIMEOUT = 30.0


def free_port(kind: int) -> int:
    """A port that was free a moment ago (bind to 0, read it, close): the CLI contract needs HOST:PORT."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    listen: str
    admin: str
    log_path: Path
    peer_id: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out


def http_get(admin: str, path: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def cli(admin: str, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coremesh", "--admin", admin, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(admin: str, *args: str) -> Any:
    result = cli(admin, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Nodes:
    """Starts nodes and stops every one of them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Node] = []
        self._ports: set[tuple[int, int]] = set()

    def _port(self, kind: int) -> int:
        """A free port no process of this manager was given yet: processes launched together have
        not bound theirs when the next one is picked, and the kernel may hand the same one out again
        (a second admin API on a port would then answer readiness for the wrong process)."""
        while True:
            port = free_port(kind)
            if (kind, port) not in self._ports:
                self._ports.add((kind, port))
                return port

    def start(self, name: str, *extra: str, module: str = "coremesh_node") -> Node:
        """Start ``python -m MODULE --listen --data-dir --admin EXTRA...`` and wait until it is ready."""
        node = self.launch(name, *extra, module=module)
        self.wait_ready(node)
        return node

    def launch(self, name: str, *extra: str, module: str = "coremesh_node") -> Node:
        """Start the process without waiting (see :meth:`wait_ready`)."""
        listen = f"127.0.0.1:{self._port(socket.SOCK_DGRAM)}"
        admin = f"127.0.0.1:{self._port(socket.SOCK_STREAM)}"
        log_path = self.tmp_path / f"{name}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    module,
                    "--listen",
                    listen,
                    "--data-dir",
                    str(self.tmp_path / name),
                    "--admin",
                    admin,
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        node = Node(name, proc, listen, admin, log_path)
        self.started.append(node)
        return node

    def wait_ready(self, node: Node, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if node.proc.poll() is not None:
                pytest.fail(f"{node.name} exited with {node.proc.returncode} before ready:\n{node.log()}")
            try:
                status, body = http_get(node.admin, "/readyz", timeout=1.0)
                if status == 200:
                    node.peer_id = body["peer_id"]
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{node.name} not ready within {timeout}s:\n{node.log()}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for node in self.started:
            stop_process(node.proc)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coremesh: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
