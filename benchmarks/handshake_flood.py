"""Legitimate connects under a handshake flood, and the flood rate a node absorbs per core.

    .venv/bin/python benchmarks/handshake_flood.py                      # 20,000 initiations/s
    .venv/bin/python benchmarks/handshake_flood.py --rate 40000 --connects 30

Part 1, over real sockets on loopback: a target node (a MeshNode in a process of its own, DHT off)
and a flooder process (tests/integration/flood.py: half copies of one real initiation, half fresh
forged ones with a valid mac1, from 59 addresses 127.0.0.2..60, at ``--rate``). Legitimate
initiators (a fresh MeshNode each, so no stored cookie: a first contact) connect ``--connects``
times, ``--parallel`` at once, each within the default 5 s connect timeout. Rows:

* ``no flood``: the baseline;
* ``flood``: this code, default settings (cookies under load, per-source rate limits, replays
  dropped before the Diffie-Hellman);
* ``flood, cookies off``: this code with ``handshake_load_threshold`` 10^6 (never under load; the
  replay cache still works);
* ``flood, before``: the code before this work (``--old``, default ec253b0, extracted with
  ``git archive`` and put first on PYTHONPATH in the target's process): the issue as filed.

For each: connects that succeeded, their latency (median, 90th percentile), and on the target
during the trials: flood initiations received per second, the target's CPU use (one core = 100%),
Diffie-Hellmans run per second (initiations that reached Noise), and initiations handled per CPU
second.

Part 2, the core alone on one core (no sockets): how many initiations per CPU second the endpoint
takes in (receive_datagram, then datagrams_to_send), by kind of flood and gate decision.
"""

from __future__ import annotations

import argparse
import asyncio
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
DEFAULT_OLD = "ec253b0"
WARMUP = 1.0  # seconds of flood before the trials start


# -- the target's process --------------------------------------------------------------------------


def serve(threshold: int | None) -> None:
    """The target node: prints its address, then answers each ``stats`` line on stdin with its
    counters and CPU time (one JSON line each) until stdin closes."""
    from coremesh import MeshConfig, MeshNode

    extra: dict[str, Any] = {} if threshold is None else {"handshake_load_threshold": threshold}

    async def main() -> None:
        config = MeshConfig(listen_addr="127.0.0.1:0", dht=False, **extra)
        async with MeshNode(config) as node:
            address = node.local_address
            print(
                json.dumps({"peer": str(node.peer_id), "host": address.host, "port": address.port}),
                flush=True,
            )
            loop = asyncio.get_running_loop()
            while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "stats":
                print(
                    json.dumps({"stats": node.stats(), "cpu": time.process_time(), "t": time.monotonic()}),
                    flush=True,
                )

    asyncio.run(main())


class Target:
    def __init__(self, threshold: int | None, pythonpath: str | None) -> None:
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        args = [sys.executable, str(Path(__file__).resolve()), "--serve"]
        if threshold is not None:
            args += ["--threshold", str(threshold)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.peer: str = hello["peer"]
        self.address = (hello["host"], hello["port"])

    def sample(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- part 1: connects over real sockets ------------------------------------------------------------


async def trials(target: Target, connects: int, parallel: int) -> list[float | None]:
    """Connect latency of each attempt (None: it failed), from a fresh node each time."""
    from coremesh import ConnectionFailed, MeshConfig, MeshNode
    from coremesh.identity import PeerId

    peer = PeerId.from_text(target.peer)
    host, port = target.address
    config = MeshConfig(listen_addr="127.0.0.1:0", dht=False)

    async def one() -> float | None:
        async with MeshNode(config) as node:
            start = time.perf_counter()
            try:
                await node.connect(peer, f"{host}:{port}")
            except ConnectionFailed:
                return None
            return time.perf_counter() - start

    results: list[float | None] = []
    while len(results) < connects:
        batch = min(parallel, connects - len(results))
        results.extend(await asyncio.gather(*(one() for _ in range(batch))))
    return results


def diffie_hellmans(stats: dict[str, int]) -> int:
    """Initiations that reached Noise: counted as admitted by this code; before it, every one past
    mac1 (what the old counters show of them)."""
    if "handshakes_admitted" in stats:
        return stats["handshakes_admitted"]
    return sum(
        stats.get(k, 0)
        for k in ("handshake_responses_sent", "drop_handshake_auth_failed", "drop_replayed_handshake")
    ) + sum(v for k, v in stats.items() if k in ("drop_unconfirmed_full", "drop_max_connections"))


def run_row(
    name: str, flood_rate: float, threshold: int | None, pythonpath: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    from coremesh.identity import PeerId
    from tests.integration.flood import start_flood

    target = Target(threshold, pythonpath)
    flood = None
    try:
        if flood_rate:
            flood = start_flood(target.address, PeerId.from_text(target.peer), rate=flood_rate)
            time.sleep(WARMUP)
        before = target.sample()
        sent_before = flood.packets_sent() if flood else 0
        latencies = asyncio.run(trials(target, args.connects, args.parallel))
        after = target.sample()
        sent = (flood.packets_sent() if flood else 0) - sent_before
    finally:
        if flood is not None:
            flood.stop()
        target.stop()
    wall = after["t"] - before["t"]
    cpu = after["cpu"] - before["cpu"]
    received = after["stats"].get("datagrams_received", 0) - before["stats"].get("datagrams_received", 0)
    dh = diffie_hellmans(after["stats"]) - diffie_hellmans(before["stats"])
    ok = sorted(x for x in latencies if x is not None)
    return {
        "name": name,
        "ok": len(ok),
        "n": len(latencies),
        "median_ms": 1000 * statistics.median(ok) if ok else None,
        "p90_ms": 1000 * ok[min(len(ok) - 1, int(0.9 * len(ok)))] if ok else None,
        "flood_sent_per_s": sent / wall,
        "received_per_s": received / wall,
        "cpu": cpu / wall,
        "dh_per_s": dh / wall,
        "handled_per_cpu_s": received / cpu if cpu > 0 else 0.0,
    }


def old_tree(commit: str, into: Path) -> str:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "coremesh"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return str(into)


# -- part 2: the core alone ------------------------------------------------------------------------


def core_rates(packets: int) -> list[tuple[str, float, str]]:
    """Initiations per CPU second through ``Endpoint.receive_datagram`` + ``datagrams_to_send``."""
    from coremesh.addr import Address
    from coremesh.config import MeshConfig
    from coremesh.endpoint.endpoint import Endpoint
    from coremesh.identity import Identity
    from coremesh.secure import wire
    from coremesh.secure.session import Responder
    from tests.integration.flood import forged_initiation, real_initiation

    identity = Identity(random.Random(1).randbytes(32))
    sources = [Address(f"127.0.0.{2 + i % 59}", 40000 + i) for i in range(4096)]

    def endpoint(**config: Any) -> Endpoint:
        return Endpoint(identity, MeshConfig(dht=False, **config), rng=random.Random(2), wall_offset=1.7e9)

    def rate(ep: Endpoint, datagrams: list[bytes]) -> tuple[float, str]:
        start = time.process_time()
        for i, data in enumerate(datagrams):
            ep.receive_datagram(data, sources[i % len(sources)], 1.0 + i * 1e-5)
            if i % 64 == 63:
                ep.datagrams_to_send(1.0 + i * 1e-5)
        elapsed = time.process_time() - start
        top = ep.counters.most_common(3)
        return len(datagrams) / elapsed, ", ".join(f"{k} {v}" for k, v in top)

    from coremesh.secure.session import mac1_key

    mac1 = mac1_key(identity.x25519_public)
    forged = [forged_initiation(mac1) for _ in range(packets)]
    replay = real_initiation(identity.peer_id)
    rows = []
    never = {"handshake_load_threshold": 1_000_000}
    rows.append(("forged, cookies off: every one runs Noise (1 DH)", *rate(endpoint(**never), forged)))
    rows.append(
        (
            "forged, under load: cookie reply each",
            *rate(endpoint(handshake_load_threshold=0, handshake_rate_per_source=1e6), forged),
        )
    )
    rows.append(
        ("forged, under load: 59 hosts rate limited", *rate(endpoint(handshake_load_threshold=0), forged))
    )
    rows.append(("copies of one real initiation: replay cache", *rate(endpoint(), [replay] * packets)))
    # Before this work a copy ran the whole handshake (4 DH) before its timestamp was refused.
    responder = Responder(identity)
    init = wire.decode_handshake_init(replay)
    n = max(packets // 20, 200)
    start = time.process_time()
    for _ in range(n):
        responder.respond(init, local_index=1, random_bytes=random.Random(3).randbytes, now=0.0)
    rows.append(
        ("copies of one real initiation, before: Noise (4 DH)", n / (time.process_time() - start), "")
    )
    return rows


def fmt(value: float | None, pattern: str = "{:,.0f}") -> str:
    return "-" if value is None else pattern.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=20_000, help="flood initiations per second")
    parser.add_argument("--connects", type=int, default=20, help="legitimate connects per row")
    parser.add_argument("--parallel", type=int, default=5, help="connects at once")
    parser.add_argument("--old", default=DEFAULT_OLD, help="the commit before this work ('' to skip)")
    parser.add_argument("--core-packets", type=int, default=20_000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threshold", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # the target's process: its coremesh is the one PYTHONPATH gives
        serve(args.threshold)
        return
    sys.path.insert(0, str(REPO))  # tests.integration.flood (the flooder, shared with the tests)
    print(f"handshake flood: {args.rate:,.0f} initiations/s from 59 addresses (half replays, half forged);"
          f" {args.connects} connects per row, {args.parallel} at once; {os.cpu_count()} CPUs\n")  # fmt: skip
    rows = [
        run_row("no flood", 0, None, None, args),
        run_row("flood", args.rate, None, None, args),
        run_row("flood, cookies off", args.rate, 1_000_000, None, args),
    ]
    if args.old:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(
                run_row(f"flood, before ({args.old})", args.rate, None, old_tree(args.old, Path(tmp)), args)
            )
    header = (
        "",
        "connected",
        "median ms",
        "p90 ms",
        "flood sent/s",
        "node rcvd/s",
        "node CPU",
        "DH/s",
        "handled/CPU-s",
    )
    table = [header] + [
        (
            r["name"],
            f"{r['ok']}/{r['n']}",
            fmt(r["median_ms"]),
            fmt(r["p90_ms"]),
            fmt(r["flood_sent_per_s"]),
            fmt(r["received_per_s"]),
            fmt(100 * r["cpu"], "{:.0f}%"),
            fmt(r["dh_per_s"]),
            fmt(r["handled_per_cpu_s"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print("\nthe core alone, one core (receive_datagram + datagrams_to_send):")
    core = core_rates(args.core_packets)
    width = max(len(name) for name, _, _ in core)
    for name, per_s, counters in core:
        print(f"  {name.ljust(width)}  {per_s:>9,.0f} initiations/CPU-s   {counters}")


if __name__ == "__main__":
    main()
