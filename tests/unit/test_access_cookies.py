"""Handshake floods (coremesh/access): the COOKIE_REPLY codec, cookies and mac2, the gate before the
Diffie-Hellman, and the endpoint's initiator and responder under load, in virtual time."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coremesh.access.cookies import SECRET_PERIOD, CookieIssuer, source_bytes
from coremesh.access.handshake_guard import (
    RATE_LIMITED,
    REPLAYED,
    GuardConfig,
    HandshakeGuard,
    SourceLimiter,
    host_key,
)
from coremesh.addr import Address
from coremesh.config import MeshConfig
from coremesh.endpoint import events as ev
from coremesh.endpoint.paths import RelayAddress, TurnAddress
from coremesh.errors import AuthenticationFailed, ConfigError, DecodeError
from coremesh.identity import Identity
from coremesh.secure import wire
from coremesh.secure.session import InitiatorHandshake, compute_mac, mac1_key
from coremesh.sim import LinkProfile, SimNetwork

from .test_endpoint import A_ADDR, B_ADDR, connect, make, pair

ALICE = Identity(random.Random(1).randbytes(32))
BOB = Identity(random.Random(2).randbytes(32))
SRC = Address("198.51.100.7", 4000)


def initiation(seed: int = 0, cookie: bytes | None = None) -> InitiatorHandshake:
    """A real initiation from ALICE to BOB (a fresh ephemeral key per seed)."""
    return InitiatorHandshake(
        ALICE,
        BOB.peer_id,
        local_index=1000 + seed,
        conn_id=bytes(8),
        wall_time=1.7e9 + seed,
        random_bytes=random.Random(seed).randbytes,
        started_at=0.0,
        cookie=cookie,
    )


def forged(rng: random.Random) -> bytes:
    """A fresh valid-looking initiation: random Noise bytes under a valid mac1 (costs a flooder no DH)."""
    body = wire.encode_handshake_init(rng.getrandbits(32), rng.randbytes(wire.NOISE_MSG1_LEN))
    return body + compute_mac(mac1_key(BOB.x25519_public), body) + bytes(wire.MAC_LEN)


def guard(**config: object) -> HandshakeGuard:
    return HandshakeGuard(BOB.x25519_public, random.Random(7), GuardConfig(**config))  # type: ignore[arg-type]


# -- the codec ------------------------------------------------------------------------------------


@given(st.integers(0, 2**32 - 1), st.binary(min_size=24, max_size=24), st.binary(min_size=32, max_size=32))
def test_cookie_reply_round_trip(index: int, nonce: bytes, sealed: bytes) -> None:
    packet = wire.encode_cookie_reply(index, nonce, sealed)
    assert len(packet) == wire.COOKIE_REPLY_LEN
    assert wire.decode_cookie_reply(packet) == wire.CookieReply(index, nonce, sealed)


@given(st.binary(max_size=200))
def test_cookie_reply_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        reply = wire.decode_cookie_reply(data)
    except DecodeError:
        return
    assert len(data) == wire.COOKIE_REPLY_LEN and data[0] == wire.PacketType.COOKIE_REPLY
    assert wire.encode_cookie_reply(reply.receiver_index, reply.nonce, reply.sealed_cookie) == data


def test_cookie_reply_decoder_names_what_is_wrong() -> None:
    good = wire.encode_cookie_reply(1, bytes(24), bytes(32))
    for bad, words in (
        (b"", "truncated"),
        (good[:-1], "must be 62 bytes"),
        (good + b"x", "must be 62 bytes"),
        (bytes([wire.PacketType.HANDSHAKE_INIT]) + good[1:], "not a COOKIE_REPLY"),
        (good[:1] + b"\x09" + good[2:], "unsupported protocol version"),
    ):
        with pytest.raises(DecodeError, match=words):
            wire.decode_cookie_reply(bad)
    with pytest.raises(ValueError, match="nonce"):
        wire.encode_cookie_reply(1, bytes(23), bytes(32))


def test_a_cookie_reply_is_smaller_than_the_initiation_that_caused_it() -> None:
    hs = initiation()
    refusal = guard(load_threshold=0).admit(wire.decode_handshake_init(hs.packet), SRC, SRC, 0.0)
    assert refusal is not None and refusal.reply is not None
    assert len(refusal.reply) < len(hs.packet)  # 62 < 186: no amplification: a third
    assert 3 * len(refusal.reply) <= len(hs.packet)


# -- cookies and mac2 -----------------------------------------------------------------------------


def test_only_the_initiator_opens_the_cookie_and_its_mac2_holds_only_from_the_same_address() -> None:
    issuer = CookieIssuer(BOB.x25519_public, random.Random(3))
    first = initiation(1)
    init = wire.decode_handshake_init(first.packet)
    assert not issuer.check_mac2(init, source_bytes(SRC), 0.0)  # no cookie yet: mac2 is zero
    reply = wire.decode_cookie_reply(issuer.reply(init, source_bytes(SRC), 0.0))
    assert reply.receiver_index == first.local_index
    cookie = first.open_cookie_reply(reply)
    assert cookie == issuer.cookie(source_bytes(SRC), 0.0)
    with pytest.raises(AuthenticationFailed):
        initiation(2).open_cookie_reply(reply)  # another initiation's mac1: it does not open
    tampered = wire.CookieReply(reply.receiver_index, reply.nonce, bytes(32))
    with pytest.raises(AuthenticationFailed):
        first.open_cookie_reply(tampered)
    again = wire.decode_handshake_init(initiation(3, cookie).packet)
    assert any(again.mac2)
    assert issuer.check_mac2(again, source_bytes(SRC), 1.0)
    assert not issuer.check_mac2(again, source_bytes(Address("198.51.100.7", 4001)), 1.0)
    assert not issuer.check_mac2(again, source_bytes(Address("198.51.100.8", 4000)), 1.0)


def test_the_cookie_secret_rotates_and_a_cookie_lasts_one_more_period() -> None:
    issuer = CookieIssuer(BOB.x25519_public, random.Random(3))
    src = source_bytes(SRC)
    cookie = issuer.cookie(src, 10.0)
    assert issuer.cookie(src, 10.0 + SECRET_PERIOD - 0.001) == cookie
    assert issuer.cookie(src, 10.0 + SECRET_PERIOD) != cookie  # a new secret
    init = wire.decode_handshake_init(initiation(4, cookie).packet)
    assert issuer.check_mac2(init, src, 10.0 + SECRET_PERIOD + 1)  # the previous secret still counts
    assert not issuer.check_mac2(init, src, 10.0 + 2 * SECRET_PERIOD + 1)  # two secrets later: no


def test_source_bytes_tell_every_path_apart() -> None:
    paths = [
        SRC,
        Address("198.51.100.7", 4001),
        TurnAddress(Address("203.0.113.1", 3478), SRC),
        RelayAddress("tcp://relay:7000", ALICE.peer_id),
        RelayAddress("tcp://relay:7000", BOB.peer_id),
    ]
    assert len({source_bytes(p) for p in paths}) == len(paths)


# -- the gate -------------------------------------------------------------------------------------


def test_an_exact_replay_is_refused_before_any_diffie_hellman() -> None:
    g = guard()
    hs = initiation()
    init = wire.decode_handshake_init(hs.packet)
    assert g.admit(init, SRC, SRC, 0.0) is None
    assert g.admit(init, Address("192.0.2.99", 9), Address("192.0.2.99", 9), 0.1) is REPLAYED
    # The same ephemeral key under another mac2, or with a re-made mac1: still a replay.
    other_mac2 = wire.decode_handshake_init(hs.packet[:-16] + b"x" * 16)
    assert g.admit(other_mac2, SRC, SRC, 0.2) is REPLAYED
    assert g.admit(wire.decode_handshake_init(initiation(1).packet), SRC, SRC, 0.3) is None


def test_the_replay_cache_is_bounded() -> None:
    g = guard(replay_cache_size=4, load_threshold=1000)
    inits = [wire.decode_handshake_init(initiation(i).packet) for i in range(6)]
    for init in inits:
        assert g.admit(init, SRC, SRC, 0.0) is None
    assert g.admit(inits[-1], SRC, SRC, 0.0) is REPLAYED
    assert g.admit(inits[0], SRC, SRC, 0.0) is None  # forgotten: it reaches the timestamp check


def test_load_starts_at_the_threshold_within_the_window_and_ends_a_window_later() -> None:
    g = guard(load_threshold=3, load_window=1.0)
    rng = random.Random(5)
    for t in (0.0, 0.6, 1.2, 1.8):  # never 3 within one second
        assert g.admit(wire.decode_handshake_init(forged(rng)), SRC, SRC, t) is None
        assert not g.under_load(t)
    assert g.admit(wire.decode_handshake_init(forged(rng)), SRC, SRC, 2.1) is None  # 1.2, 1.8, 2.1
    assert g.under_load(2.1) and g.under_load(3.09) and not g.under_load(3.1)
    refusal = g.admit(wire.decode_handshake_init(forged(rng)), SRC, SRC, 2.5)
    assert refusal is not None and refusal.reason == "drop_handshake_under_load" and refusal.reply
    assert guard(load_threshold=0).under_load(0.0)  # 0: a cookie always


def test_the_load_window_keeps_only_its_own_admissions() -> None:
    g = guard(load_threshold=1_000_000, load_window=1.0)
    rng = random.Random(5)
    for i in range(300):
        assert g.admit(wire.decode_handshake_init(forged(rng)), SRC, SRC, i * 0.125) is None
    assert g.recent_admissions == 8  # a second's worth, not all 300 (nor room for a million)


def test_under_load_only_a_valid_mac2_from_the_cookies_address_gets_through() -> None:
    g = guard(load_threshold=0)
    first = initiation(1)
    refusal = g.admit(wire.decode_handshake_init(first.packet), SRC, SRC, 0.0)
    assert refusal is not None and refusal.reason == "drop_handshake_under_load" and refusal.reply
    cookie = first.open_cookie_reply(wire.decode_cookie_reply(refusal.reply))
    with_mac2 = wire.decode_handshake_init(initiation(2, cookie).packet)
    elsewhere = Address("198.51.100.9", 4000)
    moved = g.admit(with_mac2, elsewhere, elsewhere, 0.1)  # another address: its cookie is not this one
    assert moved is not None and moved.reason == "drop_bad_mac2" and moved.reply
    assert g.admit(with_mac2, SRC, SRC, 0.2) is None
    assert g.admit(with_mac2, SRC, SRC, 0.3) is REPLAYED  # admitted once, never twice


def test_under_load_each_source_host_is_rate_limited() -> None:
    g = guard(load_threshold=0, rate_per_source=2.0, burst_per_source=3.0)
    rng = random.Random(6)
    flood = [wire.decode_handshake_init(forged(rng)) for _ in range(10)]
    verdicts = [
        g.admit(init, Address("203.0.113.5", 1000 + i), Address("203.0.113.5", 1000 + i), 0.0)
        for i, init in enumerate(flood)
    ]
    assert [v is RATE_LIMITED for v in verdicts] == [False] * 3 + [True] * 7  # one host, any port
    other = Address("203.0.113.6", 1000)
    assert g.admit(flood[0], other, other, 0.0) is not RATE_LIMITED
    assert g.admit(flood[1], SRC, SRC, 0.5) is not RATE_LIMITED
    again = g.admit(flood[2], Address("203.0.113.5", 1), Address("203.0.113.5", 1), 0.5)  # 1 token back
    assert again is not None and again is not RATE_LIMITED


def test_the_table_of_sources_is_bounded_and_forgets_the_least_recent() -> None:
    limiter = SourceLimiter(1.0, 1.0, max_sources=3)
    for host in ("a", "b", "c", "a", "d"):
        limiter.allow(host, 0.0)
    assert len(limiter) == 3
    assert not limiter.allow("a", 0.0)  # kept (recently seen), its token spent
    assert limiter.allow("b", 0.0)  # forgotten, so new


def test_rate_limits_count_hosts_an_ipv6_slash_64_and_mapped_ipv4_as_one() -> None:
    assert host_key(Address("192.0.2.1", 1), None) == host_key(Address("192.0.2.1", 2), None)
    assert host_key(Address("2001:db8::1", 1), None) == host_key(Address("2001:db8::ffff:2", 9), None)
    assert host_key(Address("2001:db8::1", 1), None) != host_key(Address("2001:db8:0:1::1", 1), None)
    assert host_key(Address("::ffff:192.0.2.1", 1), None) == "192.0.2.1"
    relay = RelayAddress("tcp://relay:7000", ALICE.peer_id)
    assert host_key(None, relay) == relay


@pytest.mark.parametrize(
    "config",
    [{"load_threshold": -1}, {"load_threshold": 1.5}, {"max_sources": 0}, {"replay_cache_size": True},
     {"load_window": 0}, {"rate_per_source": float("nan")}, {"burst_per_source": "3"}],
)  # fmt: skip
def test_guard_config_refuses_bad_values_by_name(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(config))):
        GuardConfig(**config)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "config",
    [{"handshake_load_threshold": -1}, {"handshake_load_threshold": "10"}, {"handshake_rate_per_source": 0},
     {"handshake_rate_per_source": True}, {"handshake_rate_per_source": float("inf")}],
)  # fmt: skip
def test_mesh_config_refuses_bad_handshake_limits_by_name(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(config))):
        MeshConfig(**config)  # type: ignore[arg-type]


# -- the endpoint, in virtual time ----------------------------------------------------------------


def test_an_initiator_answers_a_cookie_reply_transparently() -> None:
    net, a, b = pair(handshake_load_threshold=0)  # b is always under load
    connect(net, a, b)
    # Two round trips of 20 ms (the cookie's, the handshake's) and the confirming packet's 10 ms:
    # the initiation with mac2 leaves as the cookie arrives, not at the 0.25 s retry.
    assert net.clock.now == pytest.approx(0.05, abs=1e-6)
    assert b.endpoint.counters["cookie_replies_sent"] == 1
    assert b.endpoint.counters["drop_handshake_under_load"] == 1
    assert a.endpoint.counters["cookie_replies_received"] == 1
    inits = [wire.decode_handshake_init(d) for d in a.sent if d[0] == wire.PacketType.HANDSHAKE_INIT]
    assert len(inits) == 2 and not any(inits[0].mac2) and any(inits[1].mac2)
    # The connection works, and a rekey under load uses the stored cookie: no second cookie reply.
    b.endpoint.send(a.endpoint.peer_id, b"hello", net.clock.now)
    net.flush()
    assert net.run_until(lambda: a.messages() == [b"hello"], timeout=5)
    assert a.endpoint.rekey(b.endpoint.peer_id, net.clock.now)
    net.flush()
    assert net.run_until(lambda: a.endpoint.counters["handshakes_completed"] == 2, timeout=5)
    assert b.endpoint.counters["cookie_replies_sent"] == 1


def test_only_the_first_cookie_in_its_lifetime_brings_the_retry_forward() -> None:
    a = make(3, 1)
    a.endpoint.connect(BOB.peer_id, B_ADDR, 0.0)
    issuer = CookieIssuer(BOB.x25519_public, random.Random(4))  # what B, or a forger on the path, says

    def answer_last_initiation(now: float) -> None:
        sent = [d for d, _ in a.datagrams_to_send(now) if d[0] == wire.PacketType.HANDSHAKE_INIT]
        reply = issuer.reply(wire.decode_handshake_init(sent[-1]), source_bytes(A_ADDR), now)
        a.receive_datagram(reply, B_ADDR, now)

    answer_last_initiation(0.01)
    assert a.endpoint.get_timer() == 0.01  # the first cookie: the initiation with mac2 goes now
    a.handle_timer(0.01)
    answer_last_initiation(0.02)
    assert a.endpoint.counters["cookie_replies_received"] == 2
    timer = a.endpoint.get_timer()
    assert timer is not None and timer > 0.2  # the next waits for the retry timer, as scheduled
    assert a.endpoint.counters["handshake_initiations_sent"] == 2


def test_a_modified_replay_costs_no_diffie_hellman() -> None:
    net, a, b = pair()
    connect(net, a, b)
    (captured,) = [d for d in a.sent if d[0] == wire.PacketType.HANDSHAKE_INIT]
    body = bytearray(captured[: -2 * wire.MAC_LEN])
    body[-1] ^= 1  # the payload's tag: a Diffie-Hellman would find it forged
    packet = bytes(body) + compute_mac(mac1_key(b.endpoint.identity.x25519_public), bytes(body)) + bytes(16)
    b.receive_datagram(packet, Address("198.51.100.9", 9), net.clock.now)
    assert b.endpoint.counters["drop_replayed_handshake"] == 1
    assert b.endpoint.counters["drop_handshake_auth_failed"] == 0  # it never reached Noise


def test_unexpected_and_forged_cookie_replies_are_counted_drops() -> None:
    net, a, b = pair()
    a.endpoint.connect(b.endpoint.peer_id, B_ADDR, 0.0)
    a.receive_datagram(wire.encode_cookie_reply(12345, bytes(24), bytes(32)), B_ADDR, 0.0)
    assert a.endpoint.counters["drop_unexpected_cookie_reply"] == 1
    index = a.endpoint.connections()[b.endpoint.peer_id].handshake.local_index  # type: ignore[union-attr]
    a.receive_datagram(wire.encode_cookie_reply(index, bytes(24), bytes(32)), B_ADDR, 0.0)
    assert a.endpoint.counters["drop_bad_cookie_reply"] == 1
    a.receive_datagram(wire.encode_cookie_reply(index, bytes(24), bytes(32))[:-1], B_ADDR, 0.0)
    assert a.endpoint.counters["drop_malformed"] == 1
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.PeerConnected)), timeout=5)  # unharmed


def test_a_flood_of_fresh_initiations_leaves_room_for_a_legitimate_peer() -> None:
    # The hub admits 20 initiations a second before it asks for cookies; the flood sends 2,000 a
    # second (fresh valid-looking ones from 50 spoofed hosts, and copies of one real initiation).
    net = SimNetwork(3, LinkProfile(latency=0.005))
    hub = make(1, 1, handshake_load_threshold=20)
    net.attach(A_ADDR, hub)
    legit = make(2, 2)
    net.attach(B_ADDR, legit)
    spare = make(3, 3)
    spare.endpoint.connect(hub.endpoint.peer_id, Address("192.0.2.77", 7), 0.0)
    (real,) = [d for d, _ in spare.endpoint.datagrams_to_send(0.0) if d[0] == wire.PacketType.HANDSHAKE_INIT]
    rng = random.Random(9)
    mac1 = mac1_key(hub.endpoint.identity.x25519_public)

    def fresh() -> bytes:
        body = wire.encode_handshake_init(rng.getrandbits(32), rng.randbytes(wire.NOISE_MSG1_LEN))
        return body + compute_mac(mac1, body) + bytes(16)

    def flood_for(seconds: float) -> None:
        end = net.clock.now + seconds
        while net.clock.now < end:
            for i in range(20):
                src = Address(f"203.0.113.{i % 50 + 1}", 5000 + i)
                net.send_from(src, fresh() if i % 2 else real, A_ADDR)
            net.run_for(0.01)

    flood_for(1.0)
    legit.endpoint.connect(hub.endpoint.peer_id, A_ADDR, net.clock.now)
    net.flush()
    for _ in range(30):
        flood_for(0.1)
        if legit.of(ev.PeerConnected) and hub.of(ev.PeerConnected):
            break
    assert legit.of(ev.PeerConnected) and hub.of(ev.PeerConnected)
    c = hub.endpoint.counters
    flood_seen = c["drop_replayed_handshake"] + c["cookie_replies_sent"] + c["drop_handshake_rate_limited"]
    diffie_hellmans = c["drop_handshake_auth_failed"] + c["handshake_responses_sent"]
    assert flood_seen > 10 * diffie_hellmans
    assert (
        c["drop_replayed_handshake"] > 0
        and c["cookie_replies_sent"] > 0
        and c["drop_handshake_rate_limited"] > 0
    )
    assert legit.endpoint.counters["cookie_replies_received"] >= 1
    # About the threshold per window: 20 a second, plus one window's worth at the start.
    assert diffie_hellmans <= 20 * (net.clock.now + 2)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([0xE1, 0xE3]), st.binary(max_size=250), st.booleans())
def test_any_handshake_or_cookie_bytes_are_a_counted_drop_never_an_exception(
    kind: int, rest: bytes, load: bool
) -> None:
    node = make(1, 1, handshake_load_threshold=0 if load else 256)
    before = sum(node.endpoint.counters.values())
    node.receive_datagram(bytes([kind]) + rest, SRC, 0.0)
    assert sum(node.endpoint.counters.values()) > before


def test_the_gate_takes_the_node_settings_and_a_slow_rate_still_admits_one() -> None:
    g = HandshakeGuard.for_config(
        BOB.x25519_public,
        random.Random(1),
        MeshConfig(handshake_load_threshold=0, handshake_rate_per_source=0.5),
    )
    assert g.config.load_threshold == 0 and g.config.burst_per_source == 1.0
    rng = random.Random(8)
    first = g.admit(wire.decode_handshake_init(forged(rng)), SRC, SRC, 0.0)
    assert first is not None and first.reason == "drop_handshake_under_load"
    assert g.admit(wire.decode_handshake_init(forged(rng)), SRC, SRC, 1.0) is RATE_LIMITED
    assert g.admit(wire.decode_handshake_init(forged(rng)), SRC, SRC, 2.0) is not RATE_LIMITED
