"""The limits on the STUN/TURN relay's TCP/TLS connections, so that connections cannot exhaust it.

A TCP connection costs the relay a file descriptor and a task for as long as the client keeps it
open, whether or not it ever sends a request; without limits a few hosts could take every descriptor
and make Allocate fail for everyone. :class:`TcpConnections` admits a connection only under the caps
(``max_tcp_connections`` in total, never more than half the process's ``RLIMIT_NOFILE``, and
``max_tcp_connections_per_ip`` per IPv4 address or IPv6 /64), and, while any is open, sweeps them
about once a second, closing those that sent no valid request soon after connecting, idle without an
allocation, or hold an incomplete frame too long (slowloris). Closes and refusals are counted as
``tcp_closed_<reason>``. The reading and framing of the connections stay in the service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
from collections import Counter
from collections.abc import Callable, Iterator

from coremesh.addr import Address
from coremesh.turn.allocation import Transport

from .stunturn_config import StunTurnConfig

log = logging.getLogger("coremesh.relay.stunturn")

ConnectionKey = tuple[Address, Address, Transport]
"""(client, local, transport): the connection's 5-tuple as the TURN core names it."""


def ip_group(host: str) -> str:
    """What a per-source limit counts under: the IPv4 address itself (also when it arrives
    IPv4-mapped on a dual-stack socket), or the IPv6 /64 it is in; a zone id is ignored. Used by the
    TCP caps here and by the keyed relay's limit on unregistered connections."""
    host = host.partition("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def tcp_connection_limit(configured: int) -> int:
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


class TcpConnection:
    """One TCP/TLS connection's state for the limits (times are ``loop.time()``)."""

    __slots__ = ("group", "key", "last_valid", "opened", "partial_since", "reason", "validated", "writer")

    def __init__(self, writer: asyncio.StreamWriter, key: ConnectionKey, group: str, now: float) -> None:
        self.writer = writer
        self.key = key
        self.group = group  # the source IPv4 address or IPv6 /64 the per-IP cap counts
        self.opened = now
        self.last_valid = now
        self.partial_since: float | None = None  # when the incomplete frame in the buffer began
        self.validated = False
        self.reason: str | None = None  # why the relay closed it, once it did

    def request_received(self, now: float) -> None:
        """A STUN-shaped frame (a request or an indication) arrived."""
        self.validated = True
        self.last_valid = now

    def buffer_read(self, now: float, *, empty: bool, progress: bool) -> None:
        """After a read: ``empty`` when no partial frame is left, ``progress`` when a frame ended."""
        if empty:
            self.partial_since = None
        elif progress or self.partial_since is None:
            self.partial_since = now

    def broken_limit(
        self, now: float, config: StunTurnConfig, has_allocation: Callable[[ConnectionKey], bool]
    ) -> str | None:
        """The time limit this connection broke at ``now``, or None."""
        if self.partial_since is not None and now - self.partial_since > config.tcp_partial_timeout:
            return "partial_frame"
        if not self.validated and now - self.opened > config.tcp_request_timeout:
            return "request_timeout"
        if now - self.last_valid > config.tcp_idle_timeout and not has_allocation(self.key):
            return "idle"
        return None


class TcpConnections:
    """The relay's open TCP/TLS connections, admitted under the caps and swept for the time limits.

    ``has_allocation(key)`` tells whether a connection carries an allocation (the idle limit spares
    those: the allocation's lifetime bounds them). Counts go into ``counters``.
    """

    def __init__(
        self,
        config: StunTurnConfig,
        counters: Counter[str],
        has_allocation: Callable[[ConnectionKey], bool],
    ) -> None:
        self.config = config
        self.limit = config.max_tcp_connections
        self._counters = counters
        self._has_allocation = has_allocation
        self._conns: dict[ConnectionKey, TcpConnection] = {}
        self._per_ip: Counter[str] = Counter()
        self._sweep: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[TcpConnection]:
        return iter(list(self._conns.values()))

    def get(self, key: ConnectionKey) -> TcpConnection | None:
        return self._conns.get(key)

    def apply_descriptor_limit(self) -> None:
        """Lower the total cap to half the process's descriptor limit if that is lower (at start)."""
        self.limit = tcp_connection_limit(self.config.max_tcp_connections)

    def stop_sweeping(self) -> None:
        """The service is closing its connections itself: no more sweeps until one is admitted."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def clear(self) -> None:
        """Forget every connection (once the service has closed them)."""
        self._conns.clear()
        self._per_ip.clear()

    def admit(self, writer: asyncio.StreamWriter, key: ConnectionKey, now: float) -> TcpConnection | None:
        """Count a new connection from ``key``'s client in, or refuse it (aborted, counted): None.
        Runs on the event loop, where the sweep is then scheduled."""
        peer = key[0]
        group = ip_group(peer.host)
        self._counters["tcp_connections_total"] += 1
        refused = None
        if len(self._conns) >= self.limit:
            refused = "total_limit"
        elif self._per_ip[group] >= self.config.max_tcp_connections_per_ip:
            refused = "per_ip_limit"
        if refused is not None:
            self._counters[f"tcp_closed_{refused}"] += 1
            log.debug("TCP connection from %s refused: %s", peer, refused)
            writer.transport.abort()
            return None
        conn = TcpConnection(writer, key, group, now)
        self._conns[key] = conn
        self._per_ip[group] += 1
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._sweep_interval(), self._run_sweep)
        return conn

    def release(self, conn: TcpConnection) -> None:
        """The connection's handler ended."""
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        self._per_ip[conn.group] -= 1
        if self._per_ip[conn.group] <= 0:
            del self._per_ip[conn.group]

    def _sweep_interval(self) -> float:
        cfg = self.config
        return min(1.0, cfg.tcp_request_timeout / 4, cfg.tcp_idle_timeout / 4, cfg.tcp_partial_timeout / 4)

    def _run_sweep(self) -> None:
        """Close the TCP connections that broke a time limit (runs while there are connections)."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self._conns.values()):
            if conn.reason is not None:
                continue
            reason = conn.broken_limit(now, self.config, self._has_allocation)
            if reason is not None:
                conn.reason = reason
                self._counters[f"tcp_closed_{reason}"] += 1
                conn.writer.transport.abort()  # the handler reads EOF and cleans up
        if self._conns:
            self._sweep = loop.call_later(self._sweep_interval(), self._run_sweep)
