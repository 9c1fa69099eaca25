"""Every decoder of bytes from the network, fuzzed under one table (issue 14).

Each :class:`Target` is one decoder: ``decode`` takes bytes and returns an object or raises one of
``errors`` (the module's typed ``DecodeError``, or the error its docstring names, such as the
handshake's ``AuthenticationFailed``). Any other exception is a crash. ``seeds`` are valid
encodings made by the real encoders; where an encoder exists (``encode``), a seed round-trips byte
for byte and anything the decoder accepts re-encodes to something that decodes to the same object.
The server cores (STUN Binding, TURN, the endpoint) are targets too, with no error allowed at all:
they count every bad datagram as a drop.

Three properties run per target: arbitrary bytes (and a valid seed's head followed by arbitrary
bytes, so the fuzzer gets past type bytes and length checks), mutated seeds (flipped, inserted,
deleted and truncated bytes), and the seeds' round trips. ``benchmarks/fuzz_decoders.py`` drives the
same table under atheris, coverage-guided (docs/fuzzing.md).

A decoder added to the stack belongs here: one ``Target`` row.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.config import MeshConfig
from coremesh.dht import messages as dht_messages
from coremesh.dht.records import PeerRecord
from coremesh.endpoint.endpoint import Endpoint
from coremesh.endpoint.states import PeerState
from coremesh.errors import AuthenticationFailed, DecodeError, InvalidPeerId
from coremesh.identity import Identity, PeerId
from coremesh.keyedrelay import frames as kr
from coremesh.keyedrelay.client import ClientSession
from coremesh.keyedrelay.framing import FrameReader, tcp_frame
from coremesh.keyedrelay.server import RelayCore
from coremesh.reliability import frames as rf
from coremesh.reliability.varint import decode_varint, encode_varint
from coremesh.routing import flood_messages as fm
from coremesh.routing.messages import RouteEntry, RouteUpdate, decode_update, encode_update
from coremesh.routing.overlay import OverlayType, Routed, decode_routed, encode_routed, overlay_packet
from coremesh.routing.records import OriginRecord
from coremesh.secure import wire
from coremesh.secure.noise import HandshakeState, KeyPair
from coremesh.secure.session import (
    PROLOGUE,
    PROTOCOL_NAME,
    InitiatorHandshake,
    Responder,
    compute_mac,
    encode_timestamp,
    mac1_key,
)
from coremesh.sim import SimNetwork
from coremesh.stun import attributes as sa
from coremesh.stun.binding import BindingServer
from coremesh.stun.channeldata import decode_channel_data, encode_channel_data
from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode
from coremesh.traversal.candidates import Candidate, CandidateType
from coremesh.traversal.frames import (
    Candidates,
    PathChallenge,
    PathResponse,
    decode_path_frames,
    encode_path_frames,
)
from coremesh.turn import TurnClient, TurnServer, TurnServerConfig
from coremesh.turn.server import SendToClient

from .test_endpoint import A_ADDR, Node, connect, pair

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(1, 33)))
CAROL = Identity(bytes(range(2, 34)))
WALL = 1_700_000_000.0
SERVER = Address("198.51.100.1", 3478)
CLIENT = Address("192.0.2.10", 40000)


@dataclass(frozen=True)
class Target:
    """One decoder under fuzzing. ``seeds`` builds valid encodings (called once, cached)."""

    name: str
    decode: Callable[[bytes], object]
    errors: tuple[type[Exception], ...]
    seeds: Callable[[], list[bytes]]
    encode: Callable[[Any], bytes] | None = None


def _seeded_bytes() -> Callable[[int], bytes]:
    rng = random.Random(7)
    return rng.randbytes


# ----------------------------------------------------------------------- mesh packets (secure/wire)


def _init_packet() -> bytes:
    hs = InitiatorHandshake(
        ALICE, BOB.peer_id, local_index=7, conn_id=bytes(8), wall_time=WALL, random_bytes=_seeded_bytes(),
        started_at=0.0,
    )  # fmt: skip
    return hs.packet


def _resp_packet() -> bytes:
    init = wire.decode_handshake_init(_init_packet())
    return Responder(BOB).respond(init, local_index=9, random_bytes=_seeded_bytes(), now=0.0).response


def _wire_seeds() -> list[bytes]:
    return [
        _init_packet(),
        _resp_packet(),
        wire.encode_transport_header(5, 2**40) + bytes(40),
        wire.encode_identity_probe(12345),
        wire.encode_identity_reply(12345, ALICE.peer_id.key, bytes(64)),
    ]


def _respond(data: bytes) -> object:
    """The responder's whole path for one initiation: framing, mac1, Noise, the payload."""
    init = wire.decode_handshake_init(data)
    responder = Responder(BOB)
    if not responder.check_mac1(init):
        raise AuthenticationFailed("bad mac1")
    return responder.respond(init, local_index=1, random_bytes=_seeded_bytes(), now=0.0)


def _complete(data: bytes) -> object:
    """The initiator's path for a response to its initiation (``_init_packet``'s handshake)."""
    resp = wire.decode_handshake_resp(data)
    hs = InitiatorHandshake(
        ALICE, BOB.peer_id, local_index=7, conn_id=bytes(8), wall_time=WALL, random_bytes=_seeded_bytes(),
        started_at=0.0,
    )  # fmt: skip
    if not hs.check_mac1(resp):
        raise AuthenticationFailed("bad mac1")
    return hs.complete(resp, 0.0)


def _initiation_with_payload(payload: bytes) -> object:
    """An initiation that authenticates (right keys, right mac1) but carries any 52-byte payload:
    what the responder does past the AEAD with a hostile initiator's plaintext."""
    payload = (payload + bytes(wire.INIT_PAYLOAD_LEN))[: wire.INIT_PAYLOAD_LEN]
    hs = HandshakeState(
        PROTOCOL_NAME, initiator=True, prologue=PROLOGUE,
        s=KeyPair(ALICE.x25519_private, ALICE.x25519_public), rs=BOB.peer_id.x25519_public(),
        random_bytes=_seeded_bytes(),
    )  # fmt: skip
    packet = wire.encode_handshake_init(3, hs.write_message(payload))
    packet += compute_mac(mac1_key(BOB.x25519_public), packet) + bytes(wire.MAC_LEN)
    return _respond(packet)


def _peer_id(data: bytes) -> object:
    peer = PeerId.from_bytes(data)
    peer.x25519_public()
    return peer


@functools.cache
def _endpoint() -> Endpoint:
    return Endpoint(BOB, MeshConfig(), rng=random.Random(3))


def _endpoint_receive(data: bytes) -> object:
    ep = _endpoint()
    ep.receive_datagram(data, CLIENT, 1.0)
    return ep.datagrams_to_send(1.0)


@functools.cache
def _pair() -> list[tuple[SimNetwork, Node, Node]]:
    return []


def _connected() -> tuple[SimNetwork, Node, Node]:
    """A connected pair of endpoints; a new one once the last was closed by what it received."""
    pairs = _pair()
    if pairs:
        net, a, b = pairs[0]
        if b.endpoint.state_of(a.endpoint.peer_id) is PeerState.CONNECTED:
            return pairs[0]
    net, a, b = pair()
    connect(net, a, b)
    pairs[:] = [(net, a, b)]
    return net, a, b


def _peer_plaintext(data: bytes) -> object:
    """Any plaintext, sealed by a connected (authenticated, hostile) peer: the decrypted dispatch to
    the overlay (route updates, ROUTED, flood), path frames and the reliable stream's frames."""
    net, a, b = _connected()
    session = a.endpoint.connections()[b.endpoint.peer_id].current
    assert session is not None
    b.receive_datagram(session.seal(data), A_ADDR, net.clock.now)
    return b.datagrams_to_send(net.clock.now)


def _plaintext_seeds() -> list[bytes]:
    update = overlay_packet(OverlayType.ROUTE_UPDATE, encode_update(_route_update()))
    bcast, mcast, members = _flood_seeds()
    return [
        *_payload_seeds(),
        *_path_seeds(),
        encode_routed(Routed(BOB.peer_id, ALICE.peer_id, 8, b"inner")),
        update,
        overlay_packet(OverlayType.BROADCAST, bcast[0]),
        overlay_packet(OverlayType.MULTICAST, mcast[0]),
        overlay_packet(OverlayType.MEMBERSHIP, members[0]),
    ]


# ------------------------------------------------------------------------------------ STUN / TURN


def _stun(method: int, cls: StunClass, attrs: list[tuple[int, bytes]], fingerprint: bool = True) -> bytes:
    return encode(StunMessage(method, cls, bytes(range(12)), attrs), fingerprint=fingerprint)


def _stun_seeds() -> list[bytes]:
    msg = StunMessage(Method.BINDING, StunClass.SUCCESS, bytes(range(12)))
    msg.add_address(sa.Attr.XOR_MAPPED_ADDRESS, Address("192.0.2.1", 4000))
    msg.add_address(sa.Attr.OTHER_ADDRESS, Address("2001:db8::1", 4001))
    msg.add_text(sa.Attr.SOFTWARE, "fuzz")
    err = StunMessage(Method.ALLOCATE, StunClass.ERROR, bytes(range(12)))
    err.add_error(401, "Unauthorized")
    err.add_text(sa.Attr.REALM, "coremesh")
    err.add_text(sa.Attr.NONCE, "abcdef")
    err.add_unknown_attributes([0x7FFF, 0x0030])
    alloc = StunMessage(Method.ALLOCATE, StunClass.REQUEST, bytes(range(12)))
    alloc.add_uint(sa.Attr.REQUESTED_TRANSPORT, 17)
    alloc.add_uint(sa.Attr.LIFETIME, 600)
    alloc.add_text(sa.Attr.USERNAME, "u")
    return [
        encode(msg),
        encode(err),
        encode(alloc, integrity_key=b"k" * 16),
        _stun(Method.BINDING, StunClass.REQUEST, [(sa.Attr.CHANGE_REQUEST, bytes(4))]),
        bytes([0, 1, 0, 0]) + bytes(16),  # a classic RFC 3489 request
    ]


_GETTERS: dict[sa.Kind, Callable[[StunMessage, int], object]] = {
    sa.Kind.ADDRESS: StunMessage.get_address,
    sa.Kind.XOR_ADDRESS: StunMessage.get_address,
    sa.Kind.UINT: StunMessage.get_uint,
    sa.Kind.TEXT: StunMessage.get_text,
    sa.Kind.ERROR_CODE: lambda m, _: m.get_error(),
    sa.Kind.UNKNOWN_ATTRIBUTES: lambda m, _: m.get_unknown_attributes(),
    sa.Kind.PASSWORD_ALGORITHMS: lambda m, a: (
        m.get_password_algorithms() if a == sa.Attr.PASSWORD_ALGORITHMS else m.get_password_algorithm()
    ),
    sa.Kind.ADDRESS_ERROR_CODE: lambda m, _: m.get_address_error(),
    sa.Kind.ICMP: lambda m, _: m.get_icmp(),
}


def _stun_decode_all(data: bytes) -> object:
    """The message and every attribute it carries, each through its typed getter."""
    msg = decode(data, allow_rfc3489=True)
    for attr, _ in msg.attributes:
        info = sa.ATTRIBUTES.get(attr)
        getter = None if info is None else _GETTERS.get(info.kind)
        if getter is not None:
            getter(msg, attr)
    msg.get_change_request()
    msg.get_even_port()
    return msg


def _binding_server(data: bytes) -> object:
    server = BindingServer("fuzz", other_address=Address("198.51.100.2", 3479), primary_address=SERVER)
    return server.handle(data, CLIENT, SERVER, 0.0)


@functools.cache
def _turn_server() -> TurnServer:
    config = TurnServerConfig(realm="r", users={"u": "p"}, relay_ipv4="198.51.100.1")
    return TurnServer(config, rng=random.Random(1))


def _turn_server_receive(data: bytes) -> object:
    return _turn_server().handle_client(data, CLIENT, SERVER, "udp", 1.0, wall=WALL)


def _turn_client() -> TurnClient:
    client = TurnClient(SERVER, "u", "p", random_bytes=random.Random(4).randbytes)
    client.allocate(0.0)
    client.bind_channel(Address("203.0.113.1", 1), 0.0)
    return client


def _turn_client_receive(data: bytes) -> object:
    """A client allocating (its transaction ids are the seeds' ids): ``data`` from its server."""
    return _turn_client().on_datagram(data, 0.5)


def _turn_client_seeds() -> list[bytes]:
    """The server's real answers to the client's first request: the 401, then the allocation."""
    client = _turn_client()
    server = TurnServer(
        TurnServerConfig(realm="r", users={"u": "p"}, relay_ipv4="198.51.100.1"), rng=random.Random(1)
    )
    (request,) = client.datagrams_to_send()
    (challenge,) = server.handle_client(request, CLIENT, SERVER, "udp", 0.0, wall=WALL)
    assert isinstance(challenge, SendToClient)
    return [challenge.data, encode_channel_data(0x4000, b"relayed")]


# ----------------------------------------------------------------------------------- keyed relay


def _keyed_frames() -> list[kr.Frame]:
    return [
        kr.Challenge(nonce=bytes(range(32)), relay_id=ALICE.peer_id),
        kr.Challenge(nonce=bytes(32)),
        kr.make_register(ALICE, bytes(32)),
        kr.Registered(max_packet=1400),
        kr.Error(code=1, reason="no"),
        kr.Send(dst=BOB.peer_id, packet=b"payload"),
        kr.Recv(src=BOB.peer_id, packet=b"x" * 40),
        kr.PeerUnknown(dst=BOB.peer_id),
        kr.Ping(data=b"12345678"),
        kr.Pong(),
        kr.Close(code=1000, reason="bye"),
    ]


def _frame_reader(data: bytes) -> object:
    return FrameReader().feed(data)


def _relay_server(data: bytes) -> object:
    """The relay's core, one new connection: ``data`` is its TCP byte stream."""
    core = RelayCore(random_bytes=random.Random(2).randbytes)
    conn = core.open_session(0.0)
    try:
        frames = FrameReader().feed(data)
    except DecodeError as exc:  # the TCP framing itself is broken: the shell reports it so
        core.malformed(conn, str(exc))
        return core.drain()
    for frame in frames:
        core.receive_frame(conn, frame, 1.0)
    return core.drain()


def _relay_server_seeds() -> list[bytes]:
    nonce = random.Random(2).randbytes(kr.NONCE_LEN)
    frames = [
        kr.make_register(ALICE, nonce),
        kr.Ping(data=b"12345678"),
        kr.Send(dst=BOB.peer_id, packet=b"payload"),
        kr.Send(dst=ALICE.peer_id, packet=b"to myself"),
        kr.Close(code=1000, reason="bye"),
    ]
    return [b"".join(tcp_frame(kr.encode_frame(f)) for f in frames)]


def _relay_client(data: bytes) -> object:
    """A client session from its first byte: ``data`` is what the relay sends it over TCP."""
    session = ClientSession(ALICE, 0.0, random_bytes=random.Random(2).randbytes)
    try:
        frames = FrameReader().feed(data)
    except DecodeError:  # broken TCP framing: the shell drops the connection
        return None
    for frame in frames:
        session.receive_frame(frame, 1.0)
    return session.frames_to_send()


def _relay_client_seeds() -> list[bytes]:
    frames = [
        kr.Challenge(nonce=bytes(range(32)), relay_id=BOB.peer_id),
        kr.Registered(max_packet=1400),
        kr.Recv(src=BOB.peer_id, packet=b"x" * 40),
        kr.PeerUnknown(dst=BOB.peer_id),
        kr.Ping(data=b"12345678"),
        kr.Error(code=1, reason="no"),
    ]
    return [b"".join(tcp_frame(kr.encode_frame(f)) for f in frames)]


# --------------------------------------------------------------------------------------------- DHT


def _dht_record() -> PeerRecord:
    return PeerRecord.create(ALICE, 1, WALL + 3600, [("host", "192.0.2.1:4000")])


def _dht_seeds() -> list[bytes]:
    bodies: list[dht_messages.Body] = [
        dht_messages.Ping(),
        dht_messages.FindNode(BOB.peer_id),
        dht_messages.Nodes(((BOB.peer_id, Address("192.0.2.9", 9)),)),
        dht_messages.Store(_dht_record()),
    ]
    return [dht_messages.encode_message(ALICE.sign, ALICE.peer_id, 1, body) for body in bodies]


def _dht_unverified(data: bytes) -> object:
    """Past the signature check (a fuzzer cannot forge one): the envelope and every body decoder."""
    return dht_messages.decode_message(data, verify=False)


# ----------------------------------------------------------------------------------------- routing


def _origin_record() -> OriginRecord:
    return OriginRecord.create(ALICE.peer_id, 5, [BOB.peer_id, CAROL.peer_id], ALICE.sign)


def _route_update() -> RouteUpdate:
    return RouteUpdate(
        epoch=1, msg_no=2, ack_epoch=1, acks=(1, 2), records=(_origin_record(),),
        routes=(RouteEntry((BOB.peer_id, CAROL.peer_id), 10),), withdrawals=(ALICE.peer_id,),
    )  # fmt: skip


def _flood_seeds() -> tuple[list[bytes], list[bytes], list[bytes]]:
    data = b"hello"
    bcast = fm.Broadcast(
        ALICE.peer_id, 3, data, ALICE.sign(fm.broadcast_signed_bytes(ALICE.peer_id, 3, data))
    )
    mcast = fm.Multicast(
        ALICE.peer_id, 4, "room", data, ALICE.sign(fm.multicast_signed_bytes(ALICE.peer_id, 4, "room", data))
    )
    groups = ("a", "room")
    member = fm.MembershipRecord(
        BOB.peer_id, 2, groups, BOB.sign(fm.membership_signed_bytes(BOB.peer_id, 2, groups))
    )
    return [bcast.encode()], [mcast.encode()], [fm.encode_membership([member])]


# ---------------------------------------------------------------------------- reliability and paths


def _payload_seeds() -> list[bytes]:
    frames: list[rf.Frame] = [
        rf.PingFrame(1),
        rf.PongFrame(1),
        rf.AckFrame(((5, 9), (1, 2)), 250),
        rf.StreamFrame(1000, b"data"),
        rf.MaxDataFrame(1 << 20),
        rf.CloseFrame(0, "bye"),
        rf.PaddingFrame(3),
    ]
    return [rf.encode_payload(42, frames), rf.encode_payload(2**40, [rf.StreamFrame(0, b"")])]


def _path_seeds() -> list[bytes]:
    cands = (
        Candidate(CandidateType.HOST, Address("192.0.2.1", 4000)),
        Candidate(CandidateType.RELAY, Address("2001:db8::2", 5000)),
    )
    return [
        encode_path_frames([PathChallenge(b"12345678"), PathResponse(b"abcdefgh")]),
        encode_path_frames([Candidates(7, True, False, "cone", cands)]),
    ]


def _varint(data: bytes) -> object:
    return decode_varint(data, 0)


# ------------------------------------------------------------------------------------------- table


TARGETS: list[Target] = [
    # mesh packets
    Target("wire.handshake_init", wire.decode_handshake_init, (DecodeError,), lambda: [_init_packet()]),
    Target("wire.handshake_resp", wire.decode_handshake_resp, (DecodeError,), lambda: [_resp_packet()]),
    Target(
        "wire.transport_header",
        wire.decode_transport_header,
        (DecodeError,),
        lambda: [wire.encode_transport_header(5, 2**40) + bytes(40)],
    ),
    Target(
        "wire.identity_probe",
        wire.decode_identity_probe,
        (DecodeError,),
        lambda: [wire.encode_identity_probe(1)],
        encode=wire.encode_identity_probe,
    ),
    Target(
        "wire.identity_reply",
        wire.decode_identity_reply,
        (DecodeError,),
        lambda: [wire.encode_identity_reply(9, ALICE.peer_id.key, bytes(range(64)))],
        encode=lambda t: wire.encode_identity_reply(*t),
    ),
    Target("identity.peer_id", _peer_id, (InvalidPeerId,), lambda: [ALICE.peer_id.key], lambda p: p.key),
    Target("endpoint.datagram", _endpoint_receive, (), _wire_seeds),
    Target("endpoint.peer_plaintext", _peer_plaintext, (), _plaintext_seeds),
    # handshake
    Target("handshake.initiation", _respond, (DecodeError, AuthenticationFailed), lambda: [_init_packet()]),
    Target("handshake.response", _complete, (DecodeError, AuthenticationFailed), lambda: [_resp_packet()]),
    Target(
        "handshake.init_payload",
        _initiation_with_payload,
        (DecodeError, AuthenticationFailed),
        lambda: [ALICE.peer_id.key + encode_timestamp(WALL) + bytes(8)],
    ),
    # STUN and TURN
    Target("stun.message", _stun_decode_all, (DecodeError,), _stun_seeds),
    Target(
        "stun.channel_data",
        decode_channel_data,
        (DecodeError,),
        lambda: [encode_channel_data(0x4001, b"abc"), encode_channel_data(0x4FFF, b"")],
        encode=lambda c: encode_channel_data(c.channel, c.data),
    ),
    Target("stun.binding_server", _binding_server, (), _stun_seeds),
    Target(
        "turn.server", _turn_server_receive, (), lambda: [*_stun_seeds(), encode_channel_data(0x4001, b"x")]
    ),
    Target("turn.client", _turn_client_receive, (), _turn_client_seeds),
    # keyed relay
    Target(
        "keyedrelay.frame",
        kr.decode_frame,
        (DecodeError,),
        lambda: [kr.encode_frame(f) for f in _keyed_frames()],
        encode=kr.encode_frame,
    ),
    Target(
        "keyedrelay.tcp_framing",
        _frame_reader,
        (DecodeError,),
        lambda: [b"".join(tcp_frame(kr.encode_frame(f)) for f in _keyed_frames())],
    ),
    Target("keyedrelay.server", _relay_server, (), _relay_server_seeds),
    Target("keyedrelay.client", _relay_client, (), _relay_client_seeds),
    # DHT (coremesh/dht/: its messages are being reworked; these rows follow its decoders)
    Target("dht.message", dht_messages.decode_message, (DecodeError, AuthenticationFailed), _dht_seeds),
    Target("dht.message_unsigned", _dht_unverified, (DecodeError,), _dht_seeds),
    Target(
        "dht.record",
        PeerRecord.decode,
        (DecodeError,),
        lambda: [_dht_record().encode()],
        encode=PeerRecord.encode,
    ),
    # routing
    Target(
        "routing.record",
        OriginRecord.decode,
        (DecodeError,),
        lambda: [_origin_record().encode()],
        encode=OriginRecord.encode,
    ),
    Target(
        "routing.update",
        decode_update,
        (DecodeError,),
        lambda: [encode_update(_route_update())],
        encode=encode_update,
    ),
    Target(
        "routing.routed",
        decode_routed,
        (DecodeError,),
        lambda: [
            encode_routed(Routed(BOB.peer_id, ALICE.peer_id, 8, b"inner")),
            encode_routed(Routed(BOB.peer_id, ALICE.peer_id, 1, b"i", (CAROL.peer_id,), probe=True)),
        ],
        encode=encode_routed,
    ),
    Target(
        "flood.broadcast",
        fm.decode_broadcast,
        (DecodeError,),
        lambda: _flood_seeds()[0],
        encode=fm.Broadcast.encode,
    ),
    Target(
        "flood.multicast",
        fm.decode_multicast,
        (DecodeError,),
        lambda: _flood_seeds()[1],
        encode=fm.Multicast.encode,
    ),
    Target(
        "flood.membership",
        fm.decode_membership,
        (DecodeError,),
        lambda: _flood_seeds()[2],
        encode=fm.encode_membership,
    ),
    # reliability and path frames
    Target(
        "reliability.payload",
        rf.decode_payload,
        (DecodeError,),
        _payload_seeds,
        encode=lambda r: rf.encode_payload(*r),
    ),
    Target(
        "reliability.varint",
        _varint,
        (DecodeError,),
        lambda: [encode_varint(n) for n in (0, 63, 64, 2**62 - 1)],
    ),
    Target(
        "traversal.path_frames", decode_path_frames, (DecodeError,), _path_seeds, encode=encode_path_frames
    ),
]
"""Every decoder of bytes that arrive from the network. Each name is a fuzz target of
``benchmarks/fuzz_decoders.py`` too."""

BY_NAME: dict[str, Target] = {t.name: t for t in TARGETS}


@functools.cache
def seeds_of(name: str) -> tuple[bytes, ...]:
    return tuple(BY_NAME[name].seeds())


def run(target: Target, data: bytes) -> object | None:
    """Decode ``data``; ``None`` for a typed error. Any other exception propagates: a crash."""
    try:
        obj = target.decode(data)
    except target.errors:
        return None
    if target.encode is not None:
        again = target.decode(target.encode(obj))
        assert again == obj, f"{target.name}: re-encoding {obj!r} decodes to {again!r}"
    return obj


def mutate(seed: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply ``(kind, position, value)`` edits: flip, set, insert, delete, truncate, duplicate."""
    data = bytearray(seed)
    for kind, pos, value in edits:
        i = pos % (len(data) + 1)
        if kind == 0 and data:
            data[i % len(data)] ^= 1 << (value % 8)
        elif kind == 1 and data:
            data[i % len(data)] = value & 0xFF
        elif kind == 2:
            data[i:i] = bytes([value & 0xFF]) * (1 + value % 4)
        elif kind == 3:
            del data[i : i + 1 + value % 8]
        elif kind == 4:
            del data[i:]
        elif kind == 5:
            data[i:i] = data[max(0, i - 1 - value % 16) : i]
    return bytes(data)


_ids = [t.name for t in TARGETS]
_edits = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 4096), st.integers(0, 255)), min_size=1, max_size=6
)
_fuzz = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("target", TARGETS, ids=_ids)
def test_seeds_decode_and_round_trip(target: Target) -> None:
    seeds = seeds_of(target.name)
    assert seeds
    for seed in seeds:
        obj = target.decode(seed)
        if target.encode is not None:
            assert target.encode(obj) == seed


@pytest.mark.parametrize("target", TARGETS, ids=_ids)
@_fuzz
@given(data=st.data())
def test_arbitrary_bytes_give_an_object_or_the_typed_error(target: Target, data: st.DataObject) -> None:
    seeds = seeds_of(target.name)
    seed = data.draw(st.sampled_from(seeds))
    head = seed[: data.draw(st.integers(0, len(seed)))]  # a valid start: past type and version bytes
    tail = data.draw(st.binary(max_size=600))
    run(target, data.draw(st.sampled_from([tail, head + tail])))


@pytest.mark.parametrize("target", TARGETS, ids=_ids)
@_fuzz
@given(data=st.data(), edits=_edits)
def test_mutated_encodings_give_an_object_or_the_typed_error(
    target: Target, data: st.DataObject, edits: list[tuple[int, int, int]]
) -> None:
    seed = data.draw(st.sampled_from(seeds_of(target.name)))
    run(target, mutate(seed, edits))


def test_the_table_names_each_decoder_once() -> None:
    assert len(BY_NAME) == len(TARGETS)
