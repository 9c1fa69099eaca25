"""The DHT's outer packets: every peer list travels encrypted, first contact included.

A DHT message (:mod:`coremesh.dht.messages`: signed by its sender, end to end) never crosses the
wire in clear. A request is sealed to the responder's static key with the one-way Noise pattern
``N`` (``Noise_N_25519_ChaChaPoly_BLAKE2s``, prologue ``coremesh-dht/2``: an ephemeral key and one
DH with the X25519 form of the responder's PeerId, ``-> e, es``); the reply is sealed under the
second key of that handshake's split, which only the requester and the holder of the static key
can compute. The requester's identity, the target, the contacts and the records are all inside.

A node that knows a seed only as ``HOST:PORT`` first sends a HELLO, which is answered in clear by
the responder's PeerId, the requester's address as seen (both signed) and nothing else: never a peer
list. Layouts (big-endian)::

    HELLO         0xE7 | 2 | 0x10 | nonce:8 | zero padding to HELLO_SIZE (64) bytes
    HELLO_REPLY   0xE7 | 2 | 0x11 | nonce:8 | peer_id:32 | observed addr | ed25519 signature:64
    SEALED        0xE7 | 2 | 0x12 | e:32 | ChaCha20-Poly1305(k, n=0, ad=h, sent_at_ms:8 | token:16 | message)
    SEALED_REPLY  0xE7 | 2 | 0x13 | txid:8 | ChaCha20-Poly1305(k2, n=0, ad=header:11, token:16 | message)

``addr`` is :func:`coremesh.dht.messages.encode_address`'s form; the HELLO_REPLY signature covers
:data:`HELLO_DOMAIN` and every byte before it. ``sent_at_ms`` (unix milliseconds) bounds a sealed
request's life: a responder refuses one outside ``replay_window`` of its clock, and one whose
ephemeral key it has seen (:class:`ReplayCache`). A SEALED_REPLY names the txid of the request, the
only clear field it has (a random number the requester chose); the requester takes the key from
its pending request for that txid and that address, and the message inside must carry the same txid.

Address validation, as QUIC's and discv5's: every sealed reply carries a *token* for the address it
goes to (:class:`AddressTokens`: a keyed hash of the address and the time, which only the responder
can make and check); a request that carries a valid token for its source address proves that
address receives. Anti-amplification: a reply to an address that has not proved it receives is at
most :data:`~coremesh.dht.messages.AMPLIFICATION` times the request (HELLO is padded so that its
reply fits; :func:`reply_room` gives a sealed reply's room for the message inside); to a validated
address, one full datagram whatever the request's size, so a request with a token needs no padding.
All zeros is no token. Decoding is total:
malformed input raises :class:`~coremesh.errors.DecodeError` (:class:`UnsupportedVersion` for
another DHT version), a seal that does not open :class:`~coremesh.errors.AuthenticationFailed`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import heapq
import hmac
import struct
from dataclasses import dataclass
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions

from ..addr import Address
from ..errors import AuthenticationFailed, DecodeError, InvalidPeerId
from ..identity import PeerId
from ..secure.wire import PacketType
from . import messages as m

DHT_VERSION: Final = m.DHT_VERSION
PROTOCOL_NAME: Final = b"Noise_N_25519_ChaChaPoly_BLAKE2s"
PROLOGUE: Final = b"coremesh-dht/2"
HELLO_DOMAIN: Final = b"coremesh-dht-hello-v2\x00"
KEY_LEN: Final = 32
TAG_LEN: Final = 16
HELLO_SIZE: Final = 64
_NONCE0: Final = bytes(12)
_HEAD = struct.Struct("!BBB")
_HELLO = struct.Struct("!BBBQ")
_STAMP = struct.Struct("!Q")
HELLO_REPLY_MAX: Final = _HELLO.size + 32 + 19 + m.SIGNATURE_LEN  # 126 (IPv6 observed address)
TOKEN_LEN: Final = 16
NO_TOKEN: Final = bytes(TOKEN_LEN)
SEALED_OVERHEAD: Final = _HEAD.size + 32 + TAG_LEN + _STAMP.size + TOKEN_LEN  # 75: around the message
SEALED_REPLY_OVERHEAD: Final = _HELLO.size + TAG_LEN + TOKEN_LEN  # 43: around the message
SEALED_REPLY_HEADER: Final = _HELLO.size  # 11


class OuterKind(enum.IntEnum):
    HELLO = 0x10
    HELLO_REPLY = 0x11
    SEALED = 0x12
    SEALED_REPLY = 0x13


class UnsupportedVersion(DecodeError):
    """A DHT datagram of another wire version (a node not upgraded): a counted drop."""


@dataclass(frozen=True, slots=True)
class Hello:
    nonce: int
    size: int


@dataclass(frozen=True, slots=True)
class HelloReply:
    nonce: int
    peer_id: PeerId
    observed: Address
    signed: bytes
    signature: bytes

    def verify(self) -> bool:
        try:
            sodium.crypto_sign_open(self.signature + self.signed, self.peer_id.key)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class Sealed:
    ephemeral: bytes
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class SealedReply:
    txid: int
    header: bytes
    ciphertext: bytes


Packet = Hello | HelloReply | Sealed | SealedReply


@dataclass(frozen=True, slots=True)
class Opened:
    """A sealed request, opened: when it was sent, the address token it carries (:data:`NO_TOKEN`
    if none), the message inside and the key for the reply."""

    ephemeral: bytes
    sent_at: float
    token: bytes
    message: bytes
    reply_key: bytes


# ---- codec ----------------------------------------------------------------------------------------


def parse_packet(data: bytes) -> Packet:
    """Parse one DHT datagram's outer layer. Raises :class:`DecodeError` (or its subclass
    :class:`UnsupportedVersion`); never opens anything."""
    if len(data) > m.MAX_DATAGRAM:
        raise DecodeError(f"datagram too large ({len(data)} bytes, max {m.MAX_DATAGRAM})")
    if len(data) < _HEAD.size:
        raise DecodeError("truncated DHT datagram")
    ptype, version, kind = _HEAD.unpack_from(data)
    if ptype != PacketType.DHT:
        raise DecodeError(f"not a DHT datagram (type {ptype:#x})")
    if version != DHT_VERSION:
        raise UnsupportedVersion(f"unsupported DHT version {version} (this node speaks {DHT_VERSION})")
    if kind == OuterKind.HELLO:
        if len(data) < HELLO_SIZE:
            raise DecodeError(f"HELLO of {len(data)} bytes (at least {HELLO_SIZE})")
        if data.count(0, _HELLO.size) != len(data) - _HELLO.size:
            raise DecodeError("HELLO padding is not zero")
        return Hello(_HELLO.unpack_from(data)[3], len(data))
    if kind == OuterKind.HELLO_REPLY:
        pos = _HELLO.size + 32
        if len(data) < pos + m.SIGNATURE_LEN:
            raise DecodeError("truncated HELLO_REPLY")
        observed, pos = m.decode_address_at(data, pos)
        if pos + m.SIGNATURE_LEN != len(data):
            raise DecodeError("HELLO_REPLY has the wrong length")
        return HelloReply(
            _HELLO.unpack_from(data)[3],
            PeerId(bytes(data[_HELLO.size : _HELLO.size + 32])),
            observed,
            HELLO_DOMAIN + bytes(data[:pos]),
            bytes(data[pos:]),
        )
    if kind == OuterKind.SEALED:
        if len(data) < SEALED_OVERHEAD:
            raise DecodeError("truncated SEALED")
        return Sealed(bytes(data[_HEAD.size : _HEAD.size + 32]), bytes(data[_HEAD.size + 32 :]))
    if kind == OuterKind.SEALED_REPLY:
        if len(data) < SEALED_REPLY_OVERHEAD:
            raise DecodeError("truncated SEALED_REPLY")
        return SealedReply(
            _HELLO.unpack_from(data)[3], bytes(data[: _HELLO.size]), bytes(data[_HELLO.size :])
        )
    raise DecodeError(f"unknown DHT packet kind {kind:#x}")


def encode_hello(nonce: int, size: int = HELLO_SIZE) -> bytes:
    """A HELLO, zero-padded to ``size`` bytes (at least :data:`HELLO_SIZE`)."""
    head = _HELLO.pack(PacketType.DHT, DHT_VERSION, OuterKind.HELLO, nonce)
    return head + bytes(max(size, HELLO_SIZE) - len(head))


def encode_hello_reply(sign: m.Signer, peer_id: PeerId, nonce: int, observed: Address) -> bytes:
    """The answer to a HELLO: our PeerId and the requester's address as we see it, signed."""
    signed = (
        _HELLO.pack(PacketType.DHT, DHT_VERSION, OuterKind.HELLO_REPLY, nonce)
        + peer_id.key
        + m.encode_address(observed)
    )
    return signed + sign(HELLO_DOMAIN + signed)


# ---- Noise N, one message ---------------------------------------------------------------------------


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hkdf2(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = hmac.new(ck, ikm, "blake2s").digest()
    out1 = hmac.new(temp, b"\x01", "blake2s").digest()
    return out1, hmac.new(temp, out1 + b"\x02", "blake2s").digest()


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        out = sodium.crypto_scalarmult(private, public)
    except (nacl.exceptions.CryptoError, RuntimeError, ValueError, TypeError):
        raise AuthenticationFailed("DH with a low-order public key") from None
    if out == bytes(32):
        raise AuthenticationFailed("DH with a low-order public key")
    return bytes(out)


def _handshake(
    e_public: bytes, rs: bytes, shared: bytes, protocol: bytes = PROTOCOL_NAME
) -> tuple[bytes, bytes, bytes]:
    """The key, the hash (the AD) for the message's payload, and the chaining key after ``e, es``."""
    h = protocol.ljust(32, b"\x00") if len(protocol) <= 32 else _hash(protocol)
    ck = h
    h = _hash(h + PROLOGUE)
    h = _hash(h + rs)  # the pre-message: <- s
    h = _hash(h + e_public)
    ck, k = _hkdf2(ck, shared)
    return k, h, ck


def _reply_key(ck: bytes) -> bytes:
    # Split() gives (initiator->responder, responder->initiator): the second one seals the reply.
    _, k2 = _hkdf2(ck, b"")
    return k2


def _encrypt(key: bytes, ad: bytes, plaintext: bytes) -> bytes:
    return bytes(sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _NONCE0, key))


def _decrypt(key: bytes, ad: bytes, ciphertext: bytes) -> bytes:
    try:
        return bytes(sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, _NONCE0, key))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise AuthenticationFailed("DHT seal does not open") from None


@functools.lru_cache(maxsize=4096)
def static_key_of(peer: PeerId) -> bytes:
    """The X25519 key a request to ``peer`` is sealed to. Raises :class:`InvalidPeerId`."""
    return peer.x25519_public()


def seal(
    responder: PeerId, message: bytes, sent_at: float, ephemeral_private: bytes, token: bytes = NO_TOKEN
) -> tuple[bytes, bytes]:
    """Seal ``message`` to ``responder``: the SEALED datagram and the key its reply comes under.

    ``ephemeral_private`` is 32 fresh random bytes (the caller's injected source); ``token`` the
    responder's last token for the address we send from, if we hold one. Raises
    :class:`InvalidPeerId` if the responder's id is no Ed25519 point, :class:`AuthenticationFailed`
    if the DH degenerates.
    """
    rs = static_key_of(responder)
    e_public = bytes(sodium.crypto_scalarmult_base(ephemeral_private))
    k, h, ck = _handshake(e_public, rs, _dh(ephemeral_private, rs))
    stamp = _STAMP.pack(max(0, min(int(sent_at * 1000), (1 << 64) - 1)))
    if len(token) != TOKEN_LEN:
        raise ValueError(f"an address token is {TOKEN_LEN} bytes")
    ciphertext = _encrypt(k, h, stamp + token + message)
    head = _HEAD.pack(PacketType.DHT, DHT_VERSION, OuterKind.SEALED)
    return head + e_public + ciphertext, _reply_key(ck)


def open_sealed(static_private: bytes, static_public: bytes, packet: Sealed) -> Opened:
    """Open a SEALED request with our static X25519 key pair. Raises :class:`AuthenticationFailed`."""
    k, h, ck = _handshake(packet.ephemeral, static_public, _dh(static_private, packet.ephemeral))
    plaintext = _decrypt(k, h, packet.ciphertext)
    head = _STAMP.size + TOKEN_LEN
    if len(plaintext) < head:  # cannot happen for a valid seal of ours; a peer's may
        raise DecodeError("SEALED payload has no timestamp and token")
    (stamp,) = _STAMP.unpack_from(plaintext)
    token = plaintext[_STAMP.size : head]
    return Opened(packet.ephemeral, stamp / 1000, token, plaintext[head:], _reply_key(ck))


def seal_reply(reply_key: bytes, txid: int, message: bytes, token: bytes = NO_TOKEN) -> bytes:
    """The SEALED_REPLY carrying ``message`` (a signed response of ``txid``) and ``token``, the
    address token of the address it goes to."""
    if len(token) != TOKEN_LEN:
        raise ValueError(f"an address token is {TOKEN_LEN} bytes")
    head = _HELLO.pack(PacketType.DHT, DHT_VERSION, OuterKind.SEALED_REPLY, txid)
    return head + _encrypt(reply_key, head, token + message)


def open_reply(reply_key: bytes, packet: SealedReply) -> tuple[bytes, bytes]:
    """The address token and the signed message inside a SEALED_REPLY. Raises
    :class:`AuthenticationFailed` (or :class:`DecodeError` for a seal too short for a token)."""
    plaintext = _decrypt(reply_key, packet.header, packet.ciphertext)
    if len(plaintext) < TOKEN_LEN:
        raise DecodeError("SEALED_REPLY payload has no token")
    return plaintext[:TOKEN_LEN], plaintext[TOKEN_LEN:]


def reply_room(request_size: int, validated: bool = False) -> int:
    """The largest signed message a SEALED_REPLY to a ``request_size``-byte request may carry: the
    reply stays within :data:`~coremesh.dht.messages.MAX_DATAGRAM`, and, unless the request's
    address is ``validated`` (it carried a valid token), within
    :data:`~coremesh.dht.messages.AMPLIFICATION` times the request."""
    limit = m.MAX_DATAGRAM if validated else min(m.MAX_DATAGRAM, m.AMPLIFICATION * request_size)
    return limit - SEALED_REPLY_OVERHEAD


class AddressTokens:
    """Stateless address tokens: ``BLAKE2s-128(key=secret, epoch | address)``, the epoch being
    ``now // lifetime``; a token is valid in its epoch and the next, so for ``lifetime`` to twice
    that. The secret is this node's own (32 random bytes, never sent): a restart invalidates every
    token, which costs a requester one padded request."""

    __slots__ = ("_secret", "lifetime")

    def __init__(self, secret: bytes, lifetime: float) -> None:
        if len(secret) != 32:
            raise ValueError("the token secret is 32 bytes")
        self._secret = secret
        self.lifetime = lifetime

    def _mac(self, address: Address, epoch: int) -> bytes:
        try:
            packed = m.encode_address(address)
        except ValueError:
            return NO_TOKEN  # not an IP address: never validated
        data = epoch.to_bytes(8, "big", signed=True) + packed
        return hashlib.blake2s(data, key=self._secret, digest_size=TOKEN_LEN).digest()

    def issue(self, address: Address, now: float) -> bytes:
        return self._mac(address, int(now // self.lifetime))

    def valid(self, token: bytes, address: Address, now: float) -> bool:
        if token == NO_TOKEN:
            return False
        epoch = int(now // self.lifetime)
        return any(hmac.compare_digest(token, self._mac(address, e)) for e in (epoch, epoch - 1))


def can_seal_to(peer: PeerId) -> bool:
    try:
        static_key_of(peer)
    except InvalidPeerId:
        return False
    return True


# ---- replay ---------------------------------------------------------------------------------------


class ReplayCache:
    """The ephemeral keys of the sealed requests answered within the replay window, bounded.

    A request is refused when it was sent more than ``window`` seconds from our clock (either way),
    or when its ephemeral key was seen (the first 8 bytes are kept: a chance collision among 2^16
    keys is about 2^-33). Keys are forgotten once their request left the window; when ``capacity``
    keys are held, the one sent first is forgotten and the *floor* rises to its time: from then on
    a request sent at or before the floor is refused too, so a forgotten key can never be replayed.
    The cost of a full cache: a peer whose clock lags the others' by more than the span the cache
    holds is refused until the load drops, and a flood of requests stamped up to ``window`` ahead
    can lift the floor that far ahead (every refusal is counted).
    """

    __slots__ = ("_heap", "_seen", "capacity", "floor", "window")

    def __init__(self, window: float, capacity: int) -> None:
        self.window = window
        self.capacity = capacity
        self.floor = float("-inf")
        self._seen: set[int] = set()
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, ephemeral: bytes) -> bool:
        """Cheap, before any DH: an exact copy of a request answered lately."""
        return int.from_bytes(ephemeral[:8], "big") in self._seen

    def check(self, sent_at: float, wall: float) -> str | None:
        """None if a request sent at ``sent_at`` may be answered now, else the drop reason."""
        if not wall - self.window <= sent_at <= wall + self.window:
            return "stale_request"
        if sent_at <= self.floor:
            return "replay_floor"
        return None

    def add(self, ephemeral: bytes, sent_at: float, wall: float) -> None:
        self.purge(wall)
        while len(self._heap) >= self.capacity:
            at, key = heapq.heappop(self._heap)
            self._seen.discard(key)
            self.floor = max(self.floor, at)
        key = int.from_bytes(ephemeral[:8], "big")
        self._seen.add(key)
        heapq.heappush(self._heap, (sent_at, key))

    def purge(self, wall: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < wall - self.window:
            self._seen.discard(heapq.heappop(heap)[1])
