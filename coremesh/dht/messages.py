"""DHT messages: every one signed by its sender, requests padded against amplification.

A message never travels in clear: it is sealed to its responder (:mod:`coremesh.dht.secure`, the
outer packet), so the layout below is what the seal carries. Layout (big-endian)::

    0xE7 | version:1 (2) | kind:1 | txid:8 | sender peer_id:32 | body | ed25519 signature:64

The signature covers a domain separation string and every byte before it. Responses echo the
request's txid; a node accepts a response only for a txid it sent to that address (and peer).

Bodies (``addr`` = family:1 (4 or 6) | ip:4 or 16 | port:2; ``contact`` = peer_id:32 | addr;
``record`` = len:2 | a :class:`~coremesh.dht.records.PeerRecord` encoding)::

    PING        zero padding                     PONG    addr (the requester as seen by the responder)
    FIND_NODE   target:32 | zero padding         NODES   count:1 | count × contact
    FIND_VALUE  target:32 | zero padding         VALUE   has_record:1 | [record] | count:1 | contacts
    STORE       record | zero padding            STORED  status:1 (0 stored, 1 stale, 2 refused, 3 full)
    PEX         count:1 | count × record         (no reply)

Anti-amplification (as in QUIC): a response is never more than :data:`AMPLIFICATION` times the
request that caused it, and never more than :data:`MAX_DATAGRAM` bytes; requests that want a full
list of contacts are padded so that the sealed datagram is :data:`REQUEST_PAD` bytes. Decoding is
total: any malformed input raises :class:`~coremesh.errors.DecodeError`, never anything else.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions

from ..addr import Address
from ..errors import DecodeError
from ..identity import PeerId
from ..secure.wire import PacketType
from .records import PeerRecord

DHT_VERSION: Final = 2  # 1: signed datagrams in clear; 2: sealed (coremesh/dht/secure.py)
MAX_DATAGRAM: Final = 1200
AMPLIFICATION: Final = 3
REQUEST_PAD: Final = MAX_DATAGRAM // AMPLIFICATION  # a padded request may be answered with a full datagram
SIGNATURE_LEN: Final = 64
_DOMAIN: Final = b"coremesh-dht-msg-v2\x00"
_HEAD = struct.Struct("!BBBQ32s")
HEADER_LEN: Final = _HEAD.size  # 43
OVERHEAD: Final = HEADER_LEN + SIGNATURE_LEN
MAX_CONTACTS: Final = 64
MAX_PEX_RECORDS: Final = 16


class Kind(enum.IntEnum):
    PING = 1
    PONG = 2
    FIND_NODE = 3
    NODES = 4
    FIND_VALUE = 5
    VALUE = 6
    STORE = 7
    STORED = 8
    PEX = 9


REQUESTS: Final = frozenset({Kind.PING, Kind.FIND_NODE, Kind.FIND_VALUE, Kind.STORE})
RESPONSE_TO: Final = {
    Kind.PING: Kind.PONG,
    Kind.FIND_NODE: Kind.NODES,
    Kind.FIND_VALUE: Kind.VALUE,
    Kind.STORE: Kind.STORED,
}


class StoreStatus(enum.IntEnum):
    STORED = 0
    STALE = 1
    REFUSED = 2
    FULL = 3


Contact = tuple[PeerId, Address]


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    observed: Address


@dataclass(frozen=True, slots=True)
class FindNode:
    target: PeerId


@dataclass(frozen=True, slots=True)
class Nodes:
    contacts: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class FindValue:
    target: PeerId


@dataclass(frozen=True, slots=True)
class Value:
    record: PeerRecord | None
    contacts: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class Store:
    record: PeerRecord


@dataclass(frozen=True, slots=True)
class Stored:
    status: StoreStatus


@dataclass(frozen=True, slots=True)
class Pex:
    records: tuple[PeerRecord, ...]


Body = Ping | Pong | FindNode | Nodes | FindValue | Value | Store | Stored | Pex

_KIND_OF: Final[dict[type, Kind]] = {
    Ping: Kind.PING,
    Pong: Kind.PONG,
    FindNode: Kind.FIND_NODE,
    Nodes: Kind.NODES,
    FindValue: Kind.FIND_VALUE,
    Value: Kind.VALUE,
    Store: Kind.STORE,
    Stored: Kind.STORED,
    Pex: Kind.PEX,
}


def kind_of(body: Body) -> Kind:
    return _KIND_OF[type(body)]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed datagram whose body is still bytes (the signature is checked before the body is
    decoded, so that a malformed body can be blamed on its signer)."""

    kind: Kind
    txid: int
    sender: PeerId
    body: bytes
    signed: bytes
    signature: bytes

    def verify(self) -> bool:
        try:
            sodium.crypto_sign_open(self.signature + self.signed, self.sender.key)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class Message:
    """A fully decoded datagram."""

    txid: int
    sender: PeerId
    body: Body

    @property
    def kind(self) -> Kind:
        return kind_of(self.body)


# ---- addresses and contacts ---------------------------------------------------------------------


def encode_address(address: Address) -> bytes:
    """``family | ip | port``. Raises ValueError if ``address`` is not a literal IP and port."""
    if not 0 <= address.port <= 65535:
        raise ValueError(f"port out of range: {address.port}")
    host = address.host
    if ":" not in host:
        try:
            return b"\x04" + socket.inet_pton(socket.AF_INET, host) + address.port.to_bytes(2, "big")
        except OSError:
            raise ValueError(f"not an IPv4 address: {host!r}") from None
    return b"\x06" + ipaddress.IPv6Address(host).packed + address.port.to_bytes(2, "big")


def address_size(address: Address) -> int:
    return 7 if ":" not in address.host else 19


def decode_address_at(data: bytes, pos: int) -> tuple[Address, int]:
    if pos >= len(data):
        raise DecodeError("truncated address")
    family = data[pos]
    if family == 4:
        n = 4
    elif family == 6:
        n = 16
    else:
        raise DecodeError(f"unknown address family {family}")
    end = pos + 1 + n + 2
    if end > len(data):
        raise DecodeError("truncated address")
    raw = bytes(data[pos + 1 : pos + 1 + n])
    port = int.from_bytes(data[end - 2 : end], "big")
    if n == 4:
        return Address(socket.inet_ntop(socket.AF_INET, raw), port), end
    ip = ipaddress.IPv6Address(raw)
    mapped = ip.ipv4_mapped
    return Address(mapped.compressed if mapped is not None else ip.compressed, port), end


def contact_size(contact: Contact) -> int:
    return 32 + address_size(contact[1])


def _encode_contacts(contacts: tuple[Contact, ...]) -> bytes:
    if len(contacts) > MAX_CONTACTS:
        raise ValueError(f"at most {MAX_CONTACTS} contacts per message")
    return bytes((len(contacts),)) + b"".join(p.key + encode_address(a) for p, a in contacts)


def _decode_contacts(data: bytes, pos: int) -> tuple[tuple[Contact, ...], int]:
    if pos >= len(data):
        raise DecodeError("truncated contact list")
    count = data[pos]
    if count > MAX_CONTACTS:
        raise DecodeError(f"{count} contacts (max {MAX_CONTACTS})")
    return _decode_contacts_n(data, pos + 1, count)


def _decode_contacts_n(data: bytes, pos: int, count: int) -> tuple[tuple[Contact, ...], int]:
    out = []
    for _ in range(count):
        if pos + 32 > len(data):
            raise DecodeError("truncated contact")
        peer = PeerId(bytes(data[pos : pos + 32]))
        address, pos = decode_address_at(data, pos + 32)
        out.append((peer, address))
    return tuple(out), pos


def _encode_record(record: PeerRecord) -> bytes:
    raw = record.encode()
    return len(raw).to_bytes(2, "big") + raw


def _decode_record(data: bytes, pos: int) -> tuple[PeerRecord, int]:
    if pos + 2 > len(data):
        raise DecodeError("truncated record length")
    n = int.from_bytes(data[pos : pos + 2], "big")
    end = pos + 2 + n
    if end > len(data):
        raise DecodeError("truncated record")
    return PeerRecord.decode(bytes(data[pos + 2 : end])), end


# ---- bodies -------------------------------------------------------------------------------------


def encode_body(body: Body) -> bytes:
    if isinstance(body, Ping):
        return b""
    if isinstance(body, Pong):
        return encode_address(body.observed)
    if isinstance(body, FindNode | FindValue):
        return body.target.key
    if isinstance(body, Nodes):
        return _encode_contacts(body.contacts)
    if isinstance(body, Value):
        head = b"\x00" if body.record is None else b"\x01" + _encode_record(body.record)
        return head + _encode_contacts(body.contacts)
    if isinstance(body, Store):
        return _encode_record(body.record)
    if isinstance(body, Stored):
        return bytes((body.status,))
    if len(body.records) > MAX_PEX_RECORDS:
        raise ValueError(f"at most {MAX_PEX_RECORDS} records per PEX")
    return bytes((len(body.records),)) + b"".join(_encode_record(r) for r in body.records)


def _padding(data: bytes, pos: int, kind: Kind) -> None:
    if pos != len(data):
        if kind not in REQUESTS:
            raise DecodeError(f"trailing bytes after {kind.name} body")
        if data[pos:].count(0) != len(data) - pos:
            raise DecodeError(f"{kind.name} padding is not zero")


def decode_body(kind: Kind, data: bytes) -> Body:
    """Decode the body of a ``kind`` datagram. Raises :class:`DecodeError` on any malformation."""
    body: Body
    if kind is Kind.PING:
        body, pos = Ping(), 0
    elif kind is Kind.PONG:
        observed, pos = decode_address_at(data, 0)
        body = Pong(observed)
    elif kind in (Kind.FIND_NODE, Kind.FIND_VALUE):
        if len(data) < 32:
            raise DecodeError(f"truncated {kind.name} target")
        target = PeerId(bytes(data[:32]))
        body, pos = (FindNode(target) if kind is Kind.FIND_NODE else FindValue(target)), 32
    elif kind is Kind.NODES:
        contacts, pos = _decode_contacts(data, 0)
        body = Nodes(contacts)
    elif kind is Kind.VALUE:
        if not data:
            raise DecodeError("truncated VALUE")
        record: PeerRecord | None = None
        if data[0] == 1:
            record, pos = _decode_record(data, 1)
        elif data[0] == 0:
            pos = 1
        else:
            raise DecodeError(f"VALUE flag must be 0 or 1, got {data[0]}")
        contacts, pos = _decode_contacts(data, pos)
        body = Value(record, contacts)
    elif kind is Kind.STORE:
        stored, pos = _decode_record(data, 0)
        body = Store(stored)
    elif kind is Kind.STORED:
        if len(data) < 1:
            raise DecodeError("truncated STORED")
        try:
            body, pos = Stored(StoreStatus(data[0])), 1
        except ValueError:
            raise DecodeError(f"unknown STORED status {data[0]}") from None
    else:  # PEX
        if not data:
            raise DecodeError("truncated PEX")
        count, pos = data[0], 1
        if count > MAX_PEX_RECORDS:
            raise DecodeError(f"{count} PEX records (max {MAX_PEX_RECORDS})")
        records = []
        for _ in range(count):
            r, pos = _decode_record(data, pos)
            records.append(r)
        body = Pex(tuple(records))
    _padding(data, pos, kind)
    return body


# ---- datagrams ----------------------------------------------------------------------------------

Signer = Callable[[bytes], bytes]


def encode_message(sign: Signer, sender: PeerId, txid: int, body: Body, *, pad_to: int = 0) -> bytes:
    """Sign and encode. Requests are zero-padded to ``pad_to`` bytes in total (responses never are)."""
    kind = kind_of(body)
    payload = encode_body(body)
    size = HEADER_LEN + len(payload) + SIGNATURE_LEN
    if pad_to > size and kind in REQUESTS:
        payload += bytes(pad_to - size)
    signed = _HEAD.pack(PacketType.DHT, DHT_VERSION, kind, txid, sender.key) + payload
    return signed + sign(_DOMAIN + signed)


def parse_envelope(data: bytes) -> Envelope:
    """Split a datagram into header, body and signature (not verified). Raises :class:`DecodeError`."""
    if len(data) > MAX_DATAGRAM:
        raise DecodeError(f"datagram too large ({len(data)} bytes, max {MAX_DATAGRAM})")
    if len(data) < OVERHEAD:
        raise DecodeError("truncated DHT datagram")
    ptype, version, kind, txid, sender = _HEAD.unpack_from(data)
    if ptype != PacketType.DHT:
        raise DecodeError(f"not a DHT datagram (type {ptype:#x})")
    if version != DHT_VERSION:
        raise DecodeError(f"unsupported DHT version {version}")
    try:
        k = Kind(kind)
    except ValueError:
        raise DecodeError(f"unknown DHT message kind {kind}") from None
    split = len(data) - SIGNATURE_LEN
    return Envelope(
        k,
        txid,
        PeerId(bytes(sender)),
        bytes(data[HEADER_LEN:split]),
        _DOMAIN + bytes(data[:split]),
        bytes(data[split:]),
    )


def decode_message(data: bytes, *, verify: bool = True) -> Message:
    """Parse, verify (unless ``verify`` is false) and decode a datagram.

    Raises :class:`DecodeError`, or :class:`~coremesh.errors.AuthenticationFailed` on a bad signature.
    """
    from ..errors import AuthenticationFailed

    env = parse_envelope(data)
    if verify and not env.verify():
        raise AuthenticationFailed("bad DHT datagram signature")
    return Message(env.txid, env.sender, decode_body(env.kind, env.body))
