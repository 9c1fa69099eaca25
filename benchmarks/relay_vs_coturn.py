"""Relay benchmark (issue 4): coremesh-relay side by side with coturn, in one run, on loopback.

  .venv/bin/python benchmarks/relay_vs_coturn.py [--duration 5] [--clients 10] [--hold 200]

Starts coturn's ``turnserver`` and then ``coremesh-relay`` (one at a time, each on 127.0.0.1 with the
same realm, user and a relay port range of its own) and measures each with the same clients:

- relayed throughput: ``turnutils_uclient -m CLIENTS -l 1200 -z 0`` (10 clients sending as fast as
  they can) to ``turnutils_peer`` (coturn's UDP echo peer), once with Send indications (``-s``) and
  once with uclient's default ChannelBind + ChannelData. The figure is the rate of echoed bytes
  uclient reports receiving (its per-second ``tot_recv_bytes``, timed here), over DURATION seconds
  that start WARMUP seconds after uclient's first report (its clients start at random within 6 s).
  Every such byte crossed the relay twice (to the peer and back).
- allocations per second: our client core (``coremesh.turn.TurnClient``) in this process, 8 at a
  time, each cycle a fresh UDP socket doing Allocate (401 challenge, then the authenticated request)
  and Refresh with LIFETIME 0.
- STUN binding round trip: a raw UDP socket, one Binding request at a time; median and p95.
- memory per allocation: the server's VmRSS after HOLD allocations are held open, minus before,
  divided by HOLD.

Writes benchmarks/results/relay-<timestamp>.json and prints a table with the ratio ours/coturn.
The machine is shared: each measurement records the CPU that other processes took meanwhile
(machine-wide busy time minus this run's processes, as a share of all cores), as
benchmarks/run_transport.py does. Every process is stopped by its PID, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "anchors"))
sys.path.insert(0, str(ROOT))  # the source tree imports even when coremesh isn't installed

from common import LOOPBACK, Lines, exit_on_sigterm, free_port, rss_kib, stop  # noqa: E402
from coturn_common import (  # noqa: E402
    Server,
    Stat,
    binding_request,
    coremesh_argv,
    coturn_argv,
    free_udp_tcp_port,
    is_binding_success,
    parse_stat,
    proc_cpu_s,
    start_peer,
    start_server,
    tool,
)

from coremesh.addr import Address  # noqa: E402
from coremesh.turn import Allocated, AllocationFailed, AllocationLost, TurnClient  # noqa: E402

REALM = "bench"
USER, PASSWORD = "bench", "bench-password"
PORT_RANGES = {"coturn": (20000, 29999), "coremesh": (10000, 19999)}
MSG_SIZE = 1200


# ---------------------------------------------------------------------------------- CPU accounting


def machine_busy_s() -> float:
    """CPU seconds spent busy on all cores since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Other processes' CPU during a measurement: machine busy time minus ours (this process, the
    children already waited for, and the live children in ``live``), as % of all cores."""

    def __init__(self, live: list[int]) -> None:
        self.live = live

    def own(self) -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + sum(map(proc_cpu_s, self.live))

    def measure(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0, busy0, own0 = time.perf_counter(), machine_busy_s(), self.own()
        try:
            result = fn()
        except Exception as e:  # one failed measurement must not lose the others
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        wall, busy, own = time.perf_counter() - t0, machine_busy_s() - busy0, self.own() - own0
        result.setdefault("status", "ok")
        result["wall_s"] = round(wall, 2)
        if wall >= 1.0:
            result["other_cpu_percent"] = round(
                max(0.0, busy - own) / (wall * (os.cpu_count() or 1)) * 100, 1
            )
        return result


# ------------------------------------------------------------------------------------ measurements


def stun_rtt(port: int, count: int) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.connect((LOOPBACK, port))
        s.settimeout(1.0)
        samples: list[float] = []
        lost = 0
        for i in range(count + 50):
            req, tid = binding_request()
            t0 = time.perf_counter()
            s.send(req)
            try:
                while not is_binding_success(s.recv(2048), tid):
                    pass
            except TimeoutError:
                lost += 1
                continue
            if i >= 50:  # warm-up
                samples.append(time.perf_counter() - t0)
    samples.sort()
    return {
        "count": len(samples),
        "lost": lost,
        "median_us": round(statistics.median(samples) * 1e6, 1),
        "p95_us": round(samples[int(len(samples) * 0.95)] * 1e6, 1),
    }


async def _drive(client: TurnClient, sock: socket.socket, want: type, timeout: float = 10.0) -> Any:
    """Run one client core over its socket until an event of type ``want`` (or a failure)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        for d in client.datagrams_to_send():
            sock.sendto(d, client.server)
        while (event := client.next_event()) is not None:
            if isinstance(event, want):
                return event
            if isinstance(event, AllocationFailed | AllocationLost):
                raise RuntimeError(f"{type(event).__name__}: {event.reason}")
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"no {want.__name__} within {timeout} s")
        timer = client.get_timer()
        wait = deadline - now if timer is None else max(0.0, min(deadline, timer) - now)
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), wait)
        except TimeoutError:
            client.handle_timer(time.monotonic())
        else:
            client.on_datagram(data, time.monotonic())


_source = itertools.count()


def _socket() -> socket.socket:
    """A client socket on the next of 10160 loopback source IPs (127.0.1.1-127.0.40.254). coturn
    frees a released allocation only on its next timer tick, about a second later, and answers an
    Allocate from that same 5-tuple with 437: the kernel would soon hand out the same port again
    on one IP."""
    n = next(_source) % (40 * 254)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((f"127.0.{1 + n // 254}.{1 + n % 254}", 0))
    s.setblocking(False)
    return s


def _client(port: int) -> TurnClient:
    return TurnClient(Address(LOOPBACK, port), USER, PASSWORD, random_bytes=os.urandom)


async def _allocate(port: int) -> tuple[TurnClient, socket.socket]:
    sock = _socket()
    client = _client(port)
    try:
        client.allocate(time.monotonic())
        await _drive(client, sock, Allocated)
    except BaseException:
        sock.close()
        raise
    return client, sock


async def _release(client: TurnClient, sock: socket.socket) -> None:
    try:
        client.close(time.monotonic())
        await _drive(client, sock, AllocationLost)
    except RuntimeError as e:  # AllocationLost("closed") is the event we want; anything else is not
        raise RuntimeError(f"release failed: {e}") from None
    finally:
        sock.close()


async def _alloc_rate(port: int, seconds: float, parallel: int) -> dict[str, Any]:
    done = 0
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            client, sock = await _allocate(port)
            await _release(client, sock)
            done += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    wall = time.perf_counter() - t0
    return {
        "allocations": done,
        "per_s": round(done / wall, 1),
        "parallel": parallel,
        "client_cpu_percent": round((time.process_time() - cpu0) / wall * 100, 1),
    }


def alloc_rate(port: int, seconds: float, parallel: int = 8) -> dict[str, Any]:
    return asyncio.run(_alloc_rate(port, seconds, parallel))


async def _memory(server: Server, hold: int) -> dict[str, Any]:
    for _ in range(3):  # warm-up: the first allocations load code and fill caches
        await _release(*(await _allocate(server.port)))
    await asyncio.sleep(1.5)  # coturn frees a released allocation on its next timer tick
    before = rss_kib(server.pid)
    held: list[tuple[TurnClient, socket.socket]] = []
    try:
        for i in range(0, hold, 25):
            held += await asyncio.gather(*(_allocate(server.port) for _ in range(min(25, hold - i))))
        await asyncio.sleep(0.5)
        after = rss_kib(server.pid)
    finally:
        results = await asyncio.gather(*(_release(c, s) for c, s in held), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    return {
        "held": len(held),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_allocation": round((after - before) / max(1, len(held)), 2),
        "release_failures": len(failures),
    }


def memory(server: Server, hold: int) -> dict[str, Any]:
    return asyncio.run(_memory(server, hold))


def throughput(
    server: Server, peer_port: int, *, clients: int, warmup: float, duration: float, channels: bool
) -> dict[str, Any]:
    argv = [tool("turnutils_uclient"), "-p", str(server.port), "-e", LOOPBACK, "-r", str(peer_port)]
    argv += ["-u", USER, "-w", PASSWORD, "-m", str(clients), "-l", str(MSG_SIZE)]
    argv += ["-n", "10000000", "-z", "0"]  # never finishes by itself: stopped after the window
    if not channels:
        argv.append("-s")
    argv.append(LOOPBACK)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = Lines(proc)
    t0 = time.perf_counter()
    stats: list[Stat] = []
    cpu: list[float] = []
    tail: list[str] = []
    try:
        while True:
            try:
                line = lines.next(timeout=max(0.1, warmup + duration + 5 - (time.perf_counter() - t0)))
            except (TimeoutError, RuntimeError):
                break
            tail = [*tail[-20:], line]
            stat = parse_stat(line, time.perf_counter() - t0)
            if stat is None:
                continue
            stats.append(stat)
            cpu.append(proc_cpu_s(server.pid))
            if stat.t >= stats[0].t + warmup + duration:
                break
    finally:
        stop(proc)
    start = next((i for i, s in enumerate(stats) if s.t >= stats[0].t + warmup), None) if stats else None
    if start is None or start == len(stats) - 1:
        return {
            "status": "failed",
            "error": "uclient stopped before the measurement window",
            "returncode": proc.returncode,
            "uclient_tail": "\n".join(tail[-8:]),
        }
    a, b = stats[start], stats[-1]
    dt = b.t - a.t
    sent = b.sent_msgs - a.sent_msgs
    return {
        "mb_per_s": round((b.recv_bytes - a.recv_bytes) / dt / 1e6, 2),
        "sent_mb_per_s": round((b.sent_bytes - a.sent_bytes) / dt / 1e6, 2),
        "msgs_per_s": round((b.recv_msgs - a.recv_msgs) / dt),
        "loss_percent": round(100 * (1 - (b.recv_msgs - a.recv_msgs) / sent), 1) if sent else None,
        "window_s": round(dt, 2),
        "server_cpu_percent": round((cpu[-1] - cpu[start]) / dt * 100, 1),
        "clients": b.clients,
        "mode": "ChannelData" if channels else "Send/Data indications",
        "command": " ".join(argv),
    }


# ------------------------------------------------------------------------------------------- runs


def measure_server(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    port = free_udp_tcp_port()
    ports = PORT_RANGES[name]
    if name == "coturn":
        argv = coturn_argv(workdir, port, REALM, f"{USER}:{PASSWORD}", ports)
    else:
        relay = shutil.which("coremesh-relay") or str(Path(sys.executable).with_name("coremesh-relay"))
        argv = coremesh_argv(relay, port, free_port(), REALM, f"{USER}:{PASSWORD}", ports)
    server = start_server(name, argv, port, workdir / f"{name}.log")
    peer_proc: subprocess.Popen[bytes] | None = None
    try:
        peer_proc, peer_port = start_peer(workdir / f"peer-{name}.log")
        meter = CpuMeter([server.pid, peer_proc.pid])
        result: dict[str, Any] = {"command": " ".join(argv), "pid": server.pid}
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("stun_rtt", lambda: stun_rtt(port, args.rtt_count)),
            ("alloc_rate", lambda: alloc_rate(port, args.duration)),
            ("memory", lambda: memory(server, args.hold)),
            (
                "throughput_send",
                lambda: throughput(
                    server, peer_port, clients=args.clients, warmup=args.warmup, duration=args.duration,
                    channels=False,
                ),
            ),
            (
                "throughput_channel",
                lambda: throughput(
                    server, peer_port, clients=args.clients, warmup=args.warmup, duration=args.duration,
                    channels=True,
                ),
            ),
        ]  # fmt: skip
        for step, fn in steps:
            print(f"[{name}] {step} ...", file=sys.stderr)
            result[step] = meter.measure(fn)
            r = result[step]
            print(
                f"[{name}] {step}: {r.get('status')}; other CPU {r.get('other_cpu_percent', '-')} %",
                file=sys.stderr,
            )
            if server.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {server.proc.returncode} during {step}")
        result["rss_end_kib"] = rss_kib(server.pid)
        return result
    finally:
        if peer_proc is not None:
            stop(peer_proc)
        stop(server.proc)


# (label, step, key, unit, better): the table; ratio = ours / coturn.
TABLE: list[tuple[str, str, str, str, str]] = [
    ("relayed throughput, Send indications", "throughput_send", "mb_per_s", "MB/s", "higher"),
    ("  loss in the window", "throughput_send", "loss_percent", "%", "lower"),
    ("  server CPU", "throughput_send", "server_cpu_percent", "% of a core", "-"),
    ("relayed throughput, ChannelData", "throughput_channel", "mb_per_s", "MB/s", "higher"),
    ("  loss in the window", "throughput_channel", "loss_percent", "%", "lower"),
    ("  server CPU", "throughput_channel", "server_cpu_percent", "% of a core", "-"),
    ("allocations per second (Allocate + Refresh 0)", "alloc_rate", "per_s", "/s", "higher"),
    ("  client CPU (our client core)", "alloc_rate", "client_cpu_percent", "% of a core", "-"),
    ("STUN binding round trip, median", "stun_rtt", "median_us", "µs", "lower"),
    ("STUN binding round trip, p95", "stun_rtt", "p95_us", "µs", "lower"),
    ("memory per allocation", "memory", "kib_per_allocation", "KiB", "lower"),
]


def table(results: dict[str, dict[str, Any]]) -> tuple[list[list[str]], dict[str, float]]:
    rows = [["metric", "coturn", "coremesh", "unit", "ours/coturn"]]
    ratios: dict[str, float] = {}

    def cell(name: str, step: str, key: str) -> Any:
        r = results.get(name, {}).get(step, {})
        if r.get("status") != "ok":
            return r.get("status", "-")
        return r.get(key, "-")

    for label, step, key, unit, _better in TABLE:
        theirs, ours = cell("coturn", step, key), cell("coremesh", step, key)
        ratio = ""
        if (
            isinstance(ours, int | float)
            and isinstance(theirs, int | float)
            and theirs
            and not label.startswith(" ")
        ):
            ratios[label] = round(ours / theirs, 2)
            ratio = f"{ratios[label]:.2f}"
        rows.append([label, str(theirs), str(ours), unit, ratio])
    for step in ("stun_rtt", "alloc_rate", "memory", "throughput_send", "throughput_channel"):
        rows.append(
            [
                f"other processes' CPU during {step}",
                *(
                    str(results.get(n, {}).get(step, {}).get("other_cpu_percent", "-"))
                    for n in ("coturn", "coremesh")
                ),
                "% of all cores",
                "",
            ]
        )
    return rows, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per throughput/alloc run")
    ap.add_argument("--warmup", type=float, default=7.0, help="seconds after uclient's first report (7)")
    ap.add_argument("--clients", type=int, default=10, help="turnutils_uclient -m (10)")
    ap.add_argument("--hold", type=int, default=200, help="allocations held open for the memory figure")
    ap.add_argument("--rtt-count", type=int, default=2000, help="STUN binding round trips (2000)")
    ap.add_argument("--only", default="coturn,coremesh", help="comma-separated: coturn, coremesh")
    args = ap.parse_args()
    exit_on_sigterm()
    for t in ("turnserver", "turnutils_uclient", "turnutils_peer"):
        tool(t)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "benchmark": "relay_vs_coturn",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "settings": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "coturn_version": subprocess.run(
            [tool("turnserver"), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "results": {},
    }
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        with tempfile.TemporaryDirectory(prefix=f"relay-bench-{name}-") as tmp:
            try:
                report["results"][name] = measure_server(name, args, Path(tmp))
            except Exception as e:
                report["results"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                print(f"[{name}] failed: {e}", file=sys.stderr)

    rows, ratios = table(report["results"])
    report["ratios"] = ratios
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"relay-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}")
    print(f"\nwritten: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
