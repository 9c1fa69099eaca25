"""STUN credentials (RFC 8489 section 9), nonces, and the "TURN REST API" shared-secret convention.

Keys:

- short-term (ICE): ``key = SASLprep(password)`` as UTF-8 (RFC 8489 section 9.1.1);
- long-term: ``key = MD5(username ":" SASLprep(realm) ":" SASLprep(password))`` or SHA-256 of the
  same when PASSWORD-ALGORITHM selects it (RFC 8489 section 9.2.2);
- USERHASH: ``SHA-256(username ":" SASLprep(realm))`` (RFC 8489 section 14.4).

The username enters as given: RFC 8489 requires it to be prepared already (it is the bytes of the
USERNAME attribute, and a server looks it up as such).

String preparation: RFC 8489 names the PRECIS OpaqueString profile (RFC 8265), RFC 5389 named
SASLprep (RFC 4013). The published vector (RFC 5769 section 2.4, repeated in RFC 8489 appendix
B.1) only works with SASLprep: its password ``"The\\u00adM\\u00aatr\\u2168"`` becomes ``"TheMatrIX"``
because SASLprep maps the soft hyphen to nothing and applies NFKC, whereas OpaqueString would use NFC
and refuse the soft hyphen. We implement SASLprep exactly (the stdlib ``stringprep`` tables and
Unicode 3.2 NFKC); for ASCII passwords, which is what every deployment uses, the two agree.

Nonces: :func:`make_nonce` builds a stateless nonce, an HMAC over its issue time (and optionally
the client's address), so a server stores nothing per client and :func:`check_nonce` tells a good
nonce from a stale one (438) and a forged one. With ``features`` it starts with the RFC 8489 nonce
cookie ``obMatJos2`` and the 24-bit security feature set in 4 base64 characters. Bit numbering
follows verified erratum 6290 (bit 0 is the least significant: password algorithms = 0x000001,
username anonymity = 0x000002), which is also what the appendix B.1 nonce ``obMatJos2AAAC...``
(username anonymity) encodes.

TURN REST API (draft-uberti-behave-turn-rest, coturn's ``--static-auth-secret``): username
``"<unix expiry>:<user>"`` (or just ``"<unix expiry>"``), password
``base64(HMAC-SHA1(secret, username))``. The long-term key is then derived from that password as
usual. Like coturn, :func:`rest_api_expiry` also accepts ``"<user>:<unix expiry>"``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import stringprep
import unicodedata
from collections.abc import Callable
from typing import Final

from ..errors import LocalProtocolError
from .attributes import PasswordAlgorithm


class CredentialError(LocalProtocolError, ValueError):
    """A password, realm or secret cannot be prepared (prohibited characters, unknown algorithm)."""


# ---------------------------------------------------------------------------------------------
# SASLprep (RFC 4013, a profile of stringprep RFC 3454)

_PROHIBITED: Final[tuple[Callable[[str], bool], ...]] = (
    stringprep.in_table_c12,  # non-ASCII space
    stringprep.in_table_c21_c22,  # control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogates
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties / deprecated
    stringprep.in_table_c9,  # tagging characters
)


def saslprep(text: str, *, allow_unassigned: bool = False) -> str:
    """Prepare ``text`` per SASLprep (RFC 4013). ASCII without control characters is unchanged.

    Raises :class:`CredentialError` on prohibited characters or broken bidirectional text;
    unassigned code points (Unicode 3.2) are refused unless ``allow_unassigned`` ("queries").
    """
    if text.isascii() and text.isprintable():
        return text
    mapped = []
    for c in text:
        if stringprep.in_table_c12(c):
            mapped.append(" ")
        elif not stringprep.in_table_b1(c):
            mapped.append(c)
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", "".join(mapped))
    for c in prepared:
        if any(table(c) for table in _PROHIBITED):
            raise CredentialError(f"SASLprep: prohibited character U+{ord(c):04X}")
        if not allow_unassigned and stringprep.in_table_a1(c):
            raise CredentialError(f"SASLprep: unassigned code point U+{ord(c):04X}")
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise CredentialError("SASLprep: mixes right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise CredentialError("SASLprep: right-to-left text must start and end right-to-left")
    return prepared


# ---------------------------------------------------------------------------------------------
# Keys


def short_term_key(password: str) -> bytes:
    """The HMAC key of the short-term mechanism (ICE connectivity checks)."""
    return saslprep(password).encode("utf-8")


def long_term_key(username: str, realm: str, password: str, algorithm: int = PasswordAlgorithm.MD5) -> bytes:
    """The HMAC key of the long-term mechanism: 16 bytes (MD5) or 32 (SHA-256)."""
    material = f"{username}:{saslprep(realm)}:{saslprep(password)}".encode()
    if algorithm == PasswordAlgorithm.MD5:
        return hashlib.md5(material, usedforsecurity=False).digest()
    if algorithm == PasswordAlgorithm.SHA256:
        return hashlib.sha256(material).digest()
    raise CredentialError(f"unknown password algorithm 0x{algorithm:04X}")


def userhash(username: str, realm: str) -> bytes:
    """The USERHASH value that stands for the username when the server offers anonymity."""
    return hashlib.sha256(f"{username}:{saslprep(realm)}".encode()).digest()


# ---------------------------------------------------------------------------------------------
# Nonces

NONCE_COOKIE: Final = "obMatJos2"


class SecurityFeature(enum.IntFlag):
    """The STUN security feature set carried in the nonce cookie (RFC 8489, erratum 6290)."""

    PASSWORD_ALGORITHMS = 0x000001
    USERNAME_ANONYMITY = 0x000002


class NonceStatus(enum.Enum):
    VALID = "valid"
    STALE = "stale"  # ours, but too old: answer 438 Stale Nonce with a fresh one
    INVALID = "invalid"  # not ours (forged, corrupted, or the features were tampered with)


def nonce_cookie(features: int) -> str:
    """``obMatJos2`` followed by the 24-bit feature set as 4 base64 characters."""
    if not 0 <= features <= 0xFFFFFF:
        raise CredentialError("the security feature set is 24 bits")
    return NONCE_COOKIE + base64.b64encode(features.to_bytes(3, "big")).decode()


def nonce_features(nonce: str) -> int | None:
    """The security feature set of a nonce that starts with the nonce cookie, else ``None``."""
    if not nonce.startswith(NONCE_COOKIE) or len(nonce) < len(NONCE_COOKIE) + 4:
        return None
    try:
        raw = base64.b64decode(nonce[9:13], validate=True)
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big")


_NONCE_MAC_LEN: Final = 12


def _nonce_mac(secret: bytes, prefix: str, body: bytes, bound_to: str) -> bytes:
    material = prefix.encode() + body + b"\x00" + bound_to.encode("utf-8", "surrogatepass")
    return hmac.digest(secret, material, "sha256")[:_NONCE_MAC_LEN]


def make_nonce(
    secret: bytes,
    now: float,
    *,
    features: int | None = None,
    bound_to: str = "",
    random_bytes: Callable[[int], bytes] | None = None,
) -> str:
    """A stateless nonce: ``[cookie] base64url(issued_ms:8 | random:8 | HMAC(secret, ...):12)``.

    ``bound_to`` (e.g. the client's transport address) is covered by the MAC and must be given
    again to :func:`check_nonce`. ``random_bytes`` adds 8 random bytes so two nonces issued in the
    same millisecond differ. At most 51 characters, well under RFC 8489's 128.
    """
    prefix = "" if features is None else nonce_cookie(features)
    body = max(0, int(now * 1000)).to_bytes(8, "big") + (random_bytes(8) if random_bytes else bytes(8))
    token = body + _nonce_mac(secret, prefix, body, bound_to)
    return prefix + base64.urlsafe_b64encode(token).decode().rstrip("=")


def check_nonce(nonce: str, secret: bytes, now: float, *, lifetime: float, bound_to: str = "") -> NonceStatus:
    """Classify a nonce a client echoed: ours and fresh, ours but older than ``lifetime`` seconds
    (or issued in the future), or not ours."""
    prefix = ""
    if nonce.startswith(NONCE_COOKIE):
        prefix, nonce = nonce[:13], nonce[13:]
    if len(nonce) != 38:  # base64url of 28 bytes, unpadded
        return NonceStatus.INVALID
    try:
        token = base64.urlsafe_b64decode(nonce + "==")
    except (binascii.Error, ValueError):
        return NonceStatus.INVALID
    body, mac = token[:16], token[16:]
    if len(token) != 28 or not hmac.compare_digest(mac, _nonce_mac(secret, prefix, body, bound_to)):
        return NonceStatus.INVALID
    age = now - int.from_bytes(body[:8], "big") / 1000
    if not -1.0 <= age <= lifetime:
        return NonceStatus.STALE
    return NonceStatus.VALID


# ---------------------------------------------------------------------------------------------
# TURN REST API (time-limited credentials from a shared secret)


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def rest_api_password(secret: str | bytes, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``, as coturn computes it."""
    mac = hmac.digest(_secret_bytes(secret), username.encode("utf-8"), "sha1")
    return base64.b64encode(mac).decode()


def rest_api_credentials(
    secret: str | bytes, now: float, ttl: float, user: str | None = None
) -> tuple[str, str]:
    """A (username, password) pair valid until ``now + ttl`` (Unix seconds)."""
    expiry = int(now + ttl)
    username = str(expiry) if user is None else f"{expiry}:{user}"
    return username, rest_api_password(secret, username)


def rest_api_expiry(username: str, separator: str = ":") -> int | None:
    """The expiry (Unix seconds) in a REST API username, or ``None`` if it has none. Accepts
    ``expiry``, ``expiry:user`` and, as coturn does, ``user:expiry``."""
    head, sep, _ = username.partition(separator)
    if head.isascii() and head.isdigit():
        return int(head)
    if sep:
        last = username.rpartition(separator)[2]
        if last.isascii() and last.isdigit():
            return int(last)
    return None


def check_rest_api_username(secret: str | bytes, username: str, now: float) -> str | None:
    """The password for a REST API ``username`` if it has not expired at ``now`` (Unix seconds);
    ``None`` if expired or without an expiry. The server derives the long-term key from it."""
    expiry = rest_api_expiry(username)
    if expiry is None or expiry < now:
        return None
    return rest_api_password(secret, username)
