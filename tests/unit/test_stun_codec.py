"""The STUN codec: message types, framing errors, typed attributes, round trips and fuzzing."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.errors import DecodeError
from coremesh.stun import (
    ATTRIBUTES,
    MAX_MESSAGE_SIZE,
    AddressError,
    Attr,
    ChangeRequest,
    ErrorCode,
    Icmp,
    Method,
    PasswordAlgorithm,
    PasswordAlgorithmEntry,
    StunClass,
    StunDecodeError,
    StunEncodeError,
    StunMessage,
    decode,
    encode,
    is_stun,
    verify_fingerprint,
    verify_integrity,
    verify_integrity_sha256,
)
from coremesh.stun.attributes import Kind, is_comprehension_required
from coremesh.stun.message import MAX_ATTRIBUTES, message_type, split_message_type

TID = bytes(range(1, 13))
TRAILERS = {Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT}


def header(msg_type: int, length: int, cookie: int = 0x2112A442, tid: bytes = TID) -> bytes:
    return struct.pack("!HHI", msg_type, length, cookie) + tid


def attr(t: int, value: bytes, pad: bytes = b"\0") -> bytes:
    return struct.pack("!HH", t, len(value)) + value + pad * (-len(value) & 3)


def message(*attrs: bytes, msg_type: int = 0x0001) -> bytes:
    body = b"".join(attrs)
    return header(msg_type, len(body)) + body


# -- message types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "klass", "wire"),
    [
        (Method.BINDING, StunClass.REQUEST, 0x0001),
        (Method.BINDING, StunClass.INDICATION, 0x0011),
        (Method.BINDING, StunClass.SUCCESS, 0x0101),
        (Method.BINDING, StunClass.ERROR, 0x0111),
        (Method.ALLOCATE, StunClass.REQUEST, 0x0003),
        (Method.ALLOCATE, StunClass.ERROR, 0x0113),
        (Method.REFRESH, StunClass.SUCCESS, 0x0104),
        (Method.SEND, StunClass.INDICATION, 0x0016),
        (Method.DATA, StunClass.INDICATION, 0x0017),
        (Method.CREATE_PERMISSION, StunClass.REQUEST, 0x0008),
        (Method.CHANNEL_BIND, StunClass.SUCCESS, 0x0109),
        (0xFFF, StunClass.ERROR, 0x3FFF),
        (0x080, StunClass.REQUEST, 0x0200),
        (0x010, StunClass.REQUEST, 0x0020),
    ],
)
def test_message_type_interleaving(method: int, klass: StunClass, wire: int) -> None:
    assert message_type(method, klass) == wire
    assert split_message_type(wire) == (method, klass)
    msg = decode(header(wire, 0))
    assert (msg.method, msg.msg_class) == (method, klass)


def test_every_method_and_class_round_trips() -> None:
    for method in range(0x1000):
        for klass in StunClass:
            t = message_type(method, klass)
            assert t < 0x4000
            assert split_message_type(t) == (method, klass)
    assert isinstance(decode(header(0x0101, 0)).method, Method)


# -- framing errors ------------------------------------------------------------------------


def _fp(data_without_fp: bytes) -> bytes:
    """Append a correct FINGERPRINT (fixing the header length first)."""
    body_len = len(data_without_fp) - 20 + 8
    head = data_without_fp[:2] + struct.pack("!H", body_len) + data_without_fp[4:]
    crc = (zlib.crc32(head) ^ 0x5354554E) & 0xFFFFFFFF
    return head + attr(Attr.FINGERPRINT, struct.pack("!I", crc))


_FP_OK = _fp(message(attr(0x8022, b"abcd")))

BAD: list[tuple[str, bytes, str]] = [
    ("empty", b"", "shorter than the 20-byte header"),
    ("short", header(1, 0)[:19], "shorter than the 20-byte header"),
    ("first bit", header(0x8001, 0), "first two bits"),
    ("second bit", header(0x4001, 0), "first two bits"),
    ("cookie", header(1, 0, cookie=0x2112A443), "wrong magic cookie"),
    ("length not x4", header(1, 2) + b"\0\0", "not a multiple of 4"),
    ("length too long", header(1, 8) + attr(0x8022, b"abcd")[:4], "length field says 8"),
    ("length too short", header(1, 0) + attr(0x8022, b"abcd"), "length field says 0"),
    ("truncated attribute", header(1, 8) + struct.pack("!HH", 0x8022, 8) + b"abcd", "truncated"),
    ("missing padding at the end", header(1, 7) + struct.pack("!HH", 0x8022, 3) + b"abc", "multiple of 4"),
    (
        "missing padding inside",
        header(1, 12) + struct.pack("!HH", 0x8022, 3) + b"abc" + attr(0x8023, b"x")[:5],
        "truncated",
    ),
    ("after fingerprint", _FP_OK + attr(0x8022, b"x"), "length field"),
    (
        "after fingerprint, length fixed",
        header(1, len(_FP_OK) - 20 + 8) + _FP_OK[20:] + attr(0x8022, b"x"),
        "follow FINGERPRINT",
    ),
    ("bad fingerprint", _FP_OK[:-1] + bytes([_FP_OK[-1] ^ 1]), "bad FINGERPRINT"),
    ("fingerprint length", message(attr(Attr.FINGERPRINT, b"\0" * 8)), "FINGERPRINT of 8 bytes"),
    ("after integrity", message(attr(Attr.MESSAGE_INTEGRITY, b"\0" * 20), attr(0x8022, b"x")), "follows"),
    (
        "after integrity-sha256",
        message(attr(Attr.MESSAGE_INTEGRITY_SHA256, b"\0" * 32), attr(Attr.MESSAGE_INTEGRITY, b"\0" * 20)),
        "follows MESSAGE-INTEGRITY-SHA256",
    ),
    ("integrity twice", message(*[attr(Attr.MESSAGE_INTEGRITY, b"\0" * 20)] * 2), "follows"),
    ("integrity length", message(attr(Attr.MESSAGE_INTEGRITY, b"\0" * 16)), "MESSAGE-INTEGRITY of 16"),
    ("sha256 length 12", message(attr(Attr.MESSAGE_INTEGRITY_SHA256, b"\0" * 12)), "SHA256 of 12"),
    ("sha256 length 18", message(attr(Attr.MESSAGE_INTEGRITY_SHA256, b"\0" * 18)), "SHA256 of 18"),
    ("too many attributes", message(*[attr(0x8022, b"")] * (MAX_ATTRIBUTES + 1)), "more than"),
]


@pytest.mark.parametrize(("name", "data", "text"), BAD, ids=[b[0] for b in BAD])
def test_decode_refuses(name: str, data: bytes, text: str) -> None:
    with pytest.raises(StunDecodeError, match=text):
        decode(data)


def test_padding_is_ignored_and_any_value() -> None:
    for pad in (b"\0", b" ", b"\xff"):
        data = message(attr(0x8022, b"abc", pad), attr(0x8023, b"abcde", pad), attr(0x8024, b"", pad))
        msg = decode(data)
        assert msg.attributes == [(0x8022, b"abc"), (0x8023, b"abcde"), (0x8024, b"")]
    assert len(decode(message(*[attr(0x8022, b"")] * MAX_ATTRIBUTES)).attributes) == MAX_ATTRIBUTES


def test_after_integrity_allowed_ones() -> None:
    body = message(
        attr(0x8022, b"sw"),
        attr(Attr.MESSAGE_INTEGRITY, b"\0" * 20),
        attr(Attr.MESSAGE_INTEGRITY_SHA256, b"\0" * 32),
    )
    msg = decode(_fp(body))
    assert [t for t, _ in msg.attributes][-3:] == [
        Attr.MESSAGE_INTEGRITY,
        Attr.MESSAGE_INTEGRITY_SHA256,
        Attr.FINGERPRINT,
    ]
    for n in (16, 20, 24, 28, 32):
        decode(message(attr(Attr.MESSAGE_INTEGRITY_SHA256, b"\0" * n)))


def test_max_size() -> None:
    big = message(attr(Attr.DATA, b"x" * 2000))
    assert decode(big).get(Attr.DATA) == b"x" * 2000
    with pytest.raises(StunDecodeError, match="exceeds the maximum"):
        decode(big, max_size=1000)
    with pytest.raises(StunDecodeError, match="exceeds the maximum"):
        decode(b"\0" * (MAX_MESSAGE_SIZE + 4))
    msg = StunMessage(Method.SEND, StunClass.INDICATION, TID)
    msg.add(Attr.DATA, b"x" * 65535)
    with pytest.raises(StunEncodeError):
        encode(msg)
    msg = StunMessage(Method.SEND, StunClass.INDICATION, TID)
    msg.add(Attr.DATA, b"x" * 65000)
    assert len(encode(msg, fingerprint=False)) == 20 + 4 + 65000
    msg.attributes.append((Attr.DATA, b"y" * 70000))  # bypassing add()'s check
    with pytest.raises(StunEncodeError):
        encode(msg)


def test_rfc3489_message() -> None:
    tid16 = bytes(range(16))
    data = struct.pack("!HH", 0x0001, 8) + tid16 + attr(Attr.CHANGE_REQUEST, b"\0\0\0\x06")
    with pytest.raises(StunDecodeError, match="magic cookie"):
        decode(data)
    msg = decode(data, allow_rfc3489=True)
    assert msg.is_rfc3489 and msg.transaction_id == tid16
    assert msg.get_change_request() == ChangeRequest(True, True)
    resp = msg.response()
    resp.add_address(Attr.MAPPED_ADDRESS, Address("192.0.2.7", 4444))
    with pytest.raises(StunEncodeError):
        resp.add_address(Attr.XOR_MAPPED_ADDRESS, Address("192.0.2.7", 4444))
    out = encode(resp, fingerprint=False)
    assert out[4:20] == tid16 and not is_stun(out)
    assert decode(out, allow_rfc3489=True) == resp
    # a real cookie is always taken as RFC 5389+, even with allow_rfc3489
    assert not decode(header(1, 0), allow_rfc3489=True).is_rfc3489


def test_is_stun() -> None:
    assert is_stun(header(1, 0))
    assert is_stun(header(0x03FF, 0))  # RFC 7983: first byte 0-3
    assert not is_stun(header(0x0400, 0))
    assert not is_stun(header(1, 0)[:19])
    assert not is_stun(header(1, 0, cookie=1))
    assert not is_stun(b"\x40" + header(1, 0)[1:])
    assert not is_stun(b"\xe4" + bytes(40))


# -- typed attributes ----------------------------------------------------------------------

ADDRESS_ATTRS = [t for t, info in ATTRIBUTES.items() if info.kind in (Kind.ADDRESS, Kind.XOR_ADDRESS)]


@pytest.mark.parametrize("attr_type", ADDRESS_ATTRS, ids=[ATTRIBUTES[t].name for t in ADDRESS_ATTRS])
@pytest.mark.parametrize(
    "address",
    [Address("192.0.2.1", 32853), Address("0.0.0.0", 0), Address("2001:db8::1", 65535), Address("::", 1)],
)
def test_address_attributes(attr_type: int, address: Address) -> None:
    msg = StunMessage(Method.ALLOCATE, StunClass.SUCCESS, TID)
    msg.add_address(attr_type, address)
    assert len(msg.get(attr_type) or b"") == (20 if address.is_ipv6 else 8)
    again = decode(encode(msg))
    assert again.get_address(attr_type) == address
    assert again.get_all_addresses(attr_type) == [address]


def test_xor_is_applied() -> None:
    msg = StunMessage(Method.BINDING, StunClass.SUCCESS, TID)
    msg.add_address(Attr.XOR_MAPPED_ADDRESS, Address("192.0.2.1", 32853))
    msg.add_address(Attr.MAPPED_ADDRESS, Address("192.0.2.1", 32853))
    assert msg.get(Attr.XOR_MAPPED_ADDRESS) == bytes.fromhex("0001a147e112a643")
    assert msg.get(Attr.MAPPED_ADDRESS) == bytes.fromhex("00018055c0000201")
    msg.add_address(Attr.XOR_PEER_ADDRESS, Address("2001:db8::1", 1))
    raw = msg.get(Attr.XOR_PEER_ADDRESS)
    assert raw is not None
    mask = bytes.fromhex("2112a442") + TID
    assert bytes(a ^ b for a, b in zip(raw[4:], mask, strict=True)) == bytes.fromhex(
        "20010db8000000000000000000000001"
    )


@pytest.mark.parametrize(
    "value",
    [b"", b"\0\x01\0\0", b"\0\x03\0\0\0\0\0\0", b"\0\x02\0\0\0\0\0\0", b"\0\x01" + bytes(18), bytes(12)],
)
def test_malformed_addresses(value: bytes) -> None:
    msg = StunMessage(Method.BINDING, StunClass.SUCCESS, TID, [(Attr.XOR_MAPPED_ADDRESS, value)])
    with pytest.raises(StunDecodeError):
        msg.get_address(Attr.XOR_MAPPED_ADDRESS)


def test_bad_address_to_encode() -> None:
    msg = StunMessage(Method.BINDING, StunClass.SUCCESS, TID)
    for bad in (Address("example.org", 1), Address("1.2.3.4", 70000)):
        with pytest.raises(StunEncodeError):
            msg.add_address(Attr.XOR_MAPPED_ADDRESS, bad)
    with pytest.raises(StunEncodeError):
        msg.add_address(Attr.SOFTWARE, Address("1.2.3.4", 1))


UINT_ATTRS = [t for t, info in ATTRIBUTES.items() if info.kind is Kind.UINT]


@pytest.mark.parametrize("attr_type", UINT_ATTRS, ids=[ATTRIBUTES[t].name for t in UINT_ATTRS])
def test_uint_attributes(attr_type: int) -> None:
    info = ATTRIBUTES[attr_type]
    top = (1 << (8 * info.int_size)) - 1
    for value in (0, 1, top):
        msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, TID)
        msg.add_uint(attr_type, value)
        raw = msg.get(attr_type)
        assert raw is not None and len(raw) == info.length
        assert decode(encode(msg)).get_uint(attr_type) == value
    with pytest.raises(StunEncodeError):
        StunMessage(Method.ALLOCATE, StunClass.REQUEST, TID).add_uint(attr_type, top + 1)
    bad = StunMessage(Method.ALLOCATE, StunClass.REQUEST, TID, [(attr_type, b"\0" * 3)])
    if info.length != 3:
        with pytest.raises(StunDecodeError):
            bad.get_uint(attr_type)


def test_turn_integers_layout() -> None:
    msg = StunMessage(Method.CHANNEL_BIND, StunClass.REQUEST, TID)
    msg.add_uint(Attr.CHANNEL_NUMBER, 0x4001)
    msg.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    msg.add_uint(Attr.LIFETIME, 600)
    msg.add_uint(Attr.REQUESTED_ADDRESS_FAMILY, 2)
    msg.add_even_port(True)
    msg.add(Attr.DONT_FRAGMENT)
    msg.add(Attr.RESERVATION_TOKEN, b"12345678")
    assert msg.get(Attr.CHANNEL_NUMBER) == b"\x40\x01\0\0"
    assert msg.get(Attr.REQUESTED_TRANSPORT) == b"\x11\0\0\0"
    assert msg.get(Attr.REQUESTED_ADDRESS_FAMILY) == b"\x02\0\0\0"
    assert msg.get(Attr.EVEN_PORT) == b"\x80"
    again = decode(encode(msg))
    assert again.get_even_port() is True
    assert again.has(Attr.DONT_FRAGMENT) and again.get(Attr.DONT_FRAGMENT) == b""
    assert again.get(Attr.RESERVATION_TOKEN) == b"12345678"
    # RFFU bytes are ignored on receipt
    rffu = StunMessage(
        Method.CHANNEL_BIND, StunClass.REQUEST, TID, [(Attr.CHANNEL_NUMBER, b"\x40\x02\xff\xff")]
    )
    assert rffu.get_uint(Attr.CHANNEL_NUMBER) == 0x4002
    assert StunMessage(Method.ALLOCATE, StunClass.REQUEST, TID).get_even_port() is None


def test_add_checks_fixed_lengths() -> None:
    msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, TID)
    for t, value in [
        (Attr.RESERVATION_TOKEN, b"1234567"),
        (Attr.DONT_FRAGMENT, b"x"),
        (Attr.LIFETIME, b"\0\0"),
        (Attr.USERHASH, b"\0" * 31),
        (0x10000, b""),
    ]:
        with pytest.raises(StunEncodeError):
            msg.add(t, value)
    with pytest.raises(StunEncodeError):
        msg.add(Attr.DATA, b"x" * 65536)
    assert msg.attributes == []


def test_change_request() -> None:
    for ip in (False, True):
        for port in (False, True):
            msg = StunMessage(Method.BINDING, StunClass.REQUEST, TID)
            msg.add_change_request(ip, port)
            assert msg.get(Attr.CHANGE_REQUEST) == bytes([0, 0, 0, 4 * ip + 2 * port])
            assert decode(encode(msg)).get_change_request() == ChangeRequest(ip, port)


def test_text_attributes() -> None:
    msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, TID)
    msg.add_text(Attr.USERNAME, "マトリックス")
    msg.add_text(Attr.REALM, "example.org")
    msg.add_text(Attr.NONCE, "n" * 127)
    msg.add_text(Attr.SOFTWARE, "coremesh")
    again = decode(encode(msg))
    assert again.get_text(Attr.USERNAME) == "マトリックス"
    assert again.get_text(Attr.NONCE) == "n" * 127
    with pytest.raises(StunEncodeError, match="characters"):
        msg.add_text(Attr.REALM, "r" * 128)
    with pytest.raises(StunEncodeError, match="bytes"):
        msg.add_text(Attr.USERNAME, "u" * 513)
    with pytest.raises(StunEncodeError):
        msg.add_text(Attr.LIFETIME, "x")
    bad = StunMessage(Method.ALLOCATE, StunClass.REQUEST, TID, [(Attr.REALM, b"\xff\xfe")])
    with pytest.raises(StunDecodeError, match="UTF-8"):
        bad.get_text(Attr.REALM)
    long = StunMessage(Method.ALLOCATE, StunClass.REQUEST, TID, [(Attr.USERNAME, b"u" * 600)])
    with pytest.raises(StunDecodeError, match="at most"):
        long.get_text(Attr.USERNAME)


def test_error_code() -> None:
    msg = StunMessage(Method.ALLOCATE, StunClass.ERROR, TID)
    msg.add_error(438)
    assert msg.get(Attr.ERROR_CODE) == b"\0\0\x04\x26Stale Nonce"
    assert decode(encode(msg)).get_error() == ErrorCode(438, "Stale Nonce")
    msg = StunMessage(Method.ALLOCATE, StunClass.ERROR, TID)
    msg.add_error(699, "custom é")
    assert msg.get_error() == ErrorCode(699, "custom é")
    for bad_code in (299, 700, 0):
        with pytest.raises(StunEncodeError):
            msg.add_error(bad_code)
    with pytest.raises(StunEncodeError):
        msg.add_error(400, "x" * 128)
    for raw in (b"\0\0\x04", b"\0\0\x02\x00", b"\0\0\x07\x00", b"\0\0\x04\x64", b"\0\0\x04\0\xff"):
        with pytest.raises(StunDecodeError):
            StunMessage(Method.BINDING, StunClass.ERROR, TID, [(Attr.ERROR_CODE, raw)]).get_error()
    # the 21 reserved bits are ignored
    odd = StunMessage(Method.BINDING, StunClass.ERROR, TID, [(Attr.ERROR_CODE, b"\xff\xff\xfc\x14")])
    assert odd.get_error() == ErrorCode(420, "")


def test_address_error_code_and_icmp() -> None:
    msg = StunMessage(Method.ALLOCATE, StunClass.SUCCESS, TID)
    msg.add_address_error(2, 440)
    msg.add_icmp(Icmp(3, 4, 1400))
    again = decode(encode(msg))
    assert again.get_address_error() == AddressError(2, 440, "Address Family not Supported")
    assert again.get_icmp() == Icmp(3, 4, 1400)
    assert msg.get(Attr.ICMP) == b"\0\0\x03\x04\0\0\x05\x78"
    with pytest.raises(StunEncodeError):
        msg.add_address_error(3, 440)
    with pytest.raises(StunEncodeError):
        msg.add_icmp(Icmp(256, 0, 0))
    with pytest.raises(StunDecodeError):
        StunMessage(Method.DATA, StunClass.INDICATION, TID, [(Attr.ICMP, b"\0" * 7)]).get_icmp()


def test_unknown_attributes_and_comprehension() -> None:
    msg = StunMessage(Method.BINDING, StunClass.REQUEST, TID)
    for t in (0x0003, 0x8022, 0x7FFF, 0x0003, 0x0020, 0xC000):
        msg.add(t, b"\0\0\0\0" if t == 0x0003 else b"")
    assert msg.comprehension_required_unknown({0x0020}) == [0x0003, 0x7FFF]
    assert msg.comprehension_required_unknown(frozenset({0x0003, 0x7FFF, 0x0020})) == []
    assert is_comprehension_required(0x7FFF) and not is_comprehension_required(0x8000)
    err = msg.response(StunClass.ERROR)
    err.add_error(420)
    err.add_unknown_attributes([0x0003, 0x7FFF, 0x0001])
    assert decode(encode(err)).get_unknown_attributes() == [0x0003, 0x7FFF, 0x0001]
    with pytest.raises(StunDecodeError):
        StunMessage(
            1, StunClass.ERROR, TID, [(Attr.UNKNOWN_ATTRIBUTES, b"\0\x01\0")]
        ).get_unknown_attributes()


def test_password_algorithms() -> None:
    entries = [
        PasswordAlgorithmEntry(PasswordAlgorithm.SHA256),
        PasswordAlgorithmEntry(PasswordAlgorithm.MD5),
        PasswordAlgorithmEntry(0x1234, b"abc"),
    ]
    msg = StunMessage(Method.ALLOCATE, StunClass.ERROR, TID)
    msg.add_password_algorithms(entries)
    msg.add_password_algorithm(entries[0])
    assert msg.get(Attr.PASSWORD_ALGORITHMS) == bytes.fromhex("0002000000010000123400036162630000")[:-1]
    again = decode(encode(msg))
    assert again.get_password_algorithms() == entries
    assert again.get_password_algorithm() == entries[0]
    for raw in (b"\0\x01\0", b"\0\x01\0\x08abc"):
        with pytest.raises(StunDecodeError):
            StunMessage(1, StunClass.ERROR, TID, [(Attr.PASSWORD_ALGORITHMS, raw)]).get_password_algorithms()
    two = StunMessage(1, StunClass.REQUEST, TID, [(Attr.PASSWORD_ALGORITHM, b"\0\x01\0\0\0\x02\0\0")])
    with pytest.raises(StunDecodeError, match="expected 1"):
        two.get_password_algorithm()


def test_message_api() -> None:
    msg = StunMessage(Method.BINDING, StunClass.REQUEST, TID)
    assert msg.get(Attr.SOFTWARE) is None and msg.get_address(Attr.MAPPED_ADDRESS) is None
    assert (
        msg.get_error() is None and msg.get_uint(Attr.LIFETIME) is None and msg.get_text(Attr.REALM) is None
    )
    msg.add(Attr.DATA, b"one")
    msg.add(Attr.DATA, b"two")
    assert msg.get(Attr.DATA) == b"one" and msg.get_all(Attr.DATA) == [b"one", b"two"]
    msg.remove(Attr.DATA)
    assert not msg.has(Attr.DATA)
    assert "BINDING REQUEST" in repr(msg)
    with pytest.raises(StunEncodeError):
        StunMessage(0x1000, StunClass.REQUEST, TID)
    with pytest.raises(StunEncodeError):
        StunMessage(1, StunClass.REQUEST, b"short")
    resp = msg.response(StunClass.ERROR)
    assert (resp.method, resp.msg_class, resp.transaction_id) == (Method.BINDING, StunClass.ERROR, TID)
    assert msg != resp and msg != "x"


def test_encode_replaces_trailers() -> None:
    msg = StunMessage(Method.BINDING, StunClass.REQUEST, TID)
    msg.add_text(Attr.USERNAME, "a:b")
    data = encode(msg, integrity_key=b"k1")
    decoded = decode(data)
    again = encode(decoded, integrity_key=b"k2", fingerprint=False)
    assert verify_integrity(again, b"k2") and not verify_integrity(again, b"k1")
    assert [t for t, _ in decode(again).attributes] == [Attr.USERNAME, Attr.MESSAGE_INTEGRITY]


def test_integrity_length_adjustment_by_hand() -> None:
    """MESSAGE-INTEGRITY covers the header with the length ending at MESSAGE-INTEGRITY; the
    SHA-256 one ends after itself and covers MESSAGE-INTEGRITY; FINGERPRINT covers all."""
    msg = StunMessage(Method.BINDING, StunClass.REQUEST, TID)
    msg.add_text(Attr.SOFTWARE, "abc")
    data = encode(msg, integrity_key=b"k", integrity_sha256_key=b"s")
    body = data[20:28]
    mi_input = struct.pack("!HHI", 1, 8 + 24, 0x2112A442) + TID + body
    assert data[32:52] == hmac.digest(b"k", mi_input, "sha1")
    mi256_input = struct.pack("!HHI", 1, 8 + 24 + 36, 0x2112A442) + TID + data[20:52]
    assert data[56:88] == hmac.digest(b"s", mi256_input, "sha256")
    assert verify_fingerprint(data)
    assert verify_integrity(data, b"k") and verify_integrity_sha256(data, b"s")
    # a truncated (16-byte) MESSAGE-INTEGRITY-SHA256 verifies too
    head = struct.pack("!HHI", 1, 8 + 20, 0x2112A442) + TID + body
    short = head + attr(Attr.MESSAGE_INTEGRITY_SHA256, hmac.digest(b"s", head, "sha256")[:16])
    assert verify_integrity_sha256(short, b"s") and not verify_integrity_sha256(short, b"t")
    assert decode(short).get(Attr.MESSAGE_INTEGRITY_SHA256) is not None
    # absent or garbage: False, never an exception
    assert not verify_integrity(encode(msg), b"k")
    assert not verify_integrity_sha256(encode(msg), b"k")
    assert not verify_integrity(b"\0" * 5, b"k") and not verify_fingerprint(b"")
    cut = bytearray(data[:40])
    assert not verify_integrity(bytes(cut), b"k")


# -- property-based round trips ------------------------------------------------------------

free_types = st.integers(0, 0xFFFF).filter(lambda t: t not in TRAILERS and t not in ATTRIBUTES)
attributes = st.lists(st.tuples(free_types, st.binary(max_size=80)), max_size=12)
methods = st.integers(0, 0xFFF)
classes = st.sampled_from(list(StunClass))
tids = st.binary(min_size=12, max_size=12)
keys = st.one_of(st.none(), st.binary(min_size=1, max_size=40))


@given(methods, classes, tids, attributes, keys, keys, st.booleans(), st.integers(0, 255))
def test_round_trip(
    method: int,
    klass: StunClass,
    tid: bytes,
    attrs: list[tuple[int, bytes]],
    key: bytes | None,
    key256: bytes | None,
    fingerprint: bool,
    pad: int,
) -> None:
    msg = StunMessage(method, klass, tid, attrs)
    data = encode(msg, integrity_key=key, integrity_sha256_key=key256, fingerprint=fingerprint, pad_byte=pad)
    assert len(data) % 4 == 0 and is_stun(data) == (method < 0x100)  # RFC 7983: first byte 0-3
    again = decode(data)
    assert (again.method, again.msg_class, again.transaction_id) == (method, klass, tid)
    assert [a for a in again.attributes if a[0] not in TRAILERS] == attrs
    assert verify_fingerprint(data) == fingerprint
    if key is not None:
        assert verify_integrity(data, key) and not verify_integrity(data, key + b"!")
    if key256 is not None:
        assert verify_integrity_sha256(data, key256)
    assert (
        encode(again, integrity_key=key, integrity_sha256_key=key256, fingerprint=fingerprint, pad_byte=pad)
        == data
    )


addresses = st.one_of(
    st.builds(
        lambda ip, port: Address(".".join(str(b) for b in ip.to_bytes(4, "big")), port),
        st.integers(0, 2**32 - 1),
        st.integers(0, 65535),
    ),
    st.builds(
        lambda ip, port: Address(ipaddress.IPv6Address(ip).compressed, port),
        st.integers(0, 2**128 - 1),
        st.integers(0, 65535),
    ),
)


@given(st.sampled_from(ADDRESS_ATTRS), addresses, tids)
def test_address_round_trip(attr_type: int, address: Address, tid: bytes) -> None:
    msg = StunMessage(Method.ALLOCATE, StunClass.SUCCESS, tid)
    msg.add_address(attr_type, address)
    assert decode(encode(msg)).get_address(attr_type) == address


@given(st.integers(300, 699), st.text(max_size=127).filter(lambda s: len(s.encode()) <= 763))
def test_error_round_trip(code: int, reason: str) -> None:
    msg = StunMessage(Method.REFRESH, StunClass.ERROR, TID)
    msg.add_error(code, reason)
    assert decode(encode(msg)).get_error() == ErrorCode(code, reason)


# -- fuzzing -------------------------------------------------------------------------------

GETTERS: list[Callable[[StunMessage], object]] = [
    lambda m: [m.get_address(t) for t in ADDRESS_ATTRS],
    lambda m: [m.get_uint(t) for t in UINT_ATTRS],
    lambda m: [m.get_text(t) for t in (Attr.USERNAME, Attr.REALM, Attr.NONCE, Attr.SOFTWARE)],
    StunMessage.get_error,
    StunMessage.get_change_request,
    StunMessage.get_even_port,
    StunMessage.get_unknown_attributes,
    StunMessage.get_password_algorithms,
    StunMessage.get_password_algorithm,
    StunMessage.get_address_error,
    StunMessage.get_icmp,
]


def _decode_everything(data: bytes) -> None:
    try:
        msg = decode(data, allow_rfc3489=True)
    except DecodeError:
        return
    for getter in GETTERS:
        with contextlib.suppress(DecodeError):
            getter(msg)


@settings(max_examples=1500)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_everything(data)
    verify_integrity(data, b"k")
    verify_integrity_sha256(data, b"k")
    verify_fingerprint(data)


SEED = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a6"
    "43000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96"
)


@settings(max_examples=1500)
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_mutated_vector(edits: list[tuple[int, int]]) -> None:
    data = bytearray(SEED)
    for pos, value in edits:
        data[pos] = value
    _decode_everything(bytes(data))


@settings(max_examples=1000)
@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=8),
    st.integers(0, 3),
)
def test_fuzz_structured(attrs: list[tuple[int, bytes]], trim: int) -> None:
    """Well-framed messages whose attribute values are random: every typed getter either parses or
    raises DecodeError."""
    body = b"".join(attr(t, v) for t, v in attrs)
    data = header(0x0101, len(body)) + body
    _decode_everything(data[: len(data) - trim] if trim else data)
