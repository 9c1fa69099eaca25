"""The outgoing side of a keyed-relay WebSocket, shared by the client and the server.

WebSocket sends are awaited one at a time, so frames wait in a deque (its byte count is what the
callers bound) and one writer task drains it. Closing lets the writer send what is queued, then stop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable


class FrameQueue:
    """Frames for one WebSocket: :meth:`push` them, :meth:`drain` them from the writer task."""

    def __init__(self) -> None:
        self._frames: deque[bytes] = deque()
        self.queued = 0  # bytes waiting in the deque
        self._wake = asyncio.Event()
        self.closing = False

    def push(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.queued += len(frame)
        self._wake.set()

    def close(self, *, discard: bool = False) -> None:
        """No more frames; the writer ends after sending what is queued (nothing, with ``discard``)."""
        self.closing = True
        if discard:
            self.clear()
        self._wake.set()

    def clear(self) -> None:
        self._frames.clear()
        self.queued = 0

    async def drain(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send frames as they are pushed until the queue is closed and empty. Errors of ``send``
        propagate; the caller decides what a broken connection means."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._frames:
                frame = self._frames.popleft()
                self.queued -= len(frame)
                await send(frame)
            if self.closing:
                return
