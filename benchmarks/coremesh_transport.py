"""Core Mesh transport benchmark: two node processes on loopback.

    python benchmarks/coremesh_transport.py all --duration 5

Measures, at the receiver:
- throughput of one connection with a fixed 1200-byte datagram size (PMTU discovery off);
- throughput with RFC 8899 path-MTU discovery (loopback: datagrams grow towards 64 KB);
- messages per second for 64-byte messages;
- connect-to-first-message latency (a fresh node dials, sends, and the echo comes back);
- the round-trip time ``MeshNode.ping`` reports on that connection;
- resident memory per open connection at the listener.
Prints one JSON object. Only 127.0.0.1 is used; child processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from coremesh import MeshConfig, MeshNode, PeerId

DONE = b"__done__"


def rss_kib(pid: int | None = None) -> int:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def config(pmtu: bool) -> MeshConfig:
    return MeshConfig(
        listen_addr="127.0.0.1:0", pmtu_discovery=pmtu, heartbeat_interval=5.0, idle_timeout=60.0
    )


async def serve(pmtu: bool) -> None:
    """The receiving process: prints its address, counts what arrives, answers a report."""
    node = MeshNode(config(pmtu))
    await node.start()
    print(json.dumps({"peer": f"{node.peer_id}@{node.local_address}", "pid": os.getpid()}), flush=True)

    async def handle(conn_peer: PeerId) -> None:
        conn = node.get_connection(conn_peer)
        if conn is None:
            return
        count = 0
        nbytes = 0
        first = last = 0.0
        datagrams_at_first = 0
        async for data in conn:
            if data == DONE:
                report = {
                    "messages": count,
                    "bytes": nbytes,
                    "seconds": last - first,
                    "datagrams": node.stats().get("datagrams_received", 0) - datagrams_at_first,
                    "rss_kib": rss_kib(),
                }
                await conn.send(json.dumps(report).encode())
                count = nbytes = 0
                continue
            if data.startswith(b"echo:"):
                await conn.send(data)
                continue
            now = time.perf_counter()
            if count == 0:
                first = now
                datagrams_at_first = node.stats().get("datagrams_received", 0)
            last = now
            count += 1
            nbytes += len(data)

    tasks: set[asyncio.Task[None]] = set()

    def on_event(event: Any) -> None:
        if event.state.value == "connected":
            task = asyncio.ensure_future(handle(event.peer_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    node.on_connection(on_event)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop.set)  # parent closes stdin to stop us
    await stop.wait()
    await node.stop()


def spawn_server(pmtu: bool) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, __file__, "serve"] + (["--pmtu"] if pmtu else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)["peer"]


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def blast(target: str, pmtu: bool, size: int, duration: float) -> dict[str, Any]:
    async with MeshNode(config(pmtu)) as node:
        conn = await node.connect(target)
        payload = os.urandom(size)
        # Warm up (and let PMTU discovery settle) before measuring.
        warm_end = time.perf_counter() + min(1.0, duration / 3)
        while time.perf_counter() < warm_end:
            await conn.send(payload)
        await conn.send(DONE)
        json.loads(await asyncio.wait_for(conn.receive(), 30))
        end = time.perf_counter() + duration
        sent = 0
        while time.perf_counter() < end:
            for _ in range(64):
                await conn.send(payload)
            sent += 64
        await conn.send(DONE)
        report: dict[str, Any] = json.loads(await asyncio.wait_for(conn.receive(), 60))
        report["sent"] = sent
        peers = node.get_peers()
        report["datagram_size"] = peers[0].datagram_size if peers else None  # the sender's, after PMTUD
        return report


async def connect_latency(target: str, tries: int) -> tuple[list[float], list[float]]:
    """Milliseconds from connect to the first echoed message, and the RTT ``ping`` reports then."""
    samples, pings = [], []
    for i in range(tries):
        async with MeshNode(config(False)) as node:
            start = time.perf_counter()
            conn = await node.connect(target)
            await conn.send(f"echo:{i}".encode())
            await conn.receive()
            samples.append((time.perf_counter() - start) * 1000)
            pings.append((await node.ping(conn.peer_id)).rtt * 1000)
    return samples, pings


async def memory_per_connection(target: str, server_pid: int, count: int) -> float:
    before = rss_kib(server_pid)
    nodes = [MeshNode(config(False)) for _ in range(count)]
    for node in nodes:
        await node.start()
    conns = await asyncio.gather(*(n.connect(target) for n in nodes))
    for conn in conns:
        await conn.send(b"echo:x")
        await conn.receive()
    await asyncio.sleep(0.5)
    after = rss_kib(server_pid)
    for node in nodes:
        await node.stop()
    return (after - before) / count


def throughput(report: dict[str, Any]) -> dict[str, Any]:
    seconds = report["seconds"] or float("inf")
    return {
        "mbit_per_s": round(report["bytes"] * 8 / seconds / 1e6, 1),
        "mb_per_s": round(report["bytes"] / seconds / 1e6, 1),
        "datagrams_per_s": round(report["datagrams"] / seconds),
        "datagram_size": report.get("datagram_size"),
    }


def run_all(duration: float) -> dict[str, Any]:
    """Keys follow benchmarks/run_transport.py's hook: udp_1200, udp_pmtu, msgs_64, connect, rss."""
    results: dict[str, Any] = {}
    for pmtu, key in ((False, "udp_1200"), (True, "udp_pmtu")):
        proc, target = spawn_server(pmtu)
        try:
            results[key] = throughput(asyncio.run(blast(target, pmtu, 64 * 1024, duration)))
        finally:
            stop_server(proc)
    proc, target = spawn_server(False)
    try:
        r = asyncio.run(blast(target, False, 64, duration))
        results["msgs_64"] = {"msgs_per_s": round(r["messages"] / r["seconds"])}
        lat, pings = (sorted(x) for x in asyncio.run(connect_latency(target, 20)))
        results["connect"] = {
            "median_ms": round(statistics.median(lat), 3),
            "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 3),
            "tries": len(lat),
        }
        results["ping"] = {
            "median_ms": round(statistics.median(pings), 3),
            "p95_ms": round(pings[int(len(pings) * 0.95) - 1], 3),
            "tries": len(pings),
        }
        per = asyncio.run(memory_per_connection(target, proc.pid, 100))
        results["rss"] = {"kib_per_connection": round(per, 1), "connections": 100}
    finally:
        stop_server(proc)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["all", "serve"])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--pmtu", action="store_true")
    args = parser.parse_args()
    if args.mode == "serve":
        asyncio.run(serve(args.pmtu))
        return 0
    print(json.dumps(run_all(args.duration), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
