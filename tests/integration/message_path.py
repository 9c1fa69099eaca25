"""Which source files one message crosses, traced on two real nodes over loopback.

Send: from ``Connection.send`` until the datagram is handed to the socket (the first ``sendto`` /
``sendmsg``). Receive: from the runtime's socket read until the message reaches the receiving
``Connection`` (``Connection._deliver``). The profiler hook sees every Python call; only files of the
``coremesh`` package are counted. Run ``python -m tests.integration.message_path`` to print the
files; ``test_message_path.py`` holds the limit.
"""

from __future__ import annotations

import asyncio
import select
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import coremesh
from coremesh import MeshConfig, MeshNode

PACKAGE = Path(coremesh.__file__).resolve().parent
SOCKET_SENDS = frozenset({"sendto", "sendmsg", "sendmmsg"})


@dataclass
class Trace:
    send: list[str]
    receive: list[str]


class _Recorder:
    """Records the coremesh files entered, in first-entry order, until ``stop_at`` is seen."""

    def __init__(self, stop_at: str) -> None:
        self.files: list[str] = []
        self.stop_at = stop_at
        self.done = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.done:
            return
        if event == "c_call" and self.stop_at == "socket" and getattr(arg, "__name__", "") in SOCKET_SENDS:
            self.done = True
            return
        if event != "call":
            return
        path = Path(frame.f_code.co_filename)
        if not path.is_relative_to(PACKAGE):
            return
        name = str(path.relative_to(PACKAGE.parent))
        if name not in self.files:
            self.files.append(name)
        if self.stop_at == frame.f_code.co_name:
            self.done = True


def _runtime(node: MeshNode) -> Any:
    """The node's UDP runtime (``_runtime`` before the mesh rooms were split, so the trace also runs
    on older commits for a before/after comparison)."""
    parts = getattr(node, "_parts", node)
    return getattr(parts, "runtime", None) or getattr(parts, "_runtime", None)


async def trace_one_message() -> Trace:
    config = MeshConfig(listen_addr="127.0.0.1:0", heartbeat_interval=30.0, idle_timeout=120.0)
    async with MeshNode(config) as a, MeshNode(config) as b:
        conn = await a.connect(b.peer_id, addr=b.local_address)
        await conn.send(b"warm-up")
        peer_conn = b.get_connection(a.peer_id)
        assert peer_conn is not None
        assert await peer_conn.receive() == b"warm-up"
        loop = asyncio.get_running_loop()
        runtime_a, runtime_b = _runtime(a), _runtime(b)
        assert runtime_a is not None and runtime_b is not None
        sock_a, sock_b = runtime_a.sock, runtime_b.sock
        # Hold both sockets' reads: the send trace sees A send and nothing else (no late ACK from B
        # read meanwhile), and B reads the datagram under its own trace.
        loop.remove_reader(sock_a.fileno())
        loop.remove_reader(sock_b.fileno())
        try:
            rec = _Recorder(stop_at="socket")
            sys.setprofile(rec)
            try:
                await conn.send(b"traced")
                deadline = loop.time() + 10
                while not rec.done and loop.time() < deadline:
                    await asyncio.sleep(0)
            finally:
                sys.setprofile(None)
            assert rec.done, "the message never reached A's socket"
            send_files = rec.files
            readable, _, _ = select.select([sock_b], [], [], 10)
            assert readable, "the datagram never reached B's socket"
            rec = _Recorder(stop_at="_deliver")
            sys.setprofile(rec)
            try:
                runtime_b._on_readable()
            finally:
                sys.setprofile(None)
            assert rec.done, "the datagram B read did not reach its Connection"
            receive_files = rec.files
        finally:
            loop.add_reader(sock_a.fileno(), runtime_a._on_readable)
            loop.add_reader(sock_b.fileno(), runtime_b._on_readable)
        assert await peer_conn.receive() == b"traced"
        return Trace(send=send_files, receive=receive_files)


def main() -> None:
    trace = asyncio.run(trace_one_message())
    for direction, files in (("send", trace.send), ("receive", trace.receive)):
        print(f"{direction}: {len(files)} files")
        for f in files:
            print(f"  {f}")


if __name__ == "__main__":
    main()
