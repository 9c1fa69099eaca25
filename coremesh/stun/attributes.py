"""The STUN attribute table and the codecs of typed attribute values.

Every attribute of RFC 8489 (STUN), RFC 8656 (TURN), RFC 5780 (NAT behaviour discovery) and RFC 8445
(ICE) is listed in :class:`Attr` with its IANA code, and described once in :data:`ATTRIBUTES`: its name,
how its value is laid out (:class:`Kind`) and, where the RFC fixes it, the length of the value. The
RFC 3489 attributes that RFC 8489 reserves are listed too, because the binding server still answers
classic RFC 3489 clients (SOURCE-ADDRESS, CHANGED-ADDRESS).

The functions here are pure: bytes in, values out, or values in, bytes out. A malformed value read
from the network raises :class:`StunDecodeError` (a :class:`~coremesh.errors.DecodeError`); a value
that cannot be encoded (a local mistake) raises :class:`StunEncodeError` (a ``ValueError``).

Value layouts (RFC 8489 section 14 and the RFCs named below; all big-endian)::

    address          0x00 | family:1 (1 = IPv4, 2 = IPv6) | port:2 | address:4 or 16
    xor-address      the same, port XOR the cookie's top 16 bits, address XOR cookie (| transaction id)
    ERROR-CODE       0:2 | 0:5 bits, class:3 bits | number:1 | reason (UTF-8, at most 763 bytes)
    UNKNOWN-ATTRIBUTES   type:2, repeated
    PASSWORD-ALGORITHM(S)  (algorithm:2 | parameters length:2 | parameters, padded to 4) repeated
    ADDRESS-ERROR-CODE   family:1 | 0:13 bits, class:3 bits | number:1 | reason   (RFC 8656 18.12)
    ICMP             0:2 | type:1 | code:1 | error data:4                          (RFC 8656 18.13)
    CHANGE-REQUEST   flags:4, 0x04 = change IP, 0x02 = change port                 (RFC 5780 7.2)
    EVEN-PORT        flags:1, 0x80 = reserve the next port too                     (RFC 8656 18.6)
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..addr import Address
from ..errors import DecodeError

MAGIC_COOKIE: Final = 0x2112A442
MAGIC_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")

# RFC 8489 section 14: USERNAME below 513 bytes; REALM, NONCE, SOFTWARE, reason phrases below
# 128 characters and 763 bytes.
MAX_USERNAME_BYTES: Final = 512
MAX_TEXT_BYTES: Final = 763
MAX_TEXT_CHARS: Final = 127


class StunDecodeError(DecodeError):
    """A STUN message, attribute value or ChannelData message is malformed."""


class StunEncodeError(ValueError):
    """A value cannot be encoded as the attribute asks (out of range, too long, wrong family)."""


class Attr(enum.IntEnum):
    """STUN attribute types (IANA "STUN Attributes"). Below 0x8000: comprehension-required."""

    # RFC 8489 (STUN)
    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    # RFC 8656 (TURN)
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    RESERVATION_TOKEN = 0x0022
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    ICMP = 0x8004
    # RFC 6062 (TURN over TCP to peers)
    CONNECTION_ID = 0x002A
    # RFC 5780 (NAT behaviour discovery)
    CHANGE_REQUEST = 0x0003
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    CACHE_TIMEOUT = 0x8027
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C
    # RFC 8445 (ICE)
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    # RFC 3489 attributes, reserved by RFC 5389/8489; used only in answers to RFC 3489 clients
    RESPONSE_ADDRESS = 0x0002
    SOURCE_ADDRESS = 0x0004
    CHANGED_ADDRESS = 0x0005
    PASSWORD = 0x0007
    REFLECTED_FROM = 0x000B


STUN_REQUIRED: Final[frozenset[int]] = frozenset(
    {
        Attr.MAPPED_ADDRESS,
        Attr.USERNAME,
        Attr.MESSAGE_INTEGRITY,
        Attr.ERROR_CODE,
        Attr.UNKNOWN_ATTRIBUTES,
        Attr.REALM,
        Attr.NONCE,
        Attr.MESSAGE_INTEGRITY_SHA256,
        Attr.PASSWORD_ALGORITHM,
        Attr.USERHASH,
        Attr.XOR_MAPPED_ADDRESS,
    }
)
"""The comprehension-required attributes of RFC 8489 itself: every STUN server (Binding, TURN)
understands these in a request, so none of them earns a 420."""

NAT_DISCOVERY_REQUIRED: Final[frozenset[int]] = frozenset(
    {Attr.CHANGE_REQUEST, Attr.PADDING, Attr.RESPONSE_PORT}
)
"""The comprehension-required attributes of RFC 5780, understood by a server with an alternate
address."""


def is_comprehension_required(attr_type: int) -> bool:
    """Types 0x0000-0x7FFF must be understood; an unknown one in a request earns a 420."""
    return attr_type < 0x8000


class Kind(enum.Enum):
    """How an attribute's value is laid out."""

    ADDRESS = "address"
    XOR_ADDRESS = "xor-address"
    UINT = "uint"  # an unsigned integer, possibly followed by reserved zero bytes
    TEXT = "text"  # UTF-8
    BYTES = "bytes"  # opaque
    EMPTY = "empty"  # a flag: present or not
    ERROR_CODE = "error-code"
    UNKNOWN_ATTRIBUTES = "unknown-attributes"
    PASSWORD_ALGORITHMS = "password-algorithms"
    ADDRESS_ERROR_CODE = "address-error-code"
    ICMP = "icmp"
    INTEGRITY = "integrity"  # MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256, FINGERPRINT


@dataclass(frozen=True, slots=True)
class AttrInfo:
    """One row of the attribute table. ``int_size``: width of a UINT value, followed by ``length -
    int_size`` reserved bytes. ``max_length``: a bound on the value for variable-length kinds."""

    name: str
    kind: Kind
    length: int | None = None
    int_size: int = 0
    max_length: int | None = None


def _a(
    name: str, kind: Kind, length: int | None = None, int_size: int = 0, max_length: int | None = None
) -> AttrInfo:
    return AttrInfo(name, kind, length, int_size, max_length)


ATTRIBUTES: Final[dict[int, AttrInfo]] = {
    Attr.MAPPED_ADDRESS: _a("MAPPED-ADDRESS", Kind.ADDRESS),
    Attr.USERNAME: _a("USERNAME", Kind.TEXT, max_length=MAX_USERNAME_BYTES),
    Attr.MESSAGE_INTEGRITY: _a("MESSAGE-INTEGRITY", Kind.INTEGRITY, 20),
    Attr.ERROR_CODE: _a("ERROR-CODE", Kind.ERROR_CODE),
    Attr.UNKNOWN_ATTRIBUTES: _a("UNKNOWN-ATTRIBUTES", Kind.UNKNOWN_ATTRIBUTES),
    Attr.REALM: _a("REALM", Kind.TEXT, max_length=MAX_TEXT_BYTES),
    Attr.NONCE: _a("NONCE", Kind.TEXT, max_length=MAX_TEXT_BYTES),
    Attr.MESSAGE_INTEGRITY_SHA256: _a("MESSAGE-INTEGRITY-SHA256", Kind.INTEGRITY, max_length=32),
    Attr.PASSWORD_ALGORITHM: _a("PASSWORD-ALGORITHM", Kind.PASSWORD_ALGORITHMS),
    Attr.USERHASH: _a("USERHASH", Kind.BYTES, 32),
    Attr.XOR_MAPPED_ADDRESS: _a("XOR-MAPPED-ADDRESS", Kind.XOR_ADDRESS),
    Attr.PASSWORD_ALGORITHMS: _a("PASSWORD-ALGORITHMS", Kind.PASSWORD_ALGORITHMS),
    Attr.ALTERNATE_DOMAIN: _a("ALTERNATE-DOMAIN", Kind.TEXT, max_length=255),
    Attr.SOFTWARE: _a("SOFTWARE", Kind.TEXT, max_length=MAX_TEXT_BYTES),
    Attr.ALTERNATE_SERVER: _a("ALTERNATE-SERVER", Kind.ADDRESS),
    Attr.FINGERPRINT: _a("FINGERPRINT", Kind.INTEGRITY, 4),
    Attr.CHANNEL_NUMBER: _a("CHANNEL-NUMBER", Kind.UINT, 4, 2),
    Attr.LIFETIME: _a("LIFETIME", Kind.UINT, 4, 4),
    Attr.XOR_PEER_ADDRESS: _a("XOR-PEER-ADDRESS", Kind.XOR_ADDRESS),
    Attr.DATA: _a("DATA", Kind.BYTES),
    Attr.XOR_RELAYED_ADDRESS: _a("XOR-RELAYED-ADDRESS", Kind.XOR_ADDRESS),
    Attr.REQUESTED_ADDRESS_FAMILY: _a("REQUESTED-ADDRESS-FAMILY", Kind.UINT, 4, 1),
    Attr.EVEN_PORT: _a("EVEN-PORT", Kind.UINT, 1, 1),
    Attr.REQUESTED_TRANSPORT: _a("REQUESTED-TRANSPORT", Kind.UINT, 4, 1),
    Attr.DONT_FRAGMENT: _a("DONT-FRAGMENT", Kind.EMPTY, 0),
    Attr.RESERVATION_TOKEN: _a("RESERVATION-TOKEN", Kind.BYTES, 8),
    Attr.ADDITIONAL_ADDRESS_FAMILY: _a("ADDITIONAL-ADDRESS-FAMILY", Kind.UINT, 4, 1),
    Attr.ADDRESS_ERROR_CODE: _a("ADDRESS-ERROR-CODE", Kind.ADDRESS_ERROR_CODE),
    Attr.ICMP: _a("ICMP", Kind.ICMP, 8),
    Attr.CONNECTION_ID: _a("CONNECTION-ID", Kind.UINT, 4, 4),
    Attr.CHANGE_REQUEST: _a("CHANGE-REQUEST", Kind.UINT, 4, 4),
    Attr.PADDING: _a("PADDING", Kind.BYTES),
    Attr.RESPONSE_PORT: _a("RESPONSE-PORT", Kind.UINT, 4, 2),
    Attr.CACHE_TIMEOUT: _a("CACHE-TIMEOUT", Kind.UINT, 4, 4),
    Attr.RESPONSE_ORIGIN: _a("RESPONSE-ORIGIN", Kind.ADDRESS),
    Attr.OTHER_ADDRESS: _a("OTHER-ADDRESS", Kind.ADDRESS),
    Attr.PRIORITY: _a("PRIORITY", Kind.UINT, 4, 4),
    Attr.USE_CANDIDATE: _a("USE-CANDIDATE", Kind.EMPTY, 0),
    Attr.ICE_CONTROLLED: _a("ICE-CONTROLLED", Kind.UINT, 8, 8),
    Attr.ICE_CONTROLLING: _a("ICE-CONTROLLING", Kind.UINT, 8, 8),
    Attr.RESPONSE_ADDRESS: _a("RESPONSE-ADDRESS", Kind.ADDRESS),
    Attr.SOURCE_ADDRESS: _a("SOURCE-ADDRESS", Kind.ADDRESS),
    Attr.CHANGED_ADDRESS: _a("CHANGED-ADDRESS", Kind.ADDRESS),
    Attr.PASSWORD: _a("PASSWORD", Kind.BYTES),
    Attr.REFLECTED_FROM: _a("REFLECTED-FROM", Kind.ADDRESS),
}
"""The attribute table: every type coremesh knows, with its value layout."""


def attr_name(attr_type: int) -> str:
    info = ATTRIBUTES.get(attr_type)
    return info.name if info is not None else f"0x{attr_type:04X}"


def _info(attr_type: int, *kinds: Kind) -> AttrInfo:
    info = ATTRIBUTES.get(attr_type)
    if info is None or info.kind not in kinds:
        wanted = " or ".join(k.value for k in kinds)
        raise StunEncodeError(f"attribute {attr_name(attr_type)} is not a {wanted} attribute")
    return info


# ---------------------------------------------------------------------------------------------
# Addresses


FAMILY_IPV4: Final = 0x01
FAMILY_IPV6: Final = 0x02
_ADDR4 = struct.Struct("!xBH4s")
_ADDR6 = struct.Struct("!xBH16s")
_COOKIE_PORT: Final = MAGIC_COOKIE >> 16


def encode_address(address: Address, *, xor: bool = False, transaction_id: bytes = b"") -> bytes:
    """The value of an address attribute; ``xor`` for the XOR-* types (IPv6 needs the id)."""
    host, port = address
    if not 0 <= port <= 0xFFFF:
        raise StunEncodeError(f"port {port} out of range")
    try:
        if ":" in host:
            packed = socket.inet_pton(socket.AF_INET6, host)
            family = FAMILY_IPV6
        else:
            packed = socket.inet_pton(socket.AF_INET, host)
            family = FAMILY_IPV4
    except OSError:
        raise StunEncodeError(f"{host!r} is not an IP address") from None
    if xor:
        port ^= _COOKIE_PORT
        packed = _xor_bytes(packed, transaction_id)
    if family == FAMILY_IPV4:
        return _ADDR4.pack(family, port, packed)
    return _ADDR6.pack(family, port, packed)


def decode_address(value: bytes, *, xor: bool = False, transaction_id: bytes = b"") -> Address:
    """Parse an address attribute value. Raises :class:`StunDecodeError` if malformed."""
    n = len(value)
    if n == 8:
        family, port, packed = _ADDR4.unpack(value)
        if family != FAMILY_IPV4:
            raise StunDecodeError(f"address attribute of 8 bytes with family {family}, expected 1 (IPv4)")
        af = socket.AF_INET
    elif n == 20:
        family, port, packed = _ADDR6.unpack(value)
        if family != FAMILY_IPV6:
            raise StunDecodeError(f"address attribute of 20 bytes with family {family}, expected 2 (IPv6)")
        af = socket.AF_INET6
    else:
        raise StunDecodeError(f"address attribute of {n} bytes, expected 8 (IPv4) or 20 (IPv6)")
    if xor:
        port ^= _COOKIE_PORT
        packed = _xor_bytes(packed, transaction_id)
    host = socket.inet_ntop(af, packed)
    if af == socket.AF_INET6 and "." in host:  # ::a.b.c.d forms: write them as ipaddress does
        host = ipaddress.IPv6Address(packed).compressed
    return Address(host, port)


def _xor_bytes(packed: bytes, transaction_id: bytes) -> bytes:
    if len(packed) == 4:
        return (int.from_bytes(packed, "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
    if len(transaction_id) != 12:
        raise StunDecodeError("an XOR'd IPv6 address needs the 12-byte transaction id of RFC 5389/8489")
    mask = int.from_bytes(MAGIC_COOKIE_BYTES + transaction_id, "big")
    return (int.from_bytes(packed, "big") ^ mask).to_bytes(16, "big")


# ---------------------------------------------------------------------------------------------
# Integers, text, flags


def encode_uint(attr_type: int, value: int) -> bytes:
    """A UINT attribute (LIFETIME, CHANNEL-NUMBER, REQUESTED-TRANSPORT, ...), RFFU bytes zero."""
    info = _info(attr_type, Kind.UINT)
    size = info.int_size
    if not 0 <= value < 1 << (8 * size):
        raise StunEncodeError(f"{info.name} value {value} does not fit in {size} bytes")
    assert info.length is not None
    return value.to_bytes(size, "big") + bytes(info.length - size)


def decode_uint(attr_type: int, value: bytes) -> int:
    """The integer of a UINT attribute; the reserved bytes after it are ignored (RFC 8656: RFFU)."""
    info = _info(attr_type, Kind.UINT)
    if len(value) != info.length:
        raise StunDecodeError(f"{info.name} value of {len(value)} bytes, expected {info.length}")
    return int.from_bytes(value[: info.int_size], "big")


def encode_text(attr_type: int, text: str) -> bytes:
    info = _info(attr_type, Kind.TEXT)
    data = text.encode("utf-8")
    limit = info.max_length
    if limit is not None and len(data) > limit:
        raise StunEncodeError(f"{info.name} of {len(data)} bytes, at most {limit} allowed")
    if limit == MAX_TEXT_BYTES and len(text) > MAX_TEXT_CHARS:
        raise StunEncodeError(f"{info.name} of {len(text)} characters, at most {MAX_TEXT_CHARS} allowed")
    return data


def decode_text(attr_type: int, value: bytes) -> str:
    info = ATTRIBUTES.get(attr_type)
    name = info.name if info is not None else attr_name(attr_type)
    if info is not None and info.max_length is not None and len(value) > info.max_length:
        raise StunDecodeError(f"{name} of {len(value)} bytes, at most {info.max_length} allowed")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise StunDecodeError(f"{name} is not valid UTF-8") from None


CHANGE_IP: Final = 0x04
CHANGE_PORT: Final = 0x02
EVEN_PORT_RESERVE: Final = 0x80


class ChangeRequest(NamedTuple):
    """CHANGE-REQUEST (RFC 5780 section 7.2): answer from the other IP and/or the other port."""

    change_ip: bool
    change_port: bool


def encode_change_request(change_ip: bool, change_port: bool) -> bytes:
    return ((CHANGE_IP if change_ip else 0) | (CHANGE_PORT if change_port else 0)).to_bytes(4, "big")


def decode_change_request(value: bytes) -> ChangeRequest:
    flags = decode_uint(Attr.CHANGE_REQUEST, value)
    return ChangeRequest(bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT))


# ---------------------------------------------------------------------------------------------
# Error codes

REASONS: Final[dict[int, str]] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    405: "Mobility Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}
"""Reason phrases of RFC 8489 section 14.8, RFC 8656 section 19, RFC 6062 and RFC 8445."""


class ErrorCode(NamedTuple):
    """An ERROR-CODE value: a code 300-699 and its reason phrase."""

    code: int
    reason: str


class AddressError(NamedTuple):
    """An ADDRESS-ERROR-CODE value (RFC 8656 section 18.12): which family failed and why."""

    family: int
    code: int
    reason: str


_ERROR_HEAD = struct.Struct("!BBBB")


def _error_bytes(first: int, code: int, reason: str | None) -> bytes:
    if not 300 <= code <= 699:
        raise StunEncodeError(f"error code {code} out of range 300-699")
    text = REASONS.get(code, "") if reason is None else reason
    data = text.encode("utf-8")
    if len(data) > MAX_TEXT_BYTES or len(text) > MAX_TEXT_CHARS:
        raise StunEncodeError("reason phrase longer than 127 characters or 763 bytes")
    return _ERROR_HEAD.pack(first, 0, code // 100, code % 100) + data


def _error_parts(name: str, value: bytes) -> tuple[int, int, str]:
    if len(value) < 4:
        raise StunDecodeError(f"{name} value of {len(value)} bytes, at least 4 expected")
    first, _, klass, number = _ERROR_HEAD.unpack_from(value)
    klass &= 0x07
    if not 3 <= klass <= 6 or number > 99:
        raise StunDecodeError(f"{name} class {klass} number {number} out of range 300-699")
    if len(value) - 4 > MAX_TEXT_BYTES:
        raise StunDecodeError(f"{name} reason phrase longer than {MAX_TEXT_BYTES} bytes")
    try:
        reason = value[4:].decode("utf-8")
    except UnicodeDecodeError:
        raise StunDecodeError(f"{name} reason phrase is not valid UTF-8") from None
    return first, klass * 100 + number, reason


def encode_error_code(code: int, reason: str | None = None) -> bytes:
    """ERROR-CODE; ``reason`` defaults to the RFC's phrase for the code."""
    return _error_bytes(0, code, reason)


def decode_error_code(value: bytes) -> ErrorCode:
    _, code, reason = _error_parts("ERROR-CODE", value)
    return ErrorCode(code, reason)


def encode_address_error_code(family: int, code: int, reason: str | None = None) -> bytes:
    if family not in (FAMILY_IPV4, FAMILY_IPV6):
        raise StunEncodeError(f"address family {family} is not 1 (IPv4) or 2 (IPv6)")
    return _error_bytes(family, code, reason)


def decode_address_error_code(value: bytes) -> AddressError:
    family, code, reason = _error_parts("ADDRESS-ERROR-CODE", value)
    return AddressError(family, code, reason)


# ---------------------------------------------------------------------------------------------
# Lists


def encode_unknown_attributes(types: list[int]) -> bytes:
    if any(not 0 <= t <= 0xFFFF for t in types):
        raise StunEncodeError("attribute types are 16-bit")
    return struct.pack(f"!{len(types)}H", *types)


def decode_unknown_attributes(value: bytes) -> list[int]:
    if len(value) % 2:
        raise StunDecodeError(f"UNKNOWN-ATTRIBUTES of odd length {len(value)}")
    return list(struct.unpack(f"!{len(value) // 2}H", value))


class PasswordAlgorithm(enum.IntEnum):
    """IANA "STUN Password Algorithms" (RFC 8489 section 18.5)."""

    MD5 = 0x0001
    SHA256 = 0x0002


class PasswordAlgorithmEntry(NamedTuple):
    """One algorithm of PASSWORD-ALGORITHMS, or the value of PASSWORD-ALGORITHM."""

    algorithm: int
    parameters: bytes = b""


_U16X2 = struct.Struct("!HH")


def encode_password_algorithms(entries: list[PasswordAlgorithmEntry]) -> bytes:
    out = bytearray()
    for algorithm, params in entries:
        if not 0 <= algorithm <= 0xFFFF or len(params) > 0xFFFF:
            raise StunEncodeError("password algorithm or its parameters out of range")
        out += _U16X2.pack(algorithm, len(params)) + params + bytes(-len(params) & 3)
    return bytes(out)


def decode_password_algorithms(value: bytes) -> list[PasswordAlgorithmEntry]:
    entries: list[PasswordAlgorithmEntry] = []
    pos, n = 0, len(value)
    while pos < n:
        if pos + 4 > n:
            raise StunDecodeError("PASSWORD-ALGORITHMS entry truncated")
        algorithm, plen = _U16X2.unpack_from(value, pos)
        start = pos + 4
        end = start + plen
        if end > n:
            raise StunDecodeError("PASSWORD-ALGORITHMS parameters truncated")
        entries.append(PasswordAlgorithmEntry(algorithm, value[start:end]))
        pos = min(end + (-plen & 3), n)
    return entries


def encode_password_algorithm(entry: PasswordAlgorithmEntry) -> bytes:
    return encode_password_algorithms([entry])


def decode_password_algorithm(value: bytes) -> PasswordAlgorithmEntry:
    entries = decode_password_algorithms(value)
    if len(entries) != 1:
        raise StunDecodeError(f"PASSWORD-ALGORITHM holds {len(entries)} algorithms, expected 1")
    return entries[0]


# ---------------------------------------------------------------------------------------------
# ICMP (RFC 8656 section 18.13)


class Icmp(NamedTuple):
    icmp_type: int
    icmp_code: int
    error_data: int = 0


_ICMP = struct.Struct("!xxBBI")


def encode_icmp(icmp: Icmp) -> bytes:
    t, c, d = icmp
    if not (0 <= t <= 0xFF and 0 <= c <= 0xFF and 0 <= d <= 0xFFFFFFFF):
        raise StunEncodeError("ICMP type, code or error data out of range")
    return _ICMP.pack(t, c, d)


def decode_icmp(value: bytes) -> Icmp:
    if len(value) != 8:
        raise StunDecodeError(f"ICMP value of {len(value)} bytes, expected 8")
    return Icmp(*_ICMP.unpack(value))


def check_fixed_length(attr_type: int, value: bytes) -> None:
    """Raise :class:`StunEncodeError` if the table fixes this attribute's length and ``value``
    does not have it (used by :meth:`StunMessage.add`)."""
    info = ATTRIBUTES.get(attr_type)
    if (
        info is not None
        and info.length is not None
        and info.kind is not Kind.INTEGRITY
        and len(value) != info.length
    ):
        raise StunEncodeError(f"{info.name} value of {len(value)} bytes, expected {info.length}")
