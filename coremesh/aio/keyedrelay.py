"""The asyncio client of a keyed mesh relay: :class:`ClientSession` on a TCP or WebSocket connection.

``KeyedRelayClient(identity, url, on_packet=...)`` connects, answers the relay's challenge, and
keeps the registration alive: when the connection is lost it reconnects with exponential backoff
(with jitter), until :meth:`KeyedRelayClient.stop`. :meth:`KeyedRelayClient.send` never blocks: the
frame goes into a send queue bounded by ``queue_limit`` bytes, or is dropped and counted.

URLs: ``tcp://HOST:PORT``, ``tls://HOST:PORT``, ``ws://HOST:PORT/v1/relay``,
``wss://HOST:PORT/v1/relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Final

import aiohttp

from coremesh.errors import ConfigError, ConnectionFailed, DecodeError
from coremesh.identity import Identity, PeerId

from ..keyedrelay.client import (
    ClientSession,
    ClientState,
    PacketReceived,
    PeerUnknownEvent,
    RegisteredEvent,
    RelayNotRegistered,
    SessionEnded,
)
from ..keyedrelay.frames import MAX_FRAME, CloseCode
from ..keyedrelay.framing import MAGIC, FrameReader, tcp_frame
from ..keyedrelay.url import RelayUrl, parse_relay_url
from .timer import CoreTimer
from .wsqueue import FrameQueue

log = logging.getLogger("coremesh.keyedrelay")

CLOSE_LINGER: Final = 2.0


class _TcpLink(asyncio.Protocol):
    """Raw TCP: the ``CMRL`` preamble, then varint-length-prefixed frames both ways."""

    def __init__(self, client: KeyedRelayClient) -> None:
        self._client = client
        self._reader = FrameReader(MAX_FRAME)
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(MAGIC)
        self._client._attach(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except DecodeError as exc:
            self._client._malformed(self, str(exc))
            return
        if frames:
            self._client._on_frames(self, frames)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, frame: bytes, *, force: bool = False) -> bool:
        t = self._transport
        if t is None or t.is_closing():
            return False
        if not force and t.get_write_buffer_size() + len(frame) > self._client.queue_limit:
            return False
        t.write(tcp_frame(frame))
        return True

    @property
    def queued(self) -> int:
        t = self._transport
        return t.get_write_buffer_size() if t is not None else 0

    def close(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.close()
            asyncio.get_running_loop().call_later(CLOSE_LINGER, t.abort)

    async def run(self) -> None:
        await self.closed


class _WsLink:
    """WebSocket (aiohttp): one binary message per frame; a bounded deque and one writer task."""

    def __init__(
        self, client: KeyedRelayClient, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse
    ):
        self._client = client
        self._session = session
        self._ws = ws
        self._out = FrameQueue()
        self._writer = asyncio.create_task(self._write_loop())

    def write(self, frame: bytes, *, force: bool = False) -> bool:
        if self._out.closing:
            return False
        if not force and self._out.queued + len(frame) > self._client.queue_limit:
            return False
        self._out.push(frame)
        return True

    @property
    def queued(self) -> int:
        return self._out.queued

    def close(self) -> None:
        self._out.close()

    async def _write_loop(self) -> None:
        ws = self._ws
        try:
            await self._out.drain(ws.send_bytes)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass
        finally:
            self._out.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), CLOSE_LINGER)

    async def run(self) -> None:
        ws = self._ws
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self._client._on_frames(self, (msg.data,))
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    self._client._malformed(self, "text WebSocket message")
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    self._client._malformed(self, f"WebSocket error: {ws.exception()}")
                    break
                if self._out.closing and self._writer.done():
                    break
        finally:
            self.close()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_LINGER)
            if not self._writer.done():
                self._writer.cancel()
            await self._session.close()


_Link = _TcpLink | _WsLink


class KeyedRelayClient:
    """A node's registration at one keyed relay.

    ``on_packet(src, packet)`` is called for every packet relayed to us; ``on_state(state)`` with
    ``"connecting"``, ``"registering"``, ``"registered"``, ``"disconnected"`` (will retry) and
    ``"stopped"``; ``on_peer_unknown(dst)`` when the relay says a destination is not registered.
    Callbacks run on the event loop and must not block; an exception in one is logged, not raised.
    """

    def __init__(
        self,
        identity: Identity,
        url: str,
        *,
        on_packet: Callable[[PeerId, bytes], None],
        on_state: Callable[[str], None] | None = None,
        on_peer_unknown: Callable[[PeerId], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        queue_limit: int = 1 << 20,
        connect_timeout: float = 10.0,
        register_timeout: float = 10.0,
        keepalive_interval: float = 15.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        expected_relay: PeerId | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.url = parse_relay_url(url)
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("register_timeout", register_timeout),
            ("keepalive_interval", keepalive_interval),
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if backoff_max < backoff_initial:
            raise ConfigError("backoff_max must be at least backoff_initial")
        if not isinstance(queue_limit, int) or queue_limit < MAX_FRAME:
            raise ConfigError(f"queue_limit must be at least {MAX_FRAME} bytes, got {queue_limit!r}")
        if ssl_context is not None and not self.url.secure:
            raise ConfigError(f"ssl_context given for a {self.url.scheme}:// url (use tls:// or wss://)")
        self.queue_limit = queue_limit
        self._on_packet = on_packet
        self._on_state = on_state
        self._on_peer_unknown = on_peer_unknown
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._register_timeout = register_timeout
        self._keepalive = keepalive_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._expected_relay = expected_relay
        self._rng = rng if rng is not None else random.SystemRandom()
        self._core: ClientSession | None = None
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._state = "stopped"
        self._registered_event: asyncio.Event | None = None
        self._stop_event: asyncio.Event | None = None
        self._timer: CoreTimer | None = None  # the core's one timer, for the current session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session_registered = False
        self.last_error: str | None = None
        self.last_close: tuple[int, str] | None = None  # (code, reason) of the last session's end
        self.relay_id: PeerId | None = None
        self._counters: Counter[str] = Counter(
            dict.fromkeys(
                (
                    "packets_sent",
                    "bytes_sent",
                    "packets_received",
                    "bytes_received",
                    "drop_queue_full",
                    "peer_unknown",
                    "connects",
                    "registrations",
                    "disconnects",
                ),
                0,
            )
        )

    # -- public --

    @property
    def state(self) -> str:
        return self._state

    @property
    def registered(self) -> bool:
        core = self._core
        return core is not None and core.registered and self._link is not None

    @property
    def max_packet(self) -> int:
        core = self._core
        return core.max_packet if core is not None else 0

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the send queue (at most ``queue_limit``): a back-pressure signal."""
        link = self._link
        return link.queued if link is not None else 0

    def stats(self) -> dict[str, int]:
        out = dict(self._counters)
        out["registered"] = int(self.registered)
        out["queued_bytes"] = self.queued_bytes
        return out

    async def start(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Start connecting. With ``wait``, return once registered, or stop and raise
        :class:`ConnectionFailed` after ``timeout`` (default: connect + register timeouts)."""
        if self._task is not None:
            raise RuntimeError("the relay client is already started")
        self._loop = asyncio.get_running_loop()
        self._timer = CoreTimer(self._loop, self._on_timer)
        self._stopping = False
        self._registered_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"keyed-relay-client {self.url}")
        if not wait:
            return
        limit = timeout if timeout is not None else self._connect_timeout + self._register_timeout
        try:
            await self.wait_registered(limit)
        except TimeoutError:
            reason = self.last_error or (self.last_close[1] if self.last_close else "no answer")
            await self.stop()
            raise ConnectionFailed(f"could not register at relay {self.url}: {reason}") from None

    async def wait_registered(self, timeout: float | None = None) -> None:
        """Wait until registered (now or after a reconnect); ``TimeoutError`` after ``timeout``."""
        if self._registered_event is None:
            raise RuntimeError("the relay client is not started")
        async with asyncio.timeout(timeout):
            while not self.registered:
                self._registered_event.clear()
                await self._registered_event.wait()

    async def stop(self) -> None:
        """Say CLOSE to the relay (if connected), close, and stop reconnecting."""
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        core, link = self._core, self._link
        if core is not None and link is not None:
            core.close(CloseCode.NORMAL, "client stopping")
            self._pump(link)
        task, self._task = self._task, None
        if task is not None and link is None:
            task.cancel()  # connecting or backing off: nothing to say goodbye on
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), CLOSE_LINGER + 1.0)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._set_state("stopped")

    def send(self, dst: PeerId, packet: bytes) -> None:
        """Queue ``packet`` for ``dst`` through the relay. Never blocks.

        Raises :class:`RelayNotRegistered` when not registered (connecting, or reconnecting), and
        :class:`PacketTooLarge` for an empty packet or one above ``max_packet``. When the send
        queue is full the packet is dropped and counted (``drop_queue_full``), like a datagram.
        """
        core, link = self._core, self._link
        if core is None or link is None:
            raise RelayNotRegistered(f"not connected to relay {self.url} (state {self._state})")
        frame = core.encode_send(dst, packet)
        if link.write(frame):
            self._counters["packets_sent"] += 1
            self._counters["bytes_sent"] += len(packet)
        else:
            self._counters["drop_queue_full"] += 1

    # -- the connection loop --

    async def _run(self) -> None:
        delay = self._backoff_initial
        while not self._stopping:
            self._set_state("connecting")
            self._session_registered = False
            try:
                await self._connect_once()
            except (OSError, TimeoutError, aiohttp.ClientError, ssl.SSLError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("relay %s: connection failed: %s", self.url, self.last_error)
            finally:
                self._end_session()
            if self._stopping:
                break
            self._counters["disconnects"] += 1
            self._set_state("disconnected")
            if self.last_close is not None and self.last_close[0] == CloseCode.REPLACED:
                delay = self._backoff_max  # another instance of us took over: do not flap with it
            elif self._session_registered:
                delay = self._backoff_initial
            assert self._stop_event is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay * (0.5 + 0.5 * self._rng.random()))
            delay = min(delay * 2, self._backoff_max)

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        url = self.url
        ctx: ssl.SSLContext | None = None
        if url.secure:
            ctx = self._ssl if self._ssl is not None else ssl.create_default_context()
        link: _Link
        if url.websocket:
            http = aiohttp.ClientSession()
            try:
                scheme = "https" if url.secure else "http"
                host = f"[{url.host}]" if ":" in url.host else url.host
                ws = await asyncio.wait_for(
                    http.ws_connect(
                        f"{scheme}://{host}:{url.port}{url.path}",
                        ssl=ctx if ctx is not None else False,
                        max_msg_size=MAX_FRAME,
                        autoping=True,
                        compress=0,
                        timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_LINGER),
                        receive_timeout=None,
                        heartbeat=None,
                    ),
                    self._connect_timeout,
                )
            except BaseException:
                await http.close()
                raise
            link = _WsLink(self, http, ws)
            self._attach(link)
        else:
            _, tcp = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _TcpLink(self),
                    url.host,
                    url.port,
                    ssl=ctx,
                    server_hostname=url.host if ctx is not None else None,
                    ssl_handshake_timeout=self._connect_timeout if ctx is not None else None,
                ),
                self._connect_timeout,
            )
            link = tcp  # attached in connection_made: frames may arrive before this line runs
        try:
            await link.run()
        finally:
            if self._core is not None and self._core.state is not ClientState.CLOSED:
                self.last_close = (-1, "connection lost")

    def _attach(self, link: _Link) -> None:
        assert self._loop is not None
        self._counters["connects"] += 1
        self._core = ClientSession(
            self.identity,
            now=self._loop.time(),
            register_timeout=self._register_timeout,
            keepalive_interval=self._keepalive,
            expected_relay=self._expected_relay,
            random_bytes=os.urandom,  # the asyncio shell supplies the core's randomness
        )
        self._link = link
        self._set_state("registering")
        self._arm_timer()

    def _end_session(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        link, self._link = self._link, None
        self._core = None
        if link is not None:
            link.close()

    # -- events from the links --

    def _on_frames(self, link: _Link, frames: tuple[bytes, ...] | list[bytes]) -> None:
        core = self._core
        if core is None or link is not self._link:
            return
        assert self._loop is not None
        now = self._loop.time()
        for frame in frames:
            core.receive_frame(frame, now)
        self._pump(link)

    def _malformed(self, link: _Link, reason: str) -> None:
        core = self._core
        if core is None or link is not self._link:
            return
        core.close(CloseCode.PROTOCOL_ERROR, f"malformed frame: {reason}")
        self._pump(link)

    def _pump(self, link: _Link) -> None:
        core = self._core
        if core is None:
            return
        for frame in core.frames_to_send():
            link.write(frame, force=True)  # REGISTER, PING, PONG, CLOSE: few and small
        on_packet = self._on_packet
        counters = self._counters
        while (event := core.next_event()) is not None:
            if type(event) is PacketReceived:
                counters["packets_received"] += 1
                counters["bytes_received"] += len(event.packet)
                try:
                    on_packet(event.src, event.packet)
                except Exception:
                    log.exception("relay client: on_packet raised")
            elif isinstance(event, RegisteredEvent):
                counters["registrations"] += 1
                self.relay_id = event.relay_id
                self._session_registered = True
                self.last_error = None
                self._set_state("registered")
                if self._registered_event is not None:
                    self._registered_event.set()
            elif isinstance(event, PeerUnknownEvent):
                counters["peer_unknown"] += 1
                if self._on_peer_unknown is not None:
                    try:
                        self._on_peer_unknown(event.dst)
                    except Exception:
                        log.exception("relay client: on_peer_unknown raised")
            elif isinstance(event, SessionEnded):
                self.last_close = (event.code, event.reason)
                log.debug("relay %s: session ended: %s (%d)", self.url, event.reason, event.code)
                link.close()
        self._arm_timer()

    def _arm_timer(self) -> None:
        core, timer = self._core, self._timer
        if core is None or timer is None:
            return
        when, armed = core.get_timer(), timer.when
        # Every received frame moves the core's deadline later (keepalive after silence); an armed
        # deadline that comes first stays (the core, called early, finds nothing due and asks
        # again), which saves a cancel and a new handle per received batch.
        if when is None or armed is None or when < armed:
            timer.arm(when)

    def _on_timer(self, now: float) -> None:
        core, link = self._core, self._link
        if core is None or link is None:
            return
        core.handle_timer(now)
        self._pump(link)

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                log.exception("relay client: on_state raised")


__all__ = ["KeyedRelayClient", "RelayNotRegistered", "RelayUrl", "parse_relay_url"]
