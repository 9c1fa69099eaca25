"""The outer packet format of the mesh: what travels in one UDP datagram.

Every mesh packet starts with a type byte in 0xE0..0xEF. That range is unused by the protocols that
share the node's socket (RFC 7983 / RFC 9443 first-byte rules: STUN 0-3, TURN ChannelData 64-79), so
one socket can carry STUN, TURN and mesh traffic, demultiplexed by :func:`classify`.

The handshake, cookie reply, transport, probe and DHT packets are defined here; ROUTED is reserved
(its layout is in :mod:`coremesh.routing.overlay`).
Transport packets carry the *receiver's* session index, not an address, so a packet can be matched
to its session after a NAT rebinding, and a forwarding peer can route a packet it cannot read.

Layouts (big-endian)::

    HANDSHAKE_INIT  type | version | sender_index:4 | noise_msg1 | mac1:16 | mac2:16
    HANDSHAKE_RESP  type | version | sender_index:4 | receiver_index:4 | noise_msg2 | mac1:16 | mac2:16
    COOKIE_REPLY    type | version | receiver_index:4 | nonce:24 | XChaCha20-Poly1305(cookie:16):32
    TRANSPORT       type | receiver_index:4 | counter:8 | AEAD(plaintext, ad=the 13 header bytes)
    IDENTITY_PROBE  type | version | nonce:8 | padding          (ask an address which peer it is)
    IDENTITY_REPLY  type | version | nonce:8 | peer_id:32 | signature:64
    DHT             type | version 2 | a HELLO in clear (answered only by the signed PeerId), or a
                    signed message sealed to the responder's static key (Noise N; coremesh/dht/secure.py)
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from ..errors import DecodeError

PROTOCOL_VERSION: Final = 1
MAC_LEN: Final = 16
TRANSPORT_HEADER_LEN: Final = 13
AEAD_TAG_LEN: Final = 16
TRANSPORT_OVERHEAD: Final = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN


class PacketType(enum.IntEnum):
    HANDSHAKE_INIT = 0xE1
    HANDSHAKE_RESP = 0xE2
    COOKIE_REPLY = 0xE3  # a responder under load asks for mac2 (coremesh/access/cookies.py)
    TRANSPORT = 0xE4
    IDENTITY_PROBE = 0xE5
    IDENTITY_REPLY = 0xE6
    DHT = 0xE7  # Kademlia DHT datagram: signed, and sealed to the responder (coremesh/dht/secure.py)
    ROUTED = 0xE8  # reserved: end-to-end encrypted packet forwarded by PeerId (overlay routing issue)


class Protocol(enum.Enum):
    """Which protocol a datagram on the shared socket belongs to (RFC 7983 first-byte ranges)."""

    STUN = "stun"
    TURN_CHANNEL = "turn-channel"
    MESH = "mesh"
    UNKNOWN = "unknown"


def classify(datagram: bytes) -> Protocol:
    if not datagram:
        return Protocol.UNKNOWN
    b = datagram[0]
    if b <= 3:
        return Protocol.STUN
    if 64 <= b <= 79:
        return Protocol.TURN_CHANNEL
    if 0xE0 <= b <= 0xEF:
        return Protocol.MESH
    return Protocol.UNKNOWN


_INIT_HEAD = struct.Struct("!BBI")
_RESP_HEAD = struct.Struct("!BBII")
TRANSPORT_HEADER: Final = struct.Struct("!BIQ")
"""type, receiver_index, counter: the per-packet path packs and unpacks it directly (the checked
forms are :func:`encode_transport_header` and :func:`decode_transport_header`)."""
_PROBE = struct.Struct("!BBQ")
_COOKIE_HEAD = struct.Struct("!BBI")

# Noise IK message sizes (X25519, ChaChaPoly): msg1 = e(32) + enc s(32+16) + enc payload(+16),
# msg2 = e(32) + enc payload(+16).
INIT_PAYLOAD_LEN: Final = 32 + 12 + 8  # ed25519 key, timestamp, connection id
RESP_PAYLOAD_LEN: Final = 8  # the connection id, echoed
NOISE_MSG1_LEN: Final = 32 + 48 + INIT_PAYLOAD_LEN + 16
NOISE_MSG2_LEN: Final = 32 + RESP_PAYLOAD_LEN + 16
HANDSHAKE_INIT_LEN: Final = _INIT_HEAD.size + NOISE_MSG1_LEN + 2 * MAC_LEN
HANDSHAKE_RESP_LEN: Final = _RESP_HEAD.size + NOISE_MSG2_LEN + 2 * MAC_LEN
# A cookie reply: the initiator's index, a random XChaCha20 nonce and the sealed 16-byte cookie. At
# 62 bytes it is a third of the 186-byte initiation that causes it: it never amplifies.
COOKIE_LEN: Final = MAC_LEN
COOKIE_NONCE_LEN: Final = 24
COOKIE_REPLY_LEN: Final = _COOKIE_HEAD.size + COOKIE_NONCE_LEN + COOKIE_LEN + AEAD_TAG_LEN
IDENTITY_REPLY_LEN: Final = _PROBE.size + 32 + 64
# A probe is padded to the size of its reply so the reply never amplifies traffic.
IDENTITY_PROBE_LEN: Final = IDENTITY_REPLY_LEN


@dataclass(frozen=True, slots=True)
class HandshakeInit:
    sender_index: int
    noise: bytes
    mac1: bytes
    mac2: bytes
    covered: bytes  # the received bytes mac1 covers, exactly as they arrived

    @property
    def mac2_covered(self) -> bytes:
        """The bytes mac2 covers: the packet up to mac2 (mac1 included)."""
        return self.covered + self.mac1


@dataclass(frozen=True, slots=True)
class HandshakeResp:
    sender_index: int
    receiver_index: int
    noise: bytes
    mac1: bytes
    mac2: bytes
    covered: bytes


def encode_handshake_init(sender_index: int, noise: bytes) -> bytes:
    """The packet without its MACs; the caller appends mac1 and mac2 (see :mod:`coremesh.handshake`)."""
    if len(noise) != NOISE_MSG1_LEN:
        raise ValueError(f"noise message 1 must be {NOISE_MSG1_LEN} bytes")
    return _INIT_HEAD.pack(PacketType.HANDSHAKE_INIT, PROTOCOL_VERSION, sender_index) + noise


def encode_handshake_resp(sender_index: int, receiver_index: int, noise: bytes) -> bytes:
    if len(noise) != NOISE_MSG2_LEN:
        raise ValueError(f"noise message 2 must be {NOISE_MSG2_LEN} bytes")
    head = _RESP_HEAD.pack(PacketType.HANDSHAKE_RESP, PROTOCOL_VERSION, sender_index, receiver_index)
    return head + noise


def _check_version(data: bytes, kind: PacketType) -> None:
    if len(data) < 2:
        raise DecodeError("truncated packet")
    if data[0] != kind:
        raise DecodeError(f"not a {kind.name} packet (type {data[0]:#x})")
    if data[1] != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {data[1]} (this node speaks {PROTOCOL_VERSION})")


def decode_handshake_init(data: bytes) -> HandshakeInit:
    _check_version(data, PacketType.HANDSHAKE_INIT)
    if len(data) != HANDSHAKE_INIT_LEN:
        raise DecodeError(f"handshake init must be {HANDSHAKE_INIT_LEN} bytes, got {len(data)}")
    _, _, sender = _INIT_HEAD.unpack_from(data)
    end = HANDSHAKE_INIT_LEN - 2 * MAC_LEN
    return HandshakeInit(
        sender, data[_INIT_HEAD.size : end], data[end : end + MAC_LEN], data[end + MAC_LEN :], data[:end]
    )


def decode_handshake_resp(data: bytes) -> HandshakeResp:
    _check_version(data, PacketType.HANDSHAKE_RESP)
    if len(data) != HANDSHAKE_RESP_LEN:
        raise DecodeError(f"handshake response must be {HANDSHAKE_RESP_LEN} bytes, got {len(data)}")
    _, _, sender, receiver = _RESP_HEAD.unpack_from(data)
    end = HANDSHAKE_RESP_LEN - 2 * MAC_LEN
    return HandshakeResp(
        sender,
        receiver,
        data[_RESP_HEAD.size : end],
        data[end : end + MAC_LEN],
        data[end + MAC_LEN :],
        data[:end],
    )


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver_index: int  # the initiator's sender index, from the initiation this answers
    nonce: bytes
    sealed_cookie: bytes


def encode_cookie_reply(receiver_index: int, nonce: bytes, sealed_cookie: bytes) -> bytes:
    if len(nonce) != COOKIE_NONCE_LEN or len(sealed_cookie) != COOKIE_LEN + AEAD_TAG_LEN:
        raise ValueError(
            f"a cookie reply carries a {COOKIE_NONCE_LEN}-byte nonce and a sealed 16-byte cookie"
        )
    return (
        _COOKIE_HEAD.pack(PacketType.COOKIE_REPLY, PROTOCOL_VERSION, receiver_index) + nonce + sealed_cookie
    )


def decode_cookie_reply(data: bytes) -> CookieReply:
    _check_version(data, PacketType.COOKIE_REPLY)
    if len(data) != COOKIE_REPLY_LEN:
        raise DecodeError(f"cookie reply must be {COOKIE_REPLY_LEN} bytes, got {len(data)}")
    receiver = _COOKIE_HEAD.unpack_from(data)[2]
    nonce_end = _COOKIE_HEAD.size + COOKIE_NONCE_LEN
    return CookieReply(receiver, data[_COOKIE_HEAD.size : nonce_end], data[nonce_end:])


def encode_transport_header(receiver_index: int, counter: int) -> bytes:
    return TRANSPORT_HEADER.pack(PacketType.TRANSPORT, receiver_index, counter)


def decode_transport_header(data: bytes) -> tuple[int, int]:
    """``(receiver_index, counter)``; the ciphertext is ``data[13:]``."""
    if len(data) < TRANSPORT_OVERHEAD:
        raise DecodeError("truncated transport packet")
    if data[0] != PacketType.TRANSPORT:
        raise DecodeError(f"not a TRANSPORT packet (type {data[0]:#x})")
    _, index, counter = TRANSPORT_HEADER.unpack_from(data)
    return index, counter


def encode_identity_probe(nonce: int) -> bytes:
    head = _PROBE.pack(PacketType.IDENTITY_PROBE, PROTOCOL_VERSION, nonce)
    return head + bytes(IDENTITY_PROBE_LEN - len(head))


def decode_identity_probe(data: bytes) -> int:
    _check_version(data, PacketType.IDENTITY_PROBE)
    if len(data) < IDENTITY_PROBE_LEN:
        raise DecodeError("identity probe too short (it must be padded to its reply's size)")
    return int(_PROBE.unpack_from(data)[2])


def encode_identity_reply(nonce: int, peer_id: bytes, signature: bytes) -> bytes:
    return _PROBE.pack(PacketType.IDENTITY_REPLY, PROTOCOL_VERSION, nonce) + peer_id + signature


def decode_identity_reply(data: bytes) -> tuple[int, bytes, bytes]:
    """``(nonce, peer_id bytes, signature)``."""
    _check_version(data, PacketType.IDENTITY_REPLY)
    if len(data) != IDENTITY_REPLY_LEN:
        raise DecodeError(f"identity reply must be {IDENTITY_REPLY_LEN} bytes, got {len(data)}")
    nonce = int(_PROBE.unpack_from(data)[2])
    return nonce, data[_PROBE.size : _PROBE.size + 32], data[_PROBE.size + 32 :]
