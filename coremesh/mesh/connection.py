"""``Connection``: the application's handle on one authenticated, reliable peer connection.

A Connection talks to its owner only through :class:`ConnectionOwner` (the node's
:class:`~coremesh.mesh.registry.ConnectionRegistry` implements it), never to the node itself.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ..endpoint.paths import PathAddress
from ..errors import ConnectionClosed, MeshError
from ..identity import PeerId


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """Passed to ``MeshNode.on_connection`` callbacks when a connection changes state."""

    peer_id: PeerId
    state: ConnectionState
    address: PathAddress | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer_id: PeerId
    address: PathAddress
    state: ConnectionState
    path: str
    rtt: float | None
    initiator: bool
    connected_at: float
    datagram_size: int
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    via: str = "direct"  # "direct", "turn" or "keyed"
    reason: str | None = None  # why the connection is relayed, when it is


@dataclass(frozen=True, slots=True)
class PingResult:
    rtt: float
    path: str  # "direct", "relay" or "routed" (through other peers)
    reason: str | None = None  # why the path is relayed (failed checks, NAT types), None when direct
    via: str = "direct"  # "direct", "turn", "keyed" or "routed"
    hops: tuple[PeerId, ...] = ()  # the peers a routed connection passes, in order


class ConnectionOwner(Protocol):
    """What a :class:`Connection` asks of whoever owns it: the core's send, receive-window, close
    and ping, by peer."""

    def try_send(self, peer_id: PeerId, data: bytes) -> bool:
        """Queue one message, or return False under back-pressure (the owner calls the
        connection's ``_set_writable`` once there is room). Raises
        :class:`~coremesh.errors.ConnectionClosed` when the peer's connection is not established
        (any more), :class:`~coremesh.errors.MessageTooLarge` above ``max_message_size``."""
        ...

    def consumed(self, peer_id: PeerId, nbytes: int) -> None:
        """The application read ``nbytes`` of messages: give that much window back to the peer."""
        ...

    def close(self, peer_id: PeerId) -> None:
        """Start a graceful close (the owner calls the connection's ``_mark_closed`` when done)."""
        ...

    async def ping(self, peer_id: PeerId, *, timeout: float) -> PingResult:
        """Round-trip time to the peer over its connection, and the path it took."""
        ...


class Connection:
    """Messages to and from one peer: reliable, ordered, encrypted and authenticated.

    ``send`` waits while the peer's window or the local send buffer is full (back-pressure).
    ``receive`` and ``async for`` yield whole messages in order; both end with
    :class:`~coremesh.errors.ConnectionClosed` / ``StopAsyncIteration`` once the connection is
    closed and every message that arrived before the close has been read.
    """

    def __init__(
        self,
        owner: ConnectionOwner,
        peer_id: PeerId,
        address: PathAddress,
        *,
        initiator: bool,
        max_queued: int = 1 << 62,
    ) -> None:
        self._owner = owner
        self.peer_id = peer_id
        self._address = address
        self.initiator = initiator
        self.path = "direct"
        self._inbox: deque[bytes] = deque()
        self._max_queued = max_queued  # unread messages at most (the node's max_queued_messages)
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed_reason: str | None = None
        self._closed_event = asyncio.Event()

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<Connection {self.peer_id.short()} {self._address} {state}>"

    @property
    def remote_address(self) -> PathAddress:
        return self._address

    @property
    def queued(self) -> int:
        """Messages received and not read yet."""
        return len(self._inbox)

    @property
    def is_closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def close_reason(self) -> str | None:
        return self._closed_reason

    async def send(self, data: bytes) -> None:
        """Queue one message; waits while back-pressure applies. Raises ConnectionClosed."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("send() takes bytes")
        while True:
            if self._closed_reason is not None:
                raise ConnectionClosed(f"connection to {self.peer_id} is closed", self._closed_reason)
            if self._owner.try_send(self.peer_id, bytes(data)):
                return
            self._writable.clear()
            await self._writable.wait()

    def send_nowait(self, data: bytes) -> bool:
        """Queue one message if the send buffer has room; False under back-pressure (the peer
        reads slower than we send, or not at all). Raises ConnectionClosed."""
        if self._closed_reason is not None:
            raise ConnectionClosed(f"connection to {self.peer_id} is closed", self._closed_reason)
        return self._owner.try_send(self.peer_id, bytes(data))

    async def receive(self) -> bytes:
        """The next message. Raises ConnectionClosed when closed and drained."""
        while not self._inbox:
            if self._closed_reason is not None:
                raise ConnectionClosed(f"connection to {self.peer_id} is closed", self._closed_reason)
            self._readable.clear()
            await self._readable.wait()
        data = self._inbox.popleft()
        self._owner.consumed(self.peer_id, len(data))
        return data

    def receive_nowait(self) -> bytes | None:
        if not self._inbox:
            return None
        data = self._inbox.popleft()
        self._owner.consumed(self.peer_id, len(data))
        return data

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time in seconds, measured with a PING frame over this connection."""
        return (await self._owner.ping(self.peer_id, timeout=timeout)).rtt

    async def close(self) -> None:
        """Close gracefully: the peer sees a close, not a timeout. Waits until done (bounded)."""
        if self._closed_reason is None:
            self._owner.close(self.peer_id)
        try:
            await asyncio.wait_for(self._closed_event.wait(), timeout=5.0)
        except TimeoutError:
            self._mark_closed("closed")

    async def wait_closed(self) -> str:
        await self._closed_event.wait()
        assert self._closed_reason is not None
        return self._closed_reason

    # -- called by the owner --------------------------------------------------------------------

    def _deliver(self, data: bytes) -> bool:
        """Queue a received message; False (not queued) if ``max_queued`` wait unread already."""
        inbox = self._inbox
        if len(inbox) >= self._max_queued:
            return False
        inbox.append(data)
        self._readable.set()
        return True

    def _set_writable(self) -> None:
        self._writable.set()

    def _set_address(self, address: PathAddress) -> None:
        self._address = address

    def _mark_closed(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
            self._readable.set()
            self._writable.set()
            self._closed_event.set()


__all__ = [
    "Connection",
    "ConnectionEvent",
    "ConnectionOwner",
    "ConnectionState",
    "MeshError",
    "PeerInfo",
    "PingResult",
]
