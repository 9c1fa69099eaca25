"""Node identity: an Ed25519 key pair whose public key is the node's :class:`PeerId`.

The same key is converted to X25519 for the Noise handshake (libsodium's birational map), so the
static key that Noise authenticates *is* the PeerId: no separate certificate is needed.

The key file is written atomically (temp file, fsync, rename) with mode 0600 and is reused on every
start. A file that is corrupt, or whose content does not match its own public key, raises
:class:`IdentityError`: a node never silently takes a new identity.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing

from .datadir import make_data_dir
from .errors import IdentityError, InvalidPeerId

_CHECKSUM_LEN: Final = 3
_TEXT_LEN: Final = 56  # base32 of 32-byte key + 3-byte checksum, no padding
_KEY_FILE_MAGIC: Final = b"coremesh-ed25519-v1\n"
KEY_FILE_NAME: Final = "identity.key"


def _checksum(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=_CHECKSUM_LEN, person=b"coremesh-peerid").digest()


@dataclass(frozen=True, slots=True)
class PeerId:
    """A peer's identity: its 32-byte Ed25519 public key.

    Text form: 56 characters of lowercase base32 carrying the key and a 24-bit checksum, so that a
    mistyped id is refused instead of naming another peer.
    """

    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != 32:
            raise InvalidPeerId("a peer id is a 32-byte Ed25519 public key")

    @classmethod
    def from_public_key(cls, key: bytes) -> PeerId:
        return cls(bytes(key))

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerId:
        return cls(bytes(data))

    @classmethod
    def from_text(cls, text: str) -> PeerId:
        """Parse the text form; raises :class:`InvalidPeerId` on bad length, alphabet or checksum."""
        if not isinstance(text, str):
            raise InvalidPeerId("a peer id must be text")
        cleaned = text.strip().lower()
        if len(cleaned) != _TEXT_LEN:
            raise InvalidPeerId(
                f"invalid peer id {text!r}: expected {_TEXT_LEN} base32 characters, got {len(cleaned)}"
            )
        try:
            raw = base64.b32decode(cleaned.upper())
        except ValueError:
            raise InvalidPeerId(f"invalid peer id {text!r}: not base32 (a-z, 2-7)") from None
        key, check = raw[:32], raw[32:]
        if _checksum(key) != check:
            raise InvalidPeerId(f"invalid peer id {text!r}: checksum mismatch (typo?)")
        return cls(key)

    def to_bytes(self) -> bytes:
        return self.key

    def to_text(self) -> str:
        return base64.b32encode(self.key + _checksum(self.key)).decode("ascii").lower()

    def short(self) -> str:
        """First 10 characters of the text form, for logs."""
        return self.to_text()[:10]

    def distance(self, other: PeerId) -> int:
        """XOR distance (Kademlia). ``distance(a, b).bit_length() - 1`` is the bucket index."""
        return int.from_bytes(self.key, "big") ^ int.from_bytes(other.key, "big")

    def bucket_index(self, other: PeerId) -> int:
        """Index of the k-bucket ``other`` falls in from ``self`` (0..255); -1 for self."""
        return self.distance(other).bit_length() - 1

    def x25519_public(self) -> bytes:
        """The X25519 public key the Noise handshake uses for this peer."""
        try:
            return bytes(sodium.crypto_sign_ed25519_pk_to_curve25519(self.key))
        except (nacl.exceptions.CryptoError, RuntimeError, ValueError):
            raise InvalidPeerId("peer id is not a valid Ed25519 point") from None

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"PeerId({self.short()}…)"


@dataclass(frozen=True, slots=True, repr=False)
class Identity:
    """A node's secret Ed25519 key and the derived X25519 key pair used by Noise."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise IdentityError("an identity seed is 32 bytes")

    @classmethod
    def generate(cls, random_bytes: Callable[[int], bytes] | None = None) -> Identity:
        """A new identity. ``random_bytes(n)`` may be injected (tests, simulator)."""
        seed = random_bytes(32) if random_bytes is not None else os.urandom(32)
        return cls(bytes(seed))

    @property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def peer_id(self) -> PeerId:
        return PeerId(bytes(self._signing_key.verify_key))

    @property
    def x25519_private(self) -> bytes:
        sk = self.seed + self.peer_id.key
        return bytes(sodium.crypto_sign_ed25519_sk_to_curve25519(sk))

    @property
    def x25519_public(self) -> bytes:
        return bytes(sodium.crypto_scalarmult_base(self.x25519_private))

    def sign(self, message: bytes) -> bytes:
        return bytes(self._signing_key.sign(message).signature)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id.short()}…)"


def verify_signature(peer: PeerId, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``peer``'s Ed25519 signature of ``message``."""
    try:
        nacl.signing.VerifyKey(peer.key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def _encode_key_file(identity: Identity) -> bytes:
    body = identity.seed + identity.peer_id.key
    return _KEY_FILE_MAGIC + base64.b64encode(body) + b"\n"


def _decode_key_file(path: Path, data: bytes) -> Identity:
    if not data.startswith(_KEY_FILE_MAGIC):
        raise IdentityError(f"{path}: not a coremesh identity key file (wrong header)")
    try:
        body = base64.b64decode(data[len(_KEY_FILE_MAGIC) :].strip(), validate=True)
    except ValueError:
        raise IdentityError(f"{path}: corrupt identity key file (bad base64)") from None
    if len(body) != 64:
        raise IdentityError(f"{path}: corrupt identity key file (wrong length)")
    identity = Identity(body[:32])
    if identity.peer_id.key != body[32:]:
        raise IdentityError(f"{path}: corrupt identity key file (key does not match its public key)")
    return identity


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_or_create_identity(data_dir: Path) -> Identity:
    """Load ``DATA_DIR/identity.key``, or create it (0600, atomically) if it does not exist."""
    data_dir = make_data_dir(data_dir)
    path = data_dir / KEY_FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        identity = Identity.generate()
        try:
            atomic_write(path, _encode_key_file(identity))
        except OSError as exc:
            raise IdentityError(f"cannot write identity key {path}: {exc.strerror}") from None
        return identity
    except OSError as exc:
        raise IdentityError(f"cannot read identity key {path}: {exc.strerror}") from None
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise IdentityError(
            f"{path}: identity key is readable by others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it"
        )
    return _decode_key_file(path, data)
