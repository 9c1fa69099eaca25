"""The client session (keyedrelay/client.py), sans-IO, alone and paired with a relay core."""

from __future__ import annotations

import pytest

from coremesh.keyedrelay.client import (
    ClientSession,
    ClientState,
    PacketReceived,
    PacketTooLarge,
    PeerUnknownEvent,
    RegisteredEvent,
    RelayNotRegistered,
    SessionEnded,
)
from coremesh.keyedrelay.frames import (
    Challenge,
    Close,
    CloseCode,
    Error,
    PeerUnknown,
    Ping,
    Pong,
    Recv,
    Registered,
    Send,
    decode_frame,
    encode_frame,
    make_register,
)
from coremesh.keyedrelay.server import Transmit

from .keyedrelay_helpers import (
    ALICE,
    BOB,
    MALLORY,
    counting_bytes,
    make_core,
)

# --- the client session, alone and paired with a core ---


def client(now: float = 0.0, **kw: float) -> ClientSession:
    return ClientSession(ALICE, now=now, random_bytes=counting_bytes(), **kw)  # type: ignore[arg-type]


def test_client_answers_the_challenge_and_registers() -> None:
    c = client()
    relay = BOB.peer_id
    c.receive_frame(encode_frame(Challenge(nonce=b"n" * 32, relay_id=relay)), 0.0)
    [reg] = c.frames_to_send()
    assert decode_frame(reg) == make_register(ALICE, b"n" * 32)
    assert c.state is ClientState.AWAIT_REGISTERED and not c.registered
    with pytest.raises(RelayNotRegistered):
        c.encode_send(BOB.peer_id, b"x")
    c.receive_frame(encode_frame(Registered(max_packet=1500)), 0.0)
    assert c.next_event() == RegisteredEvent(1500, relay) and c.registered
    assert c.encode_send(BOB.peer_id, b"x") == encode_frame(Send(dst=BOB.peer_id, packet=b"x"))
    with pytest.raises(PacketTooLarge):
        c.encode_send(BOB.peer_id, bytes(1501))
    c.receive_frame(encode_frame(Recv(src=BOB.peer_id, packet=b"hi")), 0.1)
    c.receive_frame(encode_frame(PeerUnknown(dst=MALLORY.peer_id)), 0.1)
    assert c.next_event() == PacketReceived(BOB.peer_id, b"hi")
    assert c.next_event() == PeerUnknownEvent(MALLORY.peer_id)


def test_client_refuses_another_version_and_an_unexpected_relay() -> None:
    c = client()
    c.receive_frame(encode_frame(Challenge(nonce=bytes(32), version=2)), 0.0)
    assert c.next_event() == SessionEnded(
        CloseCode.UNSUPPORTED_VERSION, "relay speaks version 2, we speak 1", False
    )
    c2 = ClientSession(ALICE, now=0.0, expected_relay=BOB.peer_id, random_bytes=counting_bytes())  # type: ignore[arg-type]
    c2.receive_frame(encode_frame(Challenge(nonce=bytes(32), relay_id=MALLORY.peer_id)), 0.0)
    ended = c2.next_event()
    assert isinstance(ended, SessionEnded) and ended.code == CloseCode.AUTH_FAILED


def test_client_reports_relay_error_and_protocol_violations() -> None:
    c = client()
    c.receive_frame(encode_frame(Error(code=CloseCode.SERVER_FULL, reason="relay full")), 0.0)
    assert c.next_event() == SessionEnded(CloseCode.SERVER_FULL, "relay full", True)
    c = client()
    c.receive_frame(encode_frame(Recv(src=BOB.peer_id, packet=b"early")), 0.0)
    ended = c.next_event()
    assert isinstance(ended, SessionEnded) and ended.code == CloseCode.PROTOCOL_ERROR and not ended.by_relay
    assert decode_frame(c.frames_to_send()[0]) == Close(code=CloseCode.PROTOCOL_ERROR, reason=ended.reason)
    c = client()
    c.receive_frame(b"\x77garbage", 0.0)
    assert isinstance(c.next_event(), SessionEnded) and c.state is ClientState.CLOSED


def test_client_timers() -> None:
    c = client(now=0.0, register_timeout=5.0, keepalive_interval=10.0)
    assert c.get_timer() == 5.0
    c.handle_timer(5.0)
    assert c.next_event() == SessionEnded(CloseCode.REGISTER_TIMEOUT, "registration timed out", False)
    c = client(now=0.0, keepalive_interval=10.0)
    c.receive_frame(encode_frame(Challenge(nonce=bytes(32))), 0.0)
    c.receive_frame(encode_frame(Registered(max_packet=100)), 1.0)
    c.frames_to_send()
    c.next_event()
    assert c.get_timer() == 11.0
    c.handle_timer(11.0)
    [ping] = c.frames_to_send()
    assert isinstance(decode_frame(ping), Ping) and c.get_timer() == 31.0
    c.receive_frame(encode_frame(Ping(data=b"abcdefgh")), 20.0)
    assert c.frames_to_send() == [encode_frame(Pong(data=b"abcdefgh"))]
    c.handle_timer(50.0)
    assert c.next_event() == SessionEnded(CloseCode.IDLE_TIMEOUT, "relay idle timeout", False)


def test_client_and_core_in_memory_exchange_packets() -> None:
    core = make_core()
    clients: dict[int, ClientSession] = {}
    for identity in (ALICE, BOB):
        conn = core.open_session(0.0)
        clients[conn] = ClientSession(identity, now=0.0, random_bytes=counting_bytes())  # type: ignore[arg-type]
    a, b = clients
    moved = True
    while moved:
        moved = False
        for action in core.drain():
            moved = True
            if isinstance(action, Transmit):
                clients[action.conn].receive_frame(action.frame, 0.0)
        for conn, c in clients.items():
            for frame in c.frames_to_send():
                moved = True
                core.receive_frame(conn, frame, 0.0)
    assert clients[a].registered and clients[b].registered
    for i in range(100):
        core.receive_frame(a, clients[a].encode_send(BOB.peer_id, b"%d" % i), 0.0)
    for action in core.drain():
        assert isinstance(action, Transmit)
        clients[action.conn].receive_frame(action.frame, 0.0)
    events = [clients[b].next_event() for _ in range(101)]
    assert isinstance(events[0], RegisteredEvent)
    assert events[1:] == [PacketReceived(ALICE.peer_id, b"%d" % i) for i in range(100)]
