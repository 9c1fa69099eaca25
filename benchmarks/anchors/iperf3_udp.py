"""Anchor (a): iperf3 UDP on loopback, the machine's limit for one UDP flow.

Starts `iperf3 -s` on 127.0.0.1 (free port) and runs `iperf3 -u -b 0` (unlimited rate) against it,
once with 1200-byte datagrams and once with 65000-byte ones. Figures are the RECEIVER's
(iperf3's `sum_received`), with the first second omitted (`-O 1`) as warm-up.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

from common import LOOPBACK, Lines, children, exit_on_sigterm, free_port


def run_size(size: int, duration: float) -> dict[str, float | int]:
    port = free_port()
    with children() as procs:
        server = subprocess.Popen(
            ["iperf3", "-s", "-1", "-B", LOOPBACK, "-p", str(port), "--forceflush"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(server)
        Lines(server).next(timeout=10)  # first line of "Server listening on PORT"
        t = max(1, round(duration))
        out = subprocess.run(
            [
                "iperf3",
                "-u",
                "-c",
                LOOPBACK,
                "-p",
                str(port),
                "-b",
                "0",
                "-l",
                str(size),
                "-t",
                str(t),
                "-O",
                "1",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=t + 30,
            check=True,
        ).stdout
    end = json.loads(out)["end"]
    tx, rx = end["sum_sent"], end["sum_received"]
    # Counted from bytes: with -O, iperf3's own lost_packets/lost_percent also count the omitted second.
    return {
        "datagram_bytes": size,
        "seconds": round(rx["seconds"], 3),
        "mbit_per_s": round(rx["bits_per_second"] / 1e6, 1),
        "datagrams_per_s": round(rx["bytes"] / size / rx["seconds"]),
        "sent_datagrams_per_s": round(tx["bytes"] / size / tx["seconds"]),
        "loss_percent": round(100 * (1 - rx["bytes"] / tx["bytes"]), 2),
        "receiver_cpu_percent": round(end["cpu_utilization_percent"]["remote_total"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per size")
    ap.add_argument("--sizes", default="1200,65000", help="datagram sizes, comma separated")
    args = ap.parse_args()
    exit_on_sigterm()
    if shutil.which("iperf3") is None:
        sys.exit("iperf3 not installed: run sh benchmarks/setup.sh")
    version = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    result: dict[str, object] = {"anchor": "iperf3_udp", "version": version}
    for size in (int(s) for s in args.sizes.split(",")):
        result[f"udp_{size}"] = run_size(size, args.duration)
        time.sleep(0.2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
