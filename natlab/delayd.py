"""The delay element: holds queued packets for a link's latency (plus jitter), then lets them go.

This kernel has no ``netem``. The namespace's ``natlab_link`` table queues delayed packets to
NFQUEUE; this process (one per namespace, started inside it) receives their metadata only, and
accepts each after ``latency + uniform(-jitter, +jitter)`` of both links it crosses: the receiving
interface's and the sender's (known by its MAC). Packets of one flow (same interface, same sender)
leave in order, so jitter never reorders them. The queue is bounded (:data:`MAX_HELD`); beyond it
packets are dropped, as a full router buffer would.

Run: ``python -m coremesh_natlab.delayd CONFIG.json``; prints ``ready`` once bound. SIGHUP re-reads
the config (for :meth:`Link.set`) and, when it carries a ``generation``, acknowledges it in
``CONFIG.json.loaded``; SIGTERM releases what is held and exits.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import select
import signal
import socket
import sys
import time
from typing import Any, Final

MAX_HELD: Final = 20_000


class DelayElement:
    def __init__(self, path: str) -> None:
        self.path = path
        self.rng = random.Random()
        self.ifaces: dict[int, tuple[float, float]] = {}
        self.macs: dict[bytes, tuple[float, float]] = {}
        self.held: list[tuple[float, int, Any]] = []
        self.last: dict[tuple[int, bytes], float] = {}
        self.seq = itertools.count()
        self.reload = False
        self.stop = False
        self.load()

    def load(self) -> None:
        with open(self.path) as f:
            config = json.load(f)
        self.ifaces = {}
        for name, (latency, jitter) in config.get("ifaces", {}).items():
            try:
                self.ifaces[socket.if_nametoindex(name)] = (latency / 1000, jitter / 1000)
            except OSError:
                continue
        self.macs = {
            bytes.fromhex(mac.replace(":", "")): (latency / 1000, jitter / 1000)
            for mac, (latency, jitter) in config.get("macs", {}).items()
        }
        if "seed" in config:
            self.rng.seed(config["seed"])
        if "generation" in config:  # the lab waits for this acknowledgement of a reload
            done = f"{self.path}.loaded"
            with open(f"{done}.tmp", "w") as f:
                f.write(str(config["generation"]))
            os.replace(f"{done}.tmp", done)

    def delay(self, indev: int, hw: bytes) -> float:
        total = 0.0
        for latency, jitter in (self.ifaces.get(indev, (0.0, 0.0)), self.macs.get(hw, (0.0, 0.0))):
            total += latency + (self.rng.uniform(-jitter, jitter) if jitter else 0.0)
        return max(0.0, total)

    def on_packet(self, packet: Any) -> None:
        if len(self.held) >= MAX_HELD:
            packet.drop()
            return
        hw = (packet.get_hw() or b"")[:6]
        flow = (packet.indev, hw)
        release = max(time.monotonic() + self.delay(packet.indev, hw), self.last.get(flow, 0.0))
        self.last[flow] = release
        heapq.heappush(self.held, (release, next(self.seq), packet))

    def release_due(self, now: float) -> None:
        while self.held and self.held[0][0] <= now:
            _, _, packet = heapq.heappop(self.held)
            packet.accept()
        if len(self.last) > 4 * MAX_HELD:
            self.last = {k: v for k, v in self.last.items() if v > now}

    def run(self, queue: int) -> None:
        from netfilterqueue import COPY_META, NetfilterQueue

        nfq = NetfilterQueue()
        nfq.bind(queue, self.on_packet, max_len=MAX_HELD, mode=COPY_META)
        fd = nfq.get_fd()
        # A signal wakes the select below at once (a reload must not wait for the next packet).
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop", True))
        try:
            sys.stdout.write("ready\n")
            sys.stdout.flush()
        except BrokenPipeError:
            pass
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            while not self.stop:
                if self.reload:
                    self.reload = False
                    self.load()
                now = time.monotonic()
                timeout = max(0.0, self.held[0][0] - now) if self.held else 0.5
                try:
                    readable, _, _ = select.select([fd, wake_r.fileno()], [], [], timeout)
                except InterruptedError:
                    continue
                if wake_r.fileno() in readable:
                    while True:
                        try:
                            if not wake_r.recv(512):
                                break
                        except BlockingIOError:
                            break
                if fd in readable:
                    nfq.run(block=False)
                self.release_due(time.monotonic())
        finally:
            self.release_due(float("inf"))
            nfq.unbind()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m coremesh_natlab.delayd CONFIG.json [QUEUE]", file=sys.stderr)
        return 2
    DelayElement(args[0]).run(int(args[1]) if len(args) == 2 else 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
