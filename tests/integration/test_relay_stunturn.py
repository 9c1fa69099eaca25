"""StunTurnService over real sockets on loopback: Binding, RFC 5780 CHANGE-REQUEST, TURN over UDP and TCP."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from coremesh_relay.stunturn import StunTurnConfig, StunTurnService

from coremesh.addr import Address
from coremesh.errors import ConfigError
from coremesh.stun.attributes import Attr
from coremesh.stun.channeldata import frame_length
from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode
from coremesh.turn import Allocated, TurnClient

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
            for _ in range(100):
                if service.stats()["allocations_current"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert service.stats()["allocations_current"] == 0 and service.stats()["relay_sockets"] == 0
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

            def has_events(n: int) -> Callable[[], bool]:
                def check() -> bool:
                    while (ev := client.next_event()) is not None:
                        events.append(ev)
                    return len(events) >= n

                return check

            await drive_udp(client, sock, server, has_events(1))
            client.create_permission("127.0.0.1", loop.time())
            await drive_udp(client, sock, server, has_events(2))
            assert getattr(events[1], "code", None) == 403
        finally:
            sock.close()
            await service.stop()

    run(body)


def test_stop_releases_every_socket() -> None:
    async def body() -> int:
        service = StunTurnService(config())
        await service.start()
        port = service.addresses[0].port
        await service.stop()
        return port

    port = run(body)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # free again: stop() closed the listener
