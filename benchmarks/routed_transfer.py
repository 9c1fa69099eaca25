"""Routed transfer benchmark (issue 13): a connection through one transit node, next to Reticulum.

    python benchmarks/routed_transfer.py [--setups 20] [--duration 4] [--tiny]

Real processes on 127.0.0.1, one Python process (one MeshNode) per node, DHT and NAT traversal
off so that a routed connection stays routed. The topology: A and C are not connected to each
other; B is connected to both (B dials them), so A reaches C only through B. In one run:

1. link setup: ms from ``A.connect(C, path="routed")`` to connected (through B), median and p90
   over N fresh connections (close, then connect again: a new handshake each time); next to a
   direct connect to C from a fifth node E (the baseline);
2. throughput A->C through B: MB/s of application payload (64 KB messages with sequence
   numbers), measured at C after a warm-up, next to E->C direct in the same run;
3. transit death: a diamond A-B-C + A-D-C; B is SIGKILLed mid-transfer; seconds from the kill
   until C receives again, and whether anything was lost, duplicated or reordered. Then the
   line A-B-C without a backup: B is killed and restarted (same identity and port) a few
   seconds later; what happens to the connection, and seconds from the restart until C receives.

Prints a table with Reticulum's figures as quoted by the project's guide and the ratios, and
writes benchmarks/results/routed-<timestamp>.json. Child processes are stopped by PID.
``--tiny``: a quick run (few setups, short transfers, no restart wait) for the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "anchors"))
sys.path.insert(0, str(ROOT))  # the source tree imports even when coremesh isn't installed

from common import Lines, children, exit_on_sigterm, stop  # noqa: E402
from run_transport import machine_busy_s, own_cpu_s  # noqa: E402

# Reticulum, as quoted by the project's guide (measured by the project on this kind of machine).
RETICULUM = {"setup_ms": 2.8, "throughput_mb_per_s": 32.0, "recovery_s": 35.0}
HEADER = struct.Struct("!IQ")  # stream tag, sequence number
MESSAGE = 64 * 1024


# ------------------------------------------------------------------------------------------------
# One node process: a MeshNode driven by JSON lines on stdin, answering JSON lines on stdout.
# ------------------------------------------------------------------------------------------------
class Streams:
    """What C received, per stream tag: (sequence number, arrival time on CLOCK_MONOTONIC)."""

    def __init__(self) -> None:
        self.arrivals: dict[int, list[tuple[int, float]]] = {}
        self.nbytes: dict[int, int] = {}
        self.changed = asyncio.Event()

    def add(self, data: bytes) -> None:
        if len(data) < HEADER.size:
            return
        tag, seq = HEADER.unpack_from(data)
        self.arrivals.setdefault(tag, []).append((seq, time.monotonic()))
        self.nbytes[tag] = self.nbytes.get(tag, 0) + len(data)
        self.changed.set()

    def report(self, tag: int, warmup: float, event_t: float | None) -> dict[str, Any]:
        got = self.arrivals.pop(tag, [])
        self.nbytes.pop(tag, None)
        seqs = [s for s, _ in got]
        distinct = set(seqs)
        top = max(seqs, default=-1)
        out: dict[str, Any] = {
            "messages": len(got),
            "lost": top + 1 - len(distinct),
            "duplicated": len(seqs) - len(distinct),
            "reordered": sum(1 for a, b in itertools.pairwise(seqs) if b < a),
            "in_order": seqs == list(range(len(seqs))),
        }
        if got:
            start = got[0][1] + warmup
            window = [t for _, t in got if t >= start]
            if len(window) >= 2:
                seconds = window[-1] - window[0]
                out["mb_per_s"] = round((len(window) - 1) * MESSAGE / seconds / 1e6, 2)
                out["seconds"] = round(seconds, 3)
            gaps = [(b[1] - a[1], a[1], b[1]) for a, b in itertools.pairwise(got)]
            before = [g for g, _, end in gaps if event_t is None or end < event_t]
            out["max_gap_before_s"] = round(max(before, default=0.0), 3)
            if event_t is not None:
                after = [(g, end) for g, _, end in gaps if end > event_t]
                if after:
                    gap, end = max(after)
                    out["resumed_after_s"] = round(end - event_t, 3)  # event -> end of the longest stall
                    out["stall_s"] = round(gap, 3)
                out["received_after_event"] = sum(1 for _, t in got if t > event_t)
        return out


async def node_main(data_dir: str | None, port: int) -> None:
    from coremesh import MeshConfig, MeshNode, PeerId
    from coremesh.errors import MeshError

    cfg = MeshConfig(
        listen_addr=f"127.0.0.1:{port}",
        dht=False,
        enable_nat_traversal=False,
        enable_relay=False,
        data_dir=Path(data_dir) if data_dir else None,
    )
    node = MeshNode(cfg)
    await node.start()
    streams = Streams()
    unwatch = asyncio.Event()
    tasks: set[asyncio.Task[Any]] = set()
    loop = asyncio.get_running_loop()

    def spawn(coro: Any) -> None:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def drain(peer: PeerId) -> None:
        conn = node.get_connection(peer)
        if conn is not None:
            async for data in conn:
                streams.add(data)

    def on_event(event: Any) -> None:
        if event.state.value == "connected":
            spawn(drain(event.peer_id))

    node.on_connection(on_event)

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"peer": str(node.peer_id), "addr": str(node.local_address), "pid": os.getpid()})

    def route_count(dest: str) -> int:
        for r in node.routes():
            if r["destination"] == dest:
                return 1 + len(r.get("backups", []))
        return 0

    async def connect(cmd: dict[str, Any]) -> Any:
        peer = PeerId.from_text(cmd["peer"])
        if cmd["path"] == "routed":
            return await node.connect(peer, path="routed", timeout=10.0)
        return await node.connect(peer, cmd["addr"], path="direct", timeout=10.0)

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "dial":
            await node.connect(cmd["target"], path="direct", timeout=10.0)
            return {}
        if op == "wait_route":
            deadline = time.monotonic() + cmd.get("timeout", 20.0)
            while route_count(cmd["peer"]) < cmd.get("count", 1):
                if time.monotonic() > deadline:
                    return {"error": "no route in time", "routes": node.routes()}
                await asyncio.sleep(0.02)
            return {"routes": node.routes()}
        if op == "setup":
            samples = []
            peer = PeerId.from_text(cmd["peer"])
            for _ in range(cmd["n"]):
                t0 = time.perf_counter()
                conn = await connect(cmd)
                samples.append((time.perf_counter() - t0) * 1000)
                if conn.path != cmd["path"]:
                    return {"error": f"connection path is {conn.path}, wanted {cmd['path']}"}
                await conn.close()
                while node.get_connection(peer) is not None:
                    await asyncio.sleep(0.005)
            return {"ms": samples}
        if op == "send":
            conn = await connect(cmd)
            path = conn.path
            pad = os.urandom(MESSAGE - HEADER.size)
            end = time.monotonic() + cmd["duration"]
            seq = 0
            error = None
            try:
                while time.monotonic() < end:
                    await conn.send(HEADER.pack(cmd["tag"], seq) + pad)
                    seq += 1
            except MeshError as exc:
                error = f"{type(exc).__name__}: {exc}"
            return {"sent": seq, "path": path, "error": error, "closed": conn.close_reason}
        if op == "report":
            deadline = time.monotonic() + cmd["wait"]
            tag = cmd["tag"]
            while len(streams.arrivals.get(tag, ())) < cmd["expect"] and time.monotonic() < deadline:
                streams.changed.clear()
                try:
                    await asyncio.wait_for(streams.changed.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
            return streams.report(tag, cmd.get("warmup", 0.0), cmd.get("event_t"))
        if op == "routes":
            return {"routes": node.routes()}
        if op == "unwatch":
            unwatch.set()
            return {}
        if op == "stats":
            return {"stats": node.stats()}
        if op == "watch_route":
            # the moments (CLOCK_MONOTONIC) the primary next hop to ``peer`` changes, until "unwatch"
            changes: list[tuple[float, str | None]] = []
            end = time.monotonic() + 300.0
            last: Any = ()
            unwatch.clear()
            while time.monotonic() < end and not unwatch.is_set():
                hop = next((r["next_hop"] for r in node.routes() if r["destination"] == cmd["peer"]), None)
                if hop != last:
                    changes.append((time.monotonic(), hop))
                    last = hop
                await asyncio.sleep(0.01)
            return {"changes": changes}
        if op == "close":
            conn = node.get_connection(PeerId.from_text(cmd["peer"]))
            if conn is not None:
                await conn.close()
            return {}
        if op == "state":
            conn = node.get_connection(PeerId.from_text(cmd["peer"]))
            return {"open": conn is not None and not conn.is_closed, "path": conn and conn.path}
        raise ValueError(f"unknown op {op!r}")

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    busy: asyncio.Task[Any] | None = None
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break

            async def run(cmd: dict[str, Any] = cmd) -> None:
                try:
                    say({"id": cmd.get("id"), **await handle(cmd)})
                except Exception as exc:  # report it to the driver instead of dying
                    say({"id": cmd.get("id"), "error": f"{type(exc).__name__}: {exc}"})

            busy = loop.create_task(run())  # commands run concurrently; answers carry their id
            tasks.add(busy)
            busy.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await node.stop()


# ------------------------------------------------------------------------------------------------
# The driver.
# ------------------------------------------------------------------------------------------------
class Node:
    """A node process and its command channel."""

    _ids = 0

    def __init__(self, procs: list[subprocess.Popen[str]], name: str, data_dir: Path, port: int = 0):
        self.name, self.data_dir = name, data_dir
        cmd = [sys.executable, __file__, "node", "--data-dir", str(data_dir), "--port", str(port)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append(self.proc)
        self.lines = Lines(self.proc)
        self.pending: dict[int, dict[str, Any]] = {}
        self.hello: dict[str, Any] | None = None

    def ready(self, timeout: float = 30.0) -> Node:
        self.hello = json.loads(self.lines.next(timeout))
        return self

    @property
    def peer(self) -> str:
        assert self.hello is not None
        return str(self.hello["peer"])

    @property
    def addr(self) -> str:
        assert self.hello is not None
        return str(self.hello["addr"])

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def post(self, op: str, **kw: Any) -> int:
        Node._ids += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "id": Node._ids, **kw}) + "\n")
        self.proc.stdin.flush()
        return Node._ids

    def result(self, ident: int, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while ident not in self.pending:
            reply = json.loads(self.lines.next(max(0.01, deadline - time.monotonic())))
            self.pending[reply.pop("id")] = reply
        return self.pending.pop(ident)

    def call(self, op: str, rpc_timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        reply = self.result(self.post(op, **kw), rpc_timeout)
        if "error" in reply and reply["error"] and op not in ("send",):
            raise RuntimeError(f"{self.name} {op}: {reply['error']}")
        return reply

    def kill(self) -> float:
        """SIGKILL; returns the moment on CLOCK_MONOTONIC (the clock the nodes stamp arrivals on)."""
        self.proc.kill()
        t = time.monotonic()
        self.proc.wait()
        return t


def spawn(procs: list[subprocess.Popen[str]], tmp: Path, names: str) -> dict[str, Node]:
    nodes = {n: Node(procs, n, tmp / n) for n in names}
    for n in nodes.values():
        n.ready()
    return nodes


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q + 0.5) - 1))], 3)


def summary(ms: list[float]) -> dict[str, Any]:
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": pct(ms, 0.9),
        "min_ms": round(min(ms), 3),  # on a busy machine, the closest to the unloaded figure
        "tries": len(ms),
        "samples_ms": [round(x, 3) for x in ms],
    }


def link_line(nodes: dict[str, Node], transit: str = "B") -> None:
    """``transit`` dials A and C: A - transit - C."""
    t = nodes[transit]
    for end in ("A", "C"):
        t.call("dial", target=f"{nodes[end].peer}@{nodes[end].addr}")


def transfer(
    src: Node, dst: Node, path: str, tag: int, duration: float, warmup: float, addr: str | None = None
) -> dict[str, Any]:
    sent = src.call("send", peer=dst.peer, path=path, addr=addr, tag=tag, duration=warmup + duration)
    got = dst.call("report", tag=tag, expect=sent["sent"], wait=30.0, warmup=warmup)
    return {**got, **sent_fields(sent, got)}


def sent_fields(sent: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """The sender's side: accepted by send(), never delivered (only when the connection ended)."""
    return {
        "sent": sent["sent"],
        "undelivered": sent["sent"] - got["messages"],
        "path": sent["path"],
        "send_error": sent["error"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    phases: dict[str, float] = {}  # wall seconds per part, process starts included
    results["phase_wall_s"] = phases
    t_phase = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="routed-bench-") as tmpdir, children() as procs:
        tmp = Path(tmpdir)
        # -- 1 and 2: A - B - C, and E for the direct baseline -------------------------------
        nodes = spawn(procs, tmp / "line", "ABCE")
        a, c, e = nodes["A"], nodes["C"], nodes["E"]
        link_line(nodes)
        t0 = time.monotonic()
        route = a.call("wait_route", peer=c.peer)["routes"]
        results["route_converged_s"] = round(time.monotonic() - t0, 3)
        results["route"] = [r for r in route if r["destination"] == c.peer]
        routed = a.call("setup", peer=c.peer, path="routed", n=args.setups)["ms"]
        direct = e.call("setup", peer=c.peer, addr=c.addr, path="direct", n=args.setups)["ms"]
        results["setup"] = {"routed": summary(routed), "direct": summary(direct)}
        direct_t = transfer(e, c, "direct", 1, args.duration, args.warmup, c.addr)
        fwd0 = nodes["B"].call("stats")["stats"]
        routed_t = transfer(a, c, "routed", 2, args.duration, args.warmup)
        fwd1 = nodes["B"].call("stats")["stats"]
        # proof that the routed bytes went through B: what B forwarded meanwhile
        routed_t["transit_forwarded_bytes"] = fwd1.get("forwarded_bytes", 0) - fwd0.get("forwarded_bytes", 0)
        routed_t["transit_forwarded_packets"] = fwd1.get("forwarded_packets", 0) - fwd0.get(
            "forwarded_packets", 0
        )
        results["throughput"] = {"direct": direct_t, "routed": routed_t}
        for n in nodes.values():
            stop(n.proc)

        phases["line"] = round(time.monotonic() - t_phase, 3)
        t_phase = time.monotonic()
        # -- 3a: diamond A-B-C + A-D-C, B killed mid-transfer --------------------------------
        nodes = spawn(procs, tmp / "diamond", "ABCD")
        a, b, c = nodes["A"], nodes["B"], nodes["C"]
        link_line(nodes, "B")
        link_line(nodes, "D")
        a.call("wait_route", peer=c.peer, count=2)
        before = [r for r in a.call("routes")["routes"] if r["destination"] == c.peer]
        span = args.before_kill + args.after_kill
        sending = a.post("send", peer=c.peer, path="routed", tag=3, duration=span)
        watching = a.post("watch_route", peer=c.peer)
        time.sleep(args.before_kill)
        # kill the transit the connection actually uses (the primary's next hop)
        victim = nodes["B"] if before[0]["next_hop"] == b.peer else nodes["D"]
        killed = victim.kill()
        sent = a.result(sending, timeout=span + 60)
        got = c.call("report", tag=3, expect=sent["sent"], wait=30.0, event_t=killed)
        a.call("unwatch")
        changes = a.result(watching)["changes"]
        switched = [t - killed for t, hop in changes if t > killed]
        after = [r for r in a.call("routes")["routes"] if r["destination"] == c.peer]
        results["transit_death_with_backup"] = {
            "killed": victim.name,
            # kill -> A's primary next hop to C changed (the link withdrawn, the backup promoted)
            "route_switched_after_s": round(switched[0], 3) if switched else None,
            "routes_before": before,
            "routes_after": after,
            **got,
            **sent_fields(sent, got),
        }
        for n in nodes.values():
            stop(n.proc)

        phases["diamond"] = round(time.monotonic() - t_phase, 3)
        t_phase = time.monotonic()
        # -- 3b: line A-B-C, no backup: B killed, restarted with the same identity and port ------
        nodes = spawn(procs, tmp / "nobackup", "ABC")
        a, b, c = nodes["A"], nodes["B"], nodes["C"]
        link_line(nodes)
        a.call("wait_route", peer=c.peer)
        total = args.before_kill + args.restart_after + args.after_restart
        sending = a.post("send", peer=c.peer, path="routed", tag=4, duration=total)
        time.sleep(args.before_kill)
        watching = a.post("watch_route", peer=c.peer)
        killed = b.kill()
        time.sleep(args.restart_after)
        route_at_restart = [r for r in a.call("routes")["routes"] if r["destination"] == c.peer]
        b2 = Node(procs, "B", b.data_dir, port=b.port)
        restarted = time.monotonic()
        b2.ready()
        nodes["B"] = b2
        redial_error = None
        try:
            link_line(nodes)
        except RuntimeError as exc:
            redial_error = str(exc)
        sent = a.result(sending, timeout=total + 60)
        # a connection that ended delivers no more: do not wait long for the rest
        wait = 30.0 if sent["error"] is None else 3.0
        got = c.call("report", tag=4, expect=sent["sent"], wait=wait, event_t=restarted)
        a.call("unwatch")
        changes = a.result(watching)["changes"]
        state = a.call("state", peer=c.peer)
        results["transit_death_no_backup"] = {
            "restart_after_kill_s": round(restarted - killed, 3),
            "same_identity": b2.peer == b.peer,
            "route_at_restart": route_at_restart,  # [] once the link to B was withdrawn
            # A's next hop to C over time, seconds from the kill (None: no route)
            "route_changes": [(round(t - killed, 3), hop) for t, hop in changes],
            "redial_error": redial_error,
            "connection_open_at_end": state["open"],
            **got,
            **sent_fields(sent, got),
            "closed_reason": sent["closed"],
        }
        # resumed_after_s is measured from the restart here; from the kill it is that plus the wait
        if "resumed_after_s" in got:
            results["transit_death_no_backup"]["resumed_after_kill_s"] = round(
                got["resumed_after_s"] + restarted - killed, 3
            )
        for n in nodes.values():
            stop(n.proc)
        phases["no_backup"] = round(time.monotonic() - t_phase, 3)
    return results


def table(results: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """(metric, coremesh, Reticulum, coremesh / Reticulum)."""

    def ratio(x: Any, y: Any) -> Any:
        return round(x / y, 2) if isinstance(x, int | float) and isinstance(y, int | float) and y else "-"

    s, t = results["setup"], results["throughput"]
    bk, nb = results["transit_death_with_backup"], results["transit_death_no_backup"]
    changes = nb["route_changes"]  # [seconds from the kill, next hop or None], the first at the start
    withdrawn = next((t for t, hop in changes[1:] if hop is None), None)
    back = next((t for t, hop in changes[1:] if hop is not None), None)
    rows: list[tuple[str, Any, Any, Any]] = [
        ("setup through 1 transit, median (ms)", s["routed"]["median_ms"], RETICULUM["setup_ms"], None),
        ("setup through 1 transit, p90 (ms)", s["routed"]["p90_ms"], "-", None),
        ("setup through 1 transit, min (ms)", s["routed"]["min_ms"], "-", None),
        ("setup direct, median (ms)", s["direct"]["median_ms"], "-", None),
        ("setup direct, min (ms)", s["direct"]["min_ms"], "-", None),
        (
            "throughput through 1 transit (MB/s)",
            t["routed"].get("mb_per_s"),
            RETICULUM["throughput_mb_per_s"],
            None,
        ),
        ("throughput direct (MB/s)", t["direct"].get("mb_per_s"), "-", None),
        (
            "transit killed, backup: delivery resumes (s)",
            bk.get("resumed_after_s"),
            RETICULUM["recovery_s"],
            None,
        ),
        ("  of which: A's route moved to the backup (s)", bk["route_switched_after_s"], "-", None),
        ("  lost / duplicated / reordered", f"{bk['lost']}/{bk['duplicated']}/{bk['reordered']}", "-", None),
        ("  sent but never delivered (messages)", bk["undelivered"], "-", None),
        ("transit killed, no backup, restarted after (s)", nb["restart_after_kill_s"], "-", None),
        ("  A's route to C withdrawn after the kill (s)", withdrawn, "-", None),
        ("  A's route back after the kill (s)", back, "-", None),
        ("  delivery resumes after the restart (s)", nb.get("resumed_after_s"), "-", None),
        (
            "  delivery resumes after the kill (s)",
            nb.get("resumed_after_kill_s"),
            RETICULUM["recovery_s"],
            None,
        ),
        ("  lost / duplicated / reordered", f"{nb['lost']}/{nb['duplicated']}/{nb['reordered']}", "-", None),
        ("  sent but never delivered (messages)", nb["undelivered"], "-", None),
        ("  the connection", "survived" if nb["closed_reason"] is None else "ended", "lost", None),
    ]
    if nb["closed_reason"] is not None:
        rows.append((f"    ({nb['closed_reason']})", "", "", None))
    return [(m, v, r, ratio(v, r)) for m, v, r, _ in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="run", choices=["run", "node"])
    ap.add_argument("--setups", type=int, default=20, help="fresh connections per setup measurement")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds measured per throughput run")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--before-kill", type=float, default=1.5)
    ap.add_argument("--after-kill", type=float, default=8.0, help="seconds A keeps sending after the kill")
    ap.add_argument("--restart-after", type=float, default=6.0, help="no backup: restart B this long after")
    ap.add_argument("--after-restart", type=float, default=6.0)
    ap.add_argument("--tiny", action="store_true", help="a quick run for the tests")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON file")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    if args.mode == "node":
        asyncio.run(node_main(args.data_dir, args.port))
        return 0
    if args.tiny:
        args.setups, args.duration, args.warmup = 3, 0.5, 0.2
        # A's send blocks while the path is down, so a short send still spans the whole outage
        args.before_kill, args.after_kill, args.restart_after, args.after_restart = 0.5, 0.5, 0.5, 0.5
    exit_on_sigterm()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "benchmark": "routed",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "reticulum_quoted": RETICULUM,
    }
    t0, busy0, own0 = time.perf_counter(), machine_busy_s(), own_cpu_s()
    report["results"] = run(args)
    wall, busy, own = time.perf_counter() - t0, machine_busy_s() - busy0, own_cpu_s() - own0
    # other work on the machine skews every figure: the CPU it took meanwhile, as a share of all cores
    report["other_cpu_percent"] = round(max(0.0, busy - own) / (wall * (os.cpu_count() or 1)) * 100, 1)
    rows = table(report["results"])
    report["table"] = [{"metric": m, "coremesh": v, "reticulum": r, "ratio": q} for m, v, r, q in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"routed-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    w = max(len(m) for m, *_ in rows)
    print(f"{'metric':<{w}}  {'coremesh':>10}  {'Reticulum':>10}  {'ratio':>6}")
    for m, v, r, q in rows:
        print(f"{m:<{w}}  {v!s:>10}  {r!s:>10}  {q!s:>6}")
    t = report["results"]["throughput"]
    if t["routed"].get("mb_per_s") and t["direct"].get("mb_per_s"):
        print(
            f"\nrouted / direct throughput, same run: {t['routed']['mb_per_s'] / t['direct']['mb_per_s']:.2f}"
        )
    print(f"other processes' CPU meanwhile: {report['other_cpu_percent']} % of all cores")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
