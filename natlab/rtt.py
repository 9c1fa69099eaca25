"""Round-trip times to a STUN server from inside a lab host (checks a link's delay and loss).

``python -m coremesh_natlab.rtt IP:PORT [--count N]`` sends N STUN Binding requests one after
another (each waits for its answer or ``--timeout``) and prints JSON: the RTTs in milliseconds of
the answered ones and how many were lost.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time

from coremesh.addr import parse_address

MAGIC = 0x2112A442


def measure(host: str, port: int, count: int, timeout: float) -> dict[str, object]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    rtts: list[float] = []
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        for _ in range(count):
            tid = os.urandom(12)
            sent = time.monotonic()
            try:
                sock.send(struct.pack("!HHI", 0x0001, 0, MAGIC) + tid)
            except OSError:  # an ICMP error from an earlier request (server not up yet): lost
                continue
            deadline = sent + timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(2048)
                except (TimeoutError, OSError):
                    break
                if data[8:20] == tid:
                    rtts.append((time.monotonic() - sent) * 1000)
                    break
    return {"rtt_ms": rtts, "lost": count - len(rtts), "sent": count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coremesh_natlab.rtt", description=__doc__.split("\n")[0])
    parser.add_argument("server", help="IP:PORT of a STUN server")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each answer")
    args = parser.parse_args(argv)
    try:
        server = parse_address(args.server)
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(measure(server.host, server.port, args.count, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
