"""Netcheck: the asyncio shell that keeps the node's view of its network current.

It runs :class:`~coremesh.netcheck.probe.NetcheckProbe` over the node's own UDP socket (the mapping that
matters is the mesh socket's, so no other socket is used for UDP), sharing it with the relay clients
through the runtime's ``foreign_handler``: a STUN datagram that belongs to a netcheck transaction is
taken here, anything else goes on to the handler that was there before.

When: once at start, again every ``interval`` seconds, and sooner when a cheap check every
``watch_interval`` seconds (one Binding request to one server, and a routing lookup of the local
addresses; no packet for the latter) sees the public or a local address change. The last report is
kept, so :meth:`Netchecker.report` answers at once; ``refresh=True`` runs a new check.

Extra measurements that need other sockets are kept to where UDP cannot tell: when no server
answers over UDP, a Binding request over TCP to the same servers (and a keyed relay session over
TCP) tells "UDP blocked" from "servers down"; a keyed relay's latency is its TCP connect time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Sequence

from ..addr import Address, normalize_socket_address
from ..errors import DecodeError, MeshError
from ..keyedrelay.url import parse_relay_url
from ..netcheck.probe import NETCHECK_TRANSACTION, NetcheckProbe, ProbeResult
from ..netcheck.report import NetcheckReport, RelayLatency
from ..stun.attributes import Attr
from ..stun.message import HEADER_SIZE, Method, StunClass, StunMessage, decode, encode
from ..stun.transaction import TransactionConfig
from .runtime import UdpRuntime
from .timer import CoreTimer

log = logging.getLogger("coremesh.netcheck.service")

DEFAULT_INTERVAL = 300.0
DEFAULT_WATCH_INTERVAL = 30.0
TCP_TIMEOUT = 2.0
STUN_FIRST_BYTE_END = 4  # RFC 7983: a STUN message's first byte is 0-3
RUN_TIMEOUT = 60.0  # a run that has not finished by then is abandoned (a bug, not a network state)


class _Driver:
    """Drives one probe on the runtime's loop: sends what it has, keeps one timer armed."""

    def __init__(self, probe: NetcheckProbe, runtime: UdpRuntime) -> None:
        self.probe = probe
        self.runtime = runtime
        self.finished = asyncio.Event()
        self._timer = CoreTimer(asyncio.get_running_loop(), self._on_timer)

    def flush(self) -> None:
        for data, address in self.probe.datagrams_to_send():
            self.runtime.send_raw(data, address)
        if self.probe.done:
            self._timer.cancel()
            self.finished.set()
            return
        self._timer.arm(self.probe.next_timer())

    def _on_timer(self, now: float) -> None:
        self.probe.handle_timer(now)
        self.flush()

    def cancel(self) -> None:
        self._timer.cancel()


class Netchecker:
    """Netcheck for one node's runtime. ``servers`` are STUN servers (``HOST:PORT``, names allowed);
    ``keyed_urls`` the keyed relays; ``keyed_registered`` tells whether a keyed relay session is up."""

    def __init__(
        self,
        runtime: UdpRuntime,
        servers: Sequence[Address],
        *,
        keyed_urls: Sequence[str] = (),
        keyed_registered: Callable[[], bool] | None = None,
        interval: float = DEFAULT_INTERVAL,
        watch_interval: float = DEFAULT_WATCH_INTERVAL,
        rng: random.Random | None = None,
        transaction: TransactionConfig = NETCHECK_TRANSACTION,
    ) -> None:
        self.runtime = runtime
        self.servers = tuple(dict.fromkeys(servers))
        self.keyed_urls = tuple(keyed_urls)
        self.interval = interval
        self.watch_interval = watch_interval
        self.transaction = transaction
        self.last: NetcheckReport | None = None
        self.runs = 0
        self._keyed_registered = keyed_registered or (lambda: False)
        self._rng = rng if rng is not None else random.SystemRandom()
        self._drivers: list[_Driver] = []
        self._previous_handler = runtime.foreign_handler
        self._running: asyncio.Task[NetcheckReport] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._local_ips: frozenset[str] = frozenset()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, *, periodic: bool = True) -> None:
        """Take the runtime's STUN datagrams (passing on what is not ours) and start the schedule."""
        self._previous_handler = self.runtime.foreign_handler
        self.runtime.foreign_handler = self._on_foreign
        if periodic:
            self._loop_task = asyncio.ensure_future(self._schedule())

    async def stop(self) -> None:
        for task in (self._loop_task, self._running):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for driver in self._drivers:
            driver.cancel()
        self._drivers.clear()
        if self.runtime.foreign_handler == self._on_foreign:
            self.runtime.foreign_handler = self._previous_handler

    # -- the API ------------------------------------------------------------------------------

    async def report(self, refresh: bool = False) -> NetcheckReport:
        """The last report; a new run if ``refresh`` or none has finished yet. A run in progress
        (the start, a periodic one) is joined, not duplicated: its result is just as fresh."""
        if self.last is not None and not refresh:
            return self.last
        return await self.run("manual" if refresh else "start")

    async def run(self, trigger: str) -> NetcheckReport:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run(trigger))
        return await asyncio.shield(self._running)

    # -- datagrams ----------------------------------------------------------------------------

    def _on_foreign(self, data: bytes, source: Address, now: float) -> list[tuple[bytes, Address]]:
        if not (self._drivers and data and data[0] < STUN_FIRST_BYTE_END):  # ChannelData: not ours
            previous = self._previous_handler
            return previous(data, source, now) if previous is not None else []
        for driver in list(self._drivers):
            if driver.probe.on_datagram(data, source, now):
                driver.flush()
                return []
        previous = self._previous_handler
        return previous(data, source, now) if previous is not None else []

    async def _probe(self, servers: Sequence[Address], *, discover: bool) -> ProbeResult:
        probe = NetcheckProbe(
            servers,
            self.runtime.now(),
            random_bytes=self._rng.randbytes,
            local_addresses=self._local_addresses(servers),
            config=self.transaction,
            discover=discover,
        )
        driver = _Driver(probe, self.runtime)
        self._drivers.append(driver)
        try:
            driver.flush()
            await asyncio.wait_for(driver.finished.wait(), RUN_TIMEOUT)
        finally:
            driver.cancel()
            self._drivers.remove(driver)
        assert probe.result is not None
        return probe.result

    # -- one run ------------------------------------------------------------------------------

    async def _run(self, trigger: str) -> NetcheckReport:
        started, t0 = time.time(), time.monotonic()
        servers = await self._resolve_servers()
        relays: list[RelayLatency] = []
        result: ProbeResult | None = None
        if servers:
            result = await self._probe(servers, discover=True)
            for a in result.answers:
                relays.append(
                    RelayLatency(
                        server=str(a.server),
                        kind="stun",
                        rtt_ms=None if a.rtt is None else a.rtt * 1000,
                        mapped=str(a.mapped) if a.mapped is not None else None,
                        error=a.error,
                    )
                )
        udp_blocked: bool | None = None
        error: str | None = None
        if result is not None and result.answered:
            udp_blocked = False
        else:
            error = "no STUN server answered over UDP" if servers else "no STUN server could be resolved"
            tcp = await asyncio.gather(*(_tcp_binding(s) for s in servers))
            relays.extend(tcp)
            if any(r.rtt_ms is not None for r in tcp) or self._keyed_registered():
                udp_blocked = True
        relays.extend(await asyncio.gather(*(_tcp_connect_time(url) for url in self.keyed_urls)))
        self._local_ips = self._current_local_ips()
        report = NetcheckReport(
            mapping=result.mapping if result is not None else "unknown",
            filtering=result.filtering if result is not None else "unknown",
            public_ipv4=_text(result.public_ipv4) if result else None,
            public_ipv6=_text(result.public_ipv6) if result else None,
            local_address=_text(result.local_address) if result else None,
            port_preserving=result.port_preserving if result else None,
            port_allocation=result.port_allocation if result else None,
            hairpinning=result.hairpinning if result else None,
            udp_blocked=udp_blocked,
            relays=tuple(relays),
            discovery_server=_text(result.discovery_server) if result else None,
            trigger=trigger,
            ran_at=started,
            duration_ms=(time.monotonic() - t0) * 1000,
            error=error,
        )
        self.last = report
        self.runs += 1
        log.info(
            "netcheck",
            extra={
                "nat_type": report.nat_type,
                "mapping": report.mapping,
                "filtering": report.filtering,
                "public_ipv4": report.public_ipv4,
                "trigger": trigger,
            },
        )
        return report

    async def _schedule(self) -> None:
        """First run now; then watch for changes and re-run on one, or when ``interval`` passed."""
        trigger: str | None = "start"
        while True:
            try:
                if trigger is not None:
                    await self.run(trigger)
            except (MeshError, OSError, TimeoutError) as exc:
                log.warning("netcheck failed", extra={"error": str(exc) or type(exc).__name__})
            await asyncio.sleep(self.watch_interval)
            try:
                trigger = await self._changed()
            except (MeshError, OSError, TimeoutError) as exc:
                log.warning("netcheck: address check failed", extra={"error": str(exc) or type(exc).__name__})
                trigger = None

    async def _changed(self) -> str | None:
        """Why a new run is due now, or None. A changed address is named before the schedule."""
        last = self.last
        if last is None:
            return "periodic"
        if self._current_local_ips() != self._local_ips:
            return "local-address-change"
        if await self._public_address_changed(last):
            return "srflx-change"
        if time.time() - last.ran_at >= self.interval:
            return "periodic"
        return None

    async def _public_address_changed(self, last: NetcheckReport) -> bool:
        """One Binding request to the server of the last run: does it see another address now?"""
        if last.public_ipv4 is None and last.public_ipv6 is None:
            return False  # nothing to compare with until the next periodic run
        servers = await self._resolve_servers()
        reference = next((s for s in servers if str(s) == last.discovery_server), None)
        if reference is None and servers:
            reference = servers[0]
        if reference is None:
            return False
        check = await self._probe([reference], discover=False)
        mapped = check.answers[0].mapped
        if mapped is None:
            return False  # one lost answer is not a change; the periodic run will tell
        before = last.public_ipv6 if mapped.is_ipv6 else last.public_ipv4
        return str(mapped) != before

    # -- the host's side ----------------------------------------------------------------------

    async def _resolve_servers(self) -> list[Address]:
        out: list[Address] = []
        for server in self.servers:
            try:
                resolved = await _resolve(server, self.runtime.sock.family)
            except OSError as exc:
                log.warning(
                    "netcheck: cannot resolve server", extra={"server": str(server), "error": str(exc)}
                )
                continue
            if self.runtime.unreachable_reason(resolved) is None:
                out.append(resolved)
        return out

    def _local_addresses(self, servers: Sequence[Address]) -> dict[Address, Address]:
        """For each server, the address it would see without a NAT: our routed IP, our port."""
        port = self.runtime.local_address.port
        bound = self.runtime.local_address.host
        out: dict[Address, Address] = {}
        for server in servers:
            ip = bound if bound not in ("0.0.0.0", "::") else _route_ip(server)
            if ip is not None:
                out[server] = Address(ip, port)
        return out

    def _current_local_ips(self) -> frozenset[str]:
        """The IPs the host routes through to the servers now (no packet is sent)."""
        ips = (_route_ip(s) for s in self.servers if _is_literal(s.host))
        return frozenset(ip for ip in ips if ip is not None)


def _text(address: Address | None) -> str | None:
    return None if address is None else str(address)


def _is_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _route_ip(server: Address) -> str | None:
    """The local IP the host would send from to ``server`` (a routing lookup; nothing is sent)."""
    family = socket.AF_INET6 if server.is_ipv6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((server.host, server.port))
            return normalize_socket_address(s.getsockname()).host
    except OSError:
        return None


async def _resolve(address: Address, family: int) -> Address:
    if _is_literal(address.host):
        return address
    infos = await asyncio.get_running_loop().getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{address.host} has no address")
    infos.sort(key=lambda info: info[0] != family)
    return normalize_socket_address(infos[0][4])


async def _tcp_binding(server: Address) -> RelayLatency:
    """A Binding request over TCP (RFC 8489 section 7.2.2): does the server answer where UDP did not?"""
    request = StunMessage(Method.BINDING, StunClass.REQUEST, os.urandom(12))
    t0 = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(server.host, server.port), TCP_TIMEOUT
        )
        assert writer is not None
        writer.write(encode(request))
        header = await asyncio.wait_for(reader.readexactly(HEADER_SIZE), TCP_TIMEOUT)
        length = int.from_bytes(header[2:4], "big")
        body = await asyncio.wait_for(reader.readexactly(length), TCP_TIMEOUT)
        rtt = (time.monotonic() - t0) * 1000
        msg = decode(header + body)
        mapped = msg.get_address(Attr.XOR_MAPPED_ADDRESS)
        if msg.transaction_id != request.transaction_id or msg.msg_class is not StunClass.SUCCESS:
            return RelayLatency(server=str(server), kind="stun-tcp", rtt_ms=None, error="unexpected answer")
        return RelayLatency(server=str(server), kind="stun-tcp", rtt_ms=rtt, mapped=_text(mapped))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, DecodeError) as exc:
        return RelayLatency(server=str(server), kind="stun-tcp", rtt_ms=None, error=_reason(exc))
    finally:
        if writer is not None:
            writer.close()


async def _tcp_connect_time(url: str) -> RelayLatency:
    """A keyed relay's latency: the time a TCP connection to it takes to open."""
    try:
        parsed = parse_relay_url(url)
    except MeshError as exc:
        return RelayLatency(server=url, kind="keyed", rtt_ms=None, error=str(exc))
    t0 = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parsed.host, parsed.port), TCP_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        return RelayLatency(server=url, kind="keyed", rtt_ms=None, error=_reason(exc))
    rtt = (time.monotonic() - t0) * 1000
    writer.close()
    return RelayLatency(server=url, kind="keyed", rtt_ms=rtt)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
