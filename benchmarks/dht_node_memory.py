"""Memory of a real node that knows 1000 peers (issue 6's target: under 50 MB resident).

  .venv/bin/python benchmarks/dht_node_memory.py [--peers 1000]

Starts one ``coremesh-node`` process (the node measured) and, in this process, a crowd of PEERS mesh
nodes (``MeshNode`` with the DHT, each on its own UDP socket on 127.0.0.1) that join the DHT through
it and publish their signed records. The measured node then looks every one of them up by PeerId
through its admin API, so that it holds PEERS records and a full routing table. Its VmRSS is read
from /proc before the crowd starts (an idle node), after the crowd joined, and after the lookups;
the result is written to benchmarks/results/dht-memory-<timestamp>.json. Only loopback is used;
the node process is stopped by its PID, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from coremesh import MeshConfig, MeshNode

RESULTS = Path(__file__).resolve().parent / "results"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(admin: str, path: str, timeout: float = 15.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def lookups(admin: str, ids: list[str]) -> tuple[list[float], int]:
    """Look every id up through the node's admin API, 16 at a time; (times in ms, failures)."""
    sem = asyncio.Semaphore(16)
    times: list[float] = []
    failed = 0

    async def one(peer: str) -> None:
        nonlocal failed
        async with sem:
            status, body = await asyncio.to_thread(get, admin, f"/v1/lookup?peer={peer}&timeout=10")
            if status == 200:
                times.append(float(body["elapsed_ms"]))
            else:
                failed += 1

    await asyncio.gather(*(one(p) for p in ids))
    return times, failed


async def run(peers: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, peers + 512)), hard))
    listen = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    admin = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    crowd: list[MeshNode] = []
    with tempfile.TemporaryDirectory(prefix="coremesh-dht-mem-") as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coremesh_node", "--listen", listen, "--admin", admin,
             "--data-dir", str(Path(tmp) / "node"), "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while get_ready(admin) is False:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the node did not start")
                time.sleep(0.05)
            time.sleep(1.0)
            idle = rss_mib(proc.pid)
            t0 = time.monotonic()
            for i in range(peers):
                node = MeshNode(MeshConfig(listen_addr="127.0.0.1:0", bootstrap_peers=(listen,)))
                await node.start()
                crowd.append(node)
                if i % 50 == 49:
                    await asyncio.sleep(0.2)  # let the joins settle
            await asyncio.sleep(3.0)
            joined = time.monotonic() - t0
            after_join = rss_mib(proc.pid)
            ids = [n.peer_id.to_text() for n in crowd]
            times, failed = await lookups(admin, ids)
            await asyncio.sleep(1.0)
            after_lookups = rss_mib(proc.pid)
            status = get(admin, "/v1/status")[1]
            dht = status.get("dht", {})
            return {
                "peers": peers,
                "crowd_join_s": round(joined, 1),
                "rss_idle_mib": round(idle, 1),
                "rss_after_join_mib": round(after_join, 1),
                "rss_after_lookups_mib": round(after_lookups, 1),
                "rss_per_known_peer_kib": round((after_lookups - idle) * 1024 / peers, 2),
                "records_known": dht.get("records"),
                "routing_table_size": dht.get("routing_table_size"),
                "lookups_ok": len(times),
                "lookups_failed": failed,
                "lookup_ms_median": round(statistics.median(times), 2) if times else None,
                "lookup_ms_p99": round(sorted(times)[int(len(times) * 0.99) - 1], 2) if times else None,
                "target_mib": 50,
            }
        finally:
            for node in crowd:
                await node.stop()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def get_ready(admin: str) -> bool:
    try:
        return get(admin, "/readyz", timeout=1.0)[0] == 200
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(run(args.peers))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"dht-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:26} {value}")
    print(f"(written to {os.path.relpath(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
