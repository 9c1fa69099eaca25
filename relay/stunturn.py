"""The asyncio shell of one STUN/TURN relay: its sockets and the one timer of its TURN core.

- UDP: one socket on ``listen``; with ``alt_address`` (RFC 5780) four: primary and alternate IP ×
  primary port and port + 1. Every one answers STUN Binding (:class:`~coremesh.stun.binding.
  BindingServer`, each reply leaves from the socket its ``via`` names) and TURN
  (:class:`~coremesh.turn.server.TurnServer`). Sockets, bursts and GSO: :mod:`.udp_sockets`.
- TCP on ``listen`` (TLS when ``ssl_context`` is given): STUN messages and ChannelData framed as
  RFC 8489 §6.2.2 / RFC 8656 §12.5 say (ChannelData padded to four bytes). An allocation made over a
  connection ends when the connection closes. The caps and time limits on connections:
  :mod:`.tcp_limits`.
- A wildcard listen address is expanded to the host's own addresses for the loop check
  (``TurnServer.server_addresses``) and the peer policy's own IPs: :mod:`.own_addresses`.
- One UDP socket per allocation, bound on the port the core picked in ``[min_port, max_port]``
  (the core's :class:`OpenRelay` effect; the bind's outcome goes back through
  :meth:`TurnServer.confirm_relay` at once, so the client's answer waits for a bound socket).

The configuration is :class:`~.stunturn_config.StunTurnConfig`.

Time: the TURN core runs on the event loop's monotonic clock (``loop.time()``): allocation,
permission, channel and reservation lifetimes, and its one timer (a :class:`~coremesh.aio.timer.
CoreTimer`), so a step of the system clock (NTP, an operator) neither expires allocations nor keeps
them alive past their lifetimes. Wall time (``time.time()``) goes in only where a wall time is meant:
the nonce's timestamp and the expiry in TURN REST API usernames (``TurnServer.handle_client``'s
``wall``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterable
from typing import Final

from coremesh.addr import Address, normalize_socket_address
from coremesh.aio.timer import CoreTimer
from coremesh.errors import ConfigError, DecodeError
from coremesh.stun.binding import BindingServer
from coremesh.stun.channeldata import frame_length
from coremesh.stun.message import Method
from coremesh.turn.allocation import FiveTuple, Transport
from coremesh.turn.policy import PeerPolicy
from coremesh.turn.server import (
    CloseRelay,
    Effect,
    OpenRelay,
    SendFromRelay,
    SendToClient,
    TurnServer,
    TurnServerConfig,
    stun_method,
)

from .own_addresses import OwnAddresses
from .stunturn_config import StunTurnConfig, parse_external_ip
from .tcp_limits import ConnectionKey, TcpConnections
from .udp_sockets import RECV_SIZE, UdpSender, UdpSocket, bind_udp

log = logging.getLogger("coremesh.relay.stunturn")

SOFTWARE: Final = "coremesh-relay"
MAX_TCP_BUFFER: Final = 256 * 1024
_TCP_STOP_GRACE: Final = 1.0  # s stop() lets connections close cleanly before aborting them


class StunTurnService:
    """One STUN/TURN relay on the running event loop: ``await start()``, ``await stop()``."""

    def __init__(self, config: StunTurnConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.SystemRandom()
        self.counters: Counter[str] = Counter()
        self._udp: dict[Address, UdpSocket] = {}
        self._relays: dict[Address, UdpSocket] = {}
        self._sender = UdpSender(self.counters)
        self._timer_dirty = False
        self._tcp_servers: list[asyncio.Server] = []
        self._tcp = TcpConnections(config, self.counters, self._has_allocation)
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._extra_addresses: list[Address] = []
        self._timer: CoreTimer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self.turn: TurnServer | None = None
        self.binding: BindingServer | None = None
        self._addresses: list[Address] = []
        self._own: OwnAddresses | None = None
        # Built now so that a bad config fails before any socket is opened.
        self._policy = PeerPolicy.build(
            allow_loopback_peers=config.allow_loopback_peers,
            allowed_peer_ips=config.allowed_peer_ips,
            denied_peer_ips=config.denied_peer_ips,
        )

    # ------------------------------------------------------------------------------- lifecycle

    @property
    def addresses(self) -> list[Address]:
        """The addresses listened on (UDP sockets first, then TCP), once started."""
        return list(self._addresses)

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("StunTurnService already started")
        self._loop = asyncio.get_running_loop()
        self._timer = CoreTimer(self._loop, self._on_timer)
        cfg = self.config
        # With port 0 the UDP port is picked first and TCP must then get the same number: if another
        # process holds it for TCP, start over with a fresh port rather than fail.
        attempts = 20 if cfg.listen.port == 0 else 1
        for attempt in range(attempts):
            try:
                primary = self._open_listeners()
                if not cfg.no_tcp:
                    await self._open_tcp(primary)
                break
            except OSError as exc:
                await self._close_sockets()
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
            except BaseException:
                await self._close_sockets()
                raise
        self._started = True
        self._closing = False
        self._tcp.apply_descriptor_limit()
        other = Address(cfg.alt_address, primary.port + 1) if cfg.alt_address is not None else None
        self.binding = BindingServer(SOFTWARE, other_address=other, primary_address=primary)
        own = self._own = OwnAddresses(primary.host)
        external: dict[int, str] = {}
        if cfg.external_ip is not None:
            public, private = parse_external_ip(cfg.external_ip, "external_ip")
            version = 6 if ":" in public else 4
            external[version] = public
            if private is not None and version == 4:  # relay sockets of that family bind on PRIVATE
                own.relay_ipv4 = private
            elif private is not None:
                own.relay_ipv6 = private
        self.turn = TurnServer(
            TurnServerConfig(
                realm=cfg.realm,
                users=dict(cfg.users),
                static_auth_secret=cfg.static_auth_secret,
                policy=self._policy.with_own_ips(own.own_ips(cfg.alt_address, *external.values())),
                min_port=cfg.min_port,
                max_port=cfg.max_port,
                user_quota=cfg.user_quota,
                total_quota=cfg.total_quota,
                max_bps=cfg.max_bps,
                relay_ipv4=own.relay_ipv4,
                relay_ipv6=own.relay_ipv6,
                external_ipv4=external.get(4),
                external_ipv6=external.get(6),
                software=SOFTWARE,
            ),
            rng=random.Random(self._rng.getrandbits(64)),
            secret=self._rng.randbytes(32),
        )
        self.turn.server_addresses = own.server_addresses
        own.add_listeners([*self._addresses, *self._extra_addresses])
        log.info("STUN/TURN listening on %s", ", ".join(self.listening()))
        if not cfg.users and cfg.static_auth_secret is None:
            log.warning(
                "TURN has no credentials (no users, no static auth secret: see --user and "
                "--static-auth-secret): every Allocate is refused with 401; only STUN Binding works"
            )

    def listening(self) -> list[str]:
        """The listening sockets as ``TRANSPORT ADDRESS`` (``udp 0.0.0.0:3478``, ``tcp ...``,
        ``tls ...``): UDP first, then TCP/TLS. Empty before start."""
        kind = "tls" if self.config.ssl_context is not None else "tcp"
        out = [f"udp {a}" for a in self._udp]
        for server in self._tcp_servers:
            out.extend(f"{kind} {normalize_socket_address(s.getsockname())}" for s in server.sockets)
        return out

    def add_server_addresses(self, addresses: Iterable[Address]) -> None:
        """Other addresses this relay listens on (e.g. the keyed relay's): relayed data is never
        sent to them either. Wildcard hosts are expanded as for ``listen``. Before or after start."""
        added = list(addresses)
        self._extra_addresses.extend(added)
        if self.turn is not None and self._own is not None:
            self._own.add_listeners(added)

    def _open_listeners(self) -> Address:
        """Bind the UDP listeners (and pick the port when ``listen`` has port 0)."""
        cfg = self.config
        listen = cfg.listen
        attempts = 20 if listen.port == 0 else 1
        for attempt in range(attempts):
            try:
                return self._try_listeners(listen)
            except OSError as exc:
                self._close_udp()
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _try_listeners(self, listen: Address) -> Address:
        cfg = self.config
        # Port 0: bind the primary UDP socket (or a probe one) to learn a port, then the others.
        probe = bind_udp(listen)
        port = normalize_socket_address(probe.getsockname()).port
        primary = Address(listen.host, port)
        if cfg.no_udp:
            probe.close()
            if cfg.no_tcp:  # pragma: no cover - refused by the config
                raise ConfigError("no_tcp/no_udp: nothing to listen on")
            return primary
        self._add_udp(probe)
        if cfg.alt_address is not None:
            for addr in (
                Address(primary.host, port + 1),
                Address(cfg.alt_address, port),
                Address(cfg.alt_address, port + 1),
            ):
                self._add_udp(bind_udp(addr))
        return primary

    def _add_udp(self, sock: socket.socket) -> None:
        assert self._loop is not None
        us = UdpSocket(sock, self._on_listener_datagram)
        self._udp[us.address] = us
        self._addresses.append(us.address)
        self._loop.add_reader(sock.fileno(), self._read, us)

    async def _open_tcp(self, primary: Address) -> None:
        cfg = self.config
        transport: Transport = "tls" if cfg.ssl_context is not None else "tcp"

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tcp_tasks.add(task)
            try:
                await self._serve_tcp(reader, writer, transport)
            except asyncio.CancelledError:
                # Only a last resort of stop() or the loop's shutdown cancels this task; ending it
                # normally keeps Python 3.11's StreamReaderProtocol callback from logging the
                # CancelledError as "Exception in callback".
                writer.transport.abort()
            finally:
                if task is not None:
                    self._tcp_tasks.discard(task)

        server = await asyncio.start_server(
            on_conn,
            primary.host,
            primary.port,
            ssl=cfg.ssl_context,
            reuse_address=True,
            ssl_handshake_timeout=cfg.tcp_request_timeout if cfg.ssl_context is not None else None,
        )
        self._tcp_servers.append(server)
        for s in server.sockets:
            self._addresses.append(normalize_socket_address(s.getsockname()))

    async def stop(self) -> None:
        if self.turn is not None:
            self._run(self.turn.close_all())
        await self._close_sockets()
        self._started = False

    async def _close_sockets(self) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self._tcp.stop_sweeping()
        for server in self._tcp_servers:
            server.close()
        # End the handlers by closing their connections (they then read EOF and return), never by
        # cancelling them mid-read: first cleanly, then, for those that do not finish, abruptly.
        for conn in self._tcp:
            conn.writer.close()
        for abort in (False, True):
            if not self._tcp_tasks:
                break
            if abort:
                for conn in self._tcp:
                    conn.writer.transport.abort()
            await asyncio.wait(set(self._tcp_tasks), timeout=_TCP_STOP_GRACE)
        for task in list(self._tcp_tasks):  # pragma: no cover - a handler stuck past an abort
            task.cancel()
        if self._tcp_tasks:  # pragma: no cover
            await asyncio.wait(set(self._tcp_tasks), timeout=_TCP_STOP_GRACE)
        for server in self._tcp_servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._tcp_servers.clear()
        self._tcp.clear()
        self._close_udp()
        for relay in list(self._relays):
            self._close_relay(relay)

    def _close_udp(self) -> None:
        for us in self._udp.values():
            if self._loop is not None:
                self._loop.remove_reader(us.sock.fileno())
            us.sock.close()
        self._udp.clear()
        self._addresses = [a for a in self._addresses if a in self._udp]

    def stats(self) -> dict[str, int]:
        """Counters for the admin API and metrics: the TURN core's, Binding's, and the shell's."""
        out: dict[str, int] = dict(self.counters)
        if self.turn is not None:
            out.update(self.turn.stats())
        if self.binding is not None:
            for name, value in self.binding.counters.items():
                out[f"binding_{name}" if not name.startswith("binding") else name] = value
        out["relay_sockets"] = len(self._relays)
        out["tcp_connections"] = len(self._tcp)
        return out

    # ---------------------------------------------------------------------------------- input

    def _on_listener_datagram(self, us: UdpSocket, data: bytes, src: Address) -> None:
        self.counters["udp_datagrams_received"] += 1
        self._dispatch(data, src, us.address, "udp")

    def _dispatch(self, data: bytes, src: Address, local: Address, transport: Transport) -> None:
        turn, binding = self.turn, self.binding
        if turn is None or binding is None:
            return
        if stun_method(data) == Method.BINDING:
            for reply in binding.handle(data, src, local, self._now(), validated=transport != "udp"):
                if transport == "udp":
                    self._send_udp(reply.via, reply.data, reply.dst)
                else:
                    self._send_tcp((reply.dst, local, transport), reply.data)
            return
        self._run(turn.handle_client(data, src, local, transport, self._now(), wall=time.time()))

    def _on_relay_datagram(self, us: UdpSocket, data: bytes, src: Address) -> None:
        if self.turn is not None:
            self._run(self.turn.handle_peer(data, us.address, src, self._now()))

    async def _serve_tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: Transport
    ) -> None:
        loop = asyncio.get_running_loop()
        peername, sockname = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        if self._closing or peername is None or sockname is None:
            writer.transport.abort()
            return
        peer = normalize_socket_address(peername)
        local = normalize_socket_address(sockname)
        conn = self._tcp.admit(writer, (peer, local, transport), loop.time())
        if conn is None:
            return
        buf = bytearray()
        try:
            while True:
                chunk = await reader.read(RECV_SIZE)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_TCP_BUFFER:
                    self.counters["tcp_drop_oversize"] += 1
                    break
                now = loop.time()
                progress = False
                while (n := frame_length(buf)) is not None and len(buf) >= n:
                    frame = bytes(buf[:n])
                    del buf[:n]
                    progress = True
                    self.counters["tcp_frames_received"] += 1
                    if stun_method(frame) is not None:  # STUN-shaped: a request (or indication)
                        conn.request_received(now)
                    self._dispatch(frame, peer, local, transport)
                conn.buffer_read(now, empty=not buf, progress=progress)
        except DecodeError:
            self.counters["tcp_drop_malformed"] += 1
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("TCP connection from %s ended: %s", peer, exc)
        finally:
            self._tcp.release(conn)
            if self.turn is not None:
                self._run(self.turn.connection_closed(peer, local, transport, loop.time()))
            if conn.reason is not None:
                log.debug("TCP connection from %s closed: %s", peer, conn.reason)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _has_allocation(self, key: ConnectionKey) -> bool:
        """Whether the TCP connection ``key`` carries an allocation (the idle limit spares it)."""
        turn = self.turn
        return turn is not None and FiveTuple(*key) in turn.allocations

    # --------------------------------------------------------------------------------- output

    def _run(self, effects: list[Effect]) -> None:
        """Carry out effects in order; relay binds are confirmed to the core at once."""
        turn = self.turn
        queue = list(effects)
        i = 0
        while i < len(queue):
            e = queue[i]
            i += 1
            if isinstance(e, SendToClient):
                if e.transport == "udp":
                    self._send_udp(e.local, e.data, e.client)
                else:
                    self._send_tcp((e.client, e.local, e.transport), e.data)
            elif isinstance(e, SendFromRelay):
                relay = self._relays.get(e.relay)
                if relay is not None:
                    self._sender.send(relay.sock, e.data, e.peer)
            elif isinstance(e, OpenRelay):
                ok = self._open_relay(e.relay)
                if turn is not None:
                    queue.extend(turn.confirm_relay(e.relay, ok, self._now()))
            elif isinstance(e, CloseRelay):
                self._close_relay(e.relay)
        if self._sender.batching:
            self._timer_dirty = True  # re-armed once for the whole batch
        else:
            self._arm_timer()

    def _open_relay(self, relay: Address) -> bool:
        assert self._loop is not None
        try:
            sock = bind_udp(relay)
        except OSError as exc:
            log.info("cannot bind relay %s: %s", relay, exc.strerror)
            return False
        us = UdpSocket(sock, self._on_relay_datagram)
        self._relays[relay] = us
        self._loop.add_reader(sock.fileno(), self._read, us)
        return True

    def _close_relay(self, relay: Address) -> None:
        us = self._relays.pop(relay, None)
        if us is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(us.sock.fileno())
        us.sock.close()

    def _send_udp(self, via: Address, data: bytes, dst: Address) -> None:
        us = self._udp.get(via)
        if us is None:
            self.counters["send_no_socket"] += 1
            return
        self._sender.send(us.sock, data, dst)

    def _read(self, us: UdpSocket) -> None:
        """Read a batch from one socket, then send what it produced, batched with GSO."""
        self._sender.begin_batch()
        try:
            us.read()
        finally:
            self._sender.end_batch()
            if self._timer_dirty:
                self._timer_dirty = False
                self._arm_timer()

    def _send_tcp(self, key: ConnectionKey, data: bytes) -> None:
        conn = self._tcp.get(key)
        if conn is None or conn.writer.is_closing():
            self.counters["send_no_connection"] += 1
            return
        writer = conn.writer
        transport = writer.transport
        if transport.get_write_buffer_size() > MAX_TCP_BUFFER:
            self.counters["tcp_send_dropped_full"] += 1  # a slow client loses datagrams, as on UDP
            return
        writer.write(data)

    def _now(self) -> float:
        """Monotonic seconds for the TURN core: the event loop's clock (what its timer is armed on)."""
        loop = self._loop
        assert loop is not None
        return loop.time()

    def _arm_timer(self) -> None:
        """Re-arm the TURN core's timer; none once stopping (closing connections still report)."""
        if self.turn is not None and self._timer is not None and not self._closing:
            self._timer.arm(self.turn.get_timer())

    def _on_timer(self, now: float) -> None:
        if self.turn is not None:
            self._run(self.turn.handle_timer(now))
