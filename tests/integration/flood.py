"""A handshake flood over real sockets, run in a process of its own (multiprocessing, spawn).

What issue 14 filed: copies of one real handshake initiation (valid mac1) and fresh valid-looking
ones (random Noise bytes under a valid mac1: anyone who knows a node's public key can make them at
no Diffie-Hellman cost), from many source addresses in 127.0.0.0/8, at a set rate. The flooder
never reads what comes back (cookie replies pile up in its sockets and are dropped by the kernel).

Used by tests/integration/test_handshake_flood.py and benchmarks/handshake_flood.py. The parent
starts :func:`start_flood` and must call :meth:`Flood.stop` (also on failure): it sets the stop event,
joins, and kills the process by its handle if it does not end.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import socket
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

from coremesh.identity import Identity, PeerId
from coremesh.secure import wire
from coremesh.secure.session import InitiatorHandshake, compute_mac, mac1_key

BATCH_INTERVAL = 0.002  # the flooder sends a batch this often, sized to the rate


def real_initiation(target: PeerId, seed: int = 0) -> bytes:
    """A real initiation to ``target`` from a throwaway identity: what a replay flood copies."""
    rng = random.Random(seed)
    return InitiatorHandshake(
        Identity(rng.randbytes(32)),
        target,
        local_index=rng.getrandbits(32),
        conn_id=rng.randbytes(8),
        wall_time=time.time(),
        random_bytes=rng.randbytes,
        started_at=0.0,
    ).packet


def forged_initiation(mac1: bytes) -> bytes:
    """A fresh valid-looking initiation: random Noise bytes under a valid mac1 (``mac1_key`` of
    the target's public key)."""
    body = wire.encode_handshake_init(int.from_bytes(os.urandom(4)), os.urandom(wire.NOISE_MSG1_LEN))
    return body + hashlib.blake2s(body, key=mac1, digest_size=wire.MAC_LEN).digest() + bytes(wire.MAC_LEN)


def _flood(
    target: tuple[str, int],
    peer_text: str,
    hosts: int,
    rate: float,
    replay_share: float,
    ready: Event,
    stop: Event,
    sent: Synchronized,  # type: ignore[type-arg]
) -> None:
    peer = PeerId.from_text(peer_text)
    replay = real_initiation(peer)
    mac1 = mac1_key(peer.x25519_public())
    assert compute_mac(mac1, replay[: -2 * wire.MAC_LEN]) == replay[-32:-16]
    socks = []
    for i in range(hosts):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.0.{2 + i}", 0))
        s.setblocking(False)
        socks.append(s)
    start = time.perf_counter()
    total = 0
    ready.set()
    try:
        while not stop.is_set():
            now = time.perf_counter()
            due = int((now - start) * rate) - total
            if due <= 0:
                time.sleep(BATCH_INTERVAL)
                continue
            due = min(due, int(rate * 0.1) + 1)  # never a burst of more than 0.1 s when behind
            share = replay_share * 100
            try:
                for _ in range(due):
                    packet = replay if (total % 100) < share else forged_initiation(mac1)
                    socks[total % hosts].sendto(packet, target)
                    total += 1
            except (BlockingIOError, InterruptedError):
                time.sleep(BATCH_INTERVAL)  # a full send buffer: the rest of the batch waits
            sent.value = total
    finally:
        sent.value = total
        for s in socks:
            s.close()


@dataclass
class Flood:
    process: multiprocessing.process.BaseProcess
    stop_event: Event
    sent: Synchronized  # type: ignore[type-arg]

    def packets_sent(self) -> int:
        return int(self.sent.value)

    def stop(self) -> int:
        """Stop the flood and wait for its process; kill it (by its handle) if it hangs."""
        self.stop_event.set()
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        return self.packets_sent()


def start_flood(
    target: tuple[str, int],
    peer: PeerId,
    *,
    rate: float,
    hosts: int = 59,
    replay_share: float = 0.5,
    ready_timeout: float = 30.0,
) -> Flood:
    """Start a flooder process sending ``rate`` initiations a second to ``target`` from ``hosts``
    addresses (127.0.0.2 and up); returns once it sends."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    sent = ctx.Value("q", 0)
    process = ctx.Process(
        target=_flood,
        args=(target, str(peer), hosts, rate, replay_share, ready, stop, sent),
        name="handshake-flood",
        daemon=True,
    )
    process.start()
    flood = Flood(process, stop, sent)
    if not ready.wait(ready_timeout):
        flood.stop()
        raise RuntimeError("the flooder process did not start")
    return flood
