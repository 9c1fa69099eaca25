"""The daemon's inbox: bounded by bytes, with back-pressure to the sender instead of unbounded memory.

Two real MeshNodes on loopback in one event loop; the receiver runs the daemon's InboxPump and admin
app (coremesh_node.admin), and nobody reads its inbox until the sender is blocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiohttp import ClientSession
from coremesh_node.admin import STATE, AdminServer, create_admin_app
from coremesh_node.inbox import Inbox, InboxPump

from coremesh import MeshConfig, MeshNode
from coremesh.addr import Address
from coremesh.identity import Identity, PeerId

T = TypeVar("T")
MiB = 1024 * 1024
PEER_B = Identity(bytes(range(1, 33))).peer_id
CONFIG = MeshConfig(listen_addr="127.0.0.1:0", heartbeat_interval=0.5, idle_timeout=5.0, connect_timeout=2.0)


def run(coro_fn: Callable[[], Awaitable[T]], timeout: float = 90.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


class PeakInbox(Inbox):
    """An inbox that records the most payload bytes it ever held (after every message queued)."""

    def __init__(self, *, max_bytes: int) -> None:
        super().__init__(max_bytes=max_bytes)
        self.peak = 0

    async def put(self, sender: PeerId, data: bytes, ts: float | None = None) -> bool:
        queued = await super().put(sender, data, ts)  # nothing runs between the push and here
        self.peak = max(self.peak, self.bytes)
        return queued

    def append(self, sender: PeerId, data: bytes, ts: float | None = None) -> None:
        super().append(sender, data, ts)
        self.peak = max(self.peak, self.bytes)


async def run_ready_tasks() -> None:
    """Let every task that can run do so until it waits on something (no wall-clock time passes):
    a task created just before has then either finished or is blocked."""
    for _ in range(10):
        await asyncio.sleep(0)


def message(i: int, size: int) -> bytes:
    head = f"{i:04d}:".encode()
    return head + bytes([i % 251]) * (size - len(head))


def test_full_inbox_blocks_the_sender_then_drains_in_order() -> None:
    cap, size, total = 4 * MiB, 1 * MiB, 40

    async def body() -> None:
        async with MeshNode(CONFIG) as sender, MeshNode(CONFIG) as receiver:
            inbox = PeakInbox(max_bytes=cap)
            pump = InboxPump(receiver, inbox)
            receiver.on_connection(pump.on_event)
            app = create_admin_app(receiver, inbox, listen=CONFIG.listen_addr)
            server = AdminServer(app)
            admin = await server.start(Address("127.0.0.1", 0))
            app[STATE].ready = True
            try:
                conn = await sender.connect(receiver.peer_id, receiver.local_address)
                # Nobody reads the inbox: the sender must block well before all 40 MiB are accepted.
                sent = 0
                while sent < total:
                    try:
                        await asyncio.wait_for(conn.send(message(sent, size)), 3.0)
                    except TimeoutError:
                        break
                    sent += 1
                assert sent < total, "send never blocked: the receiver buffered everything"
                assert inbox.bytes <= cap and inbox.peak <= cap
                assert inbox.dropped == 0 and len(inbox) >= 1

                async with ClientSession() as http:
                    async with http.get(f"http://{admin}/v1/status") as resp:
                        status = (await resp.json())["inbox"]
                    assert status["max_bytes"] == cap and 0 < status["bytes"] <= cap
                    assert status["queued"] == len(inbox) and status["dropped"] == 0

                    async def send_rest() -> None:
                        for i in range(sent, total):
                            await conn.send(message(i, size))

                    sending = asyncio.create_task(send_rest())
                    got: list[str] = []
                    while len(got) < total:
                        url = f"http://{admin}/v1/messages?count={total - len(got)}&timeout=0.5"
                        async with http.get(url) as resp:
                            assert resp.status == 200
                            got += [m["data"] for m in json.loads(await resp.text())["messages"]]
                    await sending
                assert got == [message(i, size).decode("latin-1") for i in range(total)]
                assert inbox.received == total and inbox.dropped == 0 and inbox.peak <= cap
            finally:
                await server.stop()
                await pump.stop()

    run(body)


def test_a_message_larger_than_the_inbox_is_dropped_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> dict[str, Any]:
        inbox = Inbox(max_bytes=10)
        assert await inbox.put(PEER_B, b"x" * 11) is False
        assert await inbox.put(PEER_B, b"y" * 10) is True  # exactly the cap fits
        return {"len": len(inbox), "bytes": inbox.bytes, "dropped": inbox.dropped, **inbox.status()}

    with caplog.at_level(logging.WARNING):
        st = run(body)
    assert (st["len"], st["bytes"], st["dropped"], st["received"]) == (1, 10, 1, 2)
    assert "inbox.message_dropped" in caplog.text


def test_put_waits_for_room_and_take_makes_it() -> None:
    async def body() -> None:
        inbox = Inbox(max_bytes=10)
        await inbox.put(PEER_B, b"a" * 6)
        second = asyncio.create_task(inbox.put(PEER_B, b"b" * 6))
        await run_ready_tasks()
        assert not second.done() and inbox.bytes == 6  # waiting: 12 > 10
        assert [m.data for m in inbox.take(1)] == [b"a" * 6]
        assert await asyncio.wait_for(second, 1) is True
        assert inbox.bytes == 6 and inbox.dropped == 0
        third = asyncio.create_task(inbox.put(PEER_B, b"c" * 6))
        await run_ready_tasks()
        assert not third.done()  # waiting for room, not refused
        inbox.close()  # shutdown releases a waiting writer
        assert await asyncio.wait_for(third, 1) is False

    run(body)


def test_append_makes_room_by_bytes_dropping_the_oldest() -> None:
    async def body() -> None:
        inbox = Inbox(max_bytes=10)
        for chunk in (b"1234", b"5678", b"90ab"):
            inbox.append(PEER_B, chunk)
        assert [m.data for m in inbox.take()] == [b"5678", b"90ab"]
        assert (inbox.dropped, inbox.bytes) == (1, 0)

    run(body)
