"""A mesh of real node daemons, one network namespace each, where only neighbours can reach each other.

Every link is a veth pair with its own /30 from 203.0.113.0/24 (used only inside these namespaces);
a namespace has no route beyond its links and IP forwarding stays off, so a packet between two
nodes that share no link can only travel through the overlay, carried by the nodes between them.
Each daemon keeps its neighbours connected (``--connect``, one side of each link dials). Everything
is stopped by PID and every namespace deleted on exit, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coremesh.identity import load_or_create_identity

from .netns import Namespace, require_root_tools

NODE_PORT = 7400
ADMIN_PORT = 7401
# Hop links are withdrawn from routing after 3.5 s of silence (endpoint/overlay.py), long before an
# idle timeout ends a connection, so the end-to-end sessions ride out a repair.
FAST = ("--heartbeat-interval", "1s", "--idle-timeout", "15s")


class OverlayNet:
    """Namespaces named after the nodes, veth links between them, a node daemon in each."""

    def __init__(self, tmp_path: Path, names: list[str], links: list[tuple[str, str]]) -> None:
        self.tmp_path = tmp_path
        self.names = names
        self.links = links
        tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"
        self.ns = {n: Namespace(f"cmov-{tag}-{n}") for n in names}
        self.peer_ids: dict[str, str] = {}
        self.addresses: dict[tuple[str, str], str] = {}  # (node, neighbour) -> node's IP on that link
        self.ifaces: dict[tuple[str, str], str] = {}  # (node, neighbour) -> node's interface name
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._created: list[str] = []

    # -- building -----------------------------------------------------------------------------

    def create(self) -> None:
        require_root_tools()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
            self._created.append(ns.name)
            ns.run("ip", "link", "set", "lo", "up")
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
        for k, (a, b) in enumerate(self.links):
            base = 4 * k
            if base + 2 > 254:
                raise ValueError("too many links for one /24")
            va, vb = f"ov{k}a", f"ov{k}b"
            subprocess.run(
                [
                    "ip",
                    "link",
                    "add",
                    va,
                    "netns",
                    self.ns[a].name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    vb,
                    "netns",
                    self.ns[b].name,
                ],
                check=True,
                capture_output=True,
            )
            for node, iface, other, host in ((a, va, b, base + 1), (b, vb, a, base + 2)):
                ns = self.ns[node]
                ns.run("ip", "addr", "add", f"203.0.113.{host}/30", "dev", iface)
                ns.run("ip", "link", "set", iface, "up")
                self.addresses[(node, other)] = f"203.0.113.{host}"
                self.ifaces[(node, other)] = iface
        for name in self.names:
            identity = load_or_create_identity(self.tmp_path / name)
            self.peer_ids[name] = identity.peer_id.to_text()

    def start(self, *extra: str) -> None:
        """Start every node; the first-named end of each link dials the other and keeps it."""
        for name in self.names:
            dials = []
            for a, b in self.links:
                if a == name:
                    dials += ["--connect", f"{self.peer_ids[b]}@{self.addresses[(b, a)]}:{NODE_PORT}"]
            log = self.tmp_path / f"{name}.log"
            self.procs[name] = self.ns[name].python(
                "-m",
                "coremesh_node",
                "--listen",
                f"0.0.0.0:{NODE_PORT}",
                "--admin",
                f"127.0.0.1:{ADMIN_PORT}",
                "--data-dir",
                str(self.tmp_path / name),
                "--log-format",
                "json",
                *FAST,
                *dials,
                *extra,
                log_path=str(log),
            )
        for name in self.names:
            self.ns[name].wait_http(f"127.0.0.1:{ADMIN_PORT}")

    def stop(self) -> None:
        for ns in self.ns.values():
            ns.stop_all()
        for name in self._created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._created = []

    # -- operating ----------------------------------------------------------------------------

    def admin(self, node: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.ns[node].admin(f"127.0.0.1:{ADMIN_PORT}", method, path, body)

    def cli(self, node: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.ns[node].run(
            sys.executable,
            "-m",
            "coremesh",
            "--admin",
            f"127.0.0.1:{ADMIN_PORT}",
            *args,
            check=False,
            timeout=timeout,
        )

    def cli_json(self, node: str, *args: str) -> Any:
        result = self.cli(node, *args, "--json")
        if result.returncode != 0:
            raise RuntimeError(f"coremesh {' '.join(args)} on {node}: {result.stderr.strip()[-400:]}")
        return json.loads(result.stdout)

    def cut(self, a: str, b: str) -> None:
        """Silently drop everything on the link a-b, both ways (the link dies; nothing says so)."""
        for node, other in ((a, b), (b, a)):
            iface = self.ifaces[(node, other)]
            self.ns[node].iptables("-I", "INPUT", "-i", iface, "-j", "DROP")
            self.ns[node].iptables("-I", "OUTPUT", "-o", iface, "-j", "DROP")

    def wait(self, what: str, predicate: Any, timeout: float = 30.0) -> Any:
        """Poll ``predicate`` until it returns a true value (returned), or fail with the node logs."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except (RuntimeError, ValueError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.2)
        tails = "\n".join(f"--- {n}:\n{self.ns[n].log_tail(p, 8)}" for n, p in self.procs.items())
        raise AssertionError(f"{what} not within {timeout:g}s (last: {last!r})\n{tails}")


@contextlib.contextmanager
def overlay_net(tmp_path: Path, names: list[str], links: list[tuple[str, str]]) -> Iterator[OverlayNet]:
    net = OverlayNet(tmp_path, names, links)
    try:
        net.create()
        yield net
    finally:
        net.stop()
