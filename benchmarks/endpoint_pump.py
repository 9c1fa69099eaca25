"""What one pump of the endpoint costs with many open connections, old code against new.

    .venv/bin/python benchmarks/endpoint_pump.py                  # 1,000 connections
    .venv/bin/python benchmarks/endpoint_pump.py --connections 100 --connections 10000

A hub :class:`~coremesh.endpoint.endpoint.Endpoint` accepts N connections from N spoke endpoints
through the public API (handshakes in memory, time advanced by hand, in batches within the hub's
unconfirmed quota). Then one spoke stays active: it and the hub send each other a message every
8 pumps (1 ms of virtual time each), and the benchmark times what a shell does per pump:
``get_timer``, ``handle_timer`` when due, ``datagrams_to_send`` and ``get_timer`` again to re-arm;
the active spoke's work is not timed. The idle connections stay open: their
timers (heartbeat, idle timeout, rekey) lie beyond the measured window, as on a node whose peers
are quiet.

Each code base runs in its own subprocess: the new one from this checkout, the old one extracted
with ``git archive OLD coremesh`` (``--old``, default c49e32e, the commit before the timer heap)
into a temporary directory and put first on PYTHONPATH. Both must do the same work: the hub's
datagram and event counts are printed side by side. NAT traversal is off (its agents would add
their own traffic to the measured pumps); heartbeat 60 s and idle timeout 300 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OLD = "c49e32e"
BATCH = 64  # connections set up at a time (at most, and below the hub's unconfirmed quota)
STEP = 0.001  # virtual seconds per pump
SEND_EVERY = 8  # pumps between messages each way (so that delayed ACKs come due: handle_timer runs)


def worker(connections: int, pumps: int, seed: int) -> dict[str, Any]:
    """Runs in the subprocess: build the hub and its connections, then time the pumps."""
    import coremesh
    from coremesh.addr import Address
    from coremesh.config import MeshConfig
    from coremesh.identity import Identity

    try:
        from coremesh.endpoint.endpoint import Endpoint
    except ImportError:  # before the package was split into folders (c9361a7 and older)
        from coremesh.endpoint import Endpoint  # type: ignore[attr-defined,no-redef]

    config = MeshConfig(
        max_connections=connections + 1,
        enable_nat_traversal=False,
        heartbeat_interval=60.0,
        idle_timeout=300.0,
    )
    rng = random.Random(seed)

    def endpoint() -> Endpoint:
        identity = Identity(rng.randbytes(32))
        return Endpoint(identity, config, rng=random.Random(rng.getrandbits(64)), wall_offset=1.7e9)

    hub = endpoint()
    hub_addr = Address("10.0.0.1", 4000)
    now = 0.0

    def exchange(spokes: dict[Address, Endpoint], now: float) -> int:
        """Deliver everything in flight until both sides are quiet; return the datagrams moved."""
        moved = 0
        while True:
            busy = False
            for addr, spoke in spokes.items():
                for data, _dst in spoke.datagrams_to_send(now):
                    hub.receive_datagram(data, addr, now)
                    moved += 1
                    busy = True
            for data, dst in hub.datagrams_to_send(now):
                target = spokes.get(dst) if isinstance(dst, Address) else None
                if target is not None:
                    target.receive_datagram(data, hub_addr, now)
                moved += 1
                busy = True
            for spoke in spokes.values():
                while spoke.next_event() is not None:
                    pass
            while hub.next_event() is not None:
                pass
            if not busy:
                return moved

    def settle(spokes: dict[Address, Endpoint], now: float, duration: float) -> float:
        """Run timers (delayed ACKs, PING retransmits) and deliveries for ``duration``."""
        end = now + duration
        while now < end:
            exchange(spokes, now)
            times = [t for t in (e.get_timer() for e in [hub, *spokes.values()]) if t is not None]
            now = min([end, *times]) if times else end
            for e in [hub, *spokes.values()]:
                t = e.get_timer()
                if t is not None and t <= now:
                    e.handle_timer(now)
        exchange(spokes, now)
        return now

    setup_started = time.perf_counter()
    active: tuple[Address, Endpoint] | None = None
    size = max(1, min(BATCH, hub.max_unconfirmed - 1))
    for start in range(0, connections, size):
        batch: dict[Address, Endpoint] = {}
        for i in range(start, min(connections, start + size)):
            addr = Address(f"10.{1 + i // 65000}.{(i // 250) % 250}.{i % 250 + 1}", 5000)
            spoke = endpoint()
            spoke.connect(hub.peer_id, hub_addr, now)
            batch[addr] = spoke
        now = settle(batch, now, 0.05)
        for spoke in batch.values():
            assert spoke.state_of(hub.peer_id) is not None and spoke.snapshots()[0].state.value == "connected"
        if active is None:
            active = next(iter(batch.items()))
    assert active is not None
    assert len(hub.snapshots()) == connections
    setup_s = time.perf_counter() - setup_started

    active_addr, active_spoke = active
    spokes = {active_addr: active_spoke}
    now = settle(spokes, now, 0.5)
    peer = active_spoke.peer_id
    message = bytes(200)
    perf = time.perf_counter
    samples: list[float] = []
    sent = received_events = handled = 0
    for i in range(pumps):
        now += STEP
        # The active spoke: its timers, its answers and a message of its own (not timed).
        t = active_spoke.get_timer()
        if t is not None and t <= now:
            active_spoke.handle_timer(now)
        if i % SEND_EVERY == 1:
            active_spoke.send(hub.peer_id, message, now)
        for data, _dst in active_spoke.datagrams_to_send(now):
            hub.receive_datagram(data, active_addr, now)
        while active_spoke.next_event() is not None:
            pass
        if i % SEND_EVERY == 0:
            hub.send(peer, message, now)
        # The hub's pump, as a shell runs it (timed).
        t0 = perf()
        timer = hub.get_timer()
        if timer is not None and timer <= now:
            hub.handle_timer(now)
            handled += 1
        out = hub.datagrams_to_send(now)
        timer = hub.get_timer()
        t1 = perf()
        samples.append(t1 - t0)
        sent += len(out)
        while hub.next_event() is not None:
            received_events += 1
        for data, dst in out:
            if dst == active_addr:
                active_spoke.receive_datagram(data, hub_addr, now)
    return {
        "code": str(Path(coremesh.__file__).parent),
        "connections": connections,
        "pumps": pumps,
        "setup_s": round(setup_s, 2),
        "pump_us_mean": round(statistics.fmean(samples) * 1e6, 2),
        "pump_us_median": round(statistics.median(samples) * 1e6, 2),
        "pump_us_p99": round(sorted(samples)[int(0.99 * len(samples))] * 1e6, 2),
        "hub_datagrams_sent": sent,
        "hub_events": received_events,
        "hub_timer_runs": handled,
    }


def run(code: Path, connections: int, pumps: int, seed: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(REPO)])}
    args = [
        sys.executable,
        __file__,
        "--worker",
        str(connections),
        "--pumps",
        str(pumps),
        "--seed",
        str(seed),
    ]
    result = subprocess.run(args, env=env, cwd=code, check=True, capture_output=True, text=True)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, action="append", help="N (repeatable; default 1000)")
    parser.add_argument("--pumps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--old", default=DEFAULT_OLD, help="git revision of the code to compare against")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.pumps, args.seed)))
        return 0
    with tempfile.TemporaryDirectory(prefix="endpoint-old-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.old, "coremesh"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        rows = []
        for n in args.connections or [1000]:
            old = run(Path(tmp), n, args.pumps, args.seed)
            new = run(REPO, n, args.pumps, args.seed)
            same = all(old[k] == new[k] for k in ("hub_datagrams_sent", "hub_events", "hub_timer_runs"))
            rows.append(
                {
                    "connections": n,
                    "old": old,
                    "new": new,
                    "ratio_mean": round(old["pump_us_mean"] / new["pump_us_mean"], 1),
                    "ratio_median": round(old["pump_us_median"] / new["pump_us_median"], 1),
                    "same_work": same,
                }
            )
            print(
                f"N={n:>6}: pump old {old['pump_us_mean']:>9.1f} us, new {new['pump_us_mean']:>7.1f} us "
                f"(mean; x{rows[-1]['ratio_mean']}), median old {old['pump_us_median']:.1f} us, "
                f"new {new['pump_us_median']:.1f} us; same work: {same}",
                file=sys.stderr,
            )
    print(json.dumps({"old": args.old, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
