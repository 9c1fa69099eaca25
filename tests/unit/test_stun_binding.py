"""The Binding server core: RFC 8489 answers, RFC 5780 CHANGE-REQUEST and friends, RFC 3489
clients, and garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.errors import ConfigError
from coremesh.stun import (
    Attr,
    BindingServer,
    ErrorCode,
    Method,
    Reply,
    StunClass,
    StunMessage,
    decode,
    encode,
    verify_fingerprint,
)

PRIMARY = Address("192.0.2.1", 3478)
OTHER = Address("192.0.2.2", 3479)
CLIENT = Address("198.51.100.7", 40000)
TID = bytes(range(12))


def binding(*attrs: tuple[int, bytes], msg_class: StunClass = StunClass.REQUEST) -> bytes:
    return encode(StunMessage(Method.BINDING, msg_class, TID, list(attrs)))


def only(replies: list[Reply]) -> tuple[StunMessage, Reply]:
    assert len(replies) == 1
    return decode(replies[0].data), replies[0]


def test_plain_binding() -> None:
    server = BindingServer("coremesh test")
    msg, reply = only(server.handle(binding(), CLIENT, PRIMARY, 0.0))
    assert (reply.via, reply.dst) == (PRIMARY, CLIENT)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (Method.BINDING, StunClass.SUCCESS, TID)
    assert msg.get_address(Attr.XOR_MAPPED_ADDRESS) == CLIENT
    assert msg.get_text(Attr.SOFTWARE) == "coremesh test"
    assert verify_fingerprint(reply.data)
    assert [t for t, _ in msg.attributes] == [Attr.XOR_MAPPED_ADDRESS, Attr.SOFTWARE, Attr.FINGERPRINT]
    assert server.counters["binding_success"] == 1


def test_ipv6_client() -> None:
    server = BindingServer("x")
    client = Address("2001:db8::7", 1234)
    msg, _ = only(server.handle(binding(), client, Address("2001:db8::1", 3478), 0.0))
    assert msg.get_address(Attr.XOR_MAPPED_ADDRESS) == client


def test_indications_and_responses_get_no_reply() -> None:
    server = BindingServer("x")
    assert server.handle(binding(msg_class=StunClass.INDICATION), CLIENT, PRIMARY, 0.0) == []
    assert server.handle(binding(msg_class=StunClass.SUCCESS), CLIENT, PRIMARY, 0.0) == []
    assert server.handle(binding(msg_class=StunClass.ERROR), CLIENT, PRIMARY, 0.0) == []
    assert server.counters == {"binding_indication": 1, "drop_not_request": 2}


def test_unknown_comprehension_required_gets_420() -> None:
    server = BindingServer("x")
    data = binding((0x7000, b"?"), (0xC000, b"optional is fine"), (Attr.PRIORITY, b"\0\0\0\1"))
    msg, reply = only(server.handle(data, CLIENT, PRIMARY, 0.0))
    assert msg.msg_class is StunClass.ERROR and reply.dst == CLIENT
    assert msg.get_error() == ErrorCode(420, "Unknown Attribute")
    assert msg.get_unknown_attributes() == [0x7000, Attr.PRIORITY]
    assert server.counters["error_420"] == 1
    # RFC 8489 attributes are understood (and ignored without credentials)
    ok = binding((Attr.USERNAME, b"u"), (Attr.MESSAGE_INTEGRITY, bytes(20)))
    assert only(server.handle(ok, CLIENT, PRIMARY, 0.0))[0].msg_class is StunClass.SUCCESS


def test_change_request_without_alternate_address_gets_420() -> None:
    server = BindingServer("x")
    for attr in (Attr.CHANGE_REQUEST, Attr.RESPONSE_PORT, Attr.PADDING):
        msg, _ = only(server.handle(binding((attr, b"\0\0\0\x06")), CLIENT, PRIMARY, 0.0))
        assert msg.get_error() == ErrorCode(420, "Unknown Attribute")
        assert msg.get_unknown_attributes() == [attr]


def test_other_methods_get_400() -> None:
    server = BindingServer("x")
    data = encode(StunMessage(Method.ALLOCATE, StunClass.REQUEST, TID))
    msg, _ = only(server.handle(data, CLIENT, PRIMARY, 0.0))
    assert msg.method == Method.ALLOCATE and msg.get_error() == ErrorCode(400, "Unsupported method")


def rfc5780_server() -> BindingServer:
    return BindingServer("x", other_address=OTHER, primary_address=PRIMARY)


SOCKETS = {
    (False, False): PRIMARY,
    (False, True): Address(PRIMARY.host, OTHER.port),
    (True, False): Address(OTHER.host, PRIMARY.port),
    (True, True): OTHER,
}


@pytest.mark.parametrize("received_on", list(SOCKETS))
@pytest.mark.parametrize("change", [None, (False, False), (True, False), (False, True), (True, True)])
def test_change_request(received_on: tuple[bool, bool], change: tuple[bool, bool] | None) -> None:
    server = rfc5780_server()
    assert server.local_addresses == [
        SOCKETS[k] for k in [(False, False), (False, True), (True, False), (True, True)]
    ]
    req = StunMessage(Method.BINDING, StunClass.REQUEST, TID)
    if change is not None:
        req.add_change_request(*change)
    local = SOCKETS[received_on]
    msg, reply = only(server.handle(encode(req), CLIENT, local, 0.0))
    flip = change or (False, False)
    expected_via = SOCKETS[(received_on[0] ^ flip[0], received_on[1] ^ flip[1])]
    assert (reply.via, reply.dst) == (expected_via, CLIENT)
    assert msg.get_address(Attr.RESPONSE_ORIGIN) == expected_via
    assert msg.get_address(Attr.OTHER_ADDRESS) == SOCKETS[(not received_on[0], not received_on[1])]
    assert msg.get_address(Attr.XOR_MAPPED_ADDRESS) == CLIENT


def test_response_port_and_padding() -> None:
    server = rfc5780_server()
    req = StunMessage(Method.BINDING, StunClass.REQUEST, TID)
    req.add_uint(Attr.RESPONSE_PORT, 5555)
    req.add(Attr.PADDING, b"p" * 1400)
    data = encode(req)
    msg, reply = only(server.handle(data, CLIENT, PRIMARY, 0.0))
    assert reply.dst == Address(CLIENT.host, 5555) and reply.via == PRIMARY
    assert msg.get(Attr.PADDING) == bytes(1400)
    assert len(reply.data) <= len(data) + 40  # no amplification beyond the fixed attributes
    zero = StunMessage(Method.BINDING, StunClass.REQUEST, TID)
    zero.add_uint(Attr.RESPONSE_PORT, 0)
    msg, reply = only(server.handle(encode(zero), CLIENT, PRIMARY, 0.0))
    assert msg.get_error() == ErrorCode(400, "Bad Request") and reply.dst == CLIENT


def test_malformed_change_request_gets_400() -> None:
    server = rfc5780_server()
    msg, _ = only(server.handle(binding((Attr.CHANGE_REQUEST, b"\0\0")), CLIENT, PRIMARY, 0.0))
    assert msg.get_error() == ErrorCode(400, "Bad Request")
    assert server.counters["error_400"] == 1


def test_request_on_a_socket_outside_rfc5780_is_plain() -> None:
    server = rfc5780_server()
    v6 = Address("2001:db8::1", 3478)
    msg, reply = only(server.handle(binding(), Address("2001:db8::7", 9), v6, 0.0))
    assert reply.via == v6 and not msg.has(Attr.OTHER_ADDRESS)
    msg, _ = only(server.handle(binding((Attr.CHANGE_REQUEST, b"\0\0\0\x04")), CLIENT, v6, 0.0))
    assert msg.get_error() == ErrorCode(420, "Unknown Attribute")


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="primary_address"):
        BindingServer("x", other_address=OTHER)
    with pytest.raises(ConfigError, match="both IP and port"):
        BindingServer("x", other_address=Address(PRIMARY.host, 3479), primary_address=PRIMARY)
    with pytest.raises(ConfigError, match="both IP and port"):
        BindingServer("x", other_address=Address("192.0.2.2", 3478), primary_address=PRIMARY)
    with pytest.raises(ConfigError, match="family"):
        BindingServer("x", other_address=Address("2001:db8::2", 3479), primary_address=PRIMARY)
    with pytest.raises(ConfigError, match="software"):
        BindingServer("s" * 200)
    assert BindingServer("x").local_addresses == []
    assert BindingServer("x", primary_address=PRIMARY).local_addresses == [PRIMARY]


# -- RFC 3489 clients (pystun3 speaks nothing else) -----------------------------------------


def classic_request(tid16: bytes, change: int | None = None, extra: bytes = b"") -> bytes:
    """What pystun3 sends: type 0x0001, length, a 16-byte id, optionally CHANGE-REQUEST."""
    body = b"" if change is None else struct.pack("!HHI", 0x0003, 4, change)
    body += extra
    return struct.pack("!HH", 0x0001, len(body)) + tid16 + body


def pystun3_parse(buf: bytes) -> dict[str, object]:
    """The way pystun3 reads a response: no padding between attributes, IPv4 only."""
    out: dict[str, object] = {"type": buf[0:2].hex(), "tid": buf[4:20]}
    remain = int.from_bytes(buf[2:4], "big")
    base = 20
    while remain:
        attr_type = buf[base : base + 2].hex()
        attr_len = int.from_bytes(buf[base + 2 : base + 4], "big")
        port = int.from_bytes(buf[base + 6 : base + 8], "big")
        ip = ".".join(str(b) for b in buf[base + 8 : base + 12])
        out[attr_type] = (ip, port)
        base += 4 + attr_len
        remain -= 4 + attr_len
    return out


def test_rfc3489_client_gets_classic_answers() -> None:
    server = rfc5780_server()
    tid16 = bytes(range(100, 116))
    replies = server.handle(classic_request(tid16), CLIENT, PRIMARY, 0.0)
    assert len(replies) == 1 and replies[0].via == PRIMARY
    seen = pystun3_parse(replies[0].data)
    assert seen["type"] == "0101" and seen["tid"] == tid16
    assert seen["0001"] == CLIENT  # MAPPED-ADDRESS
    assert seen["0004"] == PRIMARY  # SOURCE-ADDRESS
    assert seen["0005"] == OTHER  # CHANGED-ADDRESS
    assert set(seen) == {"type", "tid", "0001", "0004", "0005"}
    # pystun3's test II: change IP and port
    replies = server.handle(classic_request(tid16, 0x06), CLIENT, PRIMARY, 0.0)
    assert replies[0].via == OTHER and pystun3_parse(replies[0].data)["0004"] == OTHER
    # test III: change port only, sent to the changed IP
    replies = server.handle(classic_request(tid16, 0x02), CLIENT, Address(OTHER.host, PRIMARY.port), 0.0)
    assert replies[0].via == OTHER
    assert server.counters["rfc3489"] == 3
    # without RFC 5780: only MAPPED-ADDRESS
    plain = BindingServer("x")
    seen = pystun3_parse(plain.handle(classic_request(tid16), CLIENT, PRIMARY, 0.0)[0].data)
    assert set(seen) == {"type", "tid", "0001"}


def test_rfc3489_420_keeps_four_byte_alignment() -> None:
    server = rfc5780_server()
    tid16 = bytes(16)
    extra = struct.pack("!HH", 0x0002, 8) + bytes(8)  # RESPONSE-ADDRESS: not supported
    replies = server.handle(classic_request(tid16, extra=extra), CLIENT, PRIMARY, 0.0)
    msg = decode(replies[0].data, allow_rfc3489=True)
    assert msg.transaction_id == tid16 and msg.msg_class is StunClass.ERROR
    error = msg.get_error()
    assert error is not None and error.code == 420 and len(error.reason) % 4 == 0
    assert msg.get_unknown_attributes() == [0x0002, 0x0002]
    assert all(len(v) % 4 == 0 for _, v in msg.attributes)


# -- garbage ---------------------------------------------------------------------------------


@settings(max_examples=1500)
@given(st.binary(max_size=120))
def test_garbage_never_raises(data: bytes) -> None:
    for server in (BindingServer("x"), rfc5780_server()):
        replies = server.handle(data, CLIENT, PRIMARY, 0.0)
        if not replies:
            assert sum(server.counters.values()) == 1


@settings(max_examples=1000)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=6), st.booleans())
def test_random_attributes_never_raise(attrs: list[tuple[int, bytes]], classic: bool) -> None:
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) & 3) for t, v in attrs)
    head = struct.pack("!HH", 0x0001, len(body)) + (bytes(16) if classic else b"\x21\x12\xa4\x42" + TID)
    server = rfc5780_server()
    for reply in server.handle(head + body, CLIENT, PRIMARY, 0.0):
        decode(reply.data, allow_rfc3489=True)
    assert sum(server.counters.values()) >= 1


def test_malformed_and_oversize_are_counted() -> None:
    server = BindingServer("x", max_message_size=100)
    assert server.handle(b"\x00\x01\x00", CLIENT, PRIMARY, 0.0) == []
    assert server.handle(binding((Attr.DATA, bytes(200))), CLIENT, PRIMARY, 0.0) == []
    bad_fp = bytearray(binding())
    bad_fp[-1] ^= 1
    assert server.handle(bytes(bad_fp), CLIENT, PRIMARY, 0.0) == []
    assert server.counters == {"drop_malformed": 2, "drop_oversize": 1}
