"""The keyed mesh relay server: :class:`coremesh.keyedrelay.server.RelayCore` on real sockets.

One listener (optionally TLS) carries both transports. The first bytes of each connection decide:
``CMRL`` is a raw TCP session (varint-length-prefixed frames), an HTTP request line goes to aiohttp,
which serves the WebSocket transport at ``GET /v1/relay`` (one binary message = one frame). Anything
else is counted (``drop_bad_preamble``) and closed.

The shell owns sockets, one timer, the per-session send queues and the admission of unregistered
connections; the core owns everything else.

- A session's send queue is bounded by ``queue_limit`` bytes (the transport's write buffer for raw
  TCP, a deque plus the transport's buffer for WebSocket): a frame that does not fit is dropped and
  counted (``drop_queue_full``). All queues together are bounded by ``total_queue_limit``: a frame
  that would exceed it is dropped (``drop_total_queue_full``), and the session with the largest
  queue, if it has been stuck (frames to it dropped, its queue never shrinking) for
  ``queue_stuck_timeout``, is closed (CLOSE(SLOW_READER), aborted at once; ``closed_slow_reader``).
  Only frames sent at most once per connection bypass a bound: ERROR and CLOSE both bounds,
  CHALLENGE and REGISTERED the relay-wide one (so that a relay out of queue memory still admits).
- Connections that have not registered are capped apart from registered sessions
  (:class:`UnregisteredLimiter`): ``max_unregistered`` in all, ``max_unregistered_per_ip`` per source
  address (IPv6: per /64); a new connection over a cap closes the oldest unregistered one
  (``closed_unregistered_evicted``). ``max_sessions`` caps registered sessions only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from aiohttp import WSMsgType, web

from coremesh.addr import Address, format_address, parse_address
from coremesh.aio.timer import CoreTimer
from coremesh.aio.wsqueue import FrameQueue
from coremesh.errors import ConfigError, DecodeError, InvalidAddress
from coremesh.identity import Identity
from coremesh.keyedrelay.frames import MAX_FRAME, CloseCode, FrameType
from coremesh.keyedrelay.framing import MAGIC, WS_PATH, FrameReader, tcp_frame
from coremesh.keyedrelay.limits import RelayLimits, UnregisteredLimiter
from coremesh.keyedrelay.server import Disconnect, RelayCore, SessionState

from .tcp_limits import ip_group

log = logging.getLogger("coremesh_relay.keyed")

DISCONNECT_LINGER: Final = 2.0  # seconds a closing session may take to flush before it is aborted
_HTTP_STARTS: Final = (b"GET ", b"HEAD", b"POST", b"PUT ", b"OPTI", b"DELE", b"PATC", b"CONN", b"TRAC")
_CONTROL_FRAMES: Final = frozenset({FrameType.CLOSE, FrameType.ERROR})  # never dropped by the queue bound
# Sent once per connection (66 and 3 bytes): not held to the relay-wide budget, so that a relay out
# of queue memory still lets clients register.
_ONCE_FRAMES: Final = frozenset({FrameType.CHALLENGE, FrameType.REGISTERED})
_RECOUNT_INTERVAL: Final = 0.01  # seconds between exact recounts of all queues when over budget


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyedRelayConfig:
    """Settings of one keyed relay. Invalid values raise :class:`ConfigError` naming the field.

    - ``listen``: ``HOST:PORT`` or ``[V6]:PORT`` (port 0: any free port; see ``server.address``).
    - ``ssl_context``: a server-side TLS context; both transports then run over TLS.
    - ``rate_bytes_per_s``, ``rate_packets_per_s``: per-peer token buckets on what a peer sends;
      ``burst``: seconds of rate a bucket banks (the byte bucket holds at least one max packet).
    - ``max_sessions``: registered sessions at once; a REGISTER of a new peer beyond gets
      ERROR(SERVER_FULL) (a registered peer may still replace its own session).
    - ``max_unregistered``, ``max_unregistered_per_ip``: connections that have not registered yet,
      in all and per source address (IPv6: per /64); a new one over a cap closes the oldest.
    - ``max_frame``: the largest frame accepted (type + peer id + packet), ``MIN_FRAME..MAX_FRAME``.
    - ``queue_limit``: bytes queued towards one session before frames to it are dropped.
    - ``total_queue_limit``: bytes queued towards all sessions together before frames are dropped;
      ``queue_stuck_timeout``: seconds a session's queue may stay stuck (frames to it dropped, the
      queue never shrinking) before, when the relay is out of queue memory, it is closed
      (CLOSE(SLOW_READER)).
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
    max_unregistered: int = 1024
    max_unregistered_per_ip: int = 32
    max_frame: int = MAX_FRAME
    queue_limit: int = 1 << 20
    total_queue_limit: int = 64 << 20
    queue_stuck_timeout: float = 5.0
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
        if not _is_int(self.queue_limit) or self.queue_limit < self.max_frame:
            raise ConfigError(
                f"queue_limit must be an integer of at least max_frame ({self.max_frame}) bytes, "
                f"got {self.queue_limit!r}"
            )
        if not _is_int(self.total_queue_limit) or self.total_queue_limit < self.queue_limit:
            raise ConfigError(
                f"total_queue_limit must be an integer of at least queue_limit ({self.queue_limit}) "
                f"bytes, got {self.total_queue_limit!r}"
            )
        stuck = self.queue_stuck_timeout
        if not isinstance(stuck, int | float) or isinstance(stuck, bool) or not stuck > 0:
            raise ConfigError(f"queue_stuck_timeout must be a positive number, got {stuck!r}")
        per_ip = self.max_unregistered_per_ip
        if not _is_int(per_ip) or not 1 <= per_ip <= self.max_unregistered:
            raise ConfigError(
                f"max_unregistered_per_ip must be an integer in 1..max_unregistered "
                f"({self.max_unregistered}), got {per_ip!r}"
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
            max_unregistered=self.max_unregistered,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _source_of(transport: asyncio.BaseTransport) -> str:
    """The key unregistered connections are counted under: the peer's IP address, IPv6 by /64."""
    peer = transport.get_extra_info("peername")
    return ip_group(str(peer[0])) if peer else ""


class _Link(Protocol):
    conn: int
    recorded: int  # queued bytes as last counted into the server's total (never below the truth)
    stuck_since: float | None  # since when frames to it are dropped while its queue never shrinks

    def transmit(self, frame: bytes) -> None: ...
    def disconnect(self, abort: bool = False) -> None: ...
    @property
    def queued(self) -> int: ...
    @property
    def closing(self) -> bool: ...


class _RawSession(asyncio.Protocol):
    """A raw TCP session, after the demultiplexer saw the ``CMRL`` preamble."""

    def __init__(self, server: KeyedRelayServer, transport: asyncio.Transport) -> None:
        self._server = server
        self._transport = transport
        self._reader = FrameReader(server.config.max_frame)
        self._closing = False
        self.recorded = 0
        self.stuck_since: float | None = None
        self.conn = server._open(self, transport)

    @property
    def queued(self) -> int:
        return self._transport.get_write_buffer_size()

    @property
    def closing(self) -> bool:
        return self._closing

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
        self._server._release(self)

    def transmit(self, frame: bytes) -> None:
        if self._closing:
            return
        transport = self._transport
        if not self._server._may_queue(self, transport.get_write_buffer_size(), frame):
            return
        transport.write(tcp_frame(frame))
        self._server._queued_now(self, transport.get_write_buffer_size())

    def disconnect(self, abort: bool = False) -> None:
        if self._closing:
            return
        self._closing = True
        if abort:
            self._transport.abort()
            return
        self._transport.close()
        asyncio.get_running_loop().call_later(DISCONNECT_LINGER, self._transport.abort)


class _WsSession:
    """A WebSocket session: a bounded deque drained by one writer task."""

    def __init__(
        self, server: KeyedRelayServer, ws: web.WebSocketResponse, transport: asyncio.Transport | None
    ) -> None:
        self._server = server
        self._ws = ws
        self._transport = transport
        self._out = FrameQueue()
        self.recorded = 0
        self.stuck_since: float | None = None
        self._writer = asyncio.create_task(self._write_loop())
        self.conn = server._open(self, transport)

    @property
    def queued(self) -> int:
        """The deque, plus what the writer already handed to the transport."""
        transport = self._transport
        in_transport = transport.get_write_buffer_size() if transport is not None else 0
        return self._out.queued + in_transport

    @property
    def closing(self) -> bool:
        return self._out.closing

    def transmit(self, frame: bytes) -> None:
        if self._out.closing:
            return
        if not self._server._may_queue(self, self.queued, frame):
            return
        self._out.push(frame)
        self._server._queued_now(self, self.queued)

    def disconnect(self, abort: bool = False) -> None:
        if self._out.closing:
            return
        self._out.close(discard=abort)
        if abort and self._transport is not None:
            self._transport.abort()

    async def _write_loop(self) -> None:
        ws = self._ws
        try:
            await self._out.drain(ws.send_bytes)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._out.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), DISCONNECT_LINGER)
            self._server._release(self)

    async def run(self) -> None:
        ws = self._ws
        server = self._server
        try:
            async for msg in ws:
                if self._out.closing:
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
        self._server._admit(transport)

    def _expire(self) -> None:
        # Still undecided, or HTTP that never became a relay WebSocket: the registration time is up.
        transport = self._transport
        if transport is None:
            return
        server = self._server
        if transport in server._pending:
            server._counters["closed_register_timeout"] += 1
            server._pending.discard(transport)
            transport.abort()
        if transport not in server._unregistered_conn:  # not a core session (that has its own timer)
            server._unregistered.remove(transport)

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
            self._server._unregistered.remove(self._transport)


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
        self._accounted: set[_Link] = set()  # links holding queued bytes: open, or closing and flushing
        self._queued_total = 0  # sum of their ``recorded``: never below the bytes really queued
        self._recounted_at = float("-inf")
        self._pending: set[asyncio.Transport] = set()
        config = self.config
        self._unregistered: UnregisteredLimiter[asyncio.Transport] = UnregisteredLimiter(
            config.max_unregistered, config.max_unregistered_per_ip
        )
        self._unregistered_conn: dict[asyncio.Transport, int] = {}  # ... those that are core sessions
        self._conn_unregistered: dict[int, asyncio.Transport] = {}
        self._counters: Counter[str] = Counter(
            dict.fromkeys(
                (
                    "drop_queue_full",
                    "drop_total_queue_full",
                    "drop_bad_preamble",
                    "queue_peak_bytes",
                    "sessions_ws_total",
                    "closed_slow_reader",
                    "closed_unregistered_evicted",
                ),
                0,
            )
        )
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._timer: CoreTimer | None = None  # the core's one timer, while started
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
        out["queued_bytes"] = sum(link.queued for link in self._accounted)
        out["sessions_unregistered"] = len(self._unregistered)  # including those not yet a session
        return out

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the keyed relay is already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._timer = CoreTimer(loop, self._on_timer)
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
        log.info("keyed relay stopped")

    async def __aenter__(self) -> KeyedRelayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- for the sessions --

    def _open(self, link: _Link, transport: asyncio.Transport | None) -> int:
        assert self._loop is not None
        core = self._core
        conn = core.open_session(self._loop.time())
        self._links[conn] = link
        self._accounted.add(link)
        if transport is not None and transport in self._unregistered:
            self._unregistered_conn[transport] = conn
            self._conn_unregistered[conn] = transport
        self._flush()
        return conn

    def _receive(self, conn: int, frames: tuple[bytes, ...] | list[bytes]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        core = self._core
        receive = core.receive_frame
        for frame in frames:
            receive(conn, frame, now)
        if conn in self._conn_unregistered and core.session_state(conn) is not SessionState.AWAIT_REGISTER:
            self._registered_or_gone(conn)  # registered (or refused): no longer counted as unregistered
        self._flush()

    def _lost(self, conn: int) -> None:
        self._links.pop(conn, None)
        self._registered_or_gone(conn)
        self._core.connection_lost(conn)
        self._flush()

    # -- unregistered connections --

    def _admit(self, transport: asyncio.Transport) -> None:
        """A new connection: counted as unregistered; over a cap, the oldest unregistered is closed."""
        evicted = self._unregistered.admit(transport, _source_of(transport))
        for old in evicted:
            self._counters["closed_unregistered_evicted"] += 1
            conn = self._unregistered_conn.pop(old, None)
            if conn is not None:
                self._conn_unregistered.pop(conn, None)
                self._core.close_session(conn, CloseCode.SERVER_FULL, "too many unregistered connections")
            else:  # not even a session yet (no preamble, or HTTP not upgraded)
                self._pending.discard(old)
                old.abort()
        if evicted:
            self._flush()

    def _registered_or_gone(self, conn: int) -> None:
        transport = self._conn_unregistered.pop(conn, None)
        if transport is not None:
            self._unregistered_conn.pop(transport, None)
            self._unregistered.remove(transport)

    # -- send queues --

    def _may_queue(self, link: _Link, size: int, frame: bytes) -> bool:
        """May ``frame`` join ``link``'s queue of ``size`` bytes? Counts a drop when not."""
        if size < link.recorded:
            link.stuck_since = None  # it drains: not stuck
        self._queued_total += size - link.recorded
        link.recorded = size
        kind = frame[0]
        if kind in _CONTROL_FRAMES:
            return True
        n = len(frame)
        if size + n > self.config.queue_limit:
            self._counters["drop_queue_full"] += 1
        elif kind in _ONCE_FRAMES or not self._over_budget(n):
            return True
        else:
            self._counters["drop_total_queue_full"] += 1
        if link.stuck_since is None:
            assert self._loop is not None
            link.stuck_since = self._loop.time()
        return False

    def _over_budget(self, n: int) -> bool:
        """Would ``n`` more bytes exceed ``total_queue_limit``? The running total is an upper bound
        (queues drain unseen); this recounts exactly, at most every 10 ms so that a relay out of
        queue memory does not scan every session per frame. When over, the largest queue that has
        been stuck (dropping frames, never draining) for ``queue_stuck_timeout`` is closed."""
        budget = self.config.total_queue_limit
        if self._queued_total + n <= budget:
            return False
        assert self._loop is not None
        now = self._loop.time()
        if now - self._recounted_at < _RECOUNT_INTERVAL:
            return self._queued_total + n > budget
        self._recounted_at = now
        total = 0
        stuck: _Link | None = None
        stuck_size = 0
        for link in self._accounted:
            size = link.queued
            if size < link.recorded:
                link.stuck_since = None
            link.recorded = size
            total += size
            if link.stuck_since is not None and not link.closing and size > stuck_size:
                stuck, stuck_size = link, size
        self._queued_total = total
        if total + n <= budget:
            return False
        if (
            stuck is not None
            and stuck.stuck_since is not None
            and now - stuck.stuck_since >= self.config.queue_stuck_timeout
        ):
            self._counters["closed_slow_reader"] += 1
            log.info("keyed relay out of queue memory: closing session %d (queue stuck)", stuck.conn)
            self._core.close_session(stuck.conn, CloseCode.SLOW_READER, "send queue stuck")
        return True

    def _queued_now(self, link: _Link, size: int) -> None:
        self._queued_total += size - link.recorded
        link.recorded = size
        if size > self._counters["queue_peak_bytes"]:
            self._counters["queue_peak_bytes"] = size

    def _release(self, link: _Link) -> None:
        """``link``'s transport is gone: its queue is freed."""
        if link in self._accounted:
            self._accounted.discard(link)
            self._queued_total -= link.recorded
            link.recorded = 0

    def _flush(self) -> None:
        links = self._links
        core = self._core
        while actions := core.drain():  # a transmit may close a stuck session: drain again
            for action in actions:
                if isinstance(action, Disconnect):
                    link = links.pop(action.conn, None)
                    self._registered_or_gone(action.conn)
                    if link is not None:
                        log.debug("session %d closed: %s (%d)", action.conn, action.reason, action.code)
                        link.disconnect(abort=action.code == CloseCode.SLOW_READER)
                else:
                    link = links.get(action.conn)
                    if link is not None:
                        link.transmit(action.frame)
        if self._timer is not None:
            self._timer.arm(core.get_timer())

    def _on_timer(self, now: float) -> None:
        self._core.handle_timer(now)
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
        session = _WsSession(self, ws, transport)
        await session.run()
        return ws
