"""Small helpers shared by the anchors (stdlib only: also imported from the py-libp2p venv)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

LOOPBACK = "127.0.0.1"


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `finally` blocks (and children()) stop our children too."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on 127.0.0.1 right now (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 3.0) -> None:
    """End a child we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Collects the Popen objects appended to it and stops every one on exit, also on failure."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            stop(p)


class Lines:
    """Reads a child's stdout lines on a thread, so a wait for the next line can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.queue: queue.Queue[str | None] = queue.Queue()
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self.queue.put(line.rstrip("\n"))
            self.queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float) -> str:
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"pid {self.proc.pid} printed nothing in {timeout} s") from None
        if line is None:
            raise RuntimeError(f"pid {self.proc.pid} exited (rc={self.proc.wait()}) before printing a line")
        return line
