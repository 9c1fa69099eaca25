"""The relay's UDP sockets, read and written in bursts (Linux GRO and GSO).

A relay forwards every datagram of every allocation, so its cost per datagram decides its
throughput. Reading bursts with UDP GRO (one ``recvmsg`` for a run of equal-size datagrams from one
source) and sending them with UDP GSO (one ``sendmsg`` for a run to one destination) leaves Python
work, not system calls, as that cost (see docs/benchmarks.md). :class:`UdpSocket` is one socket
read by ``loop.add_reader``; :class:`UdpSender` sends at once, or, while the service handles a burst,
queues and sends it in runs. Sends never block: a full socket buffer drops and counts.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
from collections import Counter
from collections.abc import Callable
from typing import Final

from coremesh.addr import Address, normalize_socket_address

RECV_SIZE: Final = 65536
RECV_BATCH: Final = 256
UDP_BUFFER: Final = 4 * 1024 * 1024
# Linux UDP segmentation offload (see coremesh/aio/runtime.py): GRO to read bursts, GSO to send them.
_UDP_GRO: Final = getattr(socket, "UDP_GRO", 104)
_UDP_SEGMENT: Final = getattr(socket, "UDP_SEGMENT", 103)
_GRO_CMSG_SPACE: Final = socket.CMSG_SPACE(4)
_GSO_MAX_SEGMENTS: Final = 64
_GSO_MAX_BYTES: Final = 65000

DatagramHandler = Callable[["UdpSocket", bytes, Address], None]


class UdpSocket:
    """One non-blocking UDP socket read by ``loop.add_reader``.

    On Linux it asks for UDP GRO, so that a burst of equal-size datagrams from one source arrives
    in one ``recvmsg``; the relay's cost per datagram is then Python work, not system calls.
    """

    def __init__(self, sock: socket.socket, on_datagram: DatagramHandler) -> None:
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


def bind_udp(address: Address) -> socket.socket:
    """A non-blocking UDP socket bound to ``address`` with large buffers (``::`` is dual-stack)."""
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


class UdpSender:
    """Sends datagrams from the relay's sockets, counting into ``counters``
    (``udp_datagrams_sent``, ``send_dropped_full``, ``send_errors``).

    Between :meth:`begin_batch` and :meth:`end_batch` datagrams are queued; the end sends runs of
    equal-size datagrams from one socket to one destination in one ``sendmsg`` (UDP GSO; the last of
    a run may be shorter), anything else one by one. Where the kernel has no GSO, the first failed
    run turns it off for good.
    """

    def __init__(self, counters: Counter[str]) -> None:
        self._counters = counters
        self.batching = False
        self.gso = sys.platform == "linux"
        self._out: list[tuple[socket.socket, Address, bytes]] = []

    def begin_batch(self) -> None:
        self.batching = True

    def end_batch(self) -> None:
        self.batching = False
        if self._out:
            self._flush()

    def send(self, sock: socket.socket, data: bytes, dst: Address) -> None:
        if self.batching:
            self._out.append((sock, dst, data))
            return
        try:
            sock.sendto(data, dst)
            self._counters["udp_datagrams_sent"] += 1
        except (BlockingIOError, InterruptedError):
            self._counters["send_dropped_full"] += 1
        except OSError:
            self._counters["send_errors"] += 1

    def _flush(self) -> None:
        out, self._out = self._out, []
        counters = self._counters
        n = len(out)
        i = 0
        while i < n:
            sock, dst, data = out[i]
            size = len(data)
            limit = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // max(size, 1)) if self.gso else 1
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
                counters["udp_datagrams_sent"] += j - i
            except (BlockingIOError, InterruptedError):
                counters["send_dropped_full"] += j - i
            except OSError as exc:
                if j - i > 1 and exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self.gso = False  # no segmentation offload here: one by one from now on
                    self._out = out[i:] + self._out
                    self._flush()
                    return
                counters["send_errors"] += j - i
            i = j
