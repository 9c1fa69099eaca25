"""The IK handshake and the transport session, in memory, through their public interfaces."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import (
    AuthenticationFailed,
    DecodeError,
    LocalProtocolError,
    NonceExhausted,
    RemoteProtocolError,
)
from coremesh.identity import Identity
from coremesh.secure import wire
from coremesh.secure.noise import CipherState
from coremesh.secure.replay import COUNTER_LIMIT
from coremesh.secure.session import InitiatorHandshake, Responder, SecureSession, encode_timestamp

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(1, 33)))
MALLORY = Identity(bytes(range(2, 34)))


def start(initiator: Identity = ALICE, responder: Identity = BOB, wall: float = 1e9) -> InitiatorHandshake:
    return InitiatorHandshake(
        initiator,
        responder.peer_id,
        local_index=1,
        conn_id=b"conn-id!",
        wall_time=wall,
        random_bytes=random.Random(1).randbytes,
        started_at=0.0,
    )


def handshake() -> tuple[SecureSession, SecureSession]:
    hs = start()
    init = wire.decode_handshake_init(hs.packet)
    result = Responder(BOB).respond(init, local_index=2, random_bytes=os.urandom, now=0.0)
    assert result.peer_id == ALICE.peer_id
    assert result.conn_id == b"conn-id!"
    session, echoed = hs.complete(wire.decode_handshake_resp(result.response), 0.0)
    assert echoed == b"conn-id!"
    return session, result.session


def test_handshake_authenticates_both_peer_ids() -> None:
    a, b = handshake()
    assert (a.local_index, a.remote_index, b.local_index, b.remote_index) == (1, 2, 2, 1)
    assert a.confirmed and not b.confirmed
    packet = a.seal(b"hi bob")
    index, counter = wire.decode_transport_header(packet)
    assert index == 2 and b.open(packet, counter) == b"hi bob"
    reply = b.seal(b"hi alice")
    assert a.open(reply, wire.decode_transport_header(reply)[1]) == b"hi alice"


def test_mac1_binds_the_packet_to_the_responder() -> None:
    init = wire.decode_handshake_init(start().packet)
    assert Responder(BOB).check_mac1(init)
    assert not Responder(MALLORY).check_mac1(init)


def test_initiation_for_another_key_fails_authentication() -> None:
    init = wire.decode_handshake_init(start(responder=MALLORY).packet)
    with pytest.raises(AuthenticationFailed):
        Responder(BOB).respond(init, local_index=2, random_bytes=os.urandom, now=0.0)


def test_response_from_the_wrong_responder_fails() -> None:
    hs = start()
    init = wire.decode_handshake_init(hs.packet)
    # Mallory answers an initiation that was meant for Bob (she cannot decrypt it).
    with pytest.raises(AuthenticationFailed):
        Responder(MALLORY).respond(init, local_index=2, random_bytes=os.urandom, now=0.0)


@settings(max_examples=200)
@given(st.data())
def test_any_flipped_byte_of_the_initiation_is_rejected(data: st.DataObject) -> None:
    packet = bytearray(start().packet)
    pos = data.draw(st.integers(0, len(packet) - 1 - 32))  # mac2 is unauthenticated by design
    packet[pos] ^= data.draw(st.integers(1, 255))
    responder = Responder(BOB)
    try:
        init = wire.decode_handshake_init(bytes(packet))
    except DecodeError:
        return
    if not responder.check_mac1(init):
        return
    with pytest.raises(AuthenticationFailed):
        responder.respond(init, local_index=2, random_bytes=os.urandom, now=0.0)


def test_truncated_handshake_is_a_decode_error() -> None:
    packet = start().packet
    for n in (0, 1, 2, 10, len(packet) - 1):
        with pytest.raises(DecodeError):
            wire.decode_handshake_init(packet[:n])


def test_forged_and_replayed_transport_packets_are_rejected() -> None:
    a, b = handshake()
    packet = a.seal(b"payload")
    counter = wire.decode_transport_header(packet)[1]
    forged = bytearray(packet)
    forged[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        b.open(bytes(forged), counter)
    assert b.open(packet, counter) == b"payload"  # the forgery did not advance the window
    with pytest.raises(AuthenticationFailed):
        b.open(packet, counter)


def test_a_replay_is_told_apart_from_a_forgery_without_decrypting_it() -> None:
    """What the endpoint runs per packet: one replay check; a replay is None, a forgery raises."""
    a, b = handshake()
    packet = a.seal(b"payload")
    counter = wire.decode_transport_header(packet)[1]
    forged = bytearray(packet)
    forged[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        b.open_unless_replayed(bytes(forged), counter)
    assert b.open_unless_replayed(packet, counter) == b"payload"
    assert b.open_unless_replayed(packet, counter) is None
    assert b.open_unless_replayed(bytes(forged), counter) is None  # a replayed counter is never decrypted
    assert b.packets_received == 1 and b.replay.highest == counter


def test_a_session_seals_what_the_checked_explicit_nonce_path_seals() -> None:
    """The session calls the AEAD directly; its packets are exactly the transport header plus
    ``CipherState.encrypt_with_nonce`` (checked against the Noise vectors) under the same counter."""
    k1, k2 = bytes(range(32)), bytes(range(32, 64))
    a = SecureSession(
        local_index=1,
        remote_index=2,
        send=CipherState(k1),
        recv=CipherState(k2),
        is_initiator=True,
        created_at=0.0,
    )
    b = SecureSession(
        local_index=2,
        remote_index=1,
        send=CipherState(k2),
        recv=CipherState(k1),
        is_initiator=False,
        created_at=0.0,
    )
    for counter in range(3):
        header = wire.encode_transport_header(2, counter)
        packet = a.seal(b"message %d" % counter)
        assert packet == header + CipherState(k1).encrypt_with_nonce(counter, header, b"message %d" % counter)
        assert b.open_unless_replayed(packet, counter) == b"message %d" % counter
    reply = b.seal(b"back")
    assert reply == wire.encode_transport_header(1, 0) + CipherState(k2).encrypt_with_nonce(
        0, wire.encode_transport_header(1, 0), b"back"
    )
    assert a.open(reply, 0) == b"back"


def test_a_packet_shorter_than_its_tag_is_an_authentication_failure() -> None:
    a, b = handshake()
    packet = a.seal(b"")
    for n in (0, wire.TRANSPORT_HEADER_LEN, len(packet) - 1):
        with pytest.raises(AuthenticationFailed):
            b.open_unless_replayed(packet[:n], 0)
    assert b.open_unless_replayed(packet, 0) == b""


def test_a_session_needs_keyed_ciphers() -> None:
    with pytest.raises(LocalProtocolError):
        SecureSession(
            local_index=1,
            remote_index=2,
            send=CipherState(),
            recv=CipherState(),
            is_initiator=True,
            created_at=0.0,
        )


def test_out_of_order_packets_within_the_window_are_accepted() -> None:
    a, b = handshake()
    packets = [a.seal(bytes([i])) for i in range(50)]
    random.Random(3).shuffle(packets)
    got = sorted(b.open(p, wire.decode_transport_header(p)[1])[0] for p in packets)
    assert got == list(range(50))


def test_timestamps_sort_in_time_order() -> None:
    assert encode_timestamp(1000.5) < encode_timestamp(1000.6) < encode_timestamp(1001.0)


def test_nonce_exhaustion_is_a_local_error() -> None:
    # Our own sending used up the keys: a local error, never one that blames the peer.
    a, b = handshake()
    a.send_counter = COUNTER_LIMIT  # 2^64-1: the nonce Noise reserves
    with pytest.raises(LocalProtocolError, match="exhausted its nonces") as info:
        a.seal(b"one too many")
    assert isinstance(info.value, NonceExhausted) and not isinstance(info.value, RemoteProtocolError)
    assert a.send_counter == COUNTER_LIMIT
    # The counter before it is the last one used, and the receiver accepts it.
    a.send_counter = COUNTER_LIMIT - 1
    last = a.seal(b"last")
    assert wire.decode_transport_header(last)[1] == (1 << 64) - 2
    assert b.open(last, (1 << 64) - 2) == b"last"
    with pytest.raises(NonceExhausted):
        a.seal(b"one too many")
