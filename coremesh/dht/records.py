"""Signed peer records: where a peer can be reached, signed by the peer itself.

A record carries the peer id, a sequence number (the newest wins), an expiry in unix seconds and up
to :data:`MAX_ADDRESSES` candidate addresses, each ``(kind, text)``: ``host`` / ``srflx`` / ``relay``
are ``HOST:PORT`` (literal IP), ``keyed`` is a keyed-relay URL. The signature covers a domain
separation string and every other byte of the encoding, so a record cannot be confused with any other
signed object of the mesh.

Layout (big-endian)::

    version:1 | peer_id:32 | seq:8 | expires_at:8 (IEEE double) | count:1 |
    count × (kind:1 | len:1 | text) | signature:64
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Final

import nacl.bindings as sodium
import nacl.exceptions

from ..addr import parse_address
from ..config import parse_keyed_relay
from ..errors import DecodeError, InvalidAddress, LocalProtocolError, RemoteProtocolError
from ..identity import Identity, PeerId

RECORD_VERSION: Final = 1
MAX_ADDRESSES: Final = 8
MAX_ADDRESS_TEXT: Final = 128
MAX_RECORD_SIZE: Final = 600  # so that a record and a few contacts fit in one 1200-byte response
SIGNATURE_LEN: Final = 64
_DOMAIN: Final = b"coremesh-dht-record-v1\x00"
_HEAD = struct.Struct("!B32sQdB")
MIN_RECORD_SIZE: Final = _HEAD.size + SIGNATURE_LEN
MAX_SEQ: Final = (1 << 64) - 1

ADDRESS_KINDS: Final = ("host", "srflx", "relay", "keyed")
_KIND_CODE: Final = {name: i + 1 for i, name in enumerate(ADDRESS_KINDS)}
_CODE_KIND: Final = {i + 1: name for i, name in enumerate(ADDRESS_KINDS)}


class InvalidRecord(LocalProtocolError, ValueError):
    """A record cannot be built from these values (local misuse)."""


class RecordRejected(RemoteProtocolError):
    """A record from the network is refused; ``reason`` is the counter name
    (``bad_signature``, ``expired``, ``too_large``, ``too_far_future``, ``stale_seq``, ...)."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


def check_address(kind: str, text: str) -> None:
    """Raise :class:`InvalidRecord` unless ``(kind, text)`` is a valid record address."""
    if kind not in _KIND_CODE:
        raise InvalidRecord(f"address kind must be one of {', '.join(ADDRESS_KINDS)}, got {kind!r}")
    if not isinstance(text, str) or not text.isascii() or not 0 < len(text) <= MAX_ADDRESS_TEXT:
        raise InvalidRecord(f"address text must be 1 to {MAX_ADDRESS_TEXT} ASCII characters")
    try:
        if kind == "keyed" or (kind == "relay" and "://" in text):
            parse_keyed_relay(text)
        else:
            parse_address(text, allow_zero_port=False)
    except InvalidAddress as exc:
        raise InvalidRecord(f"{kind} address: {exc}") from None


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer's signed statement of its addresses. Build with :meth:`create`, read with :meth:`decode`."""

    peer_id: PeerId
    seq: int
    expires_at: float
    addresses: tuple[tuple[str, str], ...]
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.peer_id, PeerId):
            raise InvalidRecord("peer_id must be a PeerId")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or not 0 <= self.seq <= MAX_SEQ:
            raise InvalidRecord(f"seq must be an integer 0 to 2^64-1, got {self.seq!r}")
        e = self.expires_at
        if isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e) or e < 0:
            raise InvalidRecord(f"expires_at must be a finite unix time >= 0, got {e!r}")
        if not isinstance(self.addresses, tuple) or len(self.addresses) > MAX_ADDRESSES:
            raise InvalidRecord(f"addresses must be a tuple of at most {MAX_ADDRESSES} (kind, text)")
        for entry in self.addresses:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise InvalidRecord("each address is a (kind, text) pair")
            check_address(*entry)
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_LEN:
            raise InvalidRecord("signature must be 64 bytes")

    @classmethod
    def create(
        cls,
        identity: Identity,
        seq: int,
        expires_at: float,
        addresses: tuple[tuple[str, str], ...] | list[tuple[str, str]],
    ) -> PeerRecord:
        """Build and sign a record. Raises :class:`InvalidRecord` on bad values or if it is too large."""
        unsigned = cls(identity.peer_id, seq, expires_at, tuple(addresses), bytes(SIGNATURE_LEN))
        body = unsigned._body()
        if len(body) + SIGNATURE_LEN > MAX_RECORD_SIZE:
            raise InvalidRecord(f"record would be {len(body) + SIGNATURE_LEN} bytes (max {MAX_RECORD_SIZE})")
        return cls(identity.peer_id, seq, expires_at, unsigned.addresses, identity.sign(_DOMAIN + body))

    def _body(self) -> bytes:
        parts = [_HEAD.pack(RECORD_VERSION, self.peer_id.key, self.seq, self.expires_at, len(self.addresses))]
        for kind, text in self.addresses:
            raw = text.encode("ascii")
            parts.append(bytes((_KIND_CODE[kind], len(raw))) + raw)
        return b"".join(parts)

    def encode(self) -> bytes:
        return self._body() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> PeerRecord:
        """Parse a record (signature not checked: see :meth:`check`). Raises :class:`DecodeError`."""
        if len(data) > MAX_RECORD_SIZE:
            raise DecodeError(f"record too large ({len(data)} bytes, max {MAX_RECORD_SIZE})")
        if len(data) < MIN_RECORD_SIZE:
            raise DecodeError("truncated record")
        version, key, seq, expires_at, count = _HEAD.unpack_from(data)
        if version != RECORD_VERSION:
            raise DecodeError(f"unsupported record version {version}")
        if count > MAX_ADDRESSES:
            raise DecodeError(f"record has {count} addresses (max {MAX_ADDRESSES})")
        pos = _HEAD.size
        end = len(data) - SIGNATURE_LEN
        addresses = []
        for _ in range(count):
            if pos + 2 > end:
                raise DecodeError("truncated record address")
            code, length = data[pos], data[pos + 1]
            pos += 2
            if code not in _CODE_KIND:
                raise DecodeError(f"unknown address kind {code}")
            if pos + length > end:
                raise DecodeError("truncated record address")
            try:
                text = data[pos : pos + length].decode("ascii")
            except UnicodeDecodeError:
                raise DecodeError("record address is not ASCII") from None
            pos += length
            addresses.append((_CODE_KIND[code], text))
        if pos != end:
            raise DecodeError("trailing bytes in record")
        try:
            return cls(PeerId(key), seq, expires_at, tuple(addresses), bytes(data[end:]))
        except (InvalidRecord, ValueError) as exc:
            raise DecodeError(f"invalid record: {exc}") from None

    def verify(self) -> bool:
        """True if the signature is the peer's over this record."""
        try:
            sodium.crypto_sign_open(self.signature + _DOMAIN + self._body(), self.peer_id.key)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True

    def check(self, wall_now: float, *, max_ttl: float = 86400.0) -> None:
        """Raise :class:`RecordRejected` unless the record is acceptable at unix time ``wall_now``.

        Cheap checks first: size and dates before the signature.
        """
        if len(self.encode()) > MAX_RECORD_SIZE:
            raise RecordRejected("too_large")
        if self.expires_at <= wall_now:
            raise RecordRejected("expired", f"record expired at {self.expires_at} (now {wall_now})")
        if self.expires_at > wall_now + max_ttl:
            raise RecordRejected("too_far_future", f"record claims to live until {self.expires_at}")
        if not self.verify():
            raise RecordRejected("bad_signature")

    def host_addresses(self) -> list[str]:
        """The ``HOST:PORT`` texts of the direct candidates (host, then srflx)."""
        return [t for k in ("host", "srflx") for kind, t in self.addresses if kind == k]

    def __repr__(self) -> str:
        return f"PeerRecord({self.peer_id.short()}…, seq={self.seq}, expires_at={self.expires_at})"


def record_json(record: PeerRecord, wall_now: float) -> dict[str, Any]:
    """A peer record as the admin APIs show it."""
    return {
        "peer_id": record.peer_id.to_text(),
        "seq": record.seq,
        "expires_at": record.expires_at,
        "expires_in_s": round(record.expires_at - wall_now, 3),
        "addresses": [{"kind": kind, "address": text} for kind, text in record.addresses],
    }
