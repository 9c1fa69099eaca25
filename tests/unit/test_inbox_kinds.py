"""The inbox's kinds of message: direct (a connection's stream, with back-pressure), broadcast and
multicast (from ``MeshNode.on_delivery`` on the node's event loop: queued at once or dropped and
counted, never waited for)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest
from coremesh_node.inbox import Inbox, InboxMessage, InboxPump

from coremesh.identity import Identity, PeerId

PEER_B = Identity(bytes(range(1, 33))).peer_id
PEER_C = Identity(bytes(range(2, 34))).peer_id


@dataclass(frozen=True)
class Delivery:  # the shape of coremesh.routing.flood.Delivery
    kind: str
    origin: PeerId
    group: str | None
    data: bytes


class NoConnections:
    def get_connection(self, peer: PeerId) -> None:
        return None


def test_to_json_says_the_kind_and_the_group_of_a_multicast() -> None:
    direct = InboxMessage(PEER_B, b"hi", 1.0)
    assert direct.kind == "direct" and direct.group is None
    assert direct.to_json() == {"from": PEER_B.to_text(), "data": "hi", "ts": 1.0, "kind": "direct"}
    broadcast = InboxMessage(PEER_B, b"all", 2.0, "broadcast")
    assert broadcast.to_json() == {"from": PEER_B.to_text(), "data": "all", "ts": 2.0, "kind": "broadcast"}
    multicast = InboxMessage(PEER_C, b"\xff", 3.0, "multicast", "chat")
    assert multicast.to_json() == {
        "from": PEER_C.to_text(),
        "data": "/w==",
        "encoding": "base64",
        "ts": 3.0,
        "kind": "multicast",
        "group": "chat",
    }


def test_the_pump_puts_deliveries_into_the_inbox_as_their_origin() -> None:
    async def body() -> None:
        inbox = Inbox()
        pump = InboxPump(NoConnections(), inbox)
        pump.on_delivery(Delivery("broadcast", PEER_B, None, b"one"))
        pump.on_delivery(Delivery("multicast", PEER_C, "chat", b"two"))
        assert [(m.sender, m.kind, m.group, m.data) for m in inbox.take()] == [
            (PEER_B, "broadcast", None, b"one"),
            (PEER_C, "multicast", "chat", b"two"),
        ]
        assert (inbox.received, inbox.received_bytes, inbox.dropped) == (2, 6, 0)

    asyncio.run(body())


def test_a_delivery_that_does_not_fit_is_dropped_and_counted_without_touching_the_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        inbox = Inbox(maxlen=10, max_bytes=10)
        inbox.append(PEER_B, b"12345678")  # 8 of 10 bytes
        caplog.set_level(logging.WARNING)
        for _ in range(3):  # a storm: every one dropped, one log line
            assert not inbox.offer(PEER_C, b"abc", kind="broadcast")
        assert not inbox.offer(PEER_C, b"x" * 11, kind="multicast", group="g")  # larger than the inbox
        assert [m.data for m in inbox.take()] == [b"12345678"]  # the queued message was kept
        assert (inbox.dropped, inbox.deliveries_dropped, inbox.received) == (4, 4, 5)
        assert inbox.status()["deliveries_dropped"] == 4
        full = [r for r in caplog.records if "inbox.delivery_dropped" in r.getMessage()]
        assert len(full) == 1
        assert inbox.offer(PEER_C, b"abc", kind="broadcast")  # room again
        assert not inbox.offer(PEER_C, b"x" * 8, kind="broadcast")
        full = [r for r in caplog.records if "inbox.delivery_dropped" in r.getMessage()]
        assert len(full) == 2  # a new run of drops after a message was queued: logged again

    asyncio.run(body())


def test_a_delivery_wakes_a_waiting_long_poll() -> None:
    async def body() -> None:
        inbox = Inbox()
        loop = asyncio.get_running_loop()
        waiter = loop.create_task(inbox.wait_for(1, 30.0))
        await asyncio.sleep(0)
        assert not waiter.done()
        inbox.offer(PEER_B, b"hi", kind="broadcast")
        await asyncio.wait_for(waiter, 5.0)
        assert len(inbox) == 1

    asyncio.run(body())


def test_after_close_deliveries_are_dropped() -> None:
    async def body() -> None:
        inbox = Inbox()
        inbox.close()
        assert not inbox.offer(PEER_B, b"hi", kind="broadcast") and len(inbox) == 0
        assert inbox.deliveries_dropped == 1

    asyncio.run(body())


def test_an_unknown_kind_is_refused() -> None:
    async def body() -> None:
        with pytest.raises(ValueError, match="kind"):
            Inbox().offer(PEER_B, b"hi", kind="unicast")

    asyncio.run(body())
