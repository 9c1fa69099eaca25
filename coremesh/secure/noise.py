"""The Noise Protocol Framework (revision 34): DH 25519, ChaChaPoly, BLAKE2s/BLAKE2b/SHA256/SHA512.

Written from the specification (https://noiseprotocol.org/noise.html), on libsodium through PyNaCl.
The handshake patterns are data: the spec's own notation, parsed once at import into a table, so the
state machine that runs them is one loop and the table is what a reader checks against the spec.

Sans-IO and deterministic: no clock, and no randomness except through the injected ``random_bytes``.

Errors: anything a remote peer can cause is a ``RemoteProtocolError`` subclass -- ``DecodeError`` for a
message too short (or too long) for its pattern, ``AuthenticationFailed`` for a failed decryption or
a DH with a low-order point. Misuse by the caller (out of turn, after completion, exhausted nonces)
is a ``LocalProtocolError``. A handshake that raised while processing a message is marked failed and
refuses all further use; a new ``HandshakeState`` is the only way forward, as the spec requires.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, cast

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_exc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import AuthenticationFailed, DecodeError, LocalProtocolError, MessageTooLarge, NonceExhausted

__all__ = [
    "DHLEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "NONCE",
    "PATTERNS",
    "TAG_LEN",
    "CipherState",
    "HandshakePattern",
    "HandshakeState",
    "KeyPair",
    "NoiseProtocol",
    "SymmetricState",
    "parse_protocol_name",
]

DHLEN: Final = 32
KEY_LEN: Final = 32
TAG_LEN: Final = 16
MAX_MESSAGE_LEN: Final = 65535
# Nonce 2^64-1 is reserved by the spec (it is REKEY's nonce); counters must stay below it.
MAX_NONCE: Final = (1 << 64) - 1

# ChaChaPoly nonce: 32 bits of zeros, then the 64-bit counter little-endian. One struct call
# builds it in a single allocation on the per-packet path (the secure session packs it too).
NONCE: Final = struct.Struct("<4xQ")
_REKEY_NONCE: Final = NONCE.pack(MAX_NONCE)
_ZEROS32: Final = bytes(32)

_aead_encrypt = _sodium.crypto_aead_chacha20poly1305_ietf_encrypt
_aead_decrypt = _sodium.crypto_aead_chacha20poly1305_ietf_decrypt
_CryptoError = _nacl_exc.CryptoError


# --------------------------------------------------------------------------------------------------
# DH 25519


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An X25519 key pair. The public key is trusted to match the private one (not recomputed)."""

    private: bytes = field(repr=False)
    public: bytes

    def __post_init__(self) -> None:
        # libsodium reads exactly 32 bytes through a raw pointer: a shorter buffer would be read
        # past its end, so lengths are checked here, once, rather than trusted.
        if not isinstance(self.private, bytes) or len(self.private) != DHLEN:
            raise ValueError(f"private key must be {DHLEN} bytes")
        if not isinstance(self.public, bytes) or len(self.public) != DHLEN:
            raise ValueError(f"public key must be {DHLEN} bytes")

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """Derive the public key from a 32-byte X25519 private key."""
        if not isinstance(private, bytes) or len(private) != DHLEN:
            raise ValueError(f"private key must be {DHLEN} bytes")
        return cls(private, _sodium.crypto_scalarmult_base(private))


def _dh(private: bytes, public: bytes) -> bytes:
    """X25519. An all-zero result (low-order point) means the peer's key is bogus: reject it."""
    try:
        out = _sodium.crypto_scalarmult(private, public)
    except _CryptoError:  # libsodium returns -1 for an all-zero shared secret
        raise AuthenticationFailed("DH with a low-order public key") from None
    if out == _ZEROS32:  # belt and braces: never mix an all-zero secret into the keys
        raise AuthenticationFailed("DH with a low-order public key")
    return out


# --------------------------------------------------------------------------------------------------
# CipherState


class CipherState:
    """A key and a nonce counter (spec section 5.1), plus explicit-nonce calls for datagrams.

    ``encrypt_with_ad``/``decrypt_with_ad`` use and advance the internal counter, as the spec's
    in-order transport does. Over UDP packets are lost and reordered, so the counter travels in the
    packet instead: ``encrypt_with_nonce``/``decrypt_with_nonce`` take it explicitly and leave the
    internal counter alone; replay protection is then the caller's job (see :mod:`coremesh.secure.replay`).
    The secure session's per-packet path calls the same keyed AEAD directly (:meth:`transport_aead`).
    """

    __slots__ = ("_aead", "_k", "_n")

    def __init__(self, key: bytes | None = None) -> None:
        self._k: bytes | None = None
        self._aead: ChaCha20Poly1305 | None = None
        self._n = 0
        self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        """Set the key (``None`` empties it) and reset the nonce to zero."""
        if key is not None and (not isinstance(key, bytes) or len(key) != KEY_LEN):
            raise ValueError(f"cipher key must be {KEY_LEN} bytes")
        self._k = key
        # The per-packet path uses OpenSSL's ChaCha20-Poly1305 through `cryptography` with the key
        # schedule kept: the same RFC 8439 AEAD, about 3x faster per call than PyNaCl's wrapper.
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self._n = 0

    def has_key(self) -> bool:
        return self._k is not None

    def transport_aead(self) -> ChaCha20Poly1305:
        """The keyed AEAD that ``encrypt_with_nonce``/``decrypt_with_nonce`` call, for a caller that
        keeps its nonces in range itself and calls ``encrypt``/``decrypt`` with ``NONCE.pack(n)``
        without a Python call in between (:class:`~coremesh.secure.session.SecureSession`: its
        counter limit and replay window do the range checks). A later :meth:`rekey` does not change
        the object already handed out."""
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("cipher has no key")
        return aead

    @property
    def nonce(self) -> int:
        """The next nonce ``encrypt_with_ad``/``decrypt_with_ad`` will use."""
        return self._n

    def set_nonce(self, n: int) -> None:
        if not 0 <= n <= MAX_NONCE:
            raise LocalProtocolError("nonce must be an unsigned 64-bit integer")
        self._n = n

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt under the next nonce. Without a key, the plaintext passes through (spec 5.1)."""
        k = self._k
        if k is None:
            return plaintext
        n = self._n
        if n >= MAX_NONCE:
            raise NonceExhausted("nonces exhausted; rekey or start a new session")
        out = _aead_encrypt(plaintext, ad, NONCE.pack(n), k)
        self._n = n + 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt under the next nonce; the nonce advances only if authentication succeeds."""
        k = self._k
        if k is None:
            return ciphertext
        n = self._n
        if n >= MAX_NONCE:
            raise NonceExhausted("nonces exhausted; rekey or start a new session")
        out = self._decrypt(k, NONCE.pack(n), ad, ciphertext)
        self._n = n + 1
        return out

    def encrypt_with_nonce(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt under the explicit nonce ``n``. Requires a key: never sends plaintext by accident.

        The caller must never reuse ``n`` under one key.
        """
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("cipher has no key")
        if not 0 <= n < MAX_NONCE:
            raise LocalProtocolError("nonce out of range (2^64-1 is reserved)")
        return aead.encrypt(NONCE.pack(n), plaintext, ad)

    def decrypt_with_nonce(self, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt under the explicit nonce ``n``; raises AuthenticationFailed on any forgery."""
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("cipher has no key")
        if not 0 <= n < MAX_NONCE:
            raise LocalProtocolError("nonce out of range (2^64-1 is reserved)")
        if len(ciphertext) < TAG_LEN:
            raise AuthenticationFailed("ciphertext shorter than its authentication tag")
        try:
            return aead.decrypt(NONCE.pack(n), ciphertext, ad)
        except InvalidTag:
            raise AuthenticationFailed("decryption failed") from None

    def rekey(self) -> None:
        """REKEY(k) = ENCRYPT(k, 2^64-1, zerolen, 32 zero bytes)[:32]; the nonce is unchanged."""
        k = self._k
        if k is None:
            raise LocalProtocolError("cannot rekey a cipher that has no key")
        self._k = _aead_encrypt(_ZEROS32, b"", _REKEY_NONCE, k)[:KEY_LEN]
        self._aead = ChaCha20Poly1305(self._k)

    @staticmethod
    def _decrypt(k: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < TAG_LEN:
            raise AuthenticationFailed("ciphertext shorter than its authentication tag")
        try:
            return _aead_decrypt(ciphertext, ad, nonce, k)
        except _CryptoError as exc:
            # PyNaCl's TypeError/ValueError derive from CryptoError too: those are caller bugs
            # (wrong argument types), not forgeries, and must not be reported as one.
            if isinstance(exc, TypeError | ValueError):
                raise
            raise AuthenticationFailed("decryption failed") from None


# --------------------------------------------------------------------------------------------------
# Protocol names and hash functions


# Noise name -> (hashlib name, HASHLEN). hmac takes each hash's block_size (64 or 128) as the
# HMAC block length, which is the BLOCKLEN the spec prescribes.
_HASHES: Final[Mapping[str, tuple[str, int]]] = {
    "BLAKE2s": ("blake2s", 32),
    "BLAKE2b": ("blake2b", 64),
    "SHA256": ("sha256", 32),
    "SHA512": ("sha512", 64),
}
_DHS: Final = ("25519",)
_CIPHERS: Final = ("ChaChaPoly",)


@dataclass(frozen=True, slots=True)
class NoiseProtocol:
    """A parsed, supported protocol name such as ``Noise_IK_25519_ChaChaPoly_BLAKE2s``."""

    name: str
    pattern: HandshakePattern
    dh: str
    cipher: str
    hash: str


def parse_protocol_name(name: str) -> NoiseProtocol:
    """Parse ``Noise_<pattern>_<dh>_<cipher>_<hash>``; ValueError names what is unsupported."""
    parts = name.split("_")
    if len(parts) != 5 or parts[0] != "Noise":
        raise ValueError(f"not a Noise protocol name (Noise_PATTERN_DH_CIPHER_HASH): {name!r}")
    _, pattern_name, dh, cipher, hash_name = parts
    pattern = PATTERNS.get(pattern_name)
    if pattern is None:
        raise ValueError(
            f"unsupported handshake pattern {pattern_name!r} in {name!r}; supported: {', '.join(PATTERNS)}"
        )
    if dh not in _DHS:
        raise ValueError(f"unsupported DH function {dh!r} in {name!r}; supported: {', '.join(_DHS)}")
    if cipher not in _CIPHERS:
        raise ValueError(f"unsupported cipher {cipher!r} in {name!r}; supported: {', '.join(_CIPHERS)}")
    if hash_name not in _HASHES:
        raise ValueError(f"unsupported hash {hash_name!r} in {name!r}; supported: {', '.join(_HASHES)}")
    return NoiseProtocol(name, pattern, dh, cipher, hash_name)


# --------------------------------------------------------------------------------------------------
# SymmetricState


class SymmetricState:
    """The chaining key ``ck``, the handshake hash ``h`` and a CipherState (spec section 5.2)."""

    __slots__ = ("_hash_name", "_hashlen", "cipher", "ck", "h")

    def __init__(self, protocol_name: str) -> None:
        """InitializeSymmetric: ``h`` is the name zero-padded to HASHLEN, or its hash if longer."""
        protocol = parse_protocol_name(protocol_name)
        self._hash_name, self._hashlen = _HASHES[protocol.hash]
        raw = protocol_name.encode("ascii")
        self.h = raw.ljust(self._hashlen, b"\0") if len(raw) <= self._hashlen else self._hash(raw)
        self.ck = self.h
        self.cipher = CipherState()

    def _hash(self, data: bytes) -> bytes:
        return hashlib.new(self._hash_name, data).digest()

    def _hkdf2(self, ikm: bytes) -> tuple[bytes, bytes]:
        """HKDF(ck, ikm) with two outputs, built from HMAC as in spec section 4.3."""
        temp_key = hmac.new(self.ck, ikm, self._hash_name).digest()
        out1 = hmac.new(temp_key, b"\x01", self._hash_name).digest()
        out2 = hmac.new(temp_key, out1 + b"\x02", self._hash_name).digest()
        return out1, out2

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = self._hkdf2(ikm)
        self.cipher.initialize_key(temp_k[:KEY_LEN])  # 64-byte hashes: truncate to the key size

    def mix_hash(self, data: bytes) -> None:
        self.h = self._hash(self.h + data)

    @property
    def handshake_hash(self) -> bytes:
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Two transport ciphers: (initiator-to-responder, responder-to-initiator)."""
        k1, k2 = self._hkdf2(b"")
        return CipherState(k1[:KEY_LEN]), CipherState(k2[:KEY_LEN])


# --------------------------------------------------------------------------------------------------
# Handshake patterns, as data

Token = Literal["e", "s", "ee", "es", "se", "ss"]
_TOKENS: Final[frozenset[str]] = frozenset({"e", "s", "ee", "es", "se", "ss"})

# The spec's notation (section 7), verbatim in form. Pre-messages come before "...". Message i is
# sent by the initiator when i is even: each line must alternate "->" and "<-", starting with "->".
_PATTERN_TEXT: Final[Mapping[str, str]] = {
    "NN": """
        -> e
        <- e, ee
    """,
    "NK": """
        <- s
        ...
        -> e, es
        <- e, ee
    """,
    "KK": """
        -> s
        <- s
        ...
        -> e, es, ss
        <- e, ee, se
    """,
    "KX": """
        -> s
        ...
        -> e
        <- e, ee, se, s, es
    """,
    "IK": """
        <- s
        ...
        -> e, es, s, ss
        <- e, ee, se
    """,
    "IX": """
        -> e, s
        <- e, ee, se, s, es
    """,
    "XN": """
        -> e
        <- e, ee
        -> s, se
    """,
    "XK": """
        <- s
        ...
        -> e, es
        <- e, ee
        -> s, se
    """,
    "XX": """
        -> e
        <- e, ee, s, es
        -> s, se
    """,
}


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """Pre-messages and messages of one pattern, plus the fixed size each message adds to its payload.

    ``overheads[i]`` is the exact number of bytes message ``i`` carries besides its plaintext payload
    (public keys, encrypted static key and tags): with no PSK, whether a key is set at each token is
    fixed by the pattern, so a message's length can be checked before any of it is processed.
    """

    name: str
    initiator_pre: tuple[Token, ...]
    responder_pre: tuple[Token, ...]
    messages: tuple[tuple[Token, ...], ...]
    overheads: tuple[int, ...]

    @property
    def one_way(self) -> bool:
        return len(self.messages) == 1


def _parse_pattern(name: str, text: str) -> HandshakePattern:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    pre_lines: list[str] = []
    if "..." in lines:
        split_at = lines.index("...")
        pre_lines, lines = lines[:split_at], lines[split_at + 1 :]

    def tokens(line: str) -> tuple[str, tuple[Token, ...]]:
        arrow, _, rest = line.partition(" ")
        toks = tuple(t.strip() for t in rest.split(","))
        if arrow not in ("->", "<-") or not all(t in _TOKENS for t in toks):
            raise ValueError(f"bad line in pattern {name}: {line!r}")
        return arrow, cast(tuple[Token, ...], toks)

    init_pre: tuple[Token, ...] = ()
    resp_pre: tuple[Token, ...] = ()
    for line in pre_lines:
        arrow, toks = tokens(line)
        if arrow == "->":
            init_pre = toks
        else:
            resp_pre = toks
    messages: list[tuple[Token, ...]] = []
    for i, line in enumerate(lines):
        arrow, toks = tokens(line)
        if arrow != ("->" if i % 2 == 0 else "<-"):
            raise ValueError(f"pattern {name}: messages must alternate, initiator first")
        messages.append(toks)

    overheads: list[int] = []
    keyed = False
    for toks in messages:
        size = 0
        for t in toks:
            if t == "e":
                size += DHLEN
            elif t == "s":
                size += DHLEN + (TAG_LEN if keyed else 0)
            else:
                keyed = True
        overheads.append(size + (TAG_LEN if keyed else 0))
    return HandshakePattern(name, init_pre, resp_pre, tuple(messages), tuple(overheads))


PATTERNS: Final[Mapping[str, HandshakePattern]] = {
    name: _parse_pattern(name, text) for name, text in _PATTERN_TEXT.items()
}


# --------------------------------------------------------------------------------------------------
# HandshakeState


class HandshakeState:
    """One side of one handshake (spec section 5.3).

    Call ``write_message``/``read_message`` in turn until ``complete``, then ``split()`` once. The
    ephemeral key comes from ``random_bytes(32)`` unless ``e`` is given (test vectors only). Keys the
    pattern needs must be given (``s`` if we send or pre-share ours, ``rs`` if the peer's is
    pre-shared) and keys it does not use must not be: a ``ValueError`` catches the mix-up early.
    """

    __slots__ = (
        "_e",
        "_failed",
        "_index",
        "_initiator",
        "_pattern",
        "_protocol",
        "_random_bytes",
        "_re",
        "_rs",
        "_s",
        "_split",
        "_split_taken",
        "_sym",
    )

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        s: KeyPair | None = None,
        e: KeyPair | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        protocol = parse_protocol_name(protocol_name)
        pattern = protocol.pattern
        self._protocol = protocol
        self._pattern = pattern
        self._initiator = initiator
        self._random_bytes = random_bytes

        my_pre, their_pre = (
            (pattern.initiator_pre, pattern.responder_pre)
            if initiator
            else (pattern.responder_pre, pattern.initiator_pre)
        )
        mine = [m for i, m in enumerate(pattern.messages) if (i % 2 == 0) == initiator]
        role = "initiator" if initiator else "responder"
        needs_s = "s" in my_pre or any("s" in m for m in mine)
        if needs_s != (s is not None):
            verb = "needs" if needs_s else "does not use"
            raise ValueError(f"{pattern.name} {verb} a local static key s for the {role}")
        if ("s" in their_pre) != (rs is not None):
            verb = "needs" if "s" in their_pre else "does not take"
            raise ValueError(f"{pattern.name} {verb} a pre-shared remote static key rs for the {role}")
        if ("e" in their_pre) != (re is not None):
            verb = "needs" if "e" in their_pre else "does not take"
            raise ValueError(f"{pattern.name} {verb} a remote ephemeral key re for the {role}")
        if "e" in my_pre and e is None:
            raise ValueError(f"{pattern.name} needs a pre-shared local ephemeral key e for the {role}")
        for label, key in (("rs", rs), ("re", re)):
            if key is not None and (not isinstance(key, bytes) or len(key) != DHLEN):
                raise ValueError(f"{label} must be {DHLEN} bytes")

        self._s = s
        self._e = e
        self._rs = rs
        self._re = re
        self._index = 0
        self._failed = False
        self._split: tuple[CipherState, CipherState] | None = None
        self._split_taken = False

        sym = SymmetricState(protocol_name)
        sym.mix_hash(prologue)
        # Pre-message public keys are hashed initiator's first, then responder's (spec 5.3).
        for side_initiator, pre in ((True, pattern.initiator_pre), (False, pattern.responder_pre)):
            local = side_initiator == initiator
            for token in pre:
                if token == "e":
                    key = self._e.public if local and self._e else self._re
                else:
                    key = self._s.public if local and self._s else self._rs
                assert key is not None  # guaranteed by the checks above
                sym.mix_hash(key)
        self._sym = sym

    # ---- state ------------------------------------------------------------------------------

    @property
    def protocol_name(self) -> str:
        return self._protocol.name

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def complete(self) -> bool:
        return self._index >= len(self._pattern.messages) and not self._failed

    @property
    def failed(self) -> bool:
        """True once a message failed: the handshake is dead and every further call raises."""
        return self._failed

    @property
    def is_my_turn(self) -> bool:
        """True when the next call must be ``write_message`` (False when complete or failed)."""
        return self._usable() and (self._index % 2 == 0) == self._initiator

    @property
    def handshake_hash(self) -> bytes:
        """The hash ``h``: a channel binding, final once the handshake is complete."""
        if self._failed:
            raise LocalProtocolError("handshake failed; it has no handshake hash")
        return self._sym.handshake_hash

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    @property
    def remote_ephemeral(self) -> bytes | None:
        return self._re

    def _usable(self) -> bool:
        return not self._failed and self._index < len(self._pattern.messages)

    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise LocalProtocolError("handshake failed earlier; start a new one")
        if self._index >= len(self._pattern.messages):
            raise LocalProtocolError("handshake is complete; use split() for transport")
        my_turn = (self._index % 2 == 0) == self._initiator
        if writing and not my_turn:
            raise LocalProtocolError("out of turn: the next message must be read, not written")
        if not writing and my_turn:
            raise LocalProtocolError("out of turn: the next message must be written, not read")

    # ---- messages ---------------------------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        """Build the next handshake message carrying ``payload`` (encrypted once a key exists)."""
        self._check_turn(writing=True)
        index = self._index
        if self._pattern.overheads[index] + len(payload) > MAX_MESSAGE_LEN:
            raise MessageTooLarge(f"handshake message would exceed {MAX_MESSAGE_LEN} bytes")
        sym = self._sym
        parts: list[bytes] = []
        try:
            for token in self._pattern.messages[index]:
                if token == "e":
                    if self._e is None:
                        self._e = self._generate_keypair()
                    parts.append(self._e.public)
                    sym.mix_hash(self._e.public)
                elif token == "s":
                    assert self._s is not None
                    parts.append(sym.encrypt_and_hash(self._s.public))
                else:
                    sym.mix_key(self._dh_token(token, self._re, self._rs))
            parts.append(sym.encrypt_and_hash(payload))
        except BaseException:
            self._failed = True
            raise
        self._advance()
        return b"".join(parts)

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's next handshake message and return its payload.

        Raises DecodeError (wrong length) or AuthenticationFailed (decryption or DH failure); after
        either, this handshake is marked failed and ``remote_static``/``remote_ephemeral`` keep only
        what earlier, successful messages taught.
        """
        self._check_turn(writing=False)
        if not isinstance(message, bytes):
            raise TypeError("handshake message must be bytes")
        index = self._index
        sym = self._sym
        re, rs = self._re, self._rs
        try:
            overhead = self._pattern.overheads[index]
            if len(message) < overhead:
                raise DecodeError(
                    f"handshake message {index} is {len(message)} bytes, needs at least {overhead}"
                )
            if len(message) > MAX_MESSAGE_LEN:
                raise DecodeError(f"handshake message exceeds {MAX_MESSAGE_LEN} bytes")
            offset = 0
            for token in self._pattern.messages[index]:
                if token == "e":
                    re = message[offset : offset + DHLEN]
                    offset += DHLEN
                    sym.mix_hash(re)
                elif token == "s":
                    size = DHLEN + TAG_LEN if sym.cipher.has_key() else DHLEN
                    rs = sym.decrypt_and_hash(message[offset : offset + size])
                    offset += size
                else:
                    sym.mix_key(self._dh_token(token, re, rs))
            payload = sym.decrypt_and_hash(message[offset:])
        except BaseException:
            self._failed = True
            raise
        self._re, self._rs = re, rs
        self._advance()
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """The transport ciphers (initiator-to-responder, responder-to-initiator), handed out once.

        Once only, because two holders of the same CipherStates would reuse nonces.
        """
        if self._failed:
            raise LocalProtocolError("handshake failed; there are no transport keys")
        if self._split is None:
            raise LocalProtocolError("handshake is not complete")
        if self._split_taken:
            raise LocalProtocolError("split() was already called; transport keys are handed out once")
        self._split_taken = True
        return self._split

    # ---- internals --------------------------------------------------------------------------

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self._pattern.messages):
            self._split = self._sym.split()

    def _generate_keypair(self) -> KeyPair:
        private = self._random_bytes(DHLEN)
        if not isinstance(private, bytes) or len(private) != DHLEN:
            raise LocalProtocolError(f"random_bytes({DHLEN}) did not return {DHLEN} bytes")
        return KeyPair.from_private(private)

    def _dh_token(self, token: Token, re: bytes | None, rs: bytes | None) -> bytes:
        """The DH a token names. "es" is initiator-e with responder-s, seen from either side."""
        e, s = self._e, self._s
        if token == "ee":
            local, remote = e, re
        elif token == "ss":
            local, remote = s, rs
        elif (token == "es") == self._initiator:  # initiator doing es, or responder doing se
            local, remote = e, rs
        else:  # initiator doing se, or responder doing es
            local, remote = s, re
        if local is None or remote is None:  # excluded by the constructor's checks
            raise LocalProtocolError(f"token {token!r} is missing a key")
        return _dh(local.private, remote)
