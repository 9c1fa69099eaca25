"""coturn helpers for the relay benchmark (issue 4): start ``turnserver`` or ``coremesh-relay`` on
loopback, wait for them, run ``turnutils_uclient`` and read its per-second statistics.

Stdlib only. Every process is started with its output in a file (never an undrained pipe) and is
stopped by its PID (see :func:`common.stop`).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from common import LOOPBACK, free_port, stop

MAGIC_COOKIE = 0x2112A442


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install Debian's coturn package (apt-get install coturn)")
    return path


def free_udp_tcp_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP right now."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def binding_request() -> tuple[bytes, bytes]:
    """A bare RFC 8489 Binding request (no attributes) and its transaction id."""
    tid = random.randbytes(12)
    return struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE) + tid, tid


def is_binding_success(data: bytes, tid: bytes) -> bool:
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == tid


def wait_for_stun(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"exited with {proc.returncode}: {log.read_text(errors='replace')[-1500:]}"
                )
            req, tid = binding_request()
            s.sendto(req, (LOOPBACK, port))
            try:
                data, _ = s.recvfrom(2048)
            except OSError:
                continue
            if is_binding_success(data, tid):
                return
    raise RuntimeError(f"no STUN answer on port {port} within {timeout} s")


def coturn_argv(workdir: Path, port: int, realm: str, user: str, ports: tuple[int, int]) -> list[str]:
    """``turnserver`` strictly on loopback: no config file, pid file and user DB in ``workdir``."""
    return [
        tool("turnserver"),
        "-n",
        "--listening-ip", LOOPBACK,
        "--relay-ip", LOOPBACK,
        "--listening-port", str(port),
        "--min-port", str(ports[0]),
        "--max-port", str(ports[1]),
        "--realm", realm,
        "--lt-cred-mech",
        "--user", user,
        "--allow-loopback-peers",
        "--no-tls", "--no-dtls", "--no-cli",
        "--log-file", "stdout",
        "--pidfile", str(workdir / "turnserver.pid"),
        "--userdb", str(workdir / "turndb"),
    ]  # fmt: skip


def coremesh_argv(
    relay: str, port: int, admin: int, realm: str, user: str, ports: tuple[int, int]
) -> list[str]:
    """``coremesh-relay`` with the same settings, named as coturn names them."""
    return [
        relay,
        "--listen", f"{LOOPBACK}:{port}",
        "--realm", realm,
        "--user", user,
        "--allow-loopback-peers",
        "--min-port", str(ports[0]),
        "--max-port", str(ports[1]),
        "--admin", f"{LOOPBACK}:{admin}",
        "--log-format", "text",
    ]  # fmt: skip


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_server(name: str, argv: list[str], port: int, log: Path) -> Server:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        wait_for_stun(port, proc, log)
    except BaseException:
        stop(proc)
        raise
    return Server(name, port, proc, log)


def start_peer(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``turnutils_peer`` (coturn's UDP echo peer) on 127.0.0.1; returns once it echoes."""
    port = free_port(socket.SOCK_DGRAM)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [tool("turnutils_peer"), "-L", LOOPBACK, "-p", str(port)], stdout=out, stderr=out
        )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.settimeout(0.2)
        for _ in range(50):
            s.sendto(b"ping", (LOOPBACK, port))
            try:
                if s.recvfrom(64)[0] == b"ping":
                    return proc, port
            except OSError:
                continue
    stop(proc)
    raise RuntimeError("turnutils_peer does not echo")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ turnutils_uclient

STATS = re.compile(
    r"start_mclient: msz=(\d+), tot_send_msgs=(\d+), tot_recv_msgs=(\d+), "
    r"tot_send_bytes ~ (\d+), tot_recv_bytes ~ (\d+)"
)


@dataclass(frozen=True)
class Stat:
    t: float  # perf_counter seconds since uclient started
    clients: int
    sent_msgs: int
    recv_msgs: int
    sent_bytes: int
    recv_bytes: int


def parse_stat(line: str, t: float) -> Stat | None:
    m = STATS.search(line)
    if m is None:
        return None
    return Stat(t, *(int(g) for g in m.groups()))
