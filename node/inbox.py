"""The node daemon's inbox: every connected peer's messages, read into one bounded queue that
``GET /v1/messages`` (``coremesh recv``) takes them out of.

Its own module because it is the daemon's back-pressure, not part of the web app: while the inbox is
full the :class:`InboxPump` stops reading from peers, so their sends block instead of the daemon's
memory growing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Protocol

from coremesh.errors import ConnectionClosed
from coremesh.identity import PeerId
from coremesh.service.jsonable import state_text

from .logs import log

INBOX_SIZE: Final = 10_000  # messages
INBOX_BYTES: Final = 64 * 1024 * 1024  # payload bytes; see Inbox


class ConnectionSource(Protocol):
    """What the pump needs from a node (``coremesh.MeshNode`` has it): a peer's open connection."""

    def get_connection(self, peer: PeerId) -> Any: ...


class DeliverySource(Protocol):
    """What :meth:`InboxPump.on_delivery` reads from a ``coremesh.routing.flood.Delivery``."""

    @property
    def kind(self) -> str: ...  # "broadcast" or "multicast"
    @property
    def origin(self) -> PeerId: ...
    @property
    def group(self) -> str | None: ...
    @property
    def data(self) -> bytes: ...


KINDS: Final = ("direct", "broadcast", "multicast")


@dataclass(frozen=True, slots=True)
class InboxMessage:
    sender: PeerId  # for a broadcast or a multicast: its origin (signed), not the neighbour it came from
    data: bytes
    ts: float  # wall-clock time of arrival, seconds since the epoch
    kind: str = "direct"  # direct (a connection's stream), broadcast or multicast
    group: str | None = None  # the multicast group

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from": self.sender.to_text()}
        try:
            out["data"] = self.data.decode("utf-8")
        except UnicodeDecodeError:
            out["data"] = base64.b64encode(self.data).decode("ascii")
            out["encoding"] = "base64"
        out["ts"] = round(self.ts, 6)
        out["kind"] = self.kind
        if self.kind == "multicast":
            out["group"] = self.group
        return out


class Inbox:
    """Received messages in arrival order, bounded by a message count and a total byte size.

    The :class:`InboxPump` adds messages with :meth:`put`, which *waits* while the inbox is full: the
    pump then stops reading that connection, so the library's flow control pushes back on the sender
    (its ``send`` blocks) instead of the daemon buffering without limit or dropping. Only a message
    larger than ``max_bytes`` on its own can never fit: it is dropped, counted and logged.

    :meth:`append` is the non-blocking form: it makes room by dropping the oldest messages (counted).
    :meth:`offer` is the form for broadcasts and multicasts, which cannot be pushed back on (they come
    from the node's event loop, not from a stream): one that does not fit now is dropped and counted.
    """

    def __init__(self, maxlen: int = INBOX_SIZE, max_bytes: int = INBOX_BYTES) -> None:
        if maxlen < 1:
            raise ValueError(f"inbox maxlen: expected 1 or more, got {maxlen}")
        if max_bytes < 1:
            raise ValueError(f"inbox max_bytes: expected 1 or more, got {max_bytes}")
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self._items: deque[InboxMessage] = deque()
        self._changed = asyncio.Event()
        self._closed = False
        self.bytes = 0  # payload bytes queued
        self.received = 0
        self.received_bytes = 0  # payload bytes received since start (queued, or dropped oversized)
        self.dropped = 0
        self.deliveries_dropped = 0  # broadcasts and multicasts that did not fit (also in `dropped`)
        self._drop_logged = False  # one log line per run of dropped deliveries, not one per message

    def __len__(self) -> int:
        return len(self._items)

    def fits(self, size: int) -> bool:
        """Whether a message of ``size`` bytes can be queued now without dropping anything."""
        return len(self._items) < self.maxlen and self.bytes + size <= self.max_bytes

    def _push(
        self, sender: PeerId, data: bytes, ts: float | None, kind: str = "direct", group: str | None = None
    ) -> None:
        ts = time.time() if ts is None else ts
        self._items.append(InboxMessage(sender, bytes(data), ts, kind, group))
        self.bytes += len(data)
        self.received += 1
        self.received_bytes += len(data)
        self._drop_logged = False
        self._wake()

    def _drop_oversized(self, sender: PeerId, size: int) -> None:
        self.received += 1
        self.received_bytes += size
        self.dropped += 1
        log.warning(
            "inbox.message_dropped",
            peer_id=str(sender),
            bytes=size,
            max_bytes=self.max_bytes,
            reason="the message alone is larger than the inbox",
        )

    def append(self, sender: PeerId, data: bytes, ts: float | None = None) -> None:
        """Queue at once, dropping (and counting) the oldest messages until this one fits."""
        if len(data) > self.max_bytes:
            self._drop_oversized(sender, len(data))
            return
        while self._items and not self.fits(len(data)):
            self.bytes -= len(self._items.popleft().data)
            self.dropped += 1
        self._push(sender, data, ts)

    def offer(
        self,
        sender: PeerId,
        data: bytes,
        *,
        kind: str = "direct",
        group: str | None = None,
        ts: float | None = None,
    ) -> bool:
        """Queue at once if it fits, else drop it and count it (never waits, never drops another
        message): for broadcasts and multicasts, which arrive on the node's event loop. False if
        dropped."""
        if kind not in KINDS:
            raise ValueError(f"inbox message kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        if len(data) > self.max_bytes:
            self._drop_oversized(sender, len(data))
            self.deliveries_dropped += 1
            return False
        if self._closed or not self.fits(len(data)):
            self.received += 1
            self.received_bytes += len(data)
            self.dropped += 1
            self.deliveries_dropped += 1
            if not self._drop_logged:  # once until a message is queued again: a storm is one line
                self._drop_logged = True
                log.warning(
                    "inbox.delivery_dropped",
                    peer_id=str(sender),
                    kind=kind,
                    group=group,
                    bytes=len(data),
                    queued=len(self._items),
                    queued_bytes=self.bytes,
                    reason="the inbox is full (closed) and a broadcast or multicast cannot wait",
                )
            return False
        self._push(sender, data, ts, kind, group)
        return True

    async def put(self, sender: PeerId, data: bytes, ts: float | None = None) -> bool:
        """Queue ``data``, waiting until there is room. False if it was not queued: larger than
        ``max_bytes`` on its own (dropped, counted, logged), or the inbox closed while waiting."""
        if len(data) > self.max_bytes:
            self._drop_oversized(sender, len(data))
            return False
        while not self.fits(len(data)):
            if self._closed:
                return False
            await self._changed.wait()
        if self._closed:
            return False
        self._push(sender, data, ts)
        return True

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, count: int, timeout: float) -> None:
        """Return once ``count`` messages are queued, ``timeout`` seconds passed, or the inbox closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._items) < count and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def take(self, count: int | None = None) -> list[InboxMessage]:
        """Remove and return up to ``count`` messages (all if None), oldest first."""
        n = len(self._items) if count is None else min(count, len(self._items))
        out = [self._items.popleft() for _ in range(n)]
        if out:
            self.bytes -= sum(len(m.data) for m in out)
            self._wake()  # a reader waiting in put() may go on
        return out

    def status(self) -> dict[str, int]:
        return {
            "queued": len(self._items),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "max_messages": self.maxlen,
            "received": self.received,
            "dropped": self.dropped,
            "deliveries_dropped": self.deliveries_dropped,
        }

    def close(self) -> None:
        """Wake every waiting long-poll and reader (shutdown)."""
        self._closed = True
        self._wake()


class InboxPump:
    """Reads every connected peer's messages into the inbox: one reader task per Connection.

    A reader takes the next message from its connection only once the previous one is in the inbox:
    while the inbox is full it waits, the connection's receive window is not re-opened, and the
    sender's ``send`` blocks (back-pressure end to end).
    """

    def __init__(self, node: ConnectionSource, inbox: Inbox) -> None:
        self._node = node
        self._inbox = inbox
        self._readers: dict[int, asyncio.Task[None]] = {}

    def on_event(self, event: Any) -> None:
        """A ``MeshNode.on_connection`` callback: start a reader on every CONNECTED event."""
        if state_text(event.state) != "connected":
            return
        conn = self._node.get_connection(event.peer_id)
        if conn is None:
            return
        key = id(conn)
        task = self._readers.get(key)
        if task is not None and not task.done():
            return
        task = asyncio.get_running_loop().create_task(self._read(conn), name=f"inbox-{event.peer_id}")
        self._readers[key] = task
        task.add_done_callback(functools.partial(self._forget, key))

    def on_delivery(self, delivery: DeliverySource) -> None:
        """A ``MeshNode.on_delivery`` callback: a broadcast or multicast into the inbox, at once or
        dropped and counted when it does not fit (it runs on the node's event loop: it never waits)."""
        self._inbox.offer(delivery.origin, delivery.data, kind=delivery.kind, group=delivery.group)

    def _forget(self, key: int, _task: asyncio.Task[None]) -> None:
        self._readers.pop(key, None)

    async def _read(self, conn: Any) -> None:
        sender: PeerId = conn.peer_id
        try:
            async for data in conn:
                await self._inbox.put(sender, data)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("inbox.reader_failed", peer_id=str(sender), error=f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        tasks = list(self._readers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._readers.clear()
