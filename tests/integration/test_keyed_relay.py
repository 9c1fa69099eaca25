"""The keyed mesh relay over real sockets on loopback: raw TCP, WebSocket, TLS, limits, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from coremesh_relay.keyed import KeyedRelayConfig, KeyedRelayServer

from coremesh.aio.keyedrelay import KeyedRelayClient
from coremesh.errors import ConnectionFailed
from coremesh.identity import Identity, PeerId
from coremesh.keyedrelay.client import RelayNotRegistered
from coremesh.keyedrelay.frames import (
    Challenge,
    Close,
    CloseCode,
    Error,
    Ping,
    Recv,
    Register,
    Registered,
    Send,
    decode_frame,
    encode_frame,
    make_register,
)
from coremesh.keyedrelay.framing import MAGIC, FrameReader, tcp_frame

from ..certs import self_signed
from .aio import eventually

pytestmark = pytest.mark.integration
T = TypeVar("T")
FAST = {"rate_bytes_per_s": 1e9, "rate_packets_per_s": 1e6}


def run(coro_fn: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run a test body; any exception the event loop saw (a traceback in a callback) fails it."""
    errors: list[dict[str, Any]] = []

    async def bounded() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        return await asyncio.wait_for(coro_fn(), timeout)

    result = asyncio.run(bounded())
    assert not errors, errors
    return result


class Inbox:
    def __init__(self) -> None:
        self.packets: list[tuple[PeerId, bytes]] = []
        self.states: list[str] = []

    def on_packet(self, src: PeerId, packet: bytes) -> None:
        self.packets.append((src, packet))

    def on_state(self, state: str) -> None:
        self.states.append(state)


def make_client(
    url: str, inbox: Inbox, identity: Identity | None = None, **kw: Any
) -> tuple[KeyedRelayClient, Identity]:
    identity = identity if identity is not None else Identity.generate()
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.2)
    client = KeyedRelayClient(identity, url, on_packet=inbox.on_packet, on_state=inbox.on_state, **kw)
    return client, identity


@asynccontextmanager
async def relay(**kw: Any) -> AsyncIterator[KeyedRelayServer]:
    server = KeyedRelayServer(KeyedRelayConfig(**kw))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class RawClient:
    """A hand-driven raw TCP client, for what a well-behaved client never does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameReader()
        self.pending: list[bytes] = []

    @classmethod
    async def connect(
        cls, server: KeyedRelayServer, preamble: bytes = MAGIC, *, local: str | None = None, rcvbuf: int = 0
    ) -> RawClient:
        """``local``: the source address (any of 127.0.0.0/8); ``rcvbuf``: a small receive buffer."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if local is not None:
            sock.bind((local, 0))
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (server.address.host, server.address.port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(preamble)
        return cls(reader, writer)

    @property
    def at_eof(self) -> bool:
        return self.reader.at_eof()

    async def next_frame(self, timeout: float = 5.0) -> object | None:
        """The next frame, or None at EOF."""
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self.pending += self.frames.feed(data)
        return decode_frame(self.pending.pop(0))

    def send(self, frame: object) -> None:
        self.writer.write(tcp_frame(encode_frame(frame)))  # type: ignore[arg-type]

    async def register(self, identity: Identity) -> None:
        challenge = await self.next_frame()
        assert isinstance(challenge, Challenge)
        self.send(make_register(identity, challenge.nonce))
        assert isinstance(await self.next_frame(), Registered)

    def close(self) -> None:
        self.writer.close()


async def exchange(
    a: KeyedRelayClient,
    a_inbox: Inbox,
    a_id: Identity,
    b: KeyedRelayClient,
    b_inbox: Inbox,
    b_id: Identity,
    count: int,
) -> None:
    """``count`` packets each way, of varied sizes; checks they arrive byte-exact and in order."""
    start_a, start_b = len(a_inbox.packets), len(b_inbox.packets)

    def packet(tag: bytes, i: int) -> bytes:
        return tag + i.to_bytes(4, "big") + bytes((i * 7 + j) & 0xFF for j in range((i * 37) % 1400))

    for i in range(count):
        a.send(b_id.peer_id, packet(b"A", i))
        b.send(a_id.peer_id, packet(b"B", i))
        if i % 50 == 49:
            await asyncio.sleep(0)

    def from_(inbox: Inbox, start: int, src: Identity) -> list[tuple[PeerId, bytes]]:
        return [p for p in inbox.packets[start:] if p[0] == src.peer_id]

    await eventually(
        lambda: len(from_(a_inbox, start_a, b_id)) >= count and len(from_(b_inbox, start_b, a_id)) >= count,
        what=f"{count} packets each way",
    )
    assert from_(b_inbox, start_b, a_id) == [(a_id.peer_id, packet(b"A", i)) for i in range(count)]
    assert from_(a_inbox, start_a, b_id) == [(b_id.peer_id, packet(b"B", i)) for i in range(count)]


def test_tcp_and_websocket_clients_exchange_1000_packets_each_way() -> None:
    async def body() -> None:
        async with relay(**FAST) as server:
            a_inbox, b_inbox = Inbox(), Inbox()
            a, a_id = make_client(server.url("tcp"), a_inbox)
            b, b_id = make_client(server.url("ws"), b_inbox)
            await a.start()
            await b.start()
            assert a.registered and b.registered and a.url.scheme == "tcp" and b.url.scheme == "ws"
            await exchange(a, a_inbox, a_id, b, b_inbox, b_id, 1000)
            stats = server.stats()
            assert stats["frames_forwarded"] == 2000 and stats["sessions_ws_total"] == 1
            assert stats["sessions_registered"] == 2 and stats["drop_queue_full"] == 0
            assert a.stats()["packets_received"] == 1000 and b.stats()["packets_sent"] == 1000
            assert a_inbox.states == ["connecting", "registering", "registered"]
            await a.stop()
            await b.stop()
            assert a_inbox.states[-1] == "stopped"
            await eventually(lambda: server.stats()["sessions_current"] == 0, what="sessions to end")

    run(body)


def test_forged_registration_is_refused_and_counted() -> None:
    async def body() -> None:
        async with relay(**FAST) as server:
            alice_inbox, bob_inbox = Inbox(), Inbox()
            alice, alice_id = make_client(server.url("tcp"), alice_inbox)
            bob, bob_id = make_client(server.url("ws"), bob_inbox)
            await alice.start()
            await bob.start()
            mallory = Identity.generate()
            raw = await RawClient.connect(server)
            challenge = await raw.next_frame()
            assert isinstance(challenge, Challenge)
            signature = make_register(mallory, challenge.nonce).signature
            raw.send(Register(peer_id=alice_id.peer_id, signature=signature))
            answer = await raw.next_frame()
            assert isinstance(answer, Error) and answer.code == CloseCode.AUTH_FAILED
            assert await raw.next_frame() is None  # closed
            raw.close()
            # a REGISTER sent before any challenge: refused too (it signs no nonce of ours)
            raw2 = await RawClient.connect(server)
            raw2.send(make_register(alice_id, bytes(32)))
            assert isinstance(await raw2.next_frame(), Challenge)
            answer = await raw2.next_frame()
            assert isinstance(answer, Error) and answer.code == CloseCode.AUTH_FAILED
            raw2.close()
            stats = server.stats()
            assert stats["auth_failures"] == 2 and stats["sessions_registered"] == 2
            bob.send(alice_id.peer_id, b"still yours")
            await eventually(lambda: alice_inbox.packets == [(bob_id.peer_id, b"still yours")])
            await alice.stop()
            await bob.stop()

    run(body)


def test_a_peer_over_its_rate_is_limited_and_the_others_are_not() -> None:
    async def body() -> None:
        async with relay(rate_packets_per_s=1000, rate_bytes_per_s=2_000_000, burst=1.0) as server:
            a_inbox, b_inbox, c_inbox = Inbox(), Inbox(), Inbox()
            a, a_id = make_client(server.url("tcp"), a_inbox)
            b, b_id = make_client(server.url("ws"), b_inbox)
            c, _ = make_client(server.url("tcp"), c_inbox)
            for client in (a, b, c):
                await client.start()
            blast = bytes(1000)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(20_000):  # 20 MB at once: 20 s of c's packet rate
                c.send(b_id.peer_id, blast)
                if i % 100 == 99:
                    await asyncio.sleep(0)
            await exchange(a, a_inbox, a_id, b, b_inbox, b_id, 300)  # a and b are not limited

            def from_c() -> int:
                return len(b_inbox.packets) - 300

            # Every packet c sent is accounted for: dropped by its own full queue, dropped by the
            # relay's rate limit, or delivered to b. Only then is the count of delivered ones final.
            await eventually(
                lambda: (
                    c.stats()["drop_queue_full"] + server.stats()["drop_rate_limited"] + from_c() >= 20_000
                ),
                timeout=60,
                what="every packet of c dropped or delivered",
            )
            elapsed = loop.time() - start
            stats = server.stats()
            # c got through at most its burst (1 s of rate) plus its rate for the time it took,
            # however slow this machine was; the rest was dropped by the limit.
            assert from_c() <= 1000 * (1.0 + elapsed) + 50, (from_c(), elapsed, stats)
            assert stats["drop_rate_limited"] > 0 and stats["drop_queue_full"] == 0, stats
            for client in (a, b, c):
                await client.stop()

    run(body)


def test_a_slow_reader_does_not_grow_the_relay_queue() -> None:
    async def body() -> None:
        limit = 256 * 1024
        async with relay(queue_limit=limit, **FAST) as server:
            slow_id = Identity.generate()
            slow = await RawClient.connect(server)
            await slow.register(slow_id)  # ... and never reads again
            a_inbox = Inbox()
            a, _ = make_client(server.url("tcp"), a_inbox, queue_limit=4 << 20)
            await a.start()
            packet = bytes(1200)
            for i in range(40_000):  # 48 MB, more than the kernel buffers hold
                a.send(slow_id.peer_id, packet)
                if i % 200 == 199:
                    await asyncio.sleep(0)
            await eventually(lambda: server.stats()["drop_queue_full"] > 0, what="queue drops")
            stats = server.stats()
            assert stats["queued_bytes"] <= limit
            assert stats["queue_peak_bytes"] <= limit
            # the relay still serves others
            b_inbox = Inbox()
            b, b_id = make_client(server.url("ws"), b_inbox)
            await b.start()
            a.send(b_id.peer_id, b"ok")
            await eventually(lambda: len(b_inbox.packets) == 1)
            slow.close()
            await a.stop()
            await b.stop()

    run(body)


def test_all_send_queues_together_are_bounded_and_a_stuck_one_is_closed() -> None:
    """Slow readers each within queue_limit cannot together hold more than total_queue_limit."""

    async def body() -> None:
        limit, total = 128 * 1024, 256 * 1024
        async with relay(
            queue_limit=limit, total_queue_limit=total, queue_stuck_timeout=0.5, **FAST
        ) as server:
            slow_ids = [Identity.generate() for _ in range(4)]
            slow = []
            for identity in slow_ids:
                raw = await RawClient.connect(server, rcvbuf=4096)
                await raw.register(identity)  # ... and never reads again
                slow.append(raw)
            a_inbox = Inbox()
            a, _ = make_client(server.url("tcp"), a_inbox, queue_limit=4 << 20)
            await a.start()
            packet = bytes(1200)
            for i in range(40_000):  # 48 MB in all, more than the kernel buffers hold
                a.send(slow_ids[i % 4].peer_id, packet)
                if i % 200 == 199:
                    await asyncio.sleep(0)
                    assert server.stats()["queued_bytes"] <= total
            await eventually(lambda: server.stats()["drop_total_queue_full"] > 0, what="budget drops")
            stats = server.stats()
            assert stats["queued_bytes"] <= total and stats["queue_peak_bytes"] <= limit
            # The queues stay stuck: once that has lasted queue_stuck_timeout, the relay, still out of
            # queue memory, closes the largest (aborted: a stuck reader would never read a CLOSE).
            # Keep it out of queue memory until it does.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            sent = 0
            while server.stats()["closed_slow_reader"] == 0:
                assert loop.time() < deadline, "no stuck session was closed"
                a.send(slow_ids[sent % 4].peer_id, packet)
                sent += 1
                if sent % 100 == 0:
                    await asyncio.sleep(0.01)
            assert server.stats()["sessions_registered"] < 5
            # the relay still serves others
            b_inbox = Inbox()
            b, b_id = make_client(server.url("ws"), b_inbox)
            await b.start()
            a.send(b_id.peer_id, b"ok")
            await eventually(lambda: len(b_inbox.packets) == 1)
            for raw in slow:
                raw.close()
            await a.stop()
            await b.stop()
            await eventually(lambda: server.stats()["queued_bytes"] == 0, what="queues to be freed")

    run(body)


def test_idle_unregistered_connections_do_not_lock_out_a_client() -> None:
    """The reviewer's case: max_sessions idle CMRL connections no longer make the relay full."""

    async def body() -> None:
        async with relay(max_sessions=20, **FAST) as server:
            idle = [await RawClient.connect(server) for _ in range(20)]
            for raw in idle:
                assert isinstance(await raw.next_frame(), Challenge)
            idle += [await RawClient.connect(server, b"") for _ in range(10)]  # not even a preamble
            inbox = Inbox()
            client, _ = make_client(server.url("tcp"), inbox)
            await client.start(timeout=5)
            assert client.registered and server.stats()["drop_server_full"] == 0
            assert server.stats()["sessions_unregistered"] == 30
            await client.stop()
            for raw in idle:
                raw.close()

    run(body)


def test_unregistered_connections_are_capped_per_address_oldest_first() -> None:
    async def body() -> None:
        async with relay(max_sessions=2, max_unregistered=8, max_unregistered_per_ip=4, **FAST) as server:
            other = [await RawClient.connect(server, local="127.0.0.2") for _ in range(3)]
            flood = [await RawClient.connect(server, local="127.0.0.1") for _ in range(20)]
            flood += [await RawClient.connect(server, b"", local="127.0.0.1") for _ in range(5)]
            await eventually(lambda: server.stats()["closed_unregistered_evicted"] == 21, what="evictions")
            assert server.stats()["sessions_unregistered"] == 7
            # the oldest of the flooding address were closed; the other address kept its connections
            for raw in flood[:20]:
                assert isinstance(await raw.next_frame(), Challenge)
            for raw in flood[:16]:
                end = await raw.next_frame()
                assert isinstance(end, Close) and end.code == CloseCode.SERVER_FULL
                assert await raw.next_frame() is None
            assert not any(raw.at_eof for raw in other)
            # a legitimate client from the flooding address registers; so does one from the other
            a_inbox, b_inbox = Inbox(), Inbox()
            a, _ = make_client(server.url("tcp"), a_inbox)
            b, b_id = make_client(server.url("ws"), b_inbox)
            await a.start(timeout=5)
            await b.start(timeout=5)
            a.send(b_id.peer_id, b"hello")
            await eventually(lambda: len(b_inbox.packets) == 1)
            # registered peers' slots are theirs: at max_sessions a new peer is refused at REGISTER
            late = await RawClient.connect(server, local="127.0.0.2")
            challenge = await late.next_frame()
            assert isinstance(challenge, Challenge)
            late.send(make_register(Identity.generate(), challenge.nonce))
            refused = await late.next_frame()
            assert isinstance(refused, Error) and refused.code == CloseCode.SERVER_FULL
            assert a.registered and b.registered
            await a.stop()
            await b.stop()
            for raw in (*other, *flood, late):
                raw.close()

    run(body)


def test_connections_that_do_not_register_are_closed_after_the_timeout() -> None:
    async def body() -> None:
        async with relay(register_timeout=0.5) as server:
            silent = await RawClient.connect(server, preamble=b"")  # not even the preamble
            lazy = await RawClient.connect(server)  # reads the challenge, never registers
            assert isinstance(await lazy.next_frame(), Challenge)
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(server.url("ws"))
                first = await ws.receive()
                assert isinstance(decode_frame(first.data), Challenge)
                closing = await lazy.next_frame()
                assert closing == Close(code=CloseCode.REGISTER_TIMEOUT, reason="no registration in time")
                assert await lazy.next_frame() is None
                assert await silent.next_frame() is None
                msg = await ws.receive(timeout=2)
                assert decode_frame(msg.data) == closing
                msg = await ws.receive(timeout=2)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                await ws.close()
            stats = server.stats()
            assert stats["closed_register_timeout"] == 3 and stats["sessions_current"] == 0

    run(body)


def test_a_silent_registered_session_is_pinged_then_closed_by_the_relay_timer() -> None:
    async def body() -> None:
        async with relay(idle_timeout=0.4) as server:
            quiet = await RawClient.connect(server)
            await quiet.register(Identity.generate())
            ping = await quiet.next_frame()  # at half the idle timeout
            assert isinstance(ping, Ping)
            assert await quiet.next_frame() == Close(code=CloseCode.IDLE_TIMEOUT, reason="idle timeout")
            assert await quiet.next_frame() is None
            stats = server.stats()
            assert stats["closed_idle_timeout"] == 1 and stats["sessions_current"] == 0

    run(body)


def test_the_client_timer_pings_a_silent_relay_then_gives_up_and_reconnects() -> None:
    """A relay that registers the client and then never answers: the client's one timer sends PING
    after keepalive_interval, says CLOSE(IDLE_TIMEOUT) after three, and the client connects again."""

    async def body() -> None:
        seen: list[object] = []
        connections = 0

        async def silent_relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            assert await reader.readexactly(len(MAGIC)) == MAGIC
            frames = FrameReader()
            pending: list[bytes] = []
            writer.write(tcp_frame(encode_frame(Challenge(nonce=bytes(32)))))
            while data := await reader.read(65536):
                pending += frames.feed(data)
                while pending:
                    frame = decode_frame(pending.pop(0))
                    seen.append(frame)
                    if isinstance(frame, Register):
                        writer.write(tcp_frame(encode_frame(Registered(max_packet=1200))))
            writer.close()

        listener = await asyncio.start_server(silent_relay, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        client, _ = make_client(f"tcp://127.0.0.1:{port}", Inbox(), keepalive_interval=0.2)
        try:
            await client.start(timeout=5)
            await eventually(lambda: connections >= 2, what="a reconnect after the idle timeout")
            assert client.last_close == (CloseCode.IDLE_TIMEOUT, "relay idle timeout")
            first = seen[: next(i for i, f in enumerate(seen) if isinstance(f, Close)) + 1]
            assert [type(f) for f in first] == [Register, Ping, Close]
            assert first[-1] == Close(code=CloseCode.IDLE_TIMEOUT, reason="relay idle timeout")
        finally:
            await client.stop()
            listener.close()
            await listener.wait_closed()

    run(body)


def test_garbage_is_counted_and_closed_never_a_traceback() -> None:
    async def body() -> None:
        async with relay(**FAST) as server:
            junk = await RawClient.connect(server, preamble=b"\x16\x03\x01\x00garbage")
            assert await junk.next_frame() is None
            bad = await RawClient.connect(server)
            await bad.register(Identity.generate())
            bad.writer.write(b"\x05" + b"\xee" * 5)  # a 5-byte frame of an unknown type
            closing = await bad.next_frame()
            assert isinstance(closing, Close) and closing.code == CloseCode.PROTOCOL_ERROR
            huge = await RawClient.connect(server)
            await huge.register(Identity.generate())
            huge.writer.write(b"\xbf\xff\xff\xff")  # a 1 GB frame length
            closing = await huge.next_frame()
            assert isinstance(closing, Close) and "outside" in closing.reason
            early = await RawClient.connect(server)
            assert isinstance(await early.next_frame(), Challenge)
            early.send(Send(dst=Identity.generate().peer_id, packet=b"x"))
            closing = await early.next_frame()
            assert closing == Close(code=CloseCode.PROTOCOL_ERROR, reason="SEND not allowed before REGISTER")
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(server.url("ws"))
                await ws.receive()
                await ws.send_str("hello?")
                msg = await ws.receive(timeout=2)
                closing = decode_frame(msg.data)
                assert isinstance(closing, Close) and "text WebSocket message" in closing.reason
                await ws.close()
                async with http.get(f"http://{server.address.host}:{server.address.port}/") as resp:
                    assert resp.status == 404
            stats = server.stats()
            assert stats["drop_bad_preamble"] == 1 and stats["drop_malformed"] == 3
            assert stats["drop_protocol_error"] == 1
            for raw in (junk, bad, huge, early):
                raw.close()

    run(body)


def test_a_second_registration_replaces_the_first_and_the_first_backs_off() -> None:
    async def body() -> None:
        async with relay(**FAST) as server:
            identity = Identity.generate()
            first_inbox, second_inbox, peer_inbox = Inbox(), Inbox(), Inbox()
            first, _ = make_client(server.url("tcp"), first_inbox, identity, backoff_max=30.0)
            second, _ = make_client(server.url("ws"), second_inbox, identity)
            peer, _ = make_client(server.url("tcp"), peer_inbox)
            await first.start()
            await peer.start()
            await second.start()
            await eventually(lambda: first.last_close is not None, what="the first session to end")
            assert first.last_close == (CloseCode.REPLACED, "replaced by a newer registration")
            assert not first.registered and second.registered
            peer.send(identity.peer_id, b"to the newest")
            await eventually(lambda: len(second_inbox.packets) == 1)
            assert first_inbox.packets == [] and server.stats()["sessions_replaced"] == 1
            for client in (first, second, peer):
                await client.stop()

    run(body)


def test_clients_see_the_relay_stop_and_come_back_when_it_returns() -> None:
    async def body() -> None:
        server = KeyedRelayServer(KeyedRelayConfig(**FAST))
        await server.start()
        port = server.address.port
        a_inbox, b_inbox = Inbox(), Inbox()
        a, a_id = make_client(server.url("tcp"), a_inbox)
        b, b_id = make_client(server.url("ws"), b_inbox)
        await a.start()
        await b.start()
        await exchange(a, a_inbox, a_id, b, b_inbox, b_id, 10)
        await server.stop()
        await eventually(lambda: not a.registered and not b.registered, what="clients to notice")
        assert a.last_close == (CloseCode.SHUTDOWN, "relay shutting down")
        assert b.last_close == (CloseCode.SHUTDOWN, "relay shutting down")
        assert "disconnected" in a_inbox.states and "disconnected" in b_inbox.states
        # They retry against nothing: each fails to reconnect at least twice before the relay is back.
        await eventually(
            lambda: a.stats()["disconnects"] >= 3 and b.stats()["disconnects"] >= 3, what="failed retries"
        )
        assert a.stats()["registrations"] == 1 and b.stats()["registrations"] == 1
        server2 = KeyedRelayServer(KeyedRelayConfig(listen=f"127.0.0.1:{port}", **FAST))
        await server2.start()
        try:
            await a.wait_registered(10)
            await b.wait_registered(10)
            await exchange(a, a_inbox, a_id, b, b_inbox, b_id, 100)
            assert a.stats()["registrations"] == 2 and b.stats()["registrations"] == 2
        finally:
            await a.stop()
            await b.stop()
            await server2.stop()

    run(body)


def test_tls_and_secure_websocket(tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)

    async def body() -> None:
        async with relay(ssl_context=server_ctx, **FAST) as server:
            assert server.url("tcp").startswith("tls://") and server.url("ws").startswith("wss://")
            a_inbox, b_inbox = Inbox(), Inbox()
            a, a_id = make_client(server.url("tcp"), a_inbox, ssl_context=client_ctx)
            b, b_id = make_client(server.url("ws"), b_inbox, ssl_context=client_ctx)
            await a.start()
            await b.start()
            await exchange(a, a_inbox, a_id, b, b_inbox, b_id, 300)
            # a client that does not trust the certificate never registers
            c, _ = make_client(server.url("tcp"), Inbox())
            with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await c.start(timeout=1.0)
            # plain TCP against the TLS listener is not a session either
            raw = await RawClient.connect(server, preamble=MAGIC + bytes(60))
            with contextlib.suppress(ConnectionResetError):
                assert await raw.next_frame() is None
            raw.close()
            await a.stop()
            await b.stop()
            assert server.stats()["registrations_total"] == 2

    run(body)


def test_a_client_started_against_nothing_fails_clearly() -> None:
    async def body() -> None:
        async with relay() as server:
            url = server.url("tcp")
        c, _ = make_client(url, Inbox())
        with pytest.raises(ConnectionFailed, match=r"could not register at relay tcp://127\.0\.0\.1") as info:
            await c.start(timeout=0.5)
        assert "ConnectionRefusedError" in str(info.value)
        with pytest.raises(RelayNotRegistered, match="not connected to relay"):
            c.send(Identity.generate().peer_id, b"x")

    run(body)


def test_recv_frames_carry_the_source() -> None:
    async def body() -> None:
        async with relay(**FAST) as server:
            a, b = await RawClient.connect(server), await RawClient.connect(server)
            a_id, b_id = Identity.generate(), Identity.generate()
            await a.register(a_id)
            await b.register(b_id)
            a.send(Send(dst=b_id.peer_id, packet=b"\xe4opaque"))
            assert await b.next_frame() == Recv(src=a_id.peer_id, packet=b"\xe4opaque")
            a.close()
            b.close()

    run(body)
