"""In-memory throughput of the reliability layer (no loss), and a correctness check of the same run.

Run as a script for the benchmark figure::

    python tests/unit/test_reliability_throughput.py [megabytes] [message_size]

Packets move one at a time each way, the receiver runs ``payloads_to_send`` after every packet (an
ACK every second packet, as a shell that flushes after each datagram would), and the CPU time of
each side's calls is measured separately.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass

from coremesh.reliability import MessageReceived, ReliabilityConfig, ReliableStream


@dataclass
class Result:
    messages: int
    data_packets: int
    ack_packets: int
    sender_seconds: float
    receiver_seconds: float
    lost: int


def transfer(total_bytes: int, message_size: int, config: ReliabilityConfig | None = None) -> Result:
    config = config or ReliabilityConfig()
    clock = time.perf_counter
    now = 0.0
    a = ReliableStream(config, now)
    b = ReliableStream(config, now)
    message = bytes(range(256)) * (message_size // 256) + bytes(message_size % 256)
    count = max(1, total_bytes // message_size)
    queued = received = 0
    to_b: deque[bytes] = deque()
    to_a: deque[bytes] = deque()
    sender = receiver = 0.0
    for _ in range(100 * count + 1_000_000):
        if received == count and not a.has_unacked_data:
            break
        now += 0.000_01  # virtual time: 10 µs per step each way
        t0 = clock()
        if to_a:
            a.receive_payload(to_a.popleft(), now)
            while a.next_event() is not None:
                pass
        while queued < count and a.can_send():
            a.send_message(message, now)
            queued += 1
        to_b.extend(a.payloads_to_send(now))
        timer = a.get_timer()
        if timer is not None and timer <= now:
            a.handle_timer(now)
        t1 = clock()
        if to_b:
            b.receive_payload(to_b.popleft(), now)
            while (event := b.next_event()) is not None:
                if isinstance(event, MessageReceived):
                    assert event.data == message
                    received += 1
                    b.consume(len(event.data))
        to_a.extend(b.payloads_to_send(now))
        timer = b.get_timer()
        if timer is not None and timer <= now:
            b.handle_timer(now)
        t2 = clock()
        sender += t1 - t0
        receiver += t2 - t1
    return Result(received, a.packets_sent, b.packets_sent, sender, receiver, a.packets_lost)


def test_in_memory_transfer() -> None:
    result = transfer(2_000_000, 16_384)
    assert result.messages == 2_000_000 // 16_384
    assert result.lost == 0
    # One ACK for every second data packet, give or take the MAX_DATA updates.
    assert 0.4 < result.ack_packets / result.data_packets < 0.6


def test_in_memory_transfer_small_messages() -> None:
    result = transfer(300_000, 100)
    assert result.messages == 3000 and result.lost == 0


def main() -> None:
    megabytes = float(sys.argv[1]) if len(sys.argv) > 1 else 50.0
    message_size = int(sys.argv[2]) if len(sys.argv) > 2 else 16_384
    total = int(megabytes * 1_000_000)
    started = time.perf_counter()
    r = transfer(total, message_size)
    wall = time.perf_counter() - started
    n = r.data_packets
    both = r.sender_seconds + r.receiver_seconds
    print(f"{megabytes:g} MB in {message_size}-byte messages: {n} data packets, {r.ack_packets} ACK packets")
    print(f"  sender   {r.sender_seconds / n * 1e6:5.2f} µs/packet  ({n / r.sender_seconds:,.0f} packets/s)")
    print(
        f"  receiver {r.receiver_seconds / n * 1e6:5.2f} µs/packet  ({n / r.receiver_seconds:,.0f} packets/s)"
    )
    print(f"  both sides in one process: {n / both:,.0f} packets/s, {total / both / 1e6:.1f} MB/s")
    print(f"  wall clock including the harness: {wall:.2f} s")


if __name__ == "__main__":
    main()
