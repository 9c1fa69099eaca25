"""The relay core (keyedrelay/server.py), sans-IO, with time advanced by hand."""

from __future__ import annotations

import pytest

from coremesh.keyedrelay.frames import (
    MIN_FRAME,
    Challenge,
    Close,
    CloseCode,
    Error,
    PeerUnknown,
    Ping,
    Pong,
    Recv,
    Register,
    Registered,
    Send,
    encode_frame,
    make_register,
)
from coremesh.keyedrelay.limits import UnregisteredLimiter
from coremesh.keyedrelay.server import Disconnect, SessionState

from .keyedrelay_helpers import (
    ALICE,
    BOB,
    MALLORY,
    closed_with,
    decoded,
    make_core,
    open_,
    register,
)

# --- registration ---


def test_good_signature_is_accepted() -> None:
    core = make_core()
    conn = register(core, ALICE)
    assert core.peer_of(conn) == ALICE.peer_id and core.conn_of(ALICE.peer_id) == conn
    assert core.stats()["registrations_total"] == 1 and core.sessions_registered == 1


def test_challenge_nonces_are_fresh_and_injected() -> None:
    core = make_core()
    _, n1 = open_(core)
    _, n2 = open_(core)
    assert n1 != n2 and n1 == (1).to_bytes(32, "big")


def test_wrong_signature_is_refused_and_counted() -> None:
    core = make_core()
    conn, nonce = open_(core)
    forged = Register(peer_id=ALICE.peer_id, signature=make_register(MALLORY, nonce).signature)
    core.receive_frame(conn, encode_frame(forged), 0.0)
    assert "does not verify" in closed_with(core.drain(), conn, CloseCode.AUTH_FAILED)
    assert core.stats()["auth_failures"] == 1 and core.conn_of(ALICE.peer_id) is None
    assert core.session_state(conn) is SessionState.CLOSED


def test_signature_over_another_nonce_is_refused() -> None:
    core = make_core()
    conn, _ = open_(core)
    stale = make_register(ALICE, bytes(32))
    core.receive_frame(conn, encode_frame(stale), 0.0)
    closed_with(core.drain(), conn, CloseCode.AUTH_FAILED)
    assert core.stats()["auth_failures"] == 1


def test_register_replayed_on_a_new_connection_is_refused() -> None:
    core = make_core()
    conn, nonce = open_(core)
    captured = encode_frame(make_register(ALICE, nonce))
    core.receive_frame(conn, captured, 0.0)
    core.drain()
    conn2, _ = open_(core)
    core.receive_frame(conn2, captured, 0.0)
    closed_with(core.drain(), conn2, CloseCode.AUTH_FAILED)
    assert core.conn_of(ALICE.peer_id) == conn  # the real session is untouched


def test_second_register_on_the_same_session_is_a_protocol_error() -> None:
    core = make_core()
    conn, nonce = open_(core)
    frame = encode_frame(make_register(ALICE, nonce))
    core.receive_frame(conn, frame, 0.0)
    core.drain()
    core.receive_frame(conn, frame, 0.0)
    reason = closed_with(core.drain(), conn, CloseCode.PROTOCOL_ERROR)
    assert reason == "REGISTER not allowed after REGISTERED"
    assert core.stats()["drop_protocol_error"] == 1 and core.conn_of(ALICE.peer_id) is None


def test_send_before_register_is_refused() -> None:
    core = make_core()
    register(core, BOB)
    conn, _ = open_(core)
    core.receive_frame(conn, encode_frame(Send(dst=BOB.peer_id, packet=b"sneaky")), 0.0)
    assert closed_with(core.drain(), conn, CloseCode.PROTOCOL_ERROR) == "SEND not allowed before REGISTER"
    assert core.stats()["frames_forwarded"] == 0


@pytest.mark.parametrize(
    "frame",
    [
        Challenge(nonce=bytes(32)),
        Registered(max_packet=100),
        Recv(src=BOB.peer_id, packet=b"x"),
        PeerUnknown(dst=BOB.peer_id),
        Error(code=1),
    ],
)
def test_relay_only_frames_from_a_client_close_the_session(frame: object) -> None:
    core = make_core()
    conn = register(core, ALICE)
    core.receive_frame(conn, encode_frame(frame), 0.0)  # type: ignore[arg-type]
    closed_with(core.drain(), conn, CloseCode.PROTOCOL_ERROR)


def test_malformed_frames_are_counted_and_close_only_that_session() -> None:
    core = make_core()
    bob = register(core, BOB)
    for bad in (b"", b"\x00", b"\x05" + bytes(10), b"\x02\x01", b"\xee" * 50):
        conn = register(core, ALICE)
        core.receive_frame(conn, bad, 0.0)
        assert closed_with(core.drain(), conn, CloseCode.PROTOCOL_ERROR).startswith("malformed frame")
    assert core.stats()["drop_malformed"] == 5
    assert core.session_state(bob) is SessionState.REGISTERED


def test_a_second_registration_replaces_the_first() -> None:
    core = make_core()
    old = register(core, ALICE)
    new, nonce = open_(core)
    core.receive_frame(new, encode_frame(make_register(ALICE, nonce)), 0.0)
    core.drain()
    assert core.session_state(old) is SessionState.CLOSED
    assert core.conn_of(ALICE.peer_id) == new
    assert core.stats()["sessions_replaced"] == 1 and core.sessions_current == 1


def test_replacement_notifies_the_old_session() -> None:
    core = make_core()
    old = register(core, ALICE)
    conn, nonce = open_(core)
    core.receive_frame(conn, encode_frame(make_register(ALICE, nonce)), 0.0)
    frames = decoded(core.drain())
    assert frames[0] == (old, Close(code=CloseCode.REPLACED, reason="replaced by a newer registration"))
    assert frames[1] == (old, Disconnect(old, CloseCode.REPLACED, "replaced by a newer registration"))
    assert frames[2] == (conn, Registered(max_packet=core.limits.max_packet))
    core.connection_lost(old)  # the old transport going away later must not unregister the new one
    assert core.conn_of(ALICE.peer_id) == conn


# --- forwarding and limits ---


def test_forwarding_rewrites_send_into_recv_from_the_authenticated_source() -> None:
    core = make_core()
    a, b = register(core, ALICE), register(core, BOB)
    core.receive_frame(a, encode_frame(Send(dst=BOB.peer_id, packet=b"ciphertext")), 0.0)
    assert decoded(core.drain()) == [(b, Recv(src=ALICE.peer_id, packet=b"ciphertext"))]
    stats = core.stats()
    assert stats["frames_forwarded"] == 1 and stats["bytes_forwarded"] == 10


def test_unknown_destination_is_counted_and_reported_at_a_limited_rate() -> None:
    core = make_core()
    a = register(core, ALICE)
    send = encode_frame(Send(dst=MALLORY.peer_id, packet=b"x"))
    for _ in range(10):
        core.receive_frame(a, send, 0.0)
    notices = decoded(core.drain())
    assert notices == [(a, PeerUnknown(dst=MALLORY.peer_id))] * 4  # the burst
    core.receive_frame(a, send, 0.5)  # one more after half a second at 2/s
    assert decoded(core.drain()) == [(a, PeerUnknown(dst=MALLORY.peer_id))]
    assert core.stats()["drop_peer_unknown"] == 11 and core.stats()["peer_unknown_sent"] == 5


def test_packet_rate_limit_per_peer() -> None:
    core = make_core(rate_packets_per_s=10, burst=0.5)  # 5 packets banked
    a, b = register(core, ALICE), register(core, BOB)
    send = encode_frame(Send(dst=BOB.peer_id, packet=b"x"))
    for _ in range(8):
        core.receive_frame(a, send, 1.0)
    assert len(core.drain()) == 5
    core.receive_frame(a, send, 1.1)
    assert len(core.drain()) == 1
    back = encode_frame(Send(dst=ALICE.peer_id, packet=b"y"))
    core.receive_frame(b, back, 1.1)  # Bob has his own bucket
    assert len(core.drain()) == 1
    assert core.stats()["drop_rate_limited"] == 3


def test_byte_rate_limit_per_peer_banks_at_least_one_max_packet() -> None:
    core = make_core(rate_bytes_per_s=1000, burst=1.0, max_frame=MIN_FRAME)  # max packet 1280 > 1000
    a, _ = register(core, ALICE), register(core, BOB)
    big = encode_frame(Send(dst=BOB.peer_id, packet=bytes(1280)))
    core.receive_frame(a, big, 0.0)
    assert len(core.drain()) == 1
    core.receive_frame(a, big, 1.0)  # 1000 tokens back: not enough
    assert core.drain() == []
    core.receive_frame(a, big, 1.28)
    assert len(core.drain()) == 1
    assert core.stats()["drop_rate_limited"] == 1


def test_packet_larger_than_max_frame_closes_the_session() -> None:
    core = make_core(max_frame=MIN_FRAME)
    a, _ = register(core, ALICE), register(core, BOB)
    core.receive_frame(a, encode_frame(Send(dst=BOB.peer_id, packet=bytes(1281))), 0.0)
    closed_with(core.drain(), a, CloseCode.PROTOCOL_ERROR)


def test_max_sessions_counts_registered_peers_only() -> None:
    """Connections that never register do not take registered peers' slots (they are capped apart)."""
    core = make_core(max_sessions=1)
    alice = register(core, ALICE)
    idle = [open_(core) for _ in range(5)]  # unregistered: admitted, each with its CHALLENGE
    bob, bob_nonce = open_(core)
    core.receive_frame(bob, encode_frame(make_register(BOB, bob_nonce)), 0.0)
    assert closed_with(core.drain(), bob, CloseCode.SERVER_FULL) == "relay full"
    assert core.session_state(bob) is SessionState.CLOSED and core.stats()["drop_server_full"] == 1
    # a registered peer may still replace its own session when full
    again, nonce = open_(core)
    core.receive_frame(again, encode_frame(make_register(ALICE, nonce)), 0.0)
    actions = decoded(core.drain())
    assert actions[-1] == (again, Registered(max_packet=core.limits.max_packet))
    assert core.conn_of(ALICE.peer_id) == again and core.session_state(alice) is SessionState.CLOSED
    stats = core.stats()
    assert stats["sessions_registered"] == 1 and stats["sessions_unregistered"] == len(idle)


def test_max_unregistered_is_a_backstop_in_the_core() -> None:
    core = make_core(max_unregistered=2)
    open_(core)
    open_(core)
    conn = core.open_session(0.0)
    closed_with(core.drain(), conn, CloseCode.SERVER_FULL)
    assert core.stats()["drop_server_full"] == 1 and core.sessions_current == 2


def test_ping_is_answered_before_and_after_registration() -> None:
    core = make_core()
    conn, _ = open_(core)
    core.receive_frame(conn, encode_frame(Ping(data=b"12345678")), 0.0)
    assert decoded(core.drain()) == [(conn, Pong(data=b"12345678"))]


def test_client_close_ends_the_session_quietly() -> None:
    core = make_core()
    a = register(core, ALICE)
    core.receive_frame(a, encode_frame(Close(code=0, reason="bye")), 0.0)
    assert core.drain() == [] and core.conn_of(ALICE.peer_id) is None


# --- timers ---


def test_registration_timeout() -> None:
    core = make_core(register_timeout=5.0)
    conn, _ = open_(core, now=100.0)
    assert core.get_timer() == 105.0
    core.handle_timer(104.9)
    assert core.drain() == []
    core.handle_timer(105.0)
    closed_with(core.drain(), conn, CloseCode.REGISTER_TIMEOUT)
    assert core.stats()["closed_register_timeout"] == 1 and core.get_timer() is None


def test_idle_session_is_pinged_then_closed() -> None:
    core = make_core(idle_timeout=10.0)
    conn = register(core, ALICE, now=0.0)
    assert core.get_timer() == 5.0
    core.receive_frame(conn, encode_frame(Pong()), 3.0)  # traffic moves the deadline
    core.handle_timer(5.0)
    assert core.drain() == [] and core.get_timer() == 8.0
    core.handle_timer(8.0)
    [(c, ping)] = decoded(core.drain())
    assert c == conn and isinstance(ping, Ping)
    assert core.get_timer() == 13.0
    core.handle_timer(13.0)
    closed_with(core.drain(), conn, CloseCode.IDLE_TIMEOUT)
    assert core.stats()["closed_idle_timeout"] == 1


def test_answered_ping_keeps_the_session() -> None:
    core = make_core(idle_timeout=10.0)
    conn = register(core, ALICE)
    core.handle_timer(5.0)
    [(_, ping)] = decoded(core.drain())
    assert isinstance(ping, Ping)
    core.receive_frame(conn, encode_frame(Pong(data=ping.data)), 5.1)
    core.handle_timer(10.0)
    assert core.drain() == [] and core.get_timer() == 10.1
    core.handle_timer(12.0)  # quiet again: another PING, not a close
    [(_, ping2)] = decoded(core.drain())
    assert isinstance(ping2, Ping) and core.session_state(conn) is SessionState.REGISTERED


def test_close_all_says_shutdown_to_everyone() -> None:
    core = make_core()
    a, b, pending = register(core, ALICE), register(core, BOB), core.open_session(0.0)
    core.drain()
    core.close_all(CloseCode.SHUTDOWN, "bye")
    closes = [c for c, f in decoded(core.drain()) if isinstance(f, Close) and f.code == CloseCode.SHUTDOWN]
    assert sorted(closes) == sorted([a, b, pending]) and core.sessions_current == 0


# --- unregistered connections ---


def test_idle_unregistered_connections_cannot_lock_out_a_client() -> None:
    """Many idle connections from one source: a newcomer is always admitted and can register."""
    core = make_core(max_sessions=4, max_unregistered=8)
    lim: UnregisteredLimiter[int] = UnregisteredLimiter(max_total=8, max_per_source=3)

    def connect(source: str) -> tuple[int, bytes]:
        conn, nonce = open_(core)
        for old in lim.admit(conn, source):
            core.close_session(old, CloseCode.SERVER_FULL, "too many unregistered connections")
            closed_with(core.drain(), old, CloseCode.SERVER_FULL)
        return conn, nonce

    for _ in range(50):
        connect("10.0.0.66")
    assert core.sessions_current == 3 and lim.count("10.0.0.66") == 3
    conn, nonce = connect("10.0.0.66")  # the legitimate client happens to share the address
    core.receive_frame(conn, encode_frame(make_register(ALICE, nonce)), 0.0)
    assert decoded(core.drain()) == [(conn, Registered(max_packet=core.limits.max_packet))]
    lim.remove(conn)
    assert core.sessions_registered == 1 and core.sessions_unregistered == 2
