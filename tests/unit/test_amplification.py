"""Anti-amplification: every reply the stack sends to an address nobody has validated (issue 14).

A UDP source address can be forged, so a reply to it can be aimed at a victim. The rule (QUIC's, RFC
9000 §8.1): such a reply is at most 3x the bytes received from that address. Each :class:`Case`
below is one kind of reply, driven through the real sans-IO core with real requests, the smallest
that triggers it among them (an attacker sends the smallest request that gets the biggest reply);
``answered`` says the smallest *legitimate* request still gets its answer (a fix that drops
everything would pass the ratio). Then hypothesis sends each server arbitrary requests from unknown
addresses and checks the ratio on every reply.

The DHT's replies (HELLO_REPLY, PONG, NODES, VALUE, STORED, and the verification PING a node sends
a new address) and the handshake's COOKIE_REPLY have their rows too; tests/unit/test_dht_secure.py
also checks each DHT reply at its padded size and that an address token lifts the limit only for
its own address.

The keyed relay (TCP or WebSocket) is not in :data:`CASES`: its peers' addresses are validated by
the TCP handshake before any frame. Its property here is that an unregistered session gets no more
than its challenge, replies of the size of what it sent, and one CLOSE.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.config import MeshConfig
from coremesh.endpoint.endpoint import Endpoint
from coremesh.identity import Identity, PeerId
from coremesh.keyedrelay.frames import MAX_REASON, Close, encode_frame
from coremesh.keyedrelay.server import RelayCore, Transmit
from coremesh.secure import wire
from coremesh.secure.session import InitiatorHandshake
from coremesh.stun.attributes import Attr
from coremesh.stun.binding import BindingServer
from coremesh.stun.budget import AMPLIFICATION_FACTOR
from coremesh.stun.message import Method, StunClass, StunMessage, encode
from coremesh.turn import TurnServer, TurnServerConfig

FACTOR = 3
ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(1, 33)))
WALL = 1_700_000_000.0
V4 = (Address("203.0.113.1", 3478), Address("203.0.113.2", 3479), Address("198.51.100.7", 40000))
V6 = (Address("2001:db8::10", 3478), Address("2001:db8::11", 3479), Address("2001:db8::7", 40000))

Exchange = tuple[bytes, list[bytes]]  # (what the address sent, what we sent back to it)


@dataclass(frozen=True)
class Case:
    """One reply kind. ``run`` returns its exchanges, each checked on its own."""

    name: str
    run: Callable[[], list[Exchange]]
    answered: bool = True  # the case's requests (all legitimate, the smallest) each get a reply


# ----------------------------------------------------------------------------- the mesh endpoint


def _endpoint() -> Endpoint:
    return Endpoint(BOB, MeshConfig(), rng=random.Random(5))


def _to_endpoint(ep: Endpoint, data: bytes, src: Address) -> Exchange:
    ep.receive_datagram(data, src, 1.0)
    return data, [out for out, dst in ep.datagrams_to_send(1.0) if dst == src]


def identity_probe() -> list[Exchange]:
    ep = _endpoint()
    return [_to_endpoint(ep, wire.encode_identity_probe(n), V4[2]) for n in (0, 2**64 - 1)]


def handshake_response() -> list[Exchange]:
    """A valid initiation (mac1 right, so replayable by anyone who saw it) from a forged address."""
    hs = InitiatorHandshake(
        ALICE,
        BOB.peer_id,
        local_index=3,
        conn_id=bytes(8),
        wall_time=WALL,
        random_bytes=random.Random(1).randbytes,
        started_at=0.0,
    )
    return [_to_endpoint(_endpoint(), hs.packet, V4[2])]


def cookie_reply() -> list[Exchange]:
    """Under load (threshold 0: always) an initiation without mac2 gets a COOKIE_REPLY, no DH."""
    ep = Endpoint(BOB, MeshConfig(handshake_load_threshold=0), rng=random.Random(5))
    hs = InitiatorHandshake(
        ALICE,
        BOB.peer_id,
        local_index=4,
        conn_id=bytes(8),
        wall_time=WALL,
        random_bytes=random.Random(2).randbytes,
        started_at=0.0,
    )
    exchange = _to_endpoint(ep, hs.packet, V4[2])
    assert ep.counters["cookie_replies_sent"] == 1
    assert [wire.PacketType(r[0]) for r in exchange[1]] == [wire.PacketType.COOKIE_REPLY]
    return [exchange]


# --------------------------------------------------------------------------------------------- DHT


def dht_replies(*, pex: bool = False) -> list[Exchange]:
    """Every DHT request kind, sealed and padded, from a fresh identity at a fresh address
    (the node also sends its verification PING there: it counts), to a node with the largest
    answers to give; and the clear HELLO. ``pex``: peer exchange instead, which gets no reply.
    tests/unit/test_dht_secure.py checks the reply kinds."""
    from coremesh.dht import messages as m
    from coremesh.dht import secure as sec

    from .dht_helpers import identity, record, sealed
    from .test_dht_secure import _loaded_node

    a, target = _loaded_node()
    rng = random.Random(4)
    bodies: list[m.Body] = [
        m.Ping(),
        m.FindNode(target),
        m.FindValue(target),
        m.FindValue(PeerId(bytes(32))),
        m.Store(record(Identity(bytes(range(50, 82))))),
    ]
    if pex:
        bodies = [m.Pex((record(Identity(bytes(range(60, 92)))),))]
    out: list[Exchange] = []
    for n, body in enumerate(bodies, 1):
        src = Address(f"10.7.{n}.1", 4000)
        # Padded as a requester without an address token pads them (m.REQUEST_PAD).
        pad = m.REQUEST_PAD - sec.SEALED_OVERHEAD
        data, _ = sealed(identity(rng), a.peer_id, body, txid=n, pad_to=pad, now=1.0)
        a.receive_datagram(data, src, 1.0)
        out.append((data, [d for d, to in a.datagrams_to_send(1.0) if to == src]))
    if pex:
        return out
    src = Address("10.7.99.1", 4000)
    hello = sec.encode_hello(99)
    a.receive_datagram(hello, src, 1.0)
    out.append((hello, [d for d, to in a.datagrams_to_send(1.0) if to == src]))
    return out


# ------------------------------------------------------------------------------------ STUN Binding


def _stun(method: int, attrs: Sequence[tuple[int, bytes]] = (), *, fingerprint: bool = False) -> bytes:
    return encode(StunMessage(method, StunClass.REQUEST, bytes(range(12)), attrs), fingerprint=fingerprint)


RFC3489_REQUEST = bytes([0, 1, 0, 0]) + bytes(16)


def _binding(
    rfc5780: bool, addresses: tuple[Address, Address, Address], requests: list[bytes]
) -> list[Exchange]:
    primary, other, client = addresses
    if rfc5780:
        server = BindingServer("coremesh-relay", other_address=other, primary_address=primary)
    else:
        server = BindingServer("coremesh-relay")
    out = []
    for data in requests:
        replies = server.handle(data, client, primary, 0.0)
        out.append((data, [r.data for r in replies if r.dst.host == client.host]))
    return out


def binding_cases() -> list[Case]:
    requests = [
        _stun(Method.BINDING),  # 20 bytes: the smallest request
        _stun(Method.BINDING, fingerprint=True),  # 28: what a multiplexing client sends
        RFC3489_REQUEST,
    ]
    errors = [
        _stun(Method.ALLOCATE),  # 400: not a Binding
        _stun(Method.BINDING, [(0x7FFF, b"")]),  # 420: one unknown comprehension-required attribute
        _stun(Method.BINDING, [(0x0030 + i, b"") for i in range(4)]),  # 420 listing four
        bytes([0, 1, 0, 4]) + bytes(16) + bytes([0x7F, 0xFF, 0, 0]),  # RFC 3489 with an unknown one
    ]
    cases = []
    for family, addresses in (("ipv4", V4), ("ipv6", V6)):
        for rfc5780 in (False, True):
            mode = "rfc5780" if rfc5780 else "plain"
            cases.append(
                Case(
                    f"stun.binding.{family}.{mode}",
                    functools.partial(_binding, rfc5780, addresses, requests),
                )
            )
            cases.append(
                Case(
                    f"stun.error.{family}.{mode}",
                    functools.partial(_binding, rfc5780, addresses, errors),
                )
            )
    return cases


# ------------------------------------------------------------------------------------------- TURN


def _turn(realm: str = "coremesh") -> TurnServer:
    return TurnServer(TurnServerConfig(realm=realm, users={"u": "p"}), rng=random.Random(1))


def _to_turn(server: TurnServer, data: bytes, client: Address = V4[2]) -> Exchange:
    effects = server.handle_client(data, client, V4[0], "udp", 1.0, wall=WALL)
    return data, [e.data for e in effects if getattr(e, "client", None) == client]


def turn_challenge() -> list[Exchange]:
    """401 to the smallest Allocate RFC 8656 allows (REQUESTED-TRANSPORT only) and to ours."""
    server = _turn()
    smallest = _stun(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))])
    ours = _stun(
        Method.ALLOCATE,
        [(Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])), (Attr.LIFETIME, (600).to_bytes(4, "big"))],
        fingerprint=True,
    )
    return [_to_turn(server, smallest), _to_turn(server, ours)]


def turn_unanswered_challenge() -> list[Exchange]:
    """A 401 cannot fit 3x a bare 20-byte request: dropped (counted), never sent."""
    server = _turn()
    out = [_to_turn(server, _stun(m)) for m in (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION)]
    assert server.counters["drop_amplification"] == 3
    return out


def turn_stale_nonce() -> list[Exchange]:
    """438 (a nonce that is not ours) to a request with MESSAGE-INTEGRITY."""
    msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, bytes(12))
    msg.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    msg.add_text(Attr.USERNAME, "u")
    msg.add_text(Attr.REALM, "coremesh")
    msg.add_text(Attr.NONCE, "x")
    return [_to_turn(_turn(), encode(msg, integrity_key=bytes(16), fingerprint=False))]


def turn_errors() -> list[Exchange]:
    """400 (unknown method; no USERNAME), 420 (an unknown attribute), before any authentication."""
    server = _turn()
    no_user = StunMessage(Method.ALLOCATE, StunClass.REQUEST, bytes(12))
    return [
        _to_turn(server, _stun(0x00F)),
        _to_turn(server, _stun(Method.ALLOCATE, [(0x7FFF, b"")])),
        _to_turn(server, encode(no_user, integrity_key=bytes(16), fingerprint=False)),
    ]


CASES: list[Case] = [
    Case("endpoint.identity_reply", identity_probe),
    Case("endpoint.handshake_response", handshake_response),
    *binding_cases(),
    Case("turn.401", turn_challenge),
    Case("turn.401_to_a_bare_request", turn_unanswered_challenge, answered=False),
    Case("turn.438", turn_stale_nonce),
    Case("turn.400_420", turn_errors),
    Case("endpoint.cookie_reply", cookie_reply),
    Case("dht.every_request_kind_and_hello", dht_replies),
    Case("dht.pex", functools.partial(dht_replies, pex=True), answered=False),
]


def test_the_factor_is_the_one_the_cores_enforce() -> None:
    assert AMPLIFICATION_FACTOR == FACTOR


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_no_reply_to_an_unvalidated_address_exceeds_three_times_its_request(case: Case) -> None:
    exchanges = case.run()
    assert exchanges
    for request, replies in exchanges:
        sent = sum(len(r) for r in replies)
        assert sent <= FACTOR * len(request), f"{case.name}: {len(request)} bytes in, {sent} out"
        assert bool(replies) is case.answered, f"{case.name}: {len(request)}-byte request, replies {replies}"


def test_rfc5780_answers_keep_other_address_for_a_fingerprinted_request() -> None:
    """NAT discovery reads OTHER-ADDRESS from the first answer: on IPv6 too, a request with
    FINGERPRINT (ours) is large enough to carry it; the bare 20-byte one gets the mapped address."""
    from coremesh.stun.message import decode

    for addresses in (V4, V6):
        (_, (full,)), (_, (bare,)) = _binding(
            True, addresses, [_stun(Method.BINDING, fingerprint=True), _stun(Method.BINDING)]
        )
        assert decode(full).get_address(Attr.OTHER_ADDRESS) == addresses[1]
        assert decode(bare).get_address(Attr.XOR_MAPPED_ADDRESS) == addresses[2]


def test_turn_over_tcp_is_not_cut() -> None:
    """Over TCP the handshake validated the address: the 401 keeps SOFTWARE and its reason."""
    server = _turn()
    effects = server.handle_client(_stun(Method.ALLOCATE), V4[2], V4[0], "tcp", 1.0, wall=WALL)
    assert len(effects) == 1 and b"coremesh-turn" in effects[0].data  # type: ignore[union-attr]


# ------------------------------------------------------------------ arbitrary requests (hypothesis)

_attr = st.tuples(st.sampled_from([int(a) for a in Attr] + [0x7FFF, 0xC000, 0x0030]), st.binary(max_size=20))
_stun_requests = st.builds(
    lambda method, attrs, fp: _stun(method, attrs, fingerprint=fp),
    st.sampled_from([int(m) for m in Method] + [0x00F]),
    st.lists(_attr, max_size=5),
    st.booleans(),
)
_requests = st.one_of(_stun_requests, st.binary(min_size=20, max_size=80).map(lambda b: b"\x00\x01" + b[2:]))
_fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(_requests, st.booleans(), st.booleans())
def test_any_request_to_the_binding_server_gets_at_most_three_times_its_size(
    data: bytes, rfc5780: bool, ipv6: bool
) -> None:
    for request, replies in _binding(rfc5780, V6 if ipv6 else V4, [data]):
        assert sum(len(r) for r in replies) <= FACTOR * len(request)


@_fuzz
@given(_requests, st.text("abcdefghijklmnopqrstuvwxyz.-", min_size=1, max_size=40))
def test_any_unauthenticated_request_to_turn_gets_at_most_three_times_its_size(
    data: bytes, realm: str
) -> None:
    request, replies = _to_turn(_turn(realm), data)
    assert sum(len(r) for r in replies) <= FACTOR * len(request)


@_fuzz
@given(st.binary(max_size=300), st.integers(0xE0, 0xEF))
def test_any_datagram_to_the_endpoint_gets_at_most_three_times_its_size(data: bytes, first: int) -> None:
    ep = _endpoint()
    for datagram in (bytes([first]) + data, data):
        request, replies = _to_endpoint(ep, datagram, V4[2])
        assert sum(len(r) for r in replies) <= FACTOR * len(request)


# ------------------------------------------------------------------------- keyed relay (over TCP)

_MAX_CLOSE = len(encode_frame(Close(code=0xFFFF, reason="x" * MAX_REASON)))


@_fuzz
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_an_unregistered_keyed_relay_session_gets_its_challenge_echoes_and_one_close(
    frames: list[bytes],
) -> None:
    core = RelayCore(random_bytes=random.Random(2).randbytes)
    conn = core.open_session(0.0)
    challenge = sum(len(a.frame) for a in core.drain() if isinstance(a, Transmit))
    received = sent = 0
    for frame in frames:
        core.receive_frame(conn, frame, 1.0)
        received += len(frame)
        sent += sum(len(a.frame) for a in core.drain() if isinstance(a, Transmit) and a.conn == conn)
    assert challenge < 100
    assert sent <= received + _MAX_CLOSE
