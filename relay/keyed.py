"""The keyed mesh relay server: :class:`coremesh.keyedrelay.protocol.RelayCore` on real sockets.

One listener (optionally TLS) carries both transports. The first bytes of each connection decide:
``CMRL`` is a raw TCP session (varint-length-prefixed frames), an HTTP request line goes to aiohttp,
which serves the WebSocket transport at ``GET /v1/relay`` (one binary message = one frame). Anything
else is counted (``drop_bad_preamble``) and closed.

The shell owns sockets, one timer and the per-session send queues; the core owns everything else.
A session's send queue is bounded by ``queue_limit`` bytes (the transport's write buffer for raw
TCP, a deque for WebSocket): a frame that does not fit is dropped and counted (``drop_queue_full``),
so a slow reader never grows the relay's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from aiohttp import WSMsgType, web

from coremesh.addr import Address, format_address, parse_address
from coremesh.errors import ConfigError, DecodeError, InvalidAddress
from coremesh.identity import Identity
from coremesh.keyedrelay.protocol import (
    MAGIC,
    MAX_FRAME,
    WS_PATH,
    CloseCode,
    Disconnect,
    FrameReader,
    FrameType,
    RelayCore,
    RelayLimits,
    tcp_frame,
)

log = logging.getLogger("coremesh_relay.keyed")

DISCONNECT_LINGER: Final = 2.0  # seconds a closing session may take to flush before it is aborted
_HTTP_STARTS: Final = (b"GET ", b"HEAD", b"POST", b"PUT ", b"OPTI", b"DELE", b"PATC", b"CONN", b"TRAC")
_CONTROL_FRAMES: Final = frozenset({FrameType.CLOSE, FrameType.ERROR})  # never dropped by the queue bound


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyedRelayConfig:
    """Settings of one keyed relay. Invalid values raise :class:`ConfigError` naming the field.

    - ``listen``: ``HOST:PORT`` or ``[V6]:PORT`` (port 0: any free port; see ``server.address``).
    - ``ssl_context``: a server-side TLS context; both transports then run over TLS.
    - ``rate_bytes_per_s``, ``rate_packets_per_s``: per-peer token buckets on what a peer sends;
      ``burst``: seconds of rate a bucket banks (the byte bucket holds at least one max packet).
    - ``max_sessions``: connections at once (registered or not); more get ERROR(SERVER_FULL).
    - ``max_frame``: the largest frame accepted (type + peer id + packet), ``MIN_FRAME..MAX_FRAME``.
    - ``queue_limit``: bytes queued towards one session before frames to it are dropped.
    - ``register_timeout``: seconds a connection has to register; ``idle_timeout``: seconds of
      silence before a session is closed (the relay PINGs at half of it).
    - ``identity``: the relay's own identity; its PeerId is announced in CHALLENGE.
    """

    listen: str = "127.0.0.1:0"
    ssl_context: ssl.SSLContext | None = None
    rate_bytes_per_s: float = 12_500_000.0
    rate_packets_per_s: float = 20_000.0
    burst: float = 1.0
    max_sessions: int = 10_000
    max_frame: int = MAX_FRAME
    queue_limit: int = 1 << 20
    register_timeout: float = 10.0
    idle_timeout: float = 60.0
    identity: Identity | None = None

    def __post_init__(self) -> None:
        try:
            parse_address(self.listen, allow_names=False)
        except InvalidAddress as exc:
            raise ConfigError(f"listen: {exc}") from None
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise ConfigError("ssl_context must be an ssl.SSLContext or None")
        try:
            self.limits()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(self.queue_limit, int) or self.queue_limit < self.max_frame:
            raise ConfigError(
                f"queue_limit must be an integer of at least max_frame ({self.max_frame}) bytes, "
                f"got {self.queue_limit!r}"
            )
        if self.identity is not None and not isinstance(self.identity, Identity):
            raise ConfigError("identity must be a coremesh Identity or None")

    @property
    def listen_address(self) -> Address:
        return parse_address(self.listen)

    def limits(self) -> RelayLimits:
        return RelayLimits(
            rate_bytes_per_s=self.rate_bytes_per_s,
            rate_packets_per_s=self.rate_packets_per_s,
            burst=self.burst,
            max_sessions=self.max_sessions,
            max_frame=self.max_frame,
            register_timeout=self.register_timeout,
            idle_timeout=self.idle_timeout,
        )


class _Link(Protocol):
    def transmit(self, frame: bytes) -> None: ...
    def disconnect(self) -> None: ...
    @property
    def queued(self) -> int: ...


class _RawSession(asyncio.Protocol):
    """A raw TCP session, after the demultiplexer saw the ``CMRL`` preamble."""

    def __init__(self, server: KeyedRelayServer, transport: asyncio.Transport) -> None:
        self._server = server
        self._transport = transport
        self._reader = FrameReader(server.config.max_frame)
        self._closing = False
        self.conn = server._open(self)

    @property
    def queued(self) -> int:
        return self._transport.get_write_buffer_size()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        server = self._server
        try:
            frames = self._reader.feed(data)
        except DecodeError as exc:
            server._core.malformed(self.conn, str(exc))
            server._flush()
            return
        if frames:
            server._receive(self.conn, frames)

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server._lost(self.conn)

    def transmit(self, frame: bytes) -> None:
        if self._closing:
            return
        size = self._transport.get_write_buffer_size()
        if size + len(frame) > self._server.config.queue_limit and frame[0] not in _CONTROL_FRAMES:
            self._server._counters["drop_queue_full"] += 1
            return
        self._transport.write(tcp_frame(frame))
        self._server._note_queue(size + len(frame))

    def disconnect(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._transport.close()
        asyncio.get_running_loop().call_later(DISCONNECT_LINGER, self._transport.abort)


class _WsSession:
    """A WebSocket session: a bounded deque drained by one writer task."""

    def __init__(self, server: KeyedRelayServer, ws: web.WebSocketResponse) -> None:
        self._server = server
        self._ws = ws
        self._frames: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._writer = asyncio.create_task(self._write_loop())
        self.conn = server._open(self)

    @property
    def queued(self) -> int:
        return self._queued

    def transmit(self, frame: bytes) -> None:
        if self._closing:
            return
        if self._queued + len(frame) > self._server.config.queue_limit and frame[0] not in _CONTROL_FRAMES:
            self._server._counters["drop_queue_full"] += 1
            return
        self._frames.append(frame)
        self._queued += len(frame)
        self._server._note_queue(self._queued)
        self._wake.set()

    def disconnect(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake.set()

    async def _write_loop(self) -> None:
        ws = self._ws
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._frames:
                    frame = self._frames.popleft()
                    self._queued -= len(frame)
                    await ws.send_bytes(frame)
                if self._closing:
                    break
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._frames.clear()
            self._queued = 0
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), DISCONNECT_LINGER)

    async def run(self) -> None:
        ws = self._ws
        server = self._server
        try:
            async for msg in ws:
                if self._closing:
                    break
                if msg.type is WSMsgType.BINARY:
                    data = msg.data
                    if not data or len(data) > server.config.max_frame:
                        server._core.malformed(self.conn, f"frame of {len(data)} bytes")
                        server._flush()
                    else:
                        server._receive(self.conn, (data,))
                elif msg.type is WSMsgType.TEXT:
                    server._core.malformed(self.conn, "text WebSocket message")
                    server._flush()
                elif msg.type is WSMsgType.ERROR:
                    server._core.malformed(self.conn, f"WebSocket error: {ws.exception()}")
                    server._flush()
                    break
        finally:
            self._server._lost(self.conn)
            self.disconnect()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), DISCONNECT_LINGER)
            if not self._writer.done():
                self._writer.cancel()


class _Demux(asyncio.Protocol):
    """The first bytes of a connection pick its transport: raw TCP (``CMRL``) or HTTP/WebSocket."""

    def __init__(self, server: KeyedRelayServer) -> None:
        self._server = server
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._pending.add(transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._server.config.register_timeout, self._expire)

    def _expire(self) -> None:
        # Still undecided, or HTTP that never became a relay WebSocket: the registration time is up.
        transport = self._transport
        if transport is not None and transport in self._server._pending:
            self._server._counters["closed_register_timeout"] += 1
            self._server._pending.discard(transport)
            transport.abort()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._buf += data
        head = self._buf[:4]
        if len(head) < 4 and (MAGIC.startswith(head) or any(h.startswith(head) for h in _HTTP_STARTS)):
            return
        server = self._server
        if head == MAGIC:
            self._stop_timer()
            server._pending.discard(transport)
            raw = _RawSession(server, transport)
            transport.set_protocol(raw)
            if len(self._buf) > 4:
                raw.data_received(self._buf[4:])
        elif head in _HTTP_STARTS and server._runner is not None and server._runner.server is not None:
            # The timer stays: the WebSocket handler takes the transport out of _pending.
            handler = server._runner.server()
            transport.set_protocol(handler)
            handler.connection_made(transport)
            handler.data_received(self._buf)
        else:
            self._stop_timer()
            server._pending.discard(transport)
            server._counters["drop_bad_preamble"] += 1
            transport.abort()
        self._buf = b""

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._transport is not None:
            self._server._pending.discard(self._transport)


class KeyedRelayServer:
    """A keyed mesh relay: ``await start()``, ``address``, ``url()``, ``stats()``, ``await stop()``."""

    def __init__(
        self,
        config: KeyedRelayConfig | None = None,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config if config is not None else KeyedRelayConfig()
        relay_id = self.config.identity.peer_id if self.config.identity is not None else None
        self._core = RelayCore(self.config.limits(), relay_id=relay_id, random_bytes=random_bytes)
        self._links: dict[int, _Link] = {}
        self._pending: set[asyncio.Transport] = set()
        self._counters: Counter[str] = Counter(
            {"drop_queue_full": 0, "drop_bad_preamble": 0, "queue_peak_bytes": 0, "sessions_ws_total": 0}
        )
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._address: Address | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public --

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("the keyed relay is not started")
        return self._address

    def url(self, transport: str = "tcp") -> str:
        """The URL a client uses: ``transport`` is ``tcp`` or ``ws`` (``tls``/``wss`` under TLS)."""
        host = format_address(self.address.host, self.address.port)
        secure = self.config.ssl_context is not None
        if transport in ("tcp", "tls"):
            return f"{'tls' if secure else 'tcp'}://{host}"
        if transport in ("ws", "wss"):
            return f"{'wss' if secure else 'ws'}://{host}{WS_PATH}"
        raise ValueError(f"transport is 'tcp' or 'ws', not {transport!r}")

    def stats(self) -> dict[str, int]:
        out = self._core.stats()
        for name, value in self._counters.items():  # the shell's own counts add to the core's
            out[name] = out.get(name, 0) + value
        out["queued_bytes"] = sum(link.queued for link in self._links.values())
        return out

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the keyed relay is already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_get(WS_PATH, self._ws_handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=DISCONNECT_LINGER)
        await runner.setup()
        self._runner = runner
        listen = self.config.listen_address
        ctx = self.config.ssl_context
        try:
            self._server = await loop.create_server(
                lambda: _Demux(self),
                listen.host,
                listen.port,
                ssl=ctx,
                ssl_handshake_timeout=self.config.register_timeout if ctx is not None else None,
                reuse_address=True,
            )
        except OSError:
            await runner.cleanup()
            self._runner = None
            raise
        sockname = self._server.sockets[0].getsockname()
        self._address = Address(str(sockname[0]), int(sockname[1]))
        log.info("keyed relay listening on %s (tls=%s)", self._address, ctx is not None)

    async def stop(self) -> None:
        """Graceful: stop accepting, CLOSE(SHUTDOWN) to every session, flush briefly, close."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._core.close_all(CloseCode.SHUTDOWN, "relay shutting down")
        self._flush()
        for transport in list(self._pending):
            transport.abort()
        self._pending.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DISCONNECT_LINGER
        while self._core.sessions_current and loop.time() < deadline:  # pragma: no cover - defensive
            await asyncio.sleep(0.01)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), DISCONNECT_LINGER)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        log.info("keyed relay stopped")

    async def __aenter__(self) -> KeyedRelayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- for the sessions --

    def _open(self, link: _Link) -> int:
        assert self._loop is not None
        core = self._core
        conn = core.open_session(self._loop.time())
        self._links[conn] = link
        self._flush()
        return conn

    def _receive(self, conn: int, frames: tuple[bytes, ...] | list[bytes]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        receive = self._core.receive_frame
        for frame in frames:
            receive(conn, frame, now)
        self._flush()

    def _lost(self, conn: int) -> None:
        self._links.pop(conn, None)
        self._core.connection_lost(conn)
        self._flush()

    def _note_queue(self, size: int) -> None:
        if size > self._counters["queue_peak_bytes"]:
            self._counters["queue_peak_bytes"] = size

    def _flush(self) -> None:
        links = self._links
        for action in self._core.drain():
            if isinstance(action, Disconnect):
                link = links.pop(action.conn, None)
                if link is not None:
                    log.debug("session %d closed: %s (%d)", action.conn, action.reason, action.code)
                    link.disconnect()
            else:
                link = links.get(action.conn)
                if link is not None:
                    link.transmit(action.frame)
        self._arm_timer()

    def _arm_timer(self) -> None:
        when = self._core.get_timer()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer, when)

    def _on_timer(self, when: float) -> None:
        self._timer = None
        self._timer_at = None
        assert self._loop is not None
        self._core.handle_timer(max(self._loop.time(), when))
        self._flush()

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if self._server is None:
            raise web.HTTPServiceUnavailable(text="relay stopping")
        transport = request.transport
        if transport is not None:
            self._pending.discard(transport)
        ws = web.WebSocketResponse(
            max_msg_size=self.config.max_frame, compress=False, autoping=True, timeout=DISCONNECT_LINGER
        )
        await ws.prepare(request)
        self._counters["sessions_ws_total"] += 1
        session = _WsSession(self, ws)
        await session.run()
        return ws
