"""The STUN message codec (RFC 8489), sans-IO: bytes in, :class:`StunMessage` out, and back.

A message is a 20-byte header and a list of TLV attributes::

    0b00 | type:14 | length:16 | magic cookie 0x2112A442:32 | transaction id:96 | attributes...

The 14-bit type interleaves a 12-bit method and a 2-bit class (RFC 8489 section 5). Each attribute
is ``type:16 | length:16 | value``, padded to a multiple of four bytes; ``length`` excludes the
padding. The padding may hold any bytes (RFC 5769 pads with spaces) and is ignored on receipt.

:func:`decode` keeps the attributes in order as ``(type, raw value)`` pairs and checks the framing
only, which is what a relay needs per packet; the typed accessors of :class:`StunMessage` parse a
value when asked. :func:`decode` raises :class:`StunDecodeError` when:

- the input is shorter than 20 bytes or longer than ``max_size`` (default :data:`MAX_MESSAGE_SIZE`);
- the first two bits are not zero, or the magic cookie is wrong (unless ``allow_rfc3489``);
- the length field is not a multiple of four or does not match the input;
- an attribute is truncated or its padding is missing (which the length rules catch), or there
  are more than
  :data:`MAX_ATTRIBUTES` attributes;
- an attribute follows FINGERPRINT, or one other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
  follows MESSAGE-INTEGRITY (RFC 8489 section 14.5 says such attributes are to be ignored; we refuse
  the message instead: nothing unauthenticated may ride after the integrity check), or one other
  than FINGERPRINT follows MESSAGE-INTEGRITY-SHA256;
- MESSAGE-INTEGRITY is not 20 bytes, MESSAGE-INTEGRITY-SHA256 not 16-32 bytes in steps of four, or
  FINGERPRINT not 4 bytes or not the CRC-32 of the message XOR 0x5354554E.

MESSAGE-INTEGRITY and MESSAGE-INTEGRITY-SHA256 depend on a key the codec does not know: check them
on the raw bytes with :func:`verify_integrity` / :func:`verify_integrity_sha256`.

:func:`encode` writes the attributes in order, then MESSAGE-INTEGRITY (given ``integrity_key``),
MESSAGE-INTEGRITY-SHA256 (given ``integrity_sha256_key``) and FINGERPRINT (unless
``fingerprint=False``), each computed over the message before it with the header length adjusted to
end at that attribute (RFC 8489 sections 14.5-14.7). Integrity and fingerprint attributes already in
the message's list are skipped, so a decoded message re-encodes with fresh ones.
"""

from __future__ import annotations

import enum
import hmac
import struct
import zlib
from collections.abc import Iterable
from typing import Final

from ..addr import Address
from .attributes import (
    ATTRIBUTES,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    AddressError,
    Attr,
    ChangeRequest,
    ErrorCode,
    Icmp,
    Kind,
    PasswordAlgorithmEntry,
    StunDecodeError,
    StunEncodeError,
    attr_name,
    check_fixed_length,
    decode_address,
    decode_address_error_code,
    decode_change_request,
    decode_error_code,
    decode_icmp,
    decode_password_algorithm,
    decode_password_algorithms,
    decode_text,
    decode_uint,
    decode_unknown_attributes,
    encode_address,
    encode_address_error_code,
    encode_change_request,
    encode_error_code,
    encode_icmp,
    encode_password_algorithm,
    encode_password_algorithms,
    encode_text,
    encode_uint,
    encode_unknown_attributes,
)

HEADER_SIZE: Final = 20
MAX_MESSAGE_SIZE: Final = HEADER_SIZE + 0xFFFC
"""The largest message the 16-bit length field can describe (lengths are multiples of four)."""
MAX_ATTRIBUTES: Final = 128
"""More attributes than any real message carries; bounds the work one hostile datagram can cost."""
FINGERPRINT_XOR: Final = 0x5354554E


class Method(enum.IntEnum):
    """STUN methods (RFC 8489 section 18.2, RFC 8656 section 17)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class StunClass(enum.IntEnum):
    """The two class bits of the message type."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


def message_type(method: int, msg_class: int) -> int:
    """Interleave method bits M11..M0 and class bits C1 C0 into the 14-bit type."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((msg_class & 1) << 4)
        | ((msg_class & 2) << 7)
    )


def split_message_type(msg_type: int) -> tuple[int, StunClass]:
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    return _METHODS.get(method, method), StunClass(((msg_type >> 4) & 1) | ((msg_type >> 7) & 2))


_METHODS: Final[dict[int, int]] = {m.value: m for m in Method}
_TYPES: Final[dict[int, tuple[int, StunClass]]] = {
    message_type(m, c): (m, c) for m in Method for c in StunClass
}
_ENCODE_TYPES: Final[dict[tuple[int, int], int]] = {v: k for k, v in _TYPES.items()}

_HEAD = struct.Struct("!HHI")
_ATTR = struct.Struct("!HH")
_MI = Attr.MESSAGE_INTEGRITY.value
_MI256 = Attr.MESSAGE_INTEGRITY_SHA256.value
_FP = Attr.FINGERPRINT.value
_TRAILERS: Final = frozenset((_MI, _MI256, _FP))
_MI_HEAD: Final = _ATTR.pack(_MI, 20)
_MI256_HEAD: Final = _ATTR.pack(_MI256, 32)
_FP_HEAD: Final = _ATTR.pack(_FP, 4)


class StunMessage:
    """A STUN message: method, class, transaction id and its attributes in order.

    ``transaction_id`` is 12 bytes; a message decoded with ``allow_rfc3489`` from a classic RFC 3489
    peer (no magic cookie) has the 16-byte id of that RFC instead (:attr:`is_rfc3489`).
    ``attributes`` is the ordered list of ``(type, raw value)``; the ``get_*``/``add_*`` methods
    read and write typed values. A getter returns ``None`` when the attribute is absent and raises
    :class:`StunDecodeError` when it is malformed. Only the first of repeated attributes counts,
    except through :meth:`get_all`.
    """

    __slots__ = ("attributes", "method", "msg_class", "transaction_id")

    def __init__(
        self,
        method: int,
        msg_class: StunClass,
        transaction_id: bytes,
        attributes: Iterable[tuple[int, bytes]] = (),
    ) -> None:
        if not 0 <= method <= 0xFFF:
            raise StunEncodeError(f"method 0x{method:X} is not a 12-bit value")
        if len(transaction_id) not in (12, 16):
            raise StunEncodeError(f"transaction id of {len(transaction_id)} bytes, expected 12")
        self.method = method
        self.msg_class = StunClass(msg_class)
        self.transaction_id = bytes(transaction_id)
        self.attributes: list[tuple[int, bytes]] = list(attributes)

    @property
    def is_rfc3489(self) -> bool:
        """True for a classic RFC 3489 message (no magic cookie, 16-byte transaction id)."""
        return len(self.transaction_id) == 16

    def response(self, msg_class: StunClass = StunClass.SUCCESS) -> StunMessage:
        """An empty success (or error) response with this request's method and transaction id."""
        return StunMessage(self.method, msg_class, self.transaction_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StunMessage):
            return NotImplemented
        return (
            self.method == other.method
            and self.msg_class == other.msg_class
            and self.transaction_id == other.transaction_id
            and self.attributes == other.attributes
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        method = self.method.name if isinstance(self.method, Method) else f"0x{self.method:03X}"
        attrs = ", ".join(f"{attr_name(t)}={v.hex() if len(v) <= 16 else v[:16].hex() + '...'}"
                          for t, v in self.attributes)  # fmt: skip
        return f"<StunMessage {method} {self.msg_class.name} tid={self.transaction_id.hex()} [{attrs}]>"

    # -- raw access --------------------------------------------------------------------------

    def get(self, attr: int) -> bytes | None:
        """The raw value of the first ``attr``, or ``None``."""
        for t, v in self.attributes:
            if t == attr:
                return v
        return None

    def get_all(self, attr: int) -> list[bytes]:
        return [v for t, v in self.attributes if t == attr]

    def has(self, attr: int) -> bool:
        return any(t == attr for t, _ in self.attributes)

    def add(self, attr: int, value: bytes = b"") -> None:
        """Append a raw attribute (a flag such as DONT-FRAGMENT when ``value`` is empty).

        Raises :class:`StunEncodeError` if the type is not 16-bit, the value is longer than 65535
        bytes, or the attribute table fixes a length the value does not have.
        """
        if not 0 <= attr <= 0xFFFF:
            raise StunEncodeError(f"attribute type {attr} is not 16-bit")
        if len(value) > 0xFFFF:
            raise StunEncodeError(f"{attr_name(attr)} value of {len(value)} bytes exceeds 65535")
        check_fixed_length(attr, value)
        self.attributes.append((attr, bytes(value)))

    def remove(self, attr: int) -> None:
        """Drop every ``attr`` from the message."""
        self.attributes = [(t, v) for t, v in self.attributes if t != attr]

    def comprehension_required_unknown(self, known: set[int] | frozenset[int]) -> list[int]:
        """Comprehension-required types (< 0x8000) not in ``known``, once each, in order: the
        content of UNKNOWN-ATTRIBUTES in a 420 response."""
        out: list[int] = []
        for t, _ in self.attributes:
            if t < 0x8000 and t not in known and t not in out:
                out.append(t)
        return out

    # -- typed access ------------------------------------------------------------------------

    def get_address(self, attr: int) -> Address | None:
        """An address attribute; the XOR-* types are un-XORed with the cookie and transaction id."""
        value = self.get(attr)
        if value is None:
            return None
        info = ATTRIBUTES.get(attr)
        if info is not None and info.kind is Kind.XOR_ADDRESS:
            if self.is_rfc3489:
                raise StunDecodeError(f"{info.name} in an RFC 3489 message (no magic cookie)")
            return decode_address(value, xor=True, transaction_id=self.transaction_id)
        return decode_address(value)

    def get_all_addresses(self, attr: int) -> list[Address]:
        """Every ``attr`` (a TURN request may carry several XOR-PEER-ADDRESS)."""
        info = ATTRIBUTES.get(attr)
        xor = info is not None and info.kind is Kind.XOR_ADDRESS
        return [decode_address(v, xor=xor, transaction_id=self.transaction_id) for v in self.get_all(attr)]

    def add_address(self, attr: int, address: Address) -> None:
        info = ATTRIBUTES.get(attr)
        if info is None or info.kind not in (Kind.ADDRESS, Kind.XOR_ADDRESS):
            raise StunEncodeError(f"{attr_name(attr)} is not an address attribute")
        xor = info.kind is Kind.XOR_ADDRESS
        if xor and self.is_rfc3489:
            raise StunEncodeError(f"{info.name} cannot be sent to an RFC 3489 peer")
        self.attributes.append((attr, encode_address(address, xor=xor, transaction_id=self.transaction_id)))

    def get_error(self) -> ErrorCode | None:
        value = self.get(Attr.ERROR_CODE)
        return None if value is None else decode_error_code(value)

    def add_error(self, code: int, reason: str | None = None) -> None:
        """ERROR-CODE; ``reason`` defaults to the RFC's phrase (420 -> "Unknown Attribute")."""
        self.attributes.append((Attr.ERROR_CODE, encode_error_code(code, reason)))

    def get_uint(self, attr: int) -> int | None:
        """LIFETIME, CHANNEL-NUMBER, REQUESTED-TRANSPORT, REQUESTED-/ADDITIONAL-ADDRESS-FAMILY,
        RESPONSE-PORT, PRIORITY, ICE-CONTROLLED/-CONTROLLING, CACHE-TIMEOUT, CONNECTION-ID,
        CHANGE-REQUEST (the flags) and EVEN-PORT (the flags byte)."""
        value = self.get(attr)
        return None if value is None else decode_uint(attr, value)

    def add_uint(self, attr: int, value: int) -> None:
        self.attributes.append((attr, encode_uint(attr, value)))

    def get_text(self, attr: int) -> str | None:
        """USERNAME, REALM, NONCE, SOFTWARE, ALTERNATE-DOMAIN (UTF-8, length-checked)."""
        value = self.get(attr)
        return None if value is None else decode_text(attr, value)

    def add_text(self, attr: int, text: str) -> None:
        self.attributes.append((attr, encode_text(attr, text)))

    def get_change_request(self) -> ChangeRequest | None:
        value = self.get(Attr.CHANGE_REQUEST)
        return None if value is None else decode_change_request(value)

    def add_change_request(self, change_ip: bool, change_port: bool) -> None:
        self.attributes.append((Attr.CHANGE_REQUEST, encode_change_request(change_ip, change_port)))

    def get_even_port(self) -> bool | None:
        """EVEN-PORT: ``None`` if absent, else whether the R bit (reserve the next port) is set."""
        flags = self.get_uint(Attr.EVEN_PORT)
        return None if flags is None else bool(flags & 0x80)

    def add_even_port(self, reserve_next: bool) -> None:
        self.add_uint(Attr.EVEN_PORT, 0x80 if reserve_next else 0)

    def get_unknown_attributes(self) -> list[int] | None:
        value = self.get(Attr.UNKNOWN_ATTRIBUTES)
        return None if value is None else decode_unknown_attributes(value)

    def add_unknown_attributes(self, types: list[int]) -> None:
        self.attributes.append((Attr.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(types)))

    def get_password_algorithms(self) -> list[PasswordAlgorithmEntry] | None:
        value = self.get(Attr.PASSWORD_ALGORITHMS)
        return None if value is None else decode_password_algorithms(value)

    def add_password_algorithms(self, entries: list[PasswordAlgorithmEntry]) -> None:
        self.attributes.append((Attr.PASSWORD_ALGORITHMS, encode_password_algorithms(entries)))

    def get_password_algorithm(self) -> PasswordAlgorithmEntry | None:
        value = self.get(Attr.PASSWORD_ALGORITHM)
        return None if value is None else decode_password_algorithm(value)

    def add_password_algorithm(self, entry: PasswordAlgorithmEntry) -> None:
        self.attributes.append((Attr.PASSWORD_ALGORITHM, encode_password_algorithm(entry)))

    def get_address_error(self) -> AddressError | None:
        value = self.get(Attr.ADDRESS_ERROR_CODE)
        return None if value is None else decode_address_error_code(value)

    def add_address_error(self, family: int, code: int, reason: str | None = None) -> None:
        self.attributes.append((Attr.ADDRESS_ERROR_CODE, encode_address_error_code(family, code, reason)))

    def get_icmp(self) -> Icmp | None:
        value = self.get(Attr.ICMP)
        return None if value is None else decode_icmp(value)

    def add_icmp(self, icmp: Icmp) -> None:
        self.attributes.append((Attr.ICMP, encode_icmp(icmp)))


# ---------------------------------------------------------------------------------------------
# Decoding


def is_stun(data: bytes) -> bool:
    """Fast demultiplexing test (RFC 7983): first byte 0-3 and the magic cookie in place."""
    return len(data) >= HEADER_SIZE and data[0] < 4 and data[4:8] == MAGIC_COOKIE_BYTES


def decode(data: bytes, *, allow_rfc3489: bool = False, max_size: int = MAX_MESSAGE_SIZE) -> StunMessage:
    """Parse one whole STUN message. Raises :class:`StunDecodeError` (see the module docstring).

    ``allow_rfc3489`` accepts a message without the magic cookie as a classic RFC 3489 message
    whose transaction id is the 16 bytes after the length field.
    """
    if type(data) is not bytes:  # a bytearray or memoryview from a stream buffer
        data = bytes(data)
    n = len(data)
    if n < HEADER_SIZE:
        raise StunDecodeError(f"STUN message of {n} bytes is shorter than the 20-byte header")
    if n > max_size:
        raise StunDecodeError(f"STUN message of {n} bytes exceeds the maximum of {max_size}")
    msg_type, length, cookie = _HEAD.unpack_from(data)
    if msg_type & 0xC000:
        raise StunDecodeError("the first two bits of a STUN message must be zero")
    if length & 3:
        raise StunDecodeError(f"STUN length {length} is not a multiple of 4")
    if length + HEADER_SIZE != n:
        raise StunDecodeError(f"STUN length field says {length} bytes of attributes, {n - 20} present")
    if cookie == MAGIC_COOKIE:
        tid = data[8:20]
    elif allow_rfc3489:
        tid = data[4:20]
    else:
        raise StunDecodeError(f"wrong magic cookie 0x{cookie:08X}")
    typ = _TYPES.get(msg_type)
    method, msg_class = typ if typ is not None else split_message_type(msg_type)

    attributes: list[tuple[int, bytes]] = []
    append = attributes.append
    unpack = _ATTR.unpack_from
    trailers = _TRAILERS
    after = 0  # 0: free; _MI, _MI256: after that attribute
    pos = HEADER_SIZE
    while pos < n:  # pos and n are multiples of 4, so a 4-byte header always fits
        atype, alen = unpack(data, pos)
        start = pos + 4
        end = start + alen
        if end > n:
            raise StunDecodeError(f"attribute {attr_name(atype)} of {alen} bytes is truncated")
        # n is a multiple of 4, so the padding of a value that fits fits too: a missing padding
        # shows as a length that is not a multiple of 4, or as a truncated attribute after it
        if after or atype in trailers:
            after = _check_trailer(data, atype, alen, pos, after)
        append((atype, data[start:end]))
        if len(attributes) > MAX_ATTRIBUTES:
            raise StunDecodeError(f"more than {MAX_ATTRIBUTES} attributes")
        pos = end + (-alen & 3)
    msg = StunMessage.__new__(StunMessage)
    msg.method = method
    msg.msg_class = msg_class
    msg.transaction_id = tid
    msg.attributes = attributes
    return msg


def _check_trailer(data: bytes, atype: int, alen: int, pos: int, after: int) -> int:
    """Order and length rules of MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT; returns the new state."""
    if after == _MI and atype not in (_MI256, _FP):
        raise StunDecodeError(f"attribute {attr_name(atype)} follows MESSAGE-INTEGRITY")
    if after == _MI256 and atype != _FP:
        raise StunDecodeError(f"attribute {attr_name(atype)} follows MESSAGE-INTEGRITY-SHA256")
    if atype == _MI:
        if alen != 20:
            raise StunDecodeError(f"MESSAGE-INTEGRITY of {alen} bytes, expected 20")
        return _MI
    if atype == _MI256:
        if alen not in (16, 20, 24, 28, 32):
            raise StunDecodeError(f"MESSAGE-INTEGRITY-SHA256 of {alen} bytes, expected 16-32 in fours")
        return _MI256
    # FINGERPRINT
    if alen != 4:
        raise StunDecodeError(f"FINGERPRINT of {alen} bytes, expected 4")
    if pos + 8 != len(data):
        raise StunDecodeError("attributes follow FINGERPRINT")
    expected = (zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    if int.from_bytes(data[pos + 4 : pos + 8], "big") != expected:
        raise StunDecodeError("bad FINGERPRINT")
    return _FP


# ---------------------------------------------------------------------------------------------
# Encoding


def encode(
    msg: StunMessage,
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = True,
    pad_byte: int = 0,
) -> bytes:
    """Serialize ``msg``; see the module docstring. ``pad_byte`` fills attribute padding (zero
    by default; RFC 5769's samples use 0x20). Raises :class:`StunEncodeError` past 65535 bytes of
    attributes. An RFC 3489 message (16-byte id) is written without the magic cookie."""
    try:
        return _encode(msg, integrity_key, integrity_sha256_key, fingerprint, pad_byte)
    except struct.error as exc:  # a type, length or value out of its field's range
        raise StunEncodeError(f"cannot encode STUN message: {exc}") from None


def _encode(
    msg: StunMessage,
    integrity_key: bytes | None,
    integrity_sha256_key: bytes | None,
    fingerprint: bool,
    pad_byte: int,
) -> bytes:
    tid = msg.transaction_id
    buf = bytearray(HEADER_SIZE)
    pad = bytes((pad_byte,)) * 3
    pack = _ATTR.pack
    for atype, value in msg.attributes:
        if atype in _TRAILERS:
            continue
        alen = len(value)
        buf += pack(atype, alen)
        buf += value
        if alen & 3:
            buf += pad[: -alen & 3]
    mtype = _ENCODE_TYPES.get((msg.method, msg.msg_class))
    if mtype is None:
        mtype = message_type(msg.method, msg.msg_class)
    if len(tid) == 12:
        buf[8:20] = tid
        cookie = MAGIC_COOKIE
    else:
        buf[4:20] = tid
        cookie = int.from_bytes(tid[:4], "big")
    trailer = (24 if integrity_key is not None else 0) + (36 if integrity_sha256_key is not None else 0)
    if len(buf) - HEADER_SIZE + trailer + (8 if fingerprint else 0) > 0xFFFF:
        raise StunEncodeError("STUN message exceeds 65535 bytes of attributes")
    head = _HEAD.pack_into
    if integrity_key is not None:
        head(buf, 0, mtype, len(buf) + 4, cookie)  # length as if MESSAGE-INTEGRITY were last
        buf += _MI_HEAD
        buf += hmac.digest(integrity_key, buf[:-4], "sha1")
    if integrity_sha256_key is not None:
        head(buf, 0, mtype, len(buf) + 16, cookie)
        buf += _MI256_HEAD
        buf += hmac.digest(integrity_sha256_key, buf[:-4], "sha256")
    if fingerprint:
        head(buf, 0, mtype, len(buf) - 12, cookie)
        crc = (zlib.crc32(buf) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        buf += _FP_HEAD
        buf += crc.to_bytes(4, "big")
    head(buf, 0, mtype, len(buf) - HEADER_SIZE, cookie)
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# Integrity on raw bytes


def _find_attribute(data: bytes, wanted: int) -> int:
    """Offset of the first ``wanted`` attribute header in ``data``, or -1."""
    n = len(data)
    pos = HEADER_SIZE
    unpack = _ATTR.unpack_from
    while pos + 4 <= n:
        atype, alen = unpack(data, pos)
        if atype == wanted:
            return pos
        pos += 4 + alen + (-alen & 3)
    return -1


def _verify(data: bytes, key: bytes, attr: int, digest: str) -> bool:
    if len(data) < HEADER_SIZE:
        return False
    pos = _find_attribute(data, attr)
    if pos < 0:
        return False
    alen = int.from_bytes(data[pos + 2 : pos + 4], "big")
    expected = data[pos + 4 : pos + 4 + alen]
    if alen < 16 or len(expected) != alen:
        return False
    covered = data[:2] + (pos + 4 + alen - HEADER_SIZE).to_bytes(2, "big") + data[4:pos]
    mac = hmac.digest(key, covered, digest)
    return hmac.compare_digest(mac[:alen], expected)


def verify_integrity(data: bytes, key: bytes) -> bool:
    """True if ``data`` carries a MESSAGE-INTEGRITY (HMAC-SHA1) that ``key`` produced. False if
    it is absent or wrong; never raises."""
    return _verify(data, key, _MI, "sha1")


def verify_integrity_sha256(data: bytes, key: bytes) -> bool:
    """True if ``data`` carries a MESSAGE-INTEGRITY-SHA256 (possibly truncated to 16-28 bytes, as
    RFC 8489 section 14.6 allows) that ``key`` produced. False if absent or wrong; never raises."""
    return _verify(data, key, _MI256, "sha256")


def verify_fingerprint(data: bytes) -> bool:
    """True if ``data`` ends with a correct FINGERPRINT (:func:`decode` checks it too)."""
    n = len(data)
    if n < HEADER_SIZE + 8 or data[n - 8 : n - 4] != _FP_HEAD:
        return False
    expected = (zlib.crc32(data[: n - 8]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return int.from_bytes(data[n - 4 :], "big") == expected
