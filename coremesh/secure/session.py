"""The secure session: a Noise IK handshake that authenticates both PeerIds, and the AEAD transport.

Why IK: a node dials a peer whose id it knows (``PEERID@HOST:PORT``, a DHT record), so the responder's
static key is known up front and the handshake takes one round trip. The Noise static keys are the
X25519 forms of the nodes' Ed25519 identities (:mod:`coremesh.identity`), and the initiator sends its
Ed25519 key in the encrypted payload; the responder checks that it maps to the static key the
handshake authenticated. The long-term identity is thereby bound into the handshake itself.

Cheap checks come before expensive ones: a handshake packet carries ``mac1`` (keyed BLAKE2s under the
responder's public key, as WireGuard does) so that a node drops packets not meant for it without any
Diffie-Hellman. A responder under load answers an initiation with a COOKIE_REPLY instead
(:mod:`coremesh.access.cookies`): the initiator opens it (:meth:`InitiatorHandshake.open_cookie_reply`)
and its next initiations carry ``mac2``, keyed by the cookie, for :data:`COOKIE_LIFETIME` seconds. The
initiation carries a timestamp: a responder refuses one that is not newer than the last it accepted
from that peer, so a replayed initiation creates no state.

Transport packets use explicit 64-bit counters as AEAD nonces (packets arrive out of order over UDP)
and a sliding replay window. A session seals and opens them with the keyed AEAD of the Noise split
(:meth:`~coremesh.secure.noise.CipherState.transport_aead`) and the transport header's struct, at C
level: its own counter limit and replay window keep every nonce in range. Nothing here reads a clock
or a random source: both are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nacl.bindings as sodium
from cryptography.exceptions import InvalidTag
from nacl.exceptions import CryptoError

from ..errors import AuthenticationFailed, DecodeError, NonceExhausted
from ..identity import Identity, PeerId
from . import wire
from .noise import NONCE, CipherState, HandshakeState, KeyPair
from .replay import COUNTER_LIMIT, ReplayWindow

PROTOCOL_NAME: Final = "Noise_IK_25519_ChaChaPoly_BLAKE2s"
COOKIE_LIFETIME: Final = 120.0  # an initiator uses a cookie this long (the responder's secret's period)
PROLOGUE: Final = b"coremesh/1"
_TAI64_BASE: Final = 1 << 62
_TIMESTAMP = struct.Struct("!QI")
_TRANSPORT: Final = int(wire.PacketType.TRANSPORT)
_HEADER_LEN: Final = wire.TRANSPORT_HEADER_LEN
_pack_header = wire.TRANSPORT_HEADER.pack
_pack_nonce = NONCE.pack


def mac1_key(static_public: bytes) -> bytes:
    return hashlib.blake2s(b"mac1----" + static_public).digest()


def cookie_key(static_public: bytes) -> bytes:
    """The key a responder seals its cookie replies under: anyone who knows its public key (the
    initiator that dialled it) can open them; the initiation's mac1 as associated data binds a reply
    to the one initiation it answers."""
    return hashlib.blake2s(b"cookie--" + static_public).digest()


def compute_mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=wire.MAC_LEN).digest()


def encode_timestamp(wall_time: float) -> bytes:
    """TAI64N-style 12-byte timestamp (seconds + nanoseconds), big-endian so bytes compare in order."""
    seconds = int(wall_time)
    nanos = int((wall_time - seconds) * 1e9)
    return _TIMESTAMP.pack(_TAI64_BASE + seconds, min(max(nanos, 0), 999_999_999))


class SecureSession:
    """One set of transport keys, from one completed handshake, between two indexes.

    A connection holds up to three at a time (previous, current, next) so that rekeying never
    drops a packet in flight.
    """

    __slots__ = (
        "_decrypt",
        "_encrypt",
        "confirmed",
        "created_at",
        "is_initiator",
        "local_index",
        "packets_received",
        "remote_index",
        "replay",
        "send_counter",
    )

    def __init__(
        self,
        *,
        local_index: int,
        remote_index: int,
        send: CipherState,
        recv: CipherState,
        is_initiator: bool,
        created_at: float,
    ) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self._encrypt = send.transport_aead().encrypt
        self._decrypt = recv.transport_aead().decrypt
        self.is_initiator = is_initiator
        self.created_at = created_at
        # The initiator knows the responder holds the keys (it answered); the responder learns
        # that the initiator holds them only when a transport packet arrives under them.
        self.confirmed = is_initiator
        self.send_counter = 0
        self.packets_received = 0
        self.replay = ReplayWindow()

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt one transport packet under the next counter. Raises :class:`NonceExhausted` (a
        local error: our own sending used up the keys) once every counter below 2^64-1, the nonce
        Noise reserves, has been used."""
        counter = self.send_counter
        if counter >= COUNTER_LIMIT:
            raise NonceExhausted("session exhausted its nonces; a rekey was overdue")
        self.send_counter = counter + 1
        header = _pack_header(_TRANSPORT, self.remote_index, counter)
        return header + self._encrypt(_pack_nonce(counter), plaintext, header)

    def open(self, packet: bytes, counter: int) -> bytes:
        """Decrypt and authenticate one transport packet; raises AuthenticationFailed on a forgery
        or a replay. The replay window moves only after the packet authenticated."""
        plaintext = self.open_unless_replayed(packet, counter)
        if plaintext is None:
            raise AuthenticationFailed("replayed or too old packet")
        return plaintext

    def open_unless_replayed(self, packet: bytes, counter: int) -> bytes | None:
        """:meth:`open`, but a replayed or too old counter is None (checked once, before any
        decryption) rather than an error, so that a receiver can count it apart from forgeries,
        which still raise AuthenticationFailed."""
        replay = self.replay
        if not replay.check(counter):  # also refuses a counter outside 0..2^64-2
            return None
        try:
            plaintext = self._decrypt(_pack_nonce(counter), packet[_HEADER_LEN:], packet[:_HEADER_LEN])
        except InvalidTag:  # a forgery, or shorter than its tag
            raise AuthenticationFailed("decryption failed") from None
        replay.update(counter)
        self.packets_received += 1
        return plaintext


@dataclass(frozen=True, slots=True)
class InitiationReceived:
    """What a responder learned from a valid initiation."""

    peer_id: PeerId
    timestamp: bytes
    conn_id: bytes
    session: SecureSession
    response: bytes


class InitiatorHandshake:
    """The initiator's half of one IK handshake attempt."""

    def __init__(
        self,
        identity: Identity,
        remote: PeerId,
        *,
        local_index: int,
        conn_id: bytes,
        wall_time: float,
        random_bytes: Callable[[int], bytes],
        started_at: float,
        cookie: bytes | None = None,
    ) -> None:
        """``cookie``: the responder's latest cookie, if it gave one less than
        :data:`COOKIE_LIFETIME` ago: the initiation then carries mac2."""
        self.remote = remote
        self.local_index = local_index
        self.started_at = started_at
        remote_static = remote.x25519_public()
        self._local_mac1_key = mac1_key(identity.x25519_public)
        self._hs = HandshakeState(
            PROTOCOL_NAME,
            initiator=True,
            prologue=PROLOGUE,
            s=KeyPair(identity.x25519_private, identity.x25519_public),
            rs=remote_static,
            random_bytes=random_bytes,
        )
        payload = identity.peer_id.key + encode_timestamp(wall_time) + conn_id
        packet = wire.encode_handshake_init(local_index, self._hs.write_message(payload))
        self.mac1 = compute_mac(mac1_key(remote_static), packet)
        self._cookie_key = cookie_key(remote_static)
        mac2 = bytes(wire.MAC_LEN) if cookie is None else compute_mac(cookie, packet + self.mac1)
        self.packet = packet + self.mac1 + mac2

    def open_cookie_reply(self, reply: wire.CookieReply) -> bytes:
        """The cookie in a reply to this very initiation; AuthenticationFailed if it is not one."""
        try:
            return bytes(
                sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    reply.sealed_cookie, self.mac1, reply.nonce, self._cookie_key
                )
            )
        except CryptoError:
            raise AuthenticationFailed("cookie reply does not answer this initiation") from None

    def check_mac1(self, resp: wire.HandshakeResp) -> bool:
        return hmac.compare_digest(compute_mac(self._local_mac1_key, resp.covered), resp.mac1)

    def complete(self, resp: wire.HandshakeResp, now: float) -> tuple[SecureSession, bytes]:
        """Finish with the responder's message: the new session and the responder's instance id."""
        payload = self._hs.read_message(resp.noise)
        if len(payload) != wire.RESP_PAYLOAD_LEN:
            raise AuthenticationFailed("handshake response payload has the wrong size")
        send, recv = self._hs.split()
        session = SecureSession(
            local_index=self.local_index,
            remote_index=resp.sender_index,
            send=send,
            recv=recv,
            is_initiator=True,
            created_at=now,
        )
        return session, payload


class Responder:
    """The responder's side: stateless until an initiation has authenticated its sender."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._keypair = KeyPair(identity.x25519_private, identity.x25519_public)
        self._mac1_key = mac1_key(identity.x25519_public)

    def check_mac1(self, init: wire.HandshakeInit) -> bool:
        return hmac.compare_digest(compute_mac(self._mac1_key, init.covered), init.mac1)

    def respond(
        self,
        init: wire.HandshakeInit,
        *,
        local_index: int,
        random_bytes: Callable[[int], bytes],
        now: float,
    ) -> InitiationReceived:
        """Authenticate an initiation and build the response. Raises AuthenticationFailed."""
        hs = HandshakeState(
            PROTOCOL_NAME,
            initiator=False,
            prologue=PROLOGUE,
            s=self._keypair,
            random_bytes=random_bytes,
        )
        try:
            payload = hs.read_message(init.noise)
        except DecodeError as exc:
            raise AuthenticationFailed(f"malformed handshake: {exc}") from None
        if len(payload) != wire.INIT_PAYLOAD_LEN:
            raise AuthenticationFailed("handshake payload has the wrong size")
        ed_key, timestamp, conn_id = payload[:32], payload[32:44], payload[44:]
        try:
            peer_id = PeerId(ed_key)
            claimed_static = peer_id.x25519_public()
        except Exception:
            raise AuthenticationFailed("handshake carries an invalid identity key") from None
        remote_static = hs.remote_static
        if remote_static is None or not sodium.sodium_memcmp(claimed_static, remote_static):
            raise AuthenticationFailed("identity key does not match the handshake's static key")
        # The response echoes the connection id: the initiator matches it to the connection it opened.
        message = hs.write_message(conn_id)
        recv, send = hs.split()
        session = SecureSession(
            local_index=local_index,
            remote_index=init.sender_index,
            send=send,
            recv=recv,
            is_initiator=False,
            created_at=now,
        )
        packet = wire.encode_handshake_resp(local_index, init.sender_index, message)
        response = packet + compute_mac(mac1_key(remote_static), packet) + bytes(wire.MAC_LEN)
        return InitiationReceived(peer_id, timestamp, conn_id, session, response)
