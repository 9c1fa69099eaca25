"""Handshake cookies, after WireGuard (the WireGuard paper, section 5.4.7), the responder's side.

A responder under load does not run the Diffie-Hellman of an initiation that carries no valid
``mac2``: it answers with a COOKIE_REPLY and forgets it. The cookie is a MAC of the initiation's
source address under a secret that is renewed every :data:`SECRET_PERIOD` seconds, so nothing is kept
per source; it travels sealed (XChaCha20-Poly1305 under a key derived from the responder's public
key, a random nonce, the initiation's mac1 as associated data), so only the initiator that sent that
initiation, the one that knows whom it dialled, can open it; a spoofed source never sees it. The
initiator's next initiations carry ``mac2 = MAC(cookie, the packet up to mac2)``
(:class:`~coremesh.secure.session.InitiatorHandshake`), which proves that it receives at the address
it sends from. The cookie binds the source's whole path address (a UDP host and port).

Sans-IO: time is the ``now`` argument, the secrets and nonces come from an injected ``random.Random``.
"""

from __future__ import annotations

import hmac
import random
from typing import Final

import nacl.bindings as sodium

from ..addr import Address
from ..identity import PeerId
from ..secure import wire
from ..secure.session import compute_mac, cookie_key

SECRET_PERIOD: Final = 120.0  # the cookie secret is renewed this often (WireGuard: 2 minutes)
_NO_MAC2: Final = bytes(wire.MAC_LEN)


def source_bytes(source: object) -> bytes:
    """What a cookie binds: every field of a source's path address (a UDP host and port, and for a
    relayed path the relay and the peer too), unambiguously."""
    if isinstance(source, Address):
        return f"{source.host} {source.port}".encode()
    if isinstance(source, PeerId):
        return source.key
    if isinstance(source, tuple):
        inner = b",".join(source_bytes(part) for part in source)
        return type(source).__name__.encode() + b"(" + inner + b")"
    return repr(source).encode()


class CookieIssuer:
    """A responder's cookies: the secret and its predecessor, mac2 checks and cookie replies.

    A mac2 made with the cookie of the current secret or of the one before is accepted: a cookie
    stays good for at least :data:`SECRET_PERIOD` seconds after it was issued, the time an initiator
    keeps using it.
    """

    __slots__ = ("_born", "_key", "_previous", "_rng", "_secret")

    def __init__(self, static_public: bytes, rng: random.Random) -> None:
        self._key = cookie_key(static_public)
        self._rng = rng
        self._secret: bytes | None = None
        self._previous: bytes | None = None
        self._born = 0.0

    def _current(self, now: float) -> bytes:
        secret = self._secret
        if secret is None or now - self._born >= SECRET_PERIOD:
            # The old secret stays valid one more period only if it is exactly one period old.
            self._previous = secret if secret is not None and now - self._born < 2 * SECRET_PERIOD else None
            secret = self._secret = self._rng.randbytes(32)
            self._born = now
        return secret

    def cookie(self, source: bytes, now: float) -> bytes:
        """The cookie of ``source`` (see :func:`source_bytes`) under the current secret."""
        return compute_mac(self._current(now), source)

    def check_mac2(self, init: wire.HandshakeInit, source: bytes, now: float) -> bool:
        """Whether ``init`` carries the mac2 of a cookie we gave ``source`` (this period or the last)."""
        if init.mac2 == _NO_MAC2:
            return False
        current = self._current(now)
        covered = init.mac2_covered
        for secret in (current, self._previous):
            if secret is not None and hmac.compare_digest(
                compute_mac(compute_mac(secret, source), covered), init.mac2
            ):
                return True
        return False

    def reply(self, init: wire.HandshakeInit, source: bytes, now: float) -> bytes:
        """The COOKIE_REPLY to ``init`` from ``source``: 62 bytes, a third of the initiation."""
        nonce = self._rng.randbytes(wire.COOKIE_NONCE_LEN)
        sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            self.cookie(source, now), init.mac1, nonce, self._key
        )
        return wire.encode_cookie_reply(init.sender_index, nonce, bytes(sealed))
