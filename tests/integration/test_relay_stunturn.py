"""StunTurnService over real sockets on loopback: Binding, RFC 5780 CHANGE-REQUEST, TURN over UDP and TCP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from coremesh_relay.stunturn import StunTurnService
from coremesh_relay.stunturn_config import StunTurnConfig

from coremesh.addr import Address, parse_address
from coremesh.errors import ConfigError
from coremesh.stun.attributes import Attr
from coremesh.stun.channeldata import frame_length
from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode
from coremesh.turn import Allocated, PermissionFailed, TurnClient

from .aio import eventually

pytestmark = pytest.mark.integration
T = TypeVar("T")
USERS = {"alice": "secret"}


def run(fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(bounded())


def config(**kw: object) -> StunTurnConfig:
    base: dict[str, object] = {
        "listen": Address("127.0.0.1", 0),
        "realm": "test",
        "users": USERS,
        "allow_loopback_peers": True,
        "min_port": 40000 + (os.getpid() % 200) * 100,
    }
    base["max_port"] = int(base["min_port"]) + 99  # type: ignore[call-overload]
    base.update(kw)
    return StunTurnConfig(**base)  # type: ignore[arg-type]


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


async def recv(sock: socket.socket, timeout: float = 3.0) -> tuple[bytes, Address]:
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), timeout)
    return data, Address(addr[0], addr[1])


def binding_request(change_ip: bool = False, change_port: bool = False) -> StunMessage:
    msg = StunMessage(Method.BINDING, StunClass.REQUEST, random.randbytes(12))
    if change_ip or change_port:
        msg.add_change_request(change_ip, change_port)
    return msg


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="min_port"):
        config(min_port=5000, max_port=4000)
    with pytest.raises(ConfigError, match="alt_address"):
        config(alt_address="not-an-ip")
    with pytest.raises(ConfigError, match="no_tcp"):
        config(no_tcp=True, no_udp=True)
    with pytest.raises(ConfigError, match="denied_peer_ips"):
        config(denied_peer_ips=("10.0.0.0/99",))
    with pytest.raises(ConfigError, match="max_bps"):
        config(max_bps=-1)
    assert config(listen="127.0.0.1:0").listen == Address("127.0.0.1", 0)  # type: ignore[arg-type]


def test_binding_over_udp_returns_the_source_address() -> None:
    async def body() -> None:
        service = StunTurnService(config())
        sock = udp_socket()
        try:
            await service.start()
            server = service.addresses[0]
            msg = binding_request()
            sock.sendto(encode(msg), server)
            data, src = await recv(sock)
            answer = decode(data)
            assert src == server
            assert answer.msg_class is StunClass.SUCCESS and answer.transaction_id == msg.transaction_id
            assert answer.get_address(Attr.XOR_MAPPED_ADDRESS) == Address(*sock.getsockname())
            assert service.stats()["binding_success"] == 1
        finally:
            sock.close()
            await service.stop()

    run(body)


def _loopback_alias_works(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


def test_change_request_answers_from_the_other_ip_and_port() -> None:
    # All of 127.0.0.0/8 is loopback on Linux; if 127.0.0.2 is missing, fail rather than skip.
    assert _loopback_alias_works("127.0.0.2"), "127.0.0.2 must be usable (it is loopback on Linux)"

    async def body() -> None:
        service = StunTurnService(config(alt_address="127.0.0.2"))
        sock = udp_socket()
        try:
            await service.start()
            primary = service.addresses[0]
            udp = [a for a in service.addresses if a.port in (primary.port, primary.port + 1)]
            assert len(set(udp)) == 4
            for change_ip, change_port, expected in (
                (False, False, primary),
                (True, False, Address("127.0.0.2", primary.port)),
                (False, True, Address("127.0.0.1", primary.port + 1)),
                (True, True, Address("127.0.0.2", primary.port + 1)),
            ):
                msg = binding_request(change_ip, change_port)
                sock.sendto(encode(msg), primary)
                data, src = await recv(sock)
                answer = decode(data)
                assert src == expected, (change_ip, change_port)
                assert answer.get_address(Attr.RESPONSE_ORIGIN) == expected
                assert answer.get_address(Attr.OTHER_ADDRESS) == Address("127.0.0.2", primary.port + 1)
        finally:
            sock.close()
            await service.stop()

    run(body)


async def drive_udp(
    client: TurnClient, sock: socket.socket, server: Address, until: Callable[[], bool]
) -> None:
    """A tiny shell for the client core: send its datagrams, feed it replies, run its timer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not until():
        for data in client.datagrams_to_send():
            sock.sendto(data, server)
        try:
            data, _ = await recv(sock, timeout=0.05)
            got = client.on_datagram(data, loop.time())
            if got is not None:
                client_inbox.append(got)
        except TimeoutError:
            pass
        timer = client.get_timer()
        if timer is not None and timer <= loop.time():
            client.handle_timer(loop.time())
        assert loop.time() < deadline, "TURN client did not finish in time"


client_inbox: list[tuple[Address, bytes]] = []


def events_reached(client: TurnClient, events: list[object], n: int) -> Callable[[], bool]:
    """A condition for :func:`drive_udp`: drains the client's events into ``events``; true at ``n``."""

    def check() -> bool:
        while (ev := client.next_event()) is not None:
            events.append(ev)
        return len(events) >= n

    return check


def test_turn_over_udp_relays_both_ways_with_send_and_channels() -> None:
    async def body() -> None:
        service = StunTurnService(config())
        sock = udp_socket()
        peer = udp_socket()
        client_inbox.clear()
        try:
            await service.start()
            server = service.addresses[0]
            loop = asyncio.get_running_loop()
            client = TurnClient(server, "alice", "secret", random_bytes=random.randbytes)
            client.allocate(loop.time())
            events: list[object] = []

            def allocated() -> bool:
                while (ev := client.next_event()) is not None:
                    events.append(ev)
                return bool(events)

            await drive_udp(client, sock, server, allocated)
            ev = events[0]
            assert isinstance(ev, Allocated), ev
            relay = ev.relayed_address
            assert relay.host == "127.0.0.1" and config().min_port <= relay.port <= config().max_port
            assert ev.mapped_address == Address(*sock.getsockname())
            peer_addr = Address(*peer.getsockname())

            client.create_permission(peer_addr, loop.time())
            await drive_udp(client, sock, server, lambda: not client._txns)
            sock.sendto(client.wrap(b"hello peer", peer_addr), server)
            data, src = await recv(peer)
            assert data == b"hello peer" and src == relay
            peer.sendto(b"hello client", relay)
            await drive_udp(client, sock, server, lambda: bool(client_inbox))
            assert client_inbox.pop() == (peer_addr, b"hello client")

            client.bind_channel(peer_addr, loop.time())
            await drive_udp(client, sock, server, lambda: client.channel_for(peer_addr) is not None)
            framed = client.wrap(b"over channel", peer_addr)
            assert 0x40 <= framed[0] <= 0x4F
            sock.sendto(framed, server)
            data, src = await recv(peer)
            assert data == b"over channel" and src == relay
            peer.sendto(b"channel back", relay)
            await drive_udp(client, sock, server, lambda: bool(client_inbox))
            assert client_inbox.pop() == (peer_addr, b"channel back")

            stats = service.stats()
            assert stats["allocations_current"] == 1 and stats["relay_sockets"] == 1
            assert stats["packets_to_peer"] == 2 and stats["packets_to_client"] == 2
            client.close(loop.time())
            await drive_udp(client, sock, server, lambda: client.state.value == "closed")
            assert service.stats()["allocations_current"] == 0 and service.stats()["relay_sockets"] == 0
        finally:
            sock.close()
            peer.close()
            await service.stop()

    run(body)


def test_external_ip_is_advertised_and_is_one_of_the_relays_own_addresses() -> None:
    """--external-ip 192.0.2.50/127.0.0.1: Allocate reports the public IP with the bound port, and
    the public IP is refused as a peer (the loop check); nothing is ever sent to 192.0.2.50."""

    async def body() -> None:
        service = StunTurnService(config(external_ip="192.0.2.50/127.0.0.1", allow_loopback_peers=False))
        sock = udp_socket()
        try:
            await service.start()
            server = service.addresses[0]
            loop = asyncio.get_running_loop()
            client = TurnClient(server, "alice", "secret", random_bytes=random.randbytes)
            client.allocate(loop.time())
            events: list[object] = []

            await drive_udp(client, sock, server, events_reached(client, events, 1))
            ev = events[0]
            assert isinstance(ev, Allocated), ev
            assert ev.relayed_address.host == "192.0.2.50"
            assert config().min_port <= ev.relayed_address.port <= config().max_port
            client.create_permission(Address("192.0.2.50", 9), loop.time())
            await drive_udp(client, sock, server, events_reached(client, events, 2))
            refused = events[1]
            assert isinstance(refused, PermissionFailed) and refused.code == 403, refused
            assert service.stats().get("packets_to_peer", 0) == 0
            # Refused as the relay's own address, not merely as a documentation range.
            assert service.turn is not None
            assert service.turn.config.policy.reason("192.0.2.50") == "the relay's own address"
        finally:
            sock.close()
            await service.stop()

    run(body)


class SteppableLoop(asyncio.SelectorEventLoop):
    """An event loop whose monotonic clock the test moves forward by hand (``skew`` seconds)."""

    skew = 0.0

    def time(self) -> float:
        return super().time() + self.skew


def test_allocations_live_on_the_monotonic_clock_not_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step of the system clock (``time.time``) must neither expire an allocation nor keep its
    permission alive; lifetimes run on the event loop's monotonic clock."""
    wall_step = [0.0]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + wall_step[0])

    async def body() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SteppableLoop)
        service = StunTurnService(config())
        sock, peer = udp_socket(), udp_socket()
        client_inbox.clear()
        try:
            await service.start()
            server = service.addresses[0]
            client = TurnClient(server, "alice", "secret", random_bytes=random.randbytes, lifetime=600)
            client.allocate(loop.time())
            events: list[object] = []

            await drive_udp(client, sock, server, events_reached(client, events, 1))
            assert isinstance(events[0], Allocated), events
            relay = events[0].relayed_address
            peer_addr = Address(*peer.getsockname())
            client.create_permission(peer_addr, loop.time())
            await drive_udp(client, sock, server, lambda: not client._txns)

            # The wall clock steps a day forward: the allocation and its permission live on, and a
            # request still succeeds (its nonce, dated by the wall clock, is stale: 438, then a retry).
            wall_step[0] = 86_400.0
            peer.sendto(b"after a step forward", relay)
            await drive_udp(client, sock, server, lambda: bool(client_inbox))
            assert client_inbox.pop() == (peer_addr, b"after a step forward")
            client.create_permission(Address("127.0.0.2", peer_addr.port), loop.time())
            await drive_udp(client, sock, server, lambda: not client._txns)
            assert not events_reached(client, events, 2)(), events  # no PermissionFailed, no AllocationLost
            assert service.stats()["stale_nonces"] >= 1 and service.stats()["allocations_current"] == 1

            # The wall clock steps two days back, the monotonic one moves 301 s: the permission
            # (300 s) has ended although the wall clock says it was made a day in the future.
            wall_step[0] = -86_400.0
            loop.skew += 301.0
            peer.sendto(b"after the permission ended", relay)
            await eventually(lambda: service.stats().get("drop_no_permission", 0) == 1, what="the drop")
            assert service.stats()["allocations_current"] == 1 and not client_inbox

            # 300 s more on the monotonic clock: the allocation's 600 s are over. The relay's own
            # timer expires it (nobody sends anything) and closes its relayed socket.
            loop.skew += 300.0
            await eventually(lambda: service.stats().get("allocations_expired", 0) == 1, what="the expiry")
            assert service.stats()["allocations_current"] == 0 and service.stats()["relay_sockets"] == 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(relay)  # the relayed port is free again
        finally:
            sock.close()
            peer.close()
            await service.stop()

    with asyncio.Runner(loop_factory=SteppableLoop) as runner:
        runner.run(body())


def test_turn_over_tcp_relays_both_ways() -> None:
    async def body() -> None:
        service = StunTurnService(config())
        peer = udp_socket()
        writer: asyncio.StreamWriter | None = None
        try:
            await service.start()
            tcp_addr = service.addresses[-1]
            reader, writer = await asyncio.open_connection(tcp_addr.host, tcp_addr.port)
            loop = asyncio.get_running_loop()
            client = TurnClient(tcp_addr, "alice", "secret", random_bytes=random.randbytes, transport="tcp")
            inbox: list[tuple[Address, bytes]] = []
            buf = bytearray()

            async def pump(until: Callable[[], bool]) -> None:
                assert writer is not None
                deadline = loop.time() + 10
                while not until():
                    for data in client.datagrams_to_send():
                        writer.write(data)
                    await writer.drain()
                    try:
                        chunk = await asyncio.wait_for(reader.read(65536), 0.05)
                        buf.extend(chunk)
                    except TimeoutError:
                        pass
                    while (n := frame_length(buf)) is not None and len(buf) >= n:
                        frame = bytes(buf[:n])
                        del buf[:n]
                        got = client.on_datagram(frame, loop.time())
                        if got is not None:
                            inbox.append(got)
                    assert loop.time() < deadline

            client.allocate(loop.time())
            events: list[object] = []

            def allocated() -> bool:
                while (ev := client.next_event()) is not None:
                    events.append(ev)
                return bool(events)

            await pump(allocated)
            ev = events[0]
            assert isinstance(ev, Allocated), ev
            peer_addr = Address(*peer.getsockname())
            client.bind_channel(peer_addr, loop.time())
            await pump(lambda: client.channel_for(peer_addr) is not None)
            for payload in (b"x", b"odd-length payload!"):
                writer.write(client.wrap(payload, peer_addr))
                data, src = await recv(peer)
                assert data == payload and src == ev.relayed_address
                peer.sendto(payload[::-1], ev.relayed_address)
                await pump(lambda: bool(inbox))
                assert inbox.pop() == (peer_addr, payload[::-1])
            # Closing the connection ends the allocation.
            writer.close()
            writer = None
            await wait_for_stat(service, "allocations_current", 0)
            assert service.stats()["relay_sockets"] == 0
        finally:
            if writer is not None:
                writer.close()
            peer.close()
            await service.stop()

    run(body)


def test_loopback_peer_refused_without_allow_loopback_peers() -> None:
    async def body() -> None:
        service = StunTurnService(config(allow_loopback_peers=False))
        sock = udp_socket()
        try:
            await service.start()
            server = service.addresses[0]
            loop = asyncio.get_running_loop()
            client = TurnClient(server, "alice", "secret", random_bytes=random.randbytes)
            client.allocate(loop.time())
            events: list[object] = []

            await drive_udp(client, sock, server, events_reached(client, events, 1))
            client.create_permission("127.0.0.1", loop.time())
            await drive_udp(client, sock, server, events_reached(client, events, 2))
            assert getattr(events[1], "code", None) == 403
        finally:
            sock.close()
            await service.stop()

    run(body)


async def drive_tcp(
    client: TurnClient,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    until: Callable[[], bool],
    inbox: list[tuple[Address, bytes]] | None = None,
) -> None:
    """:func:`drive_udp` over one TCP connection (STUN and ChannelData framed on the stream)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    buf = bytearray()
    while not until():
        for data in client.datagrams_to_send():
            writer.write(data)
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            buf.extend(await asyncio.wait_for(reader.read(65536), 0.05))
        while (n := frame_length(buf)) is not None and len(buf) >= n:
            got = client.on_datagram(bytes(buf[:n]), loop.time())
            del buf[:n]
            if got is not None and inbox is not None:
                inbox.append(got)
        assert loop.time() < deadline, "TURN client did not finish in time"


def open_fds() -> dict[str, str]:
    """This process's open file descriptors and what they are (``socket:[inode]``, ...)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return out


def test_stop_releases_every_socket() -> None:
    """After stop(): every descriptor the service opened is closed (listeners on both RFC 5780 IPs
    and ports, the TCP listener and its connections, the relayed sockets of UDP and TCP
    allocations), and every one of those ports can be bound again."""
    assert _loopback_alias_works("127.0.0.2"), "127.0.0.2 must be usable (it is loopback on Linux)"

    async def body() -> tuple[list[Address], Address, list[Address]]:
        sock = udp_socket()
        baseline = open_fds()
        service = StunTurnService(config(alt_address="127.0.0.2"))
        writer: asyncio.StreamWriter | None = None
        try:
            await service.start()
            listeners = service.listening()
            udp = [parse_address(text.split()[1]) for text in listeners if text.startswith("udp ")]
            (tcp,) = [parse_address(text.split()[1]) for text in listeners if text.startswith("tcp ")]
            assert len(udp) == 4, listeners
            relayed = []
            for transport in ("udp", "tcp"):
                server = udp[0] if transport == "udp" else tcp
                client = TurnClient(
                    server, "alice", "secret", random_bytes=random.randbytes, transport=transport
                )
                client.allocate(asyncio.get_running_loop().time())
                if transport == "udp":
                    await drive_udp(client, sock, server, lambda c=client: c.relayed_address is not None)
                else:
                    reader, writer = await asyncio.open_connection(tcp.host, tcp.port)
                    await drive_tcp(client, reader, writer, lambda c=client: c.relayed_address is not None)
                assert client.relayed_address is not None
                relayed.append(client.relayed_address)
            opened = len(open_fds()) - len(baseline)
            assert opened >= len(udp) + 1 + 1 + len(relayed), opened  # the measure sees them
            assert service.stats()["relay_sockets"] == 2 and service.stats()["tcp_connections"] == 1
        finally:
            await service.stop()
            if writer is not None:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        left = {fd: what for fd, what in open_fds().items() if baseline.get(fd) != what}
        assert left == {}, f"descriptors still open after stop(): {left}"
        sock.close()
        return udp, tcp, relayed

    udp, tcp, relayed = run(body)
    for addr in [*udp, *relayed]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(addr)  # free again
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, but not a listener
        s.bind(tcp)
        s.listen()


# ------------------------------------------------------------------------ TCP connection limits


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the server ends the connection (EOF or reset) within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
            if not chunk:
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return False


async def wait_for_stat(service: StunTurnService, name: str, value: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while service.stats().get(name, 0) != value:
        assert loop.time() < deadline, (name, service.stats().get(name, 0), value)
        await asyncio.sleep(0.02)


FAST = {"tcp_request_timeout": 0.4, "tcp_idle_timeout": 0.8, "tcp_partial_timeout": 0.4}


def test_tcp_limits_are_validated() -> None:
    assert config().max_tcp_connections == 4096 and config().max_tcp_connections_per_ip == 64
    for fld, bad in (
        ("max_tcp_connections", 0),
        ("max_tcp_connections_per_ip", -1),
        ("tcp_request_timeout", 0),
        ("tcp_idle_timeout", -5.0),
        ("tcp_partial_timeout", "5"),
    ):
        with pytest.raises(ConfigError, match=fld):
            config(**{fld: bad})


def test_tcp_silent_half_frame_and_idle_connections_are_closed() -> None:
    async def body() -> None:
        service = StunTurnService(config(**FAST))
        writers: list[asyncio.StreamWriter] = []
        try:
            await service.start()
            tcp = service.addresses[-1]

            async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                reader, writer = await asyncio.open_connection(tcp.host, tcp.port)
                writers.append(writer)
                return reader, writer

            # Sends nothing at all: closed once the first request is overdue.
            silent, _ = await connect()
            # HTTP on the TURN port: "GE" reads as a ChannelData header whose length never arrives.
            http, w = await connect()
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            # Slowloris: a STUN header announcing 100 bytes, then one byte every 0.1 s. It keeps
            # sending, but the frame never completes within tcp_partial_timeout.
            drip, w_drip = await connect()
            header = encode(binding_request())[:20]
            w_drip.write(header[:2] + (100).to_bytes(2, "big") + header[4:])

            async def dribble() -> None:
                for _ in range(30):
                    await asyncio.sleep(0.1)
                    if w_drip.is_closing():
                        return
                    with contextlib.suppress(ConnectionError):
                        w_drip.write(b"\0")

            dribbler = asyncio.create_task(dribble())
            # A Binding request, answered, then nothing: closed after tcp_idle_timeout (it has no
            # allocation), not at tcp_request_timeout.
            idle, w_idle = await connect()
            msg = binding_request()
            w_idle.write(encode(msg))
            buf = bytearray(await asyncio.wait_for(idle.read(65536), 3))
            assert decode(bytes(buf)).transaction_id == msg.transaction_id

            assert await closed_by_server(silent, 2.0)
            assert await closed_by_server(http, 2.0)
            assert await closed_by_server(drip, 2.0)
            await dribbler
            # Closed as idle, not for a missing request (the counters below tell the reasons apart).
            assert await closed_by_server(idle, 5.0)
            await wait_for_stat(service, "tcp_connections", 0)
            stats = service.stats()
            assert stats["tcp_closed_request_timeout"] == 1
            assert stats["tcp_closed_partial_frame"] == 2
            assert stats["tcp_closed_idle"] == 1
        finally:
            for w in writers:
                w.close()
            await service.stop()

    run(body)


def test_tcp_connections_are_capped_per_ip_and_in_total() -> None:
    assert _loopback_alias_works("127.0.0.3"), "127.0.0.2-3 must be usable (loopback on Linux)"

    async def body() -> None:
        service = StunTurnService(config(max_tcp_connections=3, max_tcp_connections_per_ip=2))
        writers: list[asyncio.StreamWriter] = []
        try:
            await service.start()
            tcp = service.addresses[-1]

            async def connect(src: str) -> asyncio.StreamReader:
                reader, writer = await asyncio.open_connection(tcp.host, tcp.port, local_addr=(src, 0))
                writers.append(writer)
                return reader

            first = [await connect("127.0.0.1"), await connect("127.0.0.1")]
            await wait_for_stat(service, "tcp_connections", 2)
            assert await closed_by_server(await connect("127.0.0.1"), 2.0)  # third from one IP
            assert not await closed_by_server(await connect("127.0.0.2"), 0.2)  # another IP: fine
            await wait_for_stat(service, "tcp_connections", 3)
            assert await closed_by_server(await connect("127.0.0.3"), 2.0)  # over the total
            stats = service.stats()
            assert stats["tcp_closed_per_ip_limit"] == 1 and stats["tcp_closed_total_limit"] == 1
            for reader in first:
                assert not await closed_by_server(reader, 0.01)
        finally:
            for w in writers:
                w.close()
            await service.stop()

    run(body)


def test_tcp_connection_with_an_allocation_outlives_the_idle_timeout() -> None:
    async def body() -> None:
        service = StunTurnService(config(**FAST))
        writer: asyncio.StreamWriter | None = None
        try:
            await service.start()
            tcp = service.addresses[-1]
            reader, writer = await asyncio.open_connection(tcp.host, tcp.port)
            loop = asyncio.get_running_loop()
            client = TurnClient(tcp, "alice", "secret", random_bytes=random.randbytes, transport="tcp")
            client.allocate(loop.time())
            events: list[object] = []
            buf = bytearray()
            deadline = loop.time() + 5
            while not events:
                for data in client.datagrams_to_send():
                    writer.write(data)
                with contextlib.suppress(TimeoutError):
                    buf += await asyncio.wait_for(reader.read(65536), 0.05)
                while (n := frame_length(buf)) is not None and len(buf) >= n:
                    client.on_datagram(bytes(buf[:n]), loop.time())
                    del buf[:n]
                while (ev := client.next_event()) is not None:
                    events.append(ev)
                assert loop.time() < deadline
            assert isinstance(events[0], Allocated)
            # Three idle timeouts without a byte: the allocation keeps the connection.
            assert not await closed_by_server(reader, 3 * FAST["tcp_idle_timeout"])
            assert service.stats()["allocations_current"] == 1 and service.stats()["tcp_connections"] == 1
            assert not any(k.startswith("tcp_closed_") for k in service.stats())
        finally:
            if writer is not None:
                writer.close()
            await service.stop()

    run(body)


# ------------------------------------------------------------- wildcard listen and loop protection

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
     |-- 198.51.100.7
        /32 link UNICAST
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
           |-- 192.0.2.2
              /32 host LOCAL
"""

IF_INET6 = """\
fd000000000000000000000000000002 04 40 00 82     eth0
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
garbage
"""


def test_local_ips_from_proc_reads_fib_trie_and_if_inet6() -> None:
    from coremesh_relay.own_addresses import own_ips

    from coremesh.netcheck.hostaddrs import local_ips_from_proc

    ips = local_ips_from_proc(FIB_TRIE, IF_INET6)
    assert ips == ["127.0.0.1", "192.0.2.2", "198.51.100.7", "fd00::2", "::1", "fe80::fc:ff:fe00:1"]
    assert local_ips_from_proc("", "") == []
    assert own_ips("0.0.0.0", ips) == ["127.0.0.1", "192.0.2.2", "198.51.100.7"]
    assert own_ips("::", ips) == ips
    assert own_ips("10.1.2.3", ips) == ["10.1.2.3"]


def test_wildcard_listen_blocks_relaying_to_the_relays_own_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listening on 0.0.0.0, a client allowed loopback peers must not make the relay send to its own
    listener via 127.0.0.1, another loopback address, or another host address."""
    import coremesh_relay.own_addresses as own

    # Keep every relayed address on loopback, whatever this host's routes are.
    monkeypatch.setattr(own, "relay_ip", lambda host, version: "127.0.0.1" if version == 4 else None)
    monkeypatch.setattr(own, "all_local_ips", local_ips_from_proc_sample)

    async def body() -> None:
        service = StunTurnService(config(listen=Address("0.0.0.0", 0)))
        sock = udp_socket()
        client_inbox.clear()
        try:
            await service.start()
            assert service.turn is not None
            port = service.addresses[0].port
            server = Address("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            client = TurnClient(server, "alice", "secret", random_bytes=random.randbytes)
            client.allocate(loop.time())
            events: list[object] = []

            def allocated() -> bool:
                while (ev := client.next_event()) is not None:
                    events.append(ev)
                return bool(events)

            await drive_udp(client, sock, server, allocated)
            assert isinstance(events[0], Allocated), events
            targets = [Address("127.0.0.1", port), Address("127.0.0.2", port)]
            for target in targets:
                client.create_permission(target, loop.time())
                await drive_udp(client, sock, server, lambda: not client._txns)
            received = service.stats()["udp_datagrams_received"]
            for target in targets:
                sock.sendto(client.wrap(b"loop?", target), server)

            def handled() -> int:  # datagrams the core dealt with: relayed or dropped as a loop
                stats = service.stats()
                return stats.get("packets_to_peer", 0) + stats.get("drop_loop", 0)

            await eventually(lambda: handled() >= len(targets), what="both Send indications handled")
            stats = service.stats()
            assert stats.get("packets_to_peer", 0) == 0 and stats.get("drop_loop", 0) == len(targets)
            assert stats["udp_datagrams_received"] == received + len(targets)  # nothing came back round

            table = service.turn.server_addresses
            for addr in (
                Address("127.0.0.1", port),
                Address("192.0.2.2", port),
                Address("198.51.100.7", port),
                Address("127.0.0.9", port),
            ):
                assert addr in table, addr
            assert Address("127.0.0.1", port + 1) not in table
            assert {"192.0.2.2", "198.51.100.7"} <= service.turn.config.policy.own_ips
            # The relay's other listeners (e.g. the keyed relay's), wildcard or not.
            service.add_server_addresses([Address("0.0.0.0", 4433), Address("127.0.0.1", 4434)])
            for addr in (Address("192.0.2.2", 4433), Address("127.0.0.5", 4433), Address("127.0.0.1", 4434)):
                assert addr in table, addr
        finally:
            sock.close()
            await service.stop()

    run(body)


def local_ips_from_proc_sample() -> list[str]:
    from coremesh.netcheck.hostaddrs import local_ips_from_proc

    return local_ips_from_proc(FIB_TRIE, IF_INET6)


# --------------------------------------------------------------------------------- clean stop


def test_stop_with_open_tcp_connections_logs_no_exception(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        problems: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: problems.append(context))
        service = StunTurnService(config())
        writers: list[asyncio.StreamWriter] = []
        try:
            await service.start()
            tcp = service.addresses[-1]
            request = binding_request()
            for data in (b"", b"GET / HTTP/1.1\r\n", encode(request)):
                reader, writer = await asyncio.open_connection(tcp.host, tcp.port)
                writers.append(writer)
                writer.write(data)
            await wait_for_stat(service, "tcp_connections", 3)
            # A connection is counted once its handler runs, which then waits in a read (what stop()
            # must end cleanly); the Binding answer shows the handlers are serving.
            answer = await asyncio.wait_for(reader.read(65536), 5.0)
            assert decode(answer).transaction_id == request.transaction_id
        finally:
            await service.stop()
        for _ in range(10):  # let done-callbacks run
            await asyncio.sleep(0)
        assert service.stats()["tcp_connections"] == 0
        assert problems == []
        for writer in writers:
            writer.close()

    with caplog.at_level("DEBUG", logger="asyncio"):
        run(body)
    bad = [r for r in caplog.records if r.levelno >= 40 or "CancelledError" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


def test_port_zero_retries_when_tcp_cannot_take_the_udp_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import coremesh_relay.stunturn as shell_module

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]  # TCP port in use by someone else
        real_bind = shell_module.bind_udp
        calls = []

        def first_pick_collides(address: Address, **kwargs: object) -> socket.socket:
            calls.append(address)
            if len(calls) == 1:
                return real_bind(Address("127.0.0.1", taken))  # UDP gets the port TCP cannot have
            return real_bind(address, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(shell_module, "bind_udp", first_pick_collides)

        async def body() -> None:
            service = shell_module.StunTurnService(config())
            await service.start()
            try:
                ports = {a.port for a in service.addresses}
                assert len(ports) == 1 and taken not in ports  # UDP and TCP on one fresh port
            finally:
                await service.stop()

        asyncio.run(asyncio.wait_for(body(), 20))
    assert len(calls) >= 2
