"""Anchor (c): py-libp2p (PyPI `libp2p`, TCP + Noise + yamux) between two processes on 127.0.0.1.

Run with the venv that benchmarks/setup.sh makes:

  benchmarks/.venv-libp2p/bin/python benchmarks/anchors/libp2p_bench.py [--duration 5]

Measures, a listener process and a dialer process each time (both pinned to Noise and yamux only):
  throughput    one yamux stream, 64 KiB writes, bytes counted by the LISTENER over a window that
                starts --warmup s after the first byte and lasts --duration s -> MB/s (10^6 bytes)
  msgs_64       the same with 64-byte writes (one write = one message) -> messages/s
  connect       fresh dialer host -> connect -> open an echo stream -> write 16 bytes -> read them
                back; median of --tries (one untimed warm-up try first). Measured twice: as shipped,
                and with the swarm's happy-eyeballs head start (`_HAPPY_EYEBALLS_DELAY`, 250 ms in
                libp2p/network/swarm.py) monkeypatched to 0 in the dialer process. With a single
                address, dial_peer waits that delay out even after the dial has succeeded.
  rss           a FRESH listener; the dialer opens 1 warm-up connection, then --conns more (one host
                each, one echo round trip each, connections left open); (VmRSS after - VmRSS
                before) / --conns, read from /proc/<listener pid>/status -> KiB per connection.
Prints one JSON object. The `listener` and `dialer` subcommands are the two processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import subprocess
import sys
import time
from typing import Any

from common import LOOPBACK, Lines, children, exit_on_sigterm, free_port, rss_kib

ECHO = "/bench/echo/1.0.0"
SINK = "/bench/sink/1.0.0"
MARK = "BENCH "  # our lines on stdout start with this; anything else a library prints is skipped
# Reads are bounded: yamux's read() with no size keeps appending while data keeps arriving, so
# under a steady sender one call can last seconds (and copies quadratically).
READ_SIZE = 65536  # = yamux's largest frame payload


def say(obj: Any) -> None:
    print(MARK + json.dumps(obj), flush=True)


# ---------------------------------------------------------------- processes (run in the libp2p venv)


def make_host() -> Any:
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
    from libp2p.stream_muxer.yamux.yamux import Yamux

    key_pair = create_new_key_pair()
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE: Noise(key_pair, noise_privkey=create_x25519().private_key)},
        muxer_opt={YAMUX: Yamux},
    )


async def listener(port: int, warmup: float, duration: float) -> None:
    import multiaddr
    import trio

    host = make_host()

    async def echo(stream: Any) -> None:
        try:
            while data := await stream.read(READ_SIZE):
                await stream.write(data)
        except Exception:
            pass  # EOF/reset: the dialer is done
        finally:
            await stream.close()

    async def sink(stream: Any) -> None:
        total = 0
        first = t0 = t1 = None
        b0 = b1 = 0
        c0 = 0.0
        try:
            while data := await stream.read(READ_SIZE):
                now = time.perf_counter()
                total += len(data)
                if first is None:
                    first = now
                elif t0 is None and now >= first + warmup:
                    t0, b0, c0 = now, total, time.process_time()
                elif t0 is not None and t1 is None and now >= t0 + duration:
                    t1, b1 = now, total
                    say(
                        {
                            "sink": {
                                "seconds": round(t1 - t0, 3),
                                "bytes": b1 - b0,
                                "bytes_per_s": (b1 - b0) / (t1 - t0),
                                "receiver_cpu_percent": round(100 * (time.process_time() - c0) / (t1 - t0)),
                            }
                        }
                    )
        except Exception:
            pass
        finally:
            if t1 is None:
                say(
                    {
                        "sink": {
                            "error": f"stream ended before the window closed ({total} bytes, "
                            f"{time.perf_counter() - (first or 0):.2f} s after the first)"
                        }
                    }
                )
            await stream.close()

    addr = multiaddr.Multiaddr(f"/ip4/{LOOPBACK}/tcp/{port}")
    async with host.run(listen_addrs=[addr]):
        host.set_stream_handler(ECHO, echo)
        host.set_stream_handler(SINK, sink)
        say({"addr": f"{addr}/p2p/{host.get_id()}"})
        await trio.sleep_forever()


async def start_host(target: str) -> tuple[Any, contextlib.AsyncExitStack, Any]:
    """A fresh running host (own key, no listen address), its exit stack, and the target's PeerInfo.
    Not timed: the caller connects."""
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    stack = contextlib.AsyncExitStack()
    host = make_host()
    await stack.enter_async_context(host.run(listen_addrs=[]))
    return host, stack, info_from_p2p_addr(Multiaddr(target))


async def echo_once(host: Any, info: Any) -> None:
    """Connect (if not yet), open an echo stream, write 16 bytes, read them back, close the stream."""
    await host.connect(info)
    stream = await host.new_stream(info.peer_id, [ECHO])
    msg = b"0123456789abcdef"
    await stream.write(msg)
    got = b""
    while len(got) < len(msg):
        got += await stream.read(READ_SIZE)
    await stream.close()


async def dialer(target: str, phase: str, seconds: float, size: int, tries: int, conns: int) -> None:
    import trio
    from libp2p.network import swarm

    if phase == "send":  # throughput / messages: one stream, fixed-size writes for `seconds`
        host, stack, info = await start_host(target)
        async with stack:
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, [SINK])
            conn = stream.muxed_conn
            payload = b"\x00" * size
            sent = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                await stream.write(payload)
                sent += size
            await stream.close()
            say(
                {
                    "sent_bytes": sent,
                    "muxer": type(conn).__name__,
                    "security": type(conn.secured_conn).__module__,
                }
            )

    elif phase == "connect":
        shipped_delay = swarm._HAPPY_EYEBALLS_DELAY
        out: dict[str, Any] = {"shipped_dial_delay_s": shipped_delay}
        for label, delay in (("raw", shipped_delay), ("no_dial_delay", 0.0)):
            swarm._HAPPY_EYEBALLS_DELAY = delay  # the monkeypatch (module global, read at each dial)
            samples = []
            for i in range(tries + 1):
                host, stack, info = await start_host(target)
                async with stack:
                    t0 = time.perf_counter()
                    await echo_once(host, info)
                    dt = time.perf_counter() - t0
                if i > 0:  # try 0 is the warm-up
                    samples.append(dt * 1000)
            out[label] = {
                "median_ms": round(statistics.median(samples), 2),
                "min_ms": round(min(samples), 2),
                "max_ms": round(max(samples), 2),
            }
        swarm._HAPPY_EYEBALLS_DELAY = shipped_delay
        say(out)

    elif phase == "conns":  # keep connections open; the orchestrator reads the listener's RSS
        async with contextlib.AsyncExitStack() as keep:
            for n in (1, conns):
                for _ in range(n):
                    host, stack, info = await start_host(target)
                    await keep.enter_async_context(stack)
                    await echo_once(host, info)
                say({"open": n})
                await trio.to_thread.run_sync(sys.stdin.readline)


# ---------------------------------------------------------------------------------- orchestrator


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Each measurement gets a fresh listener process and a fresh dialer process."""
    from importlib.metadata import version

    me = [sys.executable, __file__]
    window = args.warmup + args.duration
    result: dict[str, Any] = {
        "anchor": "libp2p",
        "libp2p_version": version("libp2p"),
        "stack": "TCP + Noise + yamux",
    }

    def start(procs: list[subprocess.Popen[str]], argv: list[str]) -> tuple[subprocess.Popen[str], Lines]:
        p = subprocess.Popen([*me, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        return p, Lines(p)

    def start_pair(procs: list[subprocess.Popen[str]], *dialer_args: str) -> tuple[Any, ...]:
        lst, lst_lines = start(
            procs,
            [
                "listener",
                "--port",
                str(free_port()),
                "--warmup",
                str(args.warmup),
                "--duration",
                str(args.duration),
            ],
        )
        addr = next_msg(lst_lines, 30)["addr"]
        d, d_lines = start(procs, ["dialer", "--addr", addr, *dialer_args])
        return lst, lst_lines, d, d_lines

    for name, size in (("throughput", 65536), ("msgs_64", 64)):
        with children() as procs:
            _, lst_lines, d, d_lines = start_pair(
                procs, "--phase", "send", "--size", str(size), "--seconds", str(window + 1.0)
            )
            sink = next_msg(lst_lines, window + 60)["sink"]
            sent = next_msg(d_lines, 60)
            d.wait(30)
        if "error" in sink:
            raise RuntimeError(f"{name}: {sink['error']}")
        rate = sink["bytes_per_s"]
        if size == 64:
            result[name] = {
                "write_bytes": size,
                "seconds": sink["seconds"],
                "receiver_cpu_percent": sink["receiver_cpu_percent"],
                "msgs_per_s": round(rate / size),
                "mbit_per_s": round(rate * 8 / 1e6, 2),
            }
        else:
            result[name] = {
                "write_bytes": size,
                "seconds": sink["seconds"],
                "receiver_cpu_percent": sink["receiver_cpu_percent"],
                "mb_per_s": round(rate / 1e6, 2),
            }
        result["negotiated"] = {"muxer": sent["muxer"], "security": sent["security"]}

    with children() as procs:
        _, _, d, d_lines = start_pair(procs, "--phase", "connect", "--tries", str(args.tries))
        result["connect"] = {"tries": args.tries, **next_msg(d_lines, 60 + args.tries * 2)}
        d.wait(30)

    with children() as procs:
        lst, _, d, d_lines = start_pair(procs, "--phase", "conns", "--conns", str(args.conns))
        assert d.stdin is not None
        next_msg(d_lines, 60)  # {"open": 1}: the warm-up connection is up
        time.sleep(1.0)
        before = rss_kib(lst.pid)
        d.stdin.write("go\n")
        d.stdin.flush()
        next_msg(d_lines, 60 + args.conns)  # {"open": conns}
        time.sleep(1.0)
        after = rss_kib(lst.pid)
        d.stdin.write("done\n")
        d.stdin.flush()
        result["rss"] = {
            "connections": args.conns,
            "listener_rss_before_kib": before,
            "listener_rss_after_kib": after,
            "kib_per_connection": round((after - before) / args.conns, 1),
        }
    return result


def next_msg(lines: Lines, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.next(max(0.1, deadline - time.monotonic()))
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role")
    lp = sub.add_parser("listener")
    lp.add_argument("--port", type=int, required=True)
    lp.add_argument("--warmup", type=float, required=True)
    lp.add_argument("--duration", type=float, required=True)
    dp = sub.add_parser("dialer")
    dp.add_argument("--addr", required=True)
    dp.add_argument("--phase", choices=["send", "connect", "conns"], required=True)
    dp.add_argument("--seconds", type=float, default=0)
    dp.add_argument("--size", type=int, default=65536)
    dp.add_argument("--tries", type=int, default=20)
    dp.add_argument("--conns", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per transfer")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--tries", type=int, default=20, help="connect tries per variant")
    ap.add_argument("--conns", type=int, default=50, help="connections for the RSS figure")
    args = ap.parse_args()

    logging.basicConfig(level=logging.ERROR)  # libp2p logs to stderr; keep it quiet
    if args.role == "listener":
        import trio

        trio.run(listener, args.port, args.warmup, args.duration)
    elif args.role == "dialer":
        import trio

        trio.run(dialer, args.addr, args.phase, args.seconds, args.size, args.tries, args.conns)
    else:
        exit_on_sigterm()
        print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
