"""The asyncio shell around the endpoint core: one UDP socket, one timer, nothing else (but the
short-lived probe sockets of a birthday attempt, which the core asks for and closes).

It passes ``loop.time()`` into the core, sends what comes out, re-arms exactly one timer and hands
events to a callback. Reads are drained in batches (many datagrams per wake-up) and the output of a
whole batch is flushed at once, which keeps per-datagram Python work small.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

from ..addr import Address, normalize_socket_address
from ..endpoint.endpoint import Endpoint
from ..endpoint.events import Event
from ..endpoint.paths import PathAddress, ProbeAddress, RelayAddress, SendAddress, TurnAddress
from ..errors import ConfigError
from .timer import CoreTimer


class TurnWrapper(Protocol):
    """A TURN allocation: wraps a datagram to ``peer`` for its server (ChannelData or a Send
    indication)."""

    def wrap(self, data: bytes, peer: Address, now: float) -> bytes: ...


# Called with (datagram, source, now) for what arrives on the socket and is not a mesh packet
# (STUN, TURN ChannelData); returns mesh packets unwrapped from it as (data, peer address) pairs.
ForeignHandler = Callable[[bytes, Address, float], list[tuple[bytes, Address]]]
RelaySender = Callable[[RelayAddress, bytes], bool]
# A side protocol's receiver (the DHT): what reached the socket, or came by another path (a probe
# socket, our TURN allocation, the keyed relay), tagged with that path as the endpoint sees it.
PacketHandler = Callable[[bytes, PathAddress, float], None]
_MESH_FIRST_BYTE: Final = 0xE0

log = logging.getLogger("coremesh.aio.runtime")

RECV_BATCH: Final = 512
ADDRESS_CACHE_SIZE: Final = 4096  # socket addresses whose Address is kept between reads
PROBE_SOCKET_BUFFER: Final = 65536
RECV_BUFFER: Final = 65536
# Linux UDP segmentation offload: one sendmsg carries many equal-size datagrams (GSO), and the
# receiver gets many datagrams in one recvmsg (GRO). On loopback neither is ever split on the wire.
UDP_SEGMENT: Final = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO: Final = getattr(socket, "UDP_GRO", 104)
GSO_MAX_SEGMENTS: Final = 64
GSO_MAX_BYTES: Final = 65000
_GRO_CMSG_SPACE: Final = socket.CMSG_SPACE(4)
_SEGMENT_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_IP_PMTUDISC_PROBE: Final = 3  # set DF, ignore the kernel's PMTU cache: DPLPMTUD probes for itself
_IPV6_PMTUDISC_PROBE: Final = 3


def open_udp_socket(address: Address, buffer_size: int) -> socket.socket:
    """Bind a non-blocking UDP socket. ``::`` listens dual-stack (IPv4-mapped) where the host allows."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if family == socket.AF_INET6 and host == "::" and not socket.has_ipv6:
        family, host = socket.AF_INET, "0.0.0.0"
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        if host != "::":
            raise
        family, host = socket.AF_INET, "0.0.0.0"
        sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
            _try_setsockopt(
                sock, socket.IPPROTO_IPV6, getattr(socket, "IPV6_MTU_DISCOVER", 23), _IPV6_PMTUDISC_PROBE
            )
        if family == socket.AF_INET or host == "::":
            _try_setsockopt(
                sock, socket.IPPROTO_IP, getattr(socket, "IP_MTU_DISCOVER", 10), _IP_PMTUDISC_PROBE
            )
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            _try_setsockopt(sock, socket.SOL_SOCKET, opt, buffer_size)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"listen_addr: {address} is already in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"listen_addr: {host} is not an address of this host") from None
        raise ConfigError(f"listen_addr: cannot bind {address}: {exc.strerror}") from None
    return sock


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def _try_setsockopt(sock: socket.socket, level: int, opt: int, value: int) -> None:
    try:
        sock.setsockopt(level, opt, value)
    except OSError:
        log.debug("setsockopt(%s, %s) not supported", level, opt)


def _split(data: bytes, segment: int) -> list[bytes]:
    """The datagrams of one GRO read: ``segment`` bytes each, the last one possibly shorter."""
    return [data[offset : offset + segment] for offset in range(0, len(data), segment)]


class UdpRuntime:
    """Drives one :class:`Endpoint` from one socket on the running event loop."""

    def __init__(self, endpoint: Endpoint, sock: socket.socket, on_event: Callable[[Event], None]) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._v6 = sock.family == socket.AF_INET6
        self._timer = CoreTimer(self._loop, self._on_timer)
        self._pending: deque[tuple[bytes, Address]] = deque()
        self._writer_armed = False
        self._flush_scheduled = False
        self._closed = False
        self.datagrams_received = 0
        self.datagrams_sent = 0
        self.bytes_received = 0  # UDP payload bytes on the node's sockets (mesh, probe), both ways
        self.bytes_sent = 0
        self.send_errors = 0
        self.gso = sys.platform == "linux"
        self.gro = sys.platform == "linux" and _enable_gro(sock)
        # Indirect paths: our TURN allocations by server address (the core decides which peer goes
        # through which), the keyed relay by PeerId, and a handler for the STUN/TURN traffic that
        # shares this socket (RFC 7983 first-byte demultiplexing).
        self.turn_links: dict[Address, TurnWrapper] = {}
        self.relay_sender: RelaySender | None = None
        self.foreign_handler: ForeignHandler | None = None
        # Other protocols of the mesh's type range that are not the endpoint's (the DHT), by type
        # byte; while there are none, datagrams go straight to the endpoint.
        self._packet_handlers: dict[int, PacketHandler] = {}
        self._receive_mesh: PacketHandler = endpoint.receive_datagram
        # Probe sockets of the birthday approach, by id (the core bounds how many).
        self._probes: dict[int, socket.socket] = {}
        # The Address of each recent sender's socket address, so that a read builds none.
        self._addresses: dict[object, Address] = {}

    def add_packet_handler(self, packet_type: int, handler: PacketHandler) -> None:
        """Hand mesh-range datagrams whose first byte is ``packet_type`` to ``handler``."""
        if not _MESH_FIRST_BYTE <= packet_type <= 0xFF:
            raise ValueError(f"packet type {packet_type:#x} is outside the mesh range")
        self._packet_handlers[packet_type] = handler
        handlers, endpoint_receive = self._packet_handlers, self.endpoint.receive_datagram

        def dispatch(data: bytes, addr: PathAddress, now: float) -> None:
            handler = handlers.get(data[0]) if data else None
            if handler is None:
                endpoint_receive(data, addr, now)
                return
            try:
                handler(data, addr, now)
            except Exception:
                # A bug in a side protocol must never stop the mesh receive loop.
                self.endpoint.counters["drop_handler_error"] += 1
                log.exception("handler for packet type %#x failed on a datagram from %s", data[0], addr)

        self._receive_mesh = dispatch

    def send_raw(self, data: bytes, address: PathAddress) -> None:
        """Send one datagram that is not the endpoint's (a STUN or TURN request, a DHT message) from
        our socket to a plain address, or by the path another address names (a DHT answer goes
        back the way its request came: a probe socket, our TURN allocation)."""
        if self._closed:
            return
        # Our own traffic to a plain address goes straight, never by a TURN route; another path is
        # resolved by the core like its own packets.
        out = address if isinstance(address, Address) else self.endpoint.send_address(address)
        self._send_all([(data, out)], self._loop.time())

    def deliver(self, data: bytes, address: PathAddress) -> None:
        """Feed a mesh packet that arrived by an indirect path (the keyed relay) into the core (or
        the side protocol of its type)."""
        if self._closed:
            return
        self._receive_mesh(data, address, self._loop.time())
        self.schedule_flush()

    @property
    def local_address(self) -> Address:
        return normalize_socket_address(self.sock.getsockname())

    def now(self) -> float:
        return self._loop.time()

    def unreachable_reason(self, address: PathAddress) -> str | None:
        """Why this socket cannot send to ``address`` (its address family), or None if it can."""
        if isinstance(address, RelayAddress):
            return None if self.relay_sender is not None else "no keyed relay is configured"
        local = self.local_address
        if not self._v6 and address.is_ipv6:
            return (
                f"this node listens on IPv4 only ({local}) and cannot reach the IPv6 address {address}; "
                "listen on [::]:PORT for dual-stack"
            )
        if self._v6 and not address.is_ipv6 and local.host != "::":
            return (
                f"this node listens on IPv6 only ({local}) and cannot reach the IPv4 address {address}; "
                "listen on [::]:PORT for dual-stack"
            )
        return None

    def start(self) -> None:
        self._loop.add_reader(self.sock.fileno(), self._on_readable)
        self.pump()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.sock.fileno())
        if self._writer_armed:
            self._loop.remove_writer(self.sock.fileno())
        self._timer.cancel()
        for ident in list(self._probes):
            self._close_probe(ident)
        self.sock.close()

    def schedule_flush(self) -> None:
        """Coalesce the work of many API calls in one loop iteration into one flush."""
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.pump()

    def pump(self) -> None:
        """Deliver the core's events, then send what it has (with what their handlers queued) and
        re-arm its timer."""
        if not self._closed:
            self._pump(self._loop.time())

    def _pump(self, now: float) -> None:
        endpoint = self.endpoint
        on_event = self._on_event
        event = endpoint.next_event()
        while True:
            # Events first: a handler's reply then leaves in the same drain as the core's output.
            while event is not None:
                on_event(event)
                event = endpoint.next_event()
            if endpoint.socket_commands:
                self._probe_commands()  # before the drain: a datagram may need a socket opened here
            out = endpoint.datagrams_to_send(now)
            if out:
                self._send_all(out, now)
            # Draining rarely emits an event (a connection whose keys ran out ends as it seals):
            # deliver it now, and send what its handler queued.
            event = endpoint.next_event()
            if event is None:
                break
        self._timer.arm(endpoint.get_timer())

    def _on_timer(self, now: float) -> None:
        if self._closed:
            return
        self.endpoint.handle_timer(now)
        self._pump(now)

    def _on_readable(self) -> None:
        """Read a batch of datagrams. With GRO, one read may carry several datagrams of one sender,
        all of the size a control message gives (the last one may be shorter): they are split here."""
        gro = self.gro
        sock = self.sock
        recvfrom = sock.recvfrom
        receive = self._receive_mesh
        now = self._loop.time()
        count = nbytes = 0
        cache = self._addresses
        if len(cache) > ADDRESS_CACHE_SIZE:
            cache.clear()
        ancdata: list[tuple[int, int, bytes]] = []
        for _ in range(RECV_BATCH):
            try:
                if gro:
                    data, ancdata, _flags, sockaddr = sock.recvmsg(RECV_BUFFER, _GRO_CMSG_SPACE)
                else:
                    data, sockaddr = recvfrom(RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP errors surface here on some systems; they are not fatal for a UDP socket.
                self.endpoint.counters["socket_errors"] += 1
                log.debug("receive: %s", exc)
                continue
            addr = cache.get(sockaddr)
            if addr is None:
                addr = cache[sockaddr] = normalize_socket_address(sockaddr)
            size = len(data)
            nbytes += size
            segment = 0
            for level, kind, value in ancdata:
                if level == socket.IPPROTO_UDP and kind == UDP_GRO and len(value) >= 4:
                    segment = _GRO_SIZE.unpack_from(value)[0]
            datagrams = (data,) if segment <= 0 or segment >= size else _split(data, segment)
            for datagram in datagrams:
                if datagram and datagram[0] >= _MESH_FIRST_BYTE:
                    receive(datagram, addr, now)
                else:
                    self._on_foreign(datagram, addr, now)
            count += len(datagrams)
        self.datagrams_received += count
        self.bytes_received += nbytes
        self.pump()

    def _on_foreign(self, data: bytes, addr: Address, now: float) -> None:
        handler = self.foreign_handler
        if handler is None:
            self.endpoint.counters["drop_not_mesh"] += 1
            return
        try:
            unwrapped = handler(data, addr, now)
        except Exception:
            # A bug or a hostile answer in a relay client must never stop the mesh receive loop.
            self.endpoint.counters["drop_foreign_error"] += 1
            log.exception("relay client failed on a datagram from %s", addr)
            return
        for inner, peer in unwrapped:
            # Tagged, so that the core can tell a packet relayed by our TURN server from a direct one.
            self._receive_mesh(inner, TurnAddress(addr, peer), now)

    def _sockaddr(self, address: Address) -> tuple[str, int]:
        host = address.host
        if self._v6 and ":" not in host:
            host = "::ffff:" + host
        return host, address.port

    def _send_all(self, out: list[tuple[bytes, SendAddress]], now: float) -> None:
        """Send each datagram the one way its address names (the core resolved it); UDP ones
        leave together at the end. A plain :class:`Address` goes straight; a :class:`TurnAddress`
        wrapped for our allocation at its server; a :class:`ProbeAddress` from that probe socket;
        a :class:`RelayAddress` by the keyed relay."""
        direct: list[tuple[bytes, Address]] = []
        append = direct.append
        for data, address in out:
            if isinstance(address, Address):
                append((data, address))
            elif isinstance(address, TurnAddress):
                link = self.turn_links.get(address.server)
                if link is None:
                    self.endpoint.counters["drop_relay_unavailable"] += 1
                else:
                    append((link.wrap(data, address.peer, now), address.server))
            elif isinstance(address, ProbeAddress):
                self._send_probe(data, address, now)
            else:
                sender = self.relay_sender
                if sender is None or not sender(address, data):
                    self.endpoint.counters["drop_relay_unavailable"] += 1
        if direct:
            self._send_direct(direct, now)

    # -- probe sockets (the birthday approach) ------------------------------------------------

    def _probe_commands(self) -> None:
        commands = self.endpoint.socket_commands
        while commands:
            opening, ident = commands.popleft()
            if opening:
                self._open_probe(ident)
            else:
                self._close_probe(ident)

    def _open_probe(self, ident: int) -> None:
        if ident in self._probes or self._closed:
            return
        local = self.local_address
        try:
            # Same family and address as our socket, any port: each one is a new NAT mapping.
            sock = open_udp_socket(Address(local.host, 0), PROBE_SOCKET_BUFFER)
        except (ConfigError, OSError) as exc:
            self.endpoint.counters["probe_socket_errors"] += 1
            log.debug("probe socket: %s", exc)
            return
        self._probes[ident] = sock
        self._loop.add_reader(sock.fileno(), self._on_probe_readable, ident)

    def _close_probe(self, ident: int) -> None:
        sock = self._probes.pop(ident, None)
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _on_probe_readable(self, ident: int) -> None:
        sock = self._probes.get(ident)
        if sock is None:
            return
        now = self._loop.time()
        for _ in range(64):
            try:
                data, sockaddr = sock.recvfrom(RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.endpoint.counters["socket_errors"] += 1
                continue
            if data and data[0] >= _MESH_FIRST_BYTE:
                # Tagged with the socket, so that replies go back out through it.
                peer = normalize_socket_address(sockaddr)
                self._receive_mesh(data, ProbeAddress(ident, peer), now)
                self.datagrams_received += 1
                self.bytes_received += len(data)
            else:
                self.endpoint.counters["drop_not_mesh"] += 1
        self.pump()

    def _send_probe(self, data: bytes, address: ProbeAddress, now: float) -> None:
        sock = self._probes.get(address.socket)
        if sock is None:
            self.endpoint.counters["drop_probe_socket_closed"] += 1
            return
        try:
            sock.sendto(data, self._sockaddr(address.address))
        except OSError as exc:
            # A full buffer drops a probe (they are paced and one-shot); nothing waits on it.
            self.send_errors += 1
            self.endpoint.counters["drop_send_error"] += 1
            log.debug("probe sendto %s: %s", address, exc)
            return
        self.datagrams_sent += 1
        self.bytes_sent += len(data)

    def _send_direct(self, out: list[tuple[bytes, Address]], now: float) -> None:
        if self._pending:
            self._pending.extend(out)
            return
        if self.gso and len(out) > 1:
            self._send_all_gso(out, now)
            return
        sendto = self.sock.sendto
        sockaddr = self._sockaddr
        last: Address | None = None
        target: tuple[str, int] = ("", 0)
        for i, (data, address) in enumerate(out):
            if address is not last:
                last, target = address, sockaddr(address)
            try:
                sendto(data, target)
            except (BlockingIOError, InterruptedError):
                self._pending.extend(out[i:])
                self._arm_writer()
                return
            except OSError as exc:
                self._send_failed(exc, data, address, now)
                continue
            self.datagrams_sent += 1
            self.bytes_sent += len(data)

    def _send_all_gso(self, out: list[tuple[bytes, Address]], now: float) -> None:
        """Send runs of equal-size datagrams to one address with one sendmsg each (the last
        datagram of a run may be shorter, as GSO allows)."""
        sendmsg = self.sock.sendmsg
        n = len(out)
        i = 0
        while i < n:
            data, address = out[i]
            size = len(data)
            j = i + 1
            total = size
            limit = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size) if size else 1
            while j < n and j - i < limit:
                nxt, nxt_addr = out[j]
                if nxt_addr != address or len(nxt) > size:
                    break
                total += len(nxt)
                j += 1
                if len(nxt) < size:
                    break
            try:
                if j - i == 1:
                    self.sock.sendto(data, self._sockaddr(address))
                else:
                    buffers = [d for d, _ in out[i:j]]
                    cmsg = [(socket.IPPROTO_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(size))]
                    sendmsg(buffers, cmsg, 0, self._sockaddr(address))
            except (BlockingIOError, InterruptedError):
                self._pending.extend(out[i:])
                self._arm_writer()
                return
            except OSError as exc:
                if j - i > 1 and exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    # No segmentation offload on this path: fall back to one datagram per call.
                    log.info("UDP GSO unavailable (%s); sending datagrams one by one", exc.strerror)
                    self.gso = False
                    self._send_direct(out[i:], now)
                    return
                self._send_failed(exc, data, address, now)
                i += 1
                continue
            self.datagrams_sent += j - i
            self.bytes_sent += total
            i = j

    def _send_failed(self, exc: OSError, data: bytes, address: Address, now: float) -> None:
        self.send_errors += 1
        if exc.errno == errno.EMSGSIZE:
            self.endpoint.on_datagram_too_big(address, len(data), now)
            self.schedule_flush()  # what was in that datagram goes again, in smaller ones
        else:
            self.endpoint.counters["drop_send_error"] += 1
            log.debug("sendto %s: %s", address, exc)

    def _arm_writer(self) -> None:
        if not self._writer_armed and not self._closed:
            self._writer_armed = True
            self._loop.add_writer(self.sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        now = self._loop.time()
        pending = self._pending
        while pending:
            data, address = pending[0]
            try:
                self.sock.sendto(data, self._sockaddr(address))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._send_failed(exc, data, address, now)
            else:
                self.datagrams_sent += 1
                self.bytes_sent += len(data)
            pending.popleft()
        self._writer_armed = False
        self._loop.remove_writer(self.sock.fileno())
        self.pump()
