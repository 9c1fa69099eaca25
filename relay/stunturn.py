"""The asyncio shell of one STUN/TURN relay: sockets, one timer, nothing else.

- UDP: one socket on ``listen``; with ``alt_address`` (RFC 5780) four: primary and alternate IP ×
  primary port and port + 1. Every one answers STUN Binding (:class:`~coremesh.stun.binding.
  BindingServer`, each reply leaves from the socket its ``via`` names) and TURN
  (:class:`~coremesh.turn.server.TurnServer`).
- TCP on ``listen`` (TLS when ``ssl_context`` is given): STUN messages and ChannelData framed as
  RFC 8489 §6.2.2 / RFC 8656 §12.5 say (ChannelData padded to four bytes). An allocation made over a
  connection ends when the connection closes. Connections are capped per source IP (per /64 for
  IPv6) and in total, and closed when they send no valid request soon after connecting, idle without
  an allocation, or hold a partial frame too long (slowloris); see :class:`StunTurnConfig`.
- A wildcard listen address is expanded to the host's own addresses (:func:`host_local_ips`) for
  the loop check (``TurnServer.server_addresses``) and the peer policy's own IPs.
- One UDP socket per allocation, bound on the port the core picked in ``[min_port, max_port]``
  (the core's :class:`OpenRelay` effect; the bind's outcome goes back through
  :meth:`TurnServer.confirm_relay` at once, so the client's answer waits for a bound socket).

Time: the TURN core runs on the event loop's monotonic clock (``loop.time()``): allocation,
permission, channel and reservation lifetimes, and its one timer (``loop.call_at(get_timer())``), so a
step of the system clock (NTP, an operator) neither expires allocations nor keeps them alive past
their lifetimes. Wall time (``time.time()``) goes in only where a wall time is meant: the nonce's
timestamp and the expiry in TURN REST API usernames (``TurnServer.handle_client``'s ``wall``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import resource
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from coremesh.addr import Address, normalize_socket_address, parse_address
from coremesh.errors import ConfigError, DecodeError
from coremesh.stun.binding import BindingServer
from coremesh.stun.channeldata import frame_length
from coremesh.stun.message import Method
from coremesh.turn.allocation import FiveTuple, Transport
from coremesh.turn.policy import PeerPolicy, parse_ip_range
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

log = logging.getLogger("coremesh.relay.stunturn")

SOFTWARE: Final = "coremesh-relay"
RECV_SIZE: Final = 65536
RECV_BATCH: Final = 256
# Linux UDP segmentation offload (see coremesh/aio/runtime.py): GRO to read bursts, GSO to send them.
_UDP_GRO: Final = getattr(socket, "UDP_GRO", 104)
_UDP_SEGMENT: Final = getattr(socket, "UDP_SEGMENT", 103)
_GRO_CMSG_SPACE: Final = socket.CMSG_SPACE(4)
_GSO_MAX_SEGMENTS: Final = 64
_GSO_MAX_BYTES: Final = 65000
UDP_BUFFER: Final = 4 * 1024 * 1024
MAX_TCP_BUFFER: Final = 256 * 1024
_WILDCARDS: Final = ("0.0.0.0", "::")
# TCP/TLS connection limits (the defaults of the StunTurnConfig fields of the same names, lowercase).
MAX_TCP_CONNECTIONS: Final = 4096  # in total (also at most half the process's file descriptor limit)
MAX_TCP_CONNECTIONS_PER_IP: Final = 64  # per source IPv4 address / IPv6 /64
TCP_REQUEST_TIMEOUT: Final = 10.0  # s from connecting (or the TLS handshake) to the first valid request
TCP_IDLE_TIMEOUT: Final = 30.0  # s without a valid request on a connection that has no allocation
TCP_PARTIAL_TIMEOUT: Final = 5.0  # s one incomplete frame may take to arrive in full
_TCP_STOP_GRACE: Final = 1.0  # s stop() lets connections close cleanly before aborting them


@dataclass(frozen=True, slots=True)
class StunTurnConfig:
    """Everything one relay needs; validated on construction (:class:`ConfigError` names the field).

    ``listen`` is ``HOST:PORT`` (an :class:`Address` or its text); port 0 picks a free port.
    ``alt_address`` is an IP of the same family (RFC 5780: the relay then also listens on it and on
    PORT+1). ``users`` maps names to passwords; ``static_auth_secret`` enables TURN REST API
    credentials. Quotas and ``max_bps`` (bytes per second per allocation): 0 means unlimited.
    ``ssl_context`` turns the TCP listener into TLS.

    TCP/TLS limits: at most ``max_tcp_connections`` connections (and never more than half the
    process's ``RLIMIT_NOFILE``, so relay sockets always find descriptors) and
    ``max_tcp_connections_per_ip`` from one IPv4 address or IPv6 /64; a connection is closed when it
    sends no valid STUN request within ``tcp_request_timeout`` seconds of connecting, when it has no
    allocation and sent no valid request for ``tcp_idle_timeout`` seconds, or when one incomplete
    frame stays incomplete for ``tcp_partial_timeout`` seconds.
    """

    listen: Address
    alt_address: str | None = None
    realm: str = "coremesh"
    users: Mapping[str, str] = field(default_factory=dict)
    static_auth_secret: str | None = None
    allow_loopback_peers: bool = False
    allowed_peer_ips: tuple[str, ...] = ()
    denied_peer_ips: tuple[str, ...] = ()
    min_port: int = 49152
    max_port: int = 65535
    user_quota: int = 0
    total_quota: int = 0
    max_bps: int = 0
    no_tcp: bool = False
    no_udp: bool = False
    ssl_context: ssl.SSLContext | None = None
    max_tcp_connections: int = MAX_TCP_CONNECTIONS
    max_tcp_connections_per_ip: int = MAX_TCP_CONNECTIONS_PER_IP
    tcp_request_timeout: float = TCP_REQUEST_TIMEOUT
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT
    tcp_partial_timeout: float = TCP_PARTIAL_TIMEOUT

    def __post_init__(self) -> None:
        listen: object = self.listen
        if isinstance(listen, str):
            object.__setattr__(self, "listen", parse_address(listen))
        elif not isinstance(listen, Address):
            raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
        if self.alt_address is not None:
            try:
                alt = ipaddress.ip_address(self.alt_address)
            except ValueError:
                raise ConfigError(f"alt_address: {self.alt_address!r} is not an IP address") from None
            if alt.compressed == self.listen.host:
                raise ConfigError("alt_address: must differ from the listen address")
            if (alt.version == 6) != self.listen.is_ipv6:
                raise ConfigError("alt_address: must be of the same IP family as listen")
            if self.listen.host in _WILDCARDS:
                raise ConfigError("alt_address: needs a concrete listen address, not a wildcard")
            if self.listen.port == 65535:
                raise ConfigError("alt_address: listen port + 1 must be a port (listen port < 65535)")
            object.__setattr__(self, "alt_address", alt.compressed)
        if not self.realm or len(self.realm) > 127:
            raise ConfigError("realm: must be 1-127 characters")
        for name, password in self.users.items():
            if not name or not password:
                raise ConfigError("users: names and passwords must not be empty")
        if self.static_auth_secret is not None and not self.static_auth_secret:
            raise ConfigError("static_auth_secret: must not be empty")
        for fld in ("min_port", "max_port"):
            value = getattr(self, fld)
            if not isinstance(value, int) or not 1 <= value <= 65535:
                raise ConfigError(f"{fld}: expected 1-65535, got {value!r}")
        if self.min_port > self.max_port:
            raise ConfigError(f"min_port: {self.min_port} is above max_port {self.max_port}")
        for fld in ("user_quota", "total_quota", "max_bps"):
            value = getattr(self, fld)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{fld}: expected an integer >= 0 (0 = unlimited), got {value!r}")
        if self.no_tcp and self.no_udp:
            raise ConfigError("no_tcp/no_udp: at least one of UDP and TCP must stay on")
        for fld in ("allowed_peer_ips", "denied_peer_ips"):
            for text in getattr(self, fld):
                parse_ip_range(text, field=fld)
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise ConfigError("ssl_context: expected an ssl.SSLContext")
        for fld in ("max_tcp_connections", "max_tcp_connections_per_ip"):
            value = getattr(self, fld)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{fld}: expected an integer >= 1, got {value!r}")
        for fld in ("tcp_request_timeout", "tcp_idle_timeout", "tcp_partial_timeout"):
            value = getattr(self, fld)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1e6:
                raise ConfigError(f"{fld}: expected seconds > 0, got {value!r}")


_DatagramHandler = Callable[["_UdpSocket", bytes, Address], None]


class _UdpSocket:
    """One non-blocking UDP socket read by ``loop.add_reader``.

    On Linux it asks for UDP GRO, so that a burst of equal-size datagrams from one source arrives
    in one ``recvmsg``; the relay's cost per datagram is then Python work, not system calls.
    """

    def __init__(self, sock: socket.socket, on_datagram: _DatagramHandler) -> None:
        self.sock = sock
        self.address = normalize_socket_address(sock.getsockname())
        self._on_datagram = on_datagram
        self.gro = False
        if sys.platform == "linux":
            try:
                sock.setsockopt(socket.IPPROTO_UDP, _UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass

    def read(self) -> None:
        addresses: dict[object, Address] = {}
        on_datagram = self._on_datagram
        for _ in range(RECV_BATCH):
            try:
                if self.gro:
                    data, ancdata, _flags, src = self.sock.recvmsg(RECV_SIZE, _GRO_CMSG_SPACE)
                else:
                    data, src = self.sock.recvfrom(RECV_SIZE)
                    ancdata = []
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP errors surface here on Linux; nothing to do for UDP
                continue
            address = addresses.get(src)
            if address is None:
                address = addresses[src] = normalize_socket_address(src)
            segment = 0
            for level, kind, value in ancdata:
                if level == socket.IPPROTO_UDP and kind == _UDP_GRO and len(value) >= 4:
                    segment = int.from_bytes(value[:4], sys.byteorder)
            if 0 < segment < len(data):
                for offset in range(0, len(data), segment):
                    on_datagram(self, data[offset : offset + segment], address)
            else:
                on_datagram(self, data, address)


def _bind_udp(address: Address, *, reuse: bool = False) -> socket.socket:
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address.host == "::" else 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def relay_ip(listen_host: str, version: int) -> str | None:
    """The IP relayed addresses of that IP version are bound on: the listen IP when it is concrete;
    for a wildcard listen address, the source address the host would route from (a UDP ``connect``
    to a documentation address sends nothing); ``None`` when there is none (Allocate then gets 440).
    """
    if listen_host not in _WILDCARDS:
        return listen_host if (":" in listen_host) == (version == 6) else None
    if listen_host == "0.0.0.0" and version == 6:
        return None
    family, probe = (socket.AF_INET, "192.0.2.1") if version == 4 else (socket.AF_INET6, "2001:db8::1")
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            ip = str(s.getsockname()[0])
    except OSError:
        return None
    return None if ip in _WILDCARDS else ip


def local_ips_from_proc(fib_trie: str, if_inet6: str) -> list[str]:
    """The host's own IPs from the text of Linux's ``/proc/net/fib_trie`` (IPv4: the leaves marked
    ``/32 host LOCAL``) and ``/proc/net/if_inet6`` (IPv6: the first column, 32 hex digits), each
    once, IPv4 first. Lines that do not parse are skipped. Pure, for tests."""
    out: dict[str, None] = {}
    leaf: str | None = None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|--"):
            leaf = text[3:].strip()
        elif text.startswith("/") and leaf is not None:
            words = text.split()
            if words[:1] == ["/32"] and words[1:3] == ["host", "LOCAL"]:
                with contextlib.suppress(ValueError):
                    out[str(ipaddress.IPv4Address(leaf))] = None
        elif not text.startswith("/"):
            leaf = None
    for line in if_inet6.splitlines():
        words = line.split()
        if words and len(words[0]) == 32:
            with contextlib.suppress(ValueError):
                out[ipaddress.IPv6Address(int(words[0], 16)).compressed] = None
    return list(out)


def host_local_ips() -> list[str] | None:
    """The host's own IPs (:func:`local_ips_from_proc`); ``None`` when ``/proc`` cannot be read."""
    texts = []
    for path in ("/proc/net/fib_trie", "/proc/net/if_inet6"):
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                texts.append(f.read())
        except OSError:
            texts.append("")
    if not any(texts):
        return None
    return local_ips_from_proc(*texts) or None


def own_ips(listen_host: str, local_ips: Iterable[str] | None) -> list[str]:
    """The IPs a listener on ``listen_host`` receives on: the host itself when concrete; for
    ``0.0.0.0`` the host's IPv4 addresses, for ``::`` (dual-stack) all of them. ``local_ips`` is
    :func:`host_local_ips`; when it is ``None`` the :func:`relay_ip` addresses stand in."""
    if listen_host not in _WILDCARDS:
        return [listen_host]
    if local_ips is None:
        found = [relay_ip(listen_host, 4), relay_ip(listen_host, 6)]
        return [ip for ip in found if ip is not None]
    return [ip for ip in local_ips if listen_host == "::" or ":" not in ip]


_V4_LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")


class _ServerAddresses(set[Address]):
    """``TurnServer.server_addresses`` (what relayed data must never be sent to) that also knows the
    wildcard listeners: all of 127.0.0.0/8 reaches a ``0.0.0.0`` (or dual-stack ``::``) listener,
    and that range is too big to list."""

    def __init__(self) -> None:
        super().__init__()
        self.loopback_ports: set[int] = set()

    def __contains__(self, item: object) -> bool:
        if super().__contains__(item):
            return True
        if not isinstance(item, Address) or item.port not in self.loopback_ports:
            return False
        try:
            return ipaddress.ip_address(item.host) in _V4_LOOPBACK
        except ValueError:
            return False


class _TcpConn:
    """One TCP/TLS connection's state for the limits (times are ``loop.time()``)."""

    __slots__ = ("group", "key", "last_valid", "opened", "partial_since", "reason", "validated", "writer")

    def __init__(
        self, writer: asyncio.StreamWriter, key: tuple[Address, Address, Transport], group: str, now: float
    ) -> None:
        self.writer = writer
        self.key = key
        self.group = group  # the source IPv4 address or IPv6 /64 the per-IP cap counts
        self.opened = now
        self.last_valid = now
        self.partial_since: float | None = None  # when the incomplete frame in the buffer began
        self.validated = False
        self.reason: str | None = None  # why the relay closed it, once it did


def _ip_group(host: str) -> str:
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network((host, 64), strict=False))
    except ValueError:
        return host


def _tcp_limit(configured: int) -> int:
    """``max_tcp_connections``, but at most half the soft ``RLIMIT_NOFILE``: the other half stays
    for listeners and relay sockets, so a flood of connections cannot make Allocate fail."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover
        return configured
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return configured
    limit = min(configured, max(16, soft // 2))
    if limit < configured:
        log.info("max_tcp_connections %d lowered to %d (half of RLIMIT_NOFILE %d)", configured, limit, soft)
    return limit


class StunTurnService:
    """One STUN/TURN relay on the running event loop: ``await start()``, ``await stop()``."""

    def __init__(self, config: StunTurnConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.SystemRandom()
        self.counters: Counter[str] = Counter()
        self._udp: dict[Address, _UdpSocket] = {}
        self._relays: dict[Address, _UdpSocket] = {}
        self._batching = False
        self._timer_dirty = False
        self._out: list[tuple[socket.socket, Address, bytes]] = []
        self._gso = sys.platform == "linux"
        self._tcp_servers: list[asyncio.Server] = []
        self._tcp_conns: dict[tuple[Address, Address, Transport], _TcpConn] = {}
        self._tcp_per_ip: Counter[str] = Counter()
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self._tcp_sweep: asyncio.TimerHandle | None = None
        self._tcp_limit = config.max_tcp_connections
        self._closing = False
        self._extra_addresses: list[Address] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self.turn: TurnServer | None = None
        self.binding: BindingServer | None = None
        self._addresses: list[Address] = []
        self._local_ips: list[str] | None = None
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
        self._tcp_limit = _tcp_limit(cfg.max_tcp_connections)
        other = Address(cfg.alt_address, primary.port + 1) if cfg.alt_address is not None else None
        self.binding = BindingServer(SOFTWARE, other_address=other, primary_address=primary)
        host = primary.host
        self._local_ips = host_local_ips() if host in _WILDCARDS else None
        own = own_ips(host, self._local_ips)
        if cfg.alt_address is not None:
            own.append(cfg.alt_address)
        relay_v4, relay_v6 = relay_ip(host, 4), relay_ip(host, 6)
        own.extend(ip for ip in (relay_v4, relay_v6) if ip is not None)
        self.turn = TurnServer(
            TurnServerConfig(
                realm=cfg.realm,
                users=dict(cfg.users),
                static_auth_secret=cfg.static_auth_secret,
                policy=self._policy.with_own_ips(own),
                min_port=cfg.min_port,
                max_port=cfg.max_port,
                user_quota=cfg.user_quota,
                total_quota=cfg.total_quota,
                max_bps=cfg.max_bps,
                relay_ipv4=relay_v4,
                relay_ipv6=relay_v6,
                software=SOFTWARE,
            ),
            rng=random.Random(self._rng.getrandbits(64)),
            secret=self._rng.randbytes(32),
        )
        self.turn.server_addresses = _ServerAddresses()
        self._add_server_addresses([*self._addresses, *self._extra_addresses])
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
        if self.turn is not None:
            self._add_server_addresses(added)

    def _add_server_addresses(self, addresses: Iterable[Address]) -> None:
        turn = self.turn
        assert turn is not None
        table = turn.server_addresses
        for addr in addresses:
            if addr.host not in _WILDCARDS:
                table.add(addr)
                continue
            if self._local_ips is None:
                self._local_ips = host_local_ips()
            ips = own_ips(addr.host, self._local_ips)
            relay_ips = (relay_ip(addr.host, 4), relay_ip(addr.host, 6))
            for ip in dict.fromkeys([*ips, *(ip for ip in relay_ips if ip is not None)]):
                table.add(Address(ip, addr.port))
            if isinstance(table, _ServerAddresses):
                table.loopback_ports.add(addr.port)

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
        probe = _bind_udp(listen)
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
                self._add_udp(_bind_udp(addr))
        return primary

    def _add_udp(self, sock: socket.socket) -> None:
        assert self._loop is not None
        us = _UdpSocket(sock, self._on_listener_datagram)
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
            self._timer = None
        if self._tcp_sweep is not None:
            self._tcp_sweep.cancel()
            self._tcp_sweep = None
        for server in self._tcp_servers:
            server.close()
        # End the handlers by closing their connections (they then read EOF and return), never by
        # cancelling them mid-read: first cleanly, then, for those that do not finish, abruptly.
        for conn in list(self._tcp_conns.values()):
            conn.writer.close()
        for abort in (False, True):
            if not self._tcp_tasks:
                break
            if abort:
                for conn in list(self._tcp_conns.values()):
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
        self._tcp_conns.clear()
        self._tcp_per_ip.clear()
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
        out["tcp_connections"] = len(self._tcp_conns)
        return out

    # ---------------------------------------------------------------------------------- input

    def _on_listener_datagram(self, us: _UdpSocket, data: bytes, src: Address) -> None:
        self.counters["udp_datagrams_received"] += 1
        self._dispatch(data, src, us.address, "udp")

    def _dispatch(self, data: bytes, src: Address, local: Address, transport: Transport) -> None:
        turn, binding = self.turn, self.binding
        if turn is None or binding is None:
            return
        if stun_method(data) == Method.BINDING:
            for reply in binding.handle(data, src, local, self._now()):
                if transport == "udp":
                    self._send_udp(reply.via, reply.data, reply.dst)
                else:
                    self._send_tcp((reply.dst, local, transport), reply.data)
            return
        self._run(turn.handle_client(data, src, local, transport, self._now(), wall=time.time()))

    def _on_relay_datagram(self, us: _UdpSocket, data: bytes, src: Address) -> None:
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
        key = (peer, local, transport)
        group = _ip_group(peer.host)
        self.counters["tcp_connections_total"] += 1
        cfg = self.config
        refused = None
        if len(self._tcp_conns) >= self._tcp_limit:
            refused = "total_limit"
        elif self._tcp_per_ip[group] >= cfg.max_tcp_connections_per_ip:
            refused = "per_ip_limit"
        if refused is not None:
            self.counters[f"tcp_closed_{refused}"] += 1
            log.debug("TCP connection from %s refused: %s", peer, refused)
            writer.transport.abort()
            return
        conn = _TcpConn(writer, key, group, loop.time())
        self._tcp_conns[key] = conn
        self._tcp_per_ip[group] += 1
        if self._tcp_sweep is None:
            self._tcp_sweep = loop.call_later(self._sweep_interval(), self._sweep_tcp)
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
                        conn.validated = True
                        conn.last_valid = now
                    self._dispatch(frame, peer, local, transport)
                if not buf:
                    conn.partial_since = None
                elif progress or conn.partial_since is None:
                    conn.partial_since = now
        except DecodeError:
            self.counters["tcp_drop_malformed"] += 1
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("TCP connection from %s ended: %s", peer, exc)
        finally:
            if self._tcp_conns.get(key) is conn:
                del self._tcp_conns[key]
            self._tcp_per_ip[group] -= 1
            if self._tcp_per_ip[group] <= 0:
                del self._tcp_per_ip[group]
            if self.turn is not None:
                self._run(self.turn.connection_closed(peer, local, transport, loop.time()))
            if conn.reason is not None:
                log.debug("TCP connection from %s closed: %s", peer, conn.reason)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _sweep_interval(self) -> float:
        cfg = self.config
        return min(1.0, cfg.tcp_request_timeout / 4, cfg.tcp_idle_timeout / 4, cfg.tcp_partial_timeout / 4)

    def _sweep_tcp(self) -> None:
        """Close the TCP connections that broke a time limit (runs while there are connections)."""
        self._tcp_sweep = None
        loop, cfg, turn = self._loop, self.config, self.turn
        if loop is None or self._closing:
            return
        now = loop.time()
        for conn in list(self._tcp_conns.values()):
            if conn.reason is not None:
                continue
            reason = None
            if conn.partial_since is not None and now - conn.partial_since > cfg.tcp_partial_timeout:
                reason = "partial_frame"
            elif not conn.validated and now - conn.opened > cfg.tcp_request_timeout:
                reason = "request_timeout"
            elif now - conn.last_valid > cfg.tcp_idle_timeout and (
                turn is None or FiveTuple(*conn.key) not in turn.allocations
            ):
                reason = "idle"
            if reason is not None:
                conn.reason = reason
                self.counters[f"tcp_closed_{reason}"] += 1
                conn.writer.transport.abort()  # the handler reads EOF and cleans up
        if self._tcp_conns:
            self._tcp_sweep = loop.call_later(self._sweep_interval(), self._sweep_tcp)

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
                    self._sendto(relay.sock, e.data, e.peer)
            elif isinstance(e, OpenRelay):
                ok = self._open_relay(e.relay)
                if turn is not None:
                    queue.extend(turn.confirm_relay(e.relay, ok, self._now()))
            elif isinstance(e, CloseRelay):
                self._close_relay(e.relay)
        if self._batching:
            self._timer_dirty = True  # re-armed once for the whole batch
        else:
            self._arm_timer()

    def _open_relay(self, relay: Address) -> bool:
        assert self._loop is not None
        try:
            sock = _bind_udp(relay)
        except OSError as exc:
            log.info("cannot bind relay %s: %s", relay, exc.strerror)
            return False
        us = _UdpSocket(sock, self._on_relay_datagram)
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
        self._sendto(us.sock, data, dst)

    def _sendto(self, sock: socket.socket, data: bytes, dst: Address) -> None:
        if self._batching:
            self._out.append((sock, dst, data))
            return
        try:
            sock.sendto(data, dst)
            self.counters["udp_datagrams_sent"] += 1
        except (BlockingIOError, InterruptedError):
            self.counters["send_dropped_full"] += 1
        except OSError:
            self.counters["send_errors"] += 1

    def _read(self, us: _UdpSocket) -> None:
        """Read a batch from one socket, then send what it produced, batched with GSO."""
        self._batching = True
        try:
            us.read()
        finally:
            self._batching = False
            if self._out:
                self._flush_out()
            if self._timer_dirty:
                self._timer_dirty = False
                self._arm_timer()

    def _flush_out(self) -> None:
        """Runs of equal-size datagrams from one socket to one destination go out in one sendmsg
        (UDP GSO; the last of a run may be shorter); anything else one by one."""
        out, self._out = self._out, []
        n = len(out)
        i = 0
        while i < n:
            sock, dst, data = out[i]
            size = len(data)
            limit = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // max(size, 1)) if self._gso else 1
            j = i + 1
            while j < n and j - i < limit:
                nsock, ndst, ndata = out[j]
                if nsock is not sock or ndst != dst or len(ndata) > size:
                    break
                j += 1
                if len(ndata) < size:
                    break
            try:
                if j - i == 1:
                    sock.sendto(data, dst)
                else:
                    cmsg = [(socket.IPPROTO_UDP, _UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
                    sock.sendmsg([d for _, _, d in out[i:j]], cmsg, 0, dst)
                self.counters["udp_datagrams_sent"] += j - i
            except (BlockingIOError, InterruptedError):
                self.counters["send_dropped_full"] += j - i
            except OSError as exc:
                if j - i > 1 and exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self._gso = False  # no segmentation offload here: one by one from now on
                    self._out = out[i:] + self._out
                    self._flush_out()
                    return
                self.counters["send_errors"] += j - i
            i = j

    def _send_tcp(self, key: tuple[Address, Address, Transport], data: bytes) -> None:
        conn = self._tcp_conns.get(key)
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
        turn, loop = self.turn, self._loop
        if turn is None or loop is None:
            return
        at = turn.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        at = self._timer_at
        self._timer = None
        self._timer_at = None
        if self.turn is not None:
            # The loop may run a handle up to its clock resolution early: never run the core behind.
            self._run(self.turn.handle_timer(max(self._now(), at or 0.0)))
