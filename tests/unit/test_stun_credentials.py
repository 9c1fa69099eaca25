"""Credentials: SASLprep, short- and long-term keys, USERHASH, nonces, the TURN REST API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremesh.stun import PasswordAlgorithm
from coremesh.stun.credentials import (
    NONCE_COOKIE,
    CredentialError,
    NonceStatus,
    SecurityFeature,
    check_nonce,
    check_rest_api_username,
    long_term_key,
    make_nonce,
    nonce_cookie,
    nonce_features,
    rest_api_credentials,
    rest_api_expiry,
    rest_api_password,
    saslprep,
    short_term_key,
    userhash,
)


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("I\u00adX", "IX"),  # RFC 4013 section 3: soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),  # no case folding
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # NFKC
        ("a\u00a0b", "a b"),  # non-ASCII space to space
        ("The\u00adM\u00aatr\u2168", "TheMatrIX"),  # RFC 5769 section 2.4
        ("pass word", "pass word"),
        ("", ""),
        ("\u0627\u0628", "\u0627\u0628"),  # right-to-left only: fine
    ],
)
def test_saslprep(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize(
    "text",
    [
        "\u0007",  # RFC 4013 section 3: prohibited character
        "a\u0000b",
        "\u0627\u0031",  # RFC 4013 section 3: bidi check
        "a\ue000",  # private use
        "\U000e0001",  # tagging
        "x\u200e",  # change display properties
    ],
)
def test_saslprep_refuses(text: str) -> None:
    with pytest.raises(CredentialError):
        saslprep(text)


def test_saslprep_unassigned() -> None:
    unassigned = "\u0221"  # unassigned in Unicode 3.2
    with pytest.raises(CredentialError, match="unassigned"):
        saslprep(unassigned)
    assert saslprep(unassigned, allow_unassigned=True) == unassigned


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_saslprep_keeps_printable_ascii(text: str) -> None:
    assert saslprep(text) == text


def test_keys() -> None:
    assert short_term_key("VOkJxbRl1RmTxUk/WvJxBt") == b"VOkJxbRl1RmTxUk/WvJxBt"
    assert short_term_key("a\u00adb") == b"ab"
    md5 = long_term_key("user", "realm", "pass")
    assert md5 == hashlib.md5(b"user:realm:pass").digest() and len(md5) == 16
    sha = long_term_key("user", "realm", "pass", PasswordAlgorithm.SHA256)
    assert sha == hashlib.sha256(b"user:realm:pass").digest()
    with pytest.raises(CredentialError):
        long_term_key("user", "realm", "pass", 7)
    assert userhash("user", "realm") == hashlib.sha256(b"user:realm").digest()


def test_nonce_cookie_bits() -> None:
    assert nonce_cookie(0) == "obMatJos2AAAA"
    assert nonce_cookie(SecurityFeature.PASSWORD_ALGORITHMS) == "obMatJos2AAAB"
    assert nonce_cookie(SecurityFeature.USERNAME_ANONYMITY) == "obMatJos2AAAC"
    both = SecurityFeature.PASSWORD_ALGORITHMS | SecurityFeature.USERNAME_ANONYMITY
    assert nonce_features(nonce_cookie(both) + "rest") == both
    assert nonce_features("plain nonce") is None
    assert nonce_features("obMatJos2") is None
    assert nonce_features("obMatJos2!!!!x") is None
    with pytest.raises(CredentialError):
        nonce_cookie(1 << 24)


def test_nonce_life_cycle() -> None:
    rng = random.Random(7)
    secret = b"server secret"
    nonce = make_nonce(secret, 1000.0, random_bytes=rng.randbytes, bound_to="192.0.2.1:5000")
    assert len(nonce) < 128 and '"' not in nonce and "\\" not in nonce
    assert check_nonce(nonce, secret, 1000.0, lifetime=600, bound_to="192.0.2.1:5000") is NonceStatus.VALID
    assert check_nonce(nonce, secret, 1600.0, lifetime=600, bound_to="192.0.2.1:5000") is NonceStatus.VALID
    assert check_nonce(nonce, secret, 1600.5, lifetime=600, bound_to="192.0.2.1:5000") is NonceStatus.STALE
    assert check_nonce(nonce, secret, 900.0, lifetime=600, bound_to="192.0.2.1:5000") is NonceStatus.STALE
    assert check_nonce(nonce, secret, 1000.0, lifetime=600, bound_to="192.0.2.1:5001") is NonceStatus.INVALID
    assert (
        check_nonce(nonce, b"other", 1000.0, lifetime=600, bound_to="192.0.2.1:5000") is NonceStatus.INVALID
    )
    for bad in ("", "x" * 38, nonce[:-1], nonce + "A", "A" + nonce[1:], "obMatJos2AAAB" + nonce):
        assert check_nonce(bad, secret, 1000.0, lifetime=600) is NonceStatus.INVALID
    assert make_nonce(secret, 1.0, random_bytes=rng.randbytes) != make_nonce(
        secret, 1.0, random_bytes=rng.randbytes
    )
    assert make_nonce(secret, 1.0) == make_nonce(secret, 1.0)  # deterministic without randomness


def test_nonce_with_features_cannot_be_bid_down() -> None:
    secret = b"s"
    features = SecurityFeature.PASSWORD_ALGORITHMS
    nonce = make_nonce(secret, 5.0, features=features)
    assert nonce.startswith(NONCE_COOKIE + "AAAB") and len(nonce) == 13 + 38
    assert nonce_features(nonce) == features
    assert check_nonce(nonce, secret, 5.0, lifetime=60) is NonceStatus.VALID
    stripped = nonce_cookie(0) + nonce[13:]  # a man in the middle clears the bit
    assert check_nonce(stripped, secret, 5.0, lifetime=60) is NonceStatus.INVALID
    assert check_nonce(nonce[13:], secret, 5.0, lifetime=60) is NonceStatus.INVALID


def test_rest_api() -> None:
    secret = "north"
    username, password = rest_api_credentials(secret, now=1_700_000_000, ttl=86400, user="alice")
    assert username == "1700086400:alice"
    expected = base64.b64encode(hmac.digest(b"north", b"1700086400:alice", "sha1")).decode()
    assert password == expected == rest_api_password(secret.encode(), username)
    assert check_rest_api_username(secret, username, now=1_700_000_001) == password
    assert check_rest_api_username(secret, username, now=1_700_086_400) == password
    assert check_rest_api_username(secret, username, now=1_700_086_401) is None
    anonymous, _ = rest_api_credentials(secret, now=10, ttl=5)
    assert anonymous == "15"
    assert rest_api_expiry("15") == 15
    assert rest_api_expiry("1700:alice:x") == 1700
    assert rest_api_expiry("alice:1700") == 1700  # coturn accepts the user first too
    assert rest_api_expiry("alice") is None
    assert rest_api_expiry("alice:bob") is None
    assert rest_api_expiry("\u0661\u0662:x") is None  # Arabic-Indic digits are not a time
    assert check_rest_api_username(secret, "alice", now=0) is None
