"""Anchor (b): a bare asyncio UDP sender -> receiver pair, two processes on 127.0.0.1.

The receiver is an asyncio DatagramProtocol that only counts datagrams and bytes. The sender blasts
fixed-size datagrams as fast as its event loop can for warm-up + duration seconds. The figures are
the RECEIVER's, over a window that starts `--warmup` seconds after its first datagram and lasts
`--duration` seconds (timers on the receiver's loop, time.perf_counter). Loss is over the whole run:
1 - received / sent. Default socket buffers (as a plain asyncio program gets them).

  python benchmarks/anchors/asyncio_udp.py [--duration 5] [--sizes 1200,64]

Prints one JSON object. The `receiver` and `sender` subcommands are the two processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from common import LOOPBACK, Lines, children, exit_on_sigterm


class Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams = 0
        self.bytes = 0
        self.first = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1
        self.bytes += len(data)
        if not self.first.done():
            self.first.set_result(None)


async def receiver(warmup: float, duration: float) -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Counter, local_addr=(LOOPBACK, 0))
    print(transport.get_extra_info("sockname")[1], flush=True)  # the port, for the sender
    await proto.first
    await asyncio.sleep(warmup)
    t0, c0, d0, b0 = time.perf_counter(), time.process_time(), proto.datagrams, proto.bytes
    await asyncio.sleep(duration)
    t1, c1, d1, b1 = time.perf_counter(), time.process_time(), proto.datagrams, proto.bytes
    secs = t1 - t0
    print(
        json.dumps(
            {
                "seconds": round(secs, 3),
                "datagrams_per_s": round((d1 - d0) / secs),
                "mbit_per_s": round((b1 - b0) * 8 / secs / 1e6, 1),
                # ~100 = the receiver had a core to itself; much less = it was starved (other load)
                "receiver_cpu_percent": round(100 * (c1 - c0) / secs),
            }
        ),
        flush=True,
    )
    # Keep counting until the sender has finished, for the loss figure.
    await loop.run_in_executor(None, sys.stdin.readline)
    await asyncio.sleep(0.2)
    print(json.dumps({"received": proto.datagrams}), flush=True)
    transport.close()


class Sender(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()


async def sender(port: int, size: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Sender, remote_addr=(LOOPBACK, port))
    payload = b"\x00" * size
    sent = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for _ in range(64):
            transport.sendto(payload)
        sent += 64
        await proto.can_write.wait()
        await asyncio.sleep(0)  # let the loop run (flush, callbacks), as a real app would
    elapsed = time.perf_counter() - start
    transport.close()
    print(json.dumps({"sent": sent, "sent_per_s": round(sent / elapsed)}), flush=True)


def run_size(size: int, duration: float, warmup: float) -> dict[str, float | int]:
    me = [sys.executable, __file__]
    with children() as procs:
        rx = subprocess.Popen(
            [*me, "receiver", "--warmup", str(warmup), "--duration", str(duration)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(rx)
        rx_lines = Lines(rx)
        port = int(rx_lines.next(timeout=10))
        tx = subprocess.Popen(
            [
                *me,
                "sender",
                "--port",
                str(port),
                "--size",
                str(size),
                "--seconds",
                str(warmup + duration + 0.5),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(tx)
        window = json.loads(rx_lines.next(timeout=warmup + duration + 15))
        sent = json.loads(Lines(tx).next(timeout=15))
        assert rx.stdin is not None
        rx.stdin.write("done\n")
        rx.stdin.flush()
        received = json.loads(rx_lines.next(timeout=10))["received"]
    return {
        "datagram_bytes": size,
        **window,
        "sent_per_s": sent["sent_per_s"],
        "loss_percent": round(100 * (1 - received / sent["sent"]), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role")
    r = sub.add_parser("receiver")
    r.add_argument("--warmup", type=float, required=True)
    r.add_argument("--duration", type=float, required=True)
    s = sub.add_parser("sender")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per size")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--sizes", default="1200,64")
    args = ap.parse_args()
    if args.role == "receiver":
        asyncio.run(receiver(args.warmup, args.duration))
    elif args.role == "sender":
        asyncio.run(sender(args.port, args.size, args.seconds))
    else:
        exit_on_sigterm()
        result: dict[str, object] = {"anchor": "asyncio_udp", "python": sys.version.split()[0]}
        for size in (int(x) for x in args.sizes.split(",")):
            result[f"udp_{size}"] = run_size(size, args.duration, args.warmup)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
