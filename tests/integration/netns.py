"""A private network namespace per test: its own loopback and firewall, removed afterwards.

Processes run inside with ``ip netns exec`` (which execs, so the PID we hold is the process's own)
and are stopped by that PID before the namespace is deleted, also when the test fails. Tests that
need this must run as root with iproute2 and iptables (the test command installs them); a missing
prerequisite fails the test loudly rather than skipping it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


def require_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, iptables)")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            pytest.fail(f"this test needs {tool!r} (the test command installs it: sh scripts/test.sh)")


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, str] = {}

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def spawn(self, *argv: str, log_path: str | None = None) -> subprocess.Popen[bytes]:
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        self.processes.append(proc)
        if log_path:
            self.logs[proc.pid] = log_path
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 15) -> str:
        path = self.logs.get(proc.pid)
        if path is None:
            return ""
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def python(self, *argv: str, log_path: str | None = None) -> subprocess.Popen[bytes]:
        return self.spawn(sys.executable, *argv, log_path=log_path)

    def iptables(self, *rule: str) -> None:
        self.run("iptables", *rule)

    def block_udp_between(self, port_a: int, port_b: int) -> None:
        """Drop UDP between two local ports, both directions: no direct path between them."""
        for src, dst in ((port_a, port_b), (port_b, port_a)):
            self.iptables("-A", "INPUT", "-p", "udp", "--sport", str(src), "--dport", str(dst), "-j", "DROP")

    def admin(self, address: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call a node's admin API inside the namespace (through curl-less Python in the namespace)."""
        code = (
            "import json,sys,urllib.request;"
            "req=urllib.request.Request(sys.argv[1],data=(sys.argv[3].encode() if sys.argv[3] else None),"
            "method=sys.argv[2],headers={'Content-Type':'application/json'});"
            "r=urllib.request.urlopen(req,timeout=20);print(r.read().decode())"
        )
        data = json.dumps(body) if body is not None else ""
        result = self.run(sys.executable, "-c", code, f"http://{address}{path}", method, data, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"admin {method} {path} failed: {result.stderr.strip()[-500:]}")
        return json.loads(result.stdout)

    def wait_http(self, address: str, path: str = "/readyz", timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                self.admin(address, "GET", path)
                return
            except (RuntimeError, ValueError) as exc:
                last = str(exc)
            for proc in self.processes:
                if proc.poll() is not None and proc.returncode not in (0, None):
                    command = proc.args[4:]  # type: ignore[index]
                    raise RuntimeError(
                        f"{command} in {self.name} exited with {proc.returncode}:\n{self.log_tail(proc)}"
                    )
            time.sleep(0.1)
        raise RuntimeError(f"{address}{path} not ready within {timeout}s: {last}")

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def private_namespace(prefix: str = "cmtest") -> Iterator[Namespace]:
    require_root_tools()
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    ns = Namespace(name)
    try:
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        ns.stop_all()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def free_ports(ns: Namespace, count: int) -> list[int]:
    """Distinct free ports inside the namespace (UDP and TCP both free)."""
    code = (
        "import socket,sys\nports=[]\nsocks=[]\n"
        "while len(ports)<int(sys.argv[1]):\n"
        " u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.bind(('127.0.0.1',0));p=u.getsockname()[1]\n"
        " t=socket.socket();\n"
        " try:\n  t.bind(('127.0.0.1',p))\n except OSError:\n  u.close();t.close();continue\n"
        " socks+=[u,t];ports.append(p)\nprint(' '.join(map(str,ports)))"
    )
    return [int(p) for p in ns.run(sys.executable, "-c", code, str(count)).stdout.split()]
