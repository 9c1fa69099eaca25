"""The published STUN vectors: RFC 5769 sections 2.1-2.4 and RFC 8489 appendix B.1.

Read from ``tests/vectors/`` through the ``vectors_dir`` fixture (provenance in its README).

Re-encoding: RFC 5769's samples 2.1-2.3 fill attribute padding with spaces (0x20), which the RFC
allows ("padding bits ... may be any value"), so they are reproduced byte for byte with
``pad_byte=0x20``; our default zero padding gives different bytes (and therefore different
MESSAGE-INTEGRITY and FINGERPRINT values) for them. Samples 2.4 and B.1 pad with zeros and are
reproduced with the default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coremesh.addr import Address
from coremesh.stun import (
    Attr,
    Method,
    StunClass,
    decode,
    encode,
    long_term_key,
    short_term_key,
    userhash,
    verify_fingerprint,
    verify_integrity,
    verify_integrity_sha256,
)
from coremesh.stun.credentials import SecurityFeature, nonce_features

NAMES = [
    "sample_request",
    "sample_ipv4_response",
    "sample_ipv6_response",
    "sample_request_long_term",
    "sample_request_long_term_sha256",
]
SPACE_PADDED = {"sample_request", "sample_ipv4_response", "sample_ipv6_response"}


@pytest.fixture(scope="module")
def vectors(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "stun-rfc5769.json").read_text("utf-8"))
    return data["vectors"]  # type: ignore[no-any-return]


def _key(vec: dict[str, Any]) -> bytes:
    if vec["credential"] == "short-term":
        return short_term_key(vec["password"])
    return long_term_key(vec["username"], vec["realm"], vec["password"])


def test_every_vector_is_covered(vectors: dict[str, Any]) -> None:
    assert sorted(vectors) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_decode_and_integrity(vectors: dict[str, Any], name: str) -> None:
    vec = vectors[name]
    data = bytes.fromhex(vec["hex"])
    msg = decode(data)
    assert msg.method == Method.BINDING
    key = _key(vec)
    has_fp = msg.has(Attr.FINGERPRINT)
    assert has_fp == (name in SPACE_PADDED)
    assert verify_fingerprint(data) == has_fp
    if msg.has(Attr.MESSAGE_INTEGRITY):
        assert verify_integrity(data, key)
        assert not verify_integrity(data, key + b"x")
    if msg.has(Attr.MESSAGE_INTEGRITY_SHA256):
        assert verify_integrity_sha256(data, key)
        assert not verify_integrity_sha256(data, b"wrong key")
    if "software" in vec:
        # RFC 5769 2.1's SOFTWARE is "STUN test client" (16 bytes); the vector file says so
        assert msg.get_text(Attr.SOFTWARE) == vec["software"]


@pytest.mark.parametrize("name", NAMES)
def test_reencode_byte_for_byte(vectors: dict[str, Any], name: str) -> None:
    vec = vectors[name]
    data = bytes.fromhex(vec["hex"])
    msg = decode(data)
    key = _key(vec)
    kwargs: dict[str, Any] = {"fingerprint": msg.has(Attr.FINGERPRINT)}
    if msg.has(Attr.MESSAGE_INTEGRITY):
        kwargs["integrity_key"] = key
    if msg.has(Attr.MESSAGE_INTEGRITY_SHA256):
        kwargs["integrity_sha256_key"] = key
    pad = 0x20 if name in SPACE_PADDED else 0
    assert encode(msg, pad_byte=pad, **kwargs) == data
    # the default (zero) padding: equal only where the vector pads with zeros; always valid
    ours = encode(msg, **kwargs)
    assert (ours == data) == (name not in SPACE_PADDED)
    trailers = {Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT}
    again = decode(ours)
    assert [a for a in again.attributes if a[0] not in trailers] == [
        a for a in msg.attributes if a[0] not in trailers
    ]
    if "integrity_key" in kwargs:
        assert verify_integrity(ours, key)


def test_sample_request_short_term(vectors: dict[str, Any]) -> None:
    vec = vectors["sample_request"]
    msg = decode(bytes.fromhex(vec["hex"]))
    assert msg.msg_class is StunClass.REQUEST
    assert msg.transaction_id.hex() == "b7e7a701bc34d686fa87dfae"
    assert msg.get_text(Attr.USERNAME) == vec["username"]
    assert msg.get_uint(Attr.PRIORITY) == 0x6E0001FF
    assert msg.get_uint(Attr.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert [t for t, _ in msg.attributes] == [
        Attr.SOFTWARE,
        Attr.PRIORITY,
        Attr.ICE_CONTROLLED,
        Attr.USERNAME,
        Attr.MESSAGE_INTEGRITY,
        Attr.FINGERPRINT,
    ]


@pytest.mark.parametrize("name", ["sample_ipv4_response", "sample_ipv6_response"])
def test_xor_mapped_address(vectors: dict[str, Any], name: str) -> None:
    vec = vectors[name]
    msg = decode(bytes.fromhex(vec["hex"]))
    assert msg.msg_class is StunClass.SUCCESS
    assert msg.get_address(Attr.XOR_MAPPED_ADDRESS) == Address(vec["mapped_address"], vec["mapped_port"])
    assert msg.get_text(Attr.SOFTWARE) == vec["software"]


def test_long_term_saslprep(vectors: dict[str, Any]) -> None:
    vec = vectors["sample_request_long_term"]
    data = bytes.fromhex(vec["hex"])
    before = vec["password_before_saslprep"]
    assert before == "The\u00adM\u00aatr\u2168"
    key = long_term_key(vec["username"], vec["realm"], before)
    assert key == long_term_key(vec["username"], vec["realm"], "TheMatrIX")
    assert verify_integrity(data, key)
    msg = decode(data)
    assert msg.get_text(Attr.USERNAME) == vec["username"]
    assert msg.get_text(Attr.NONCE) == vec["nonce"]
    assert msg.get_text(Attr.REALM) == vec["realm"]


def test_rfc8489_b1_userhash_and_sha256(vectors: dict[str, Any]) -> None:
    vec = vectors["sample_request_long_term_sha256"]
    data = bytes.fromhex(vec["hex"])
    msg = decode(data)
    assert msg.get(Attr.USERHASH) == userhash(vec["username"], vec["realm"])
    assert not msg.has(Attr.USERNAME)
    assert msg.get_password_algorithm() is None  # so the key is the MD5 one
    assert verify_integrity_sha256(data, long_term_key(vec["username"], vec["realm"], vec["password"]))
    nonce = msg.get_text(Attr.NONCE)
    assert nonce is not None and nonce == vec["nonce"]
    # "obMatJos2" + "AAAC": username anonymity, bit 1 counted from the right (erratum 6290)
    assert nonce_features(nonce) == SecurityFeature.USERNAME_ANONYMITY


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_and_bit_flip_is_refused_or_caught(vectors: dict[str, Any], name: str) -> None:
    """Every strict prefix is refused; every single-bit flip is refused by decode, or (when it
    hits a MESSAGE-INTEGRITY-protected part of a message without FINGERPRINT) by the integrity
    check."""
    from coremesh.errors import DecodeError

    vec = vectors[name]
    data = bytes.fromhex(vec["hex"])
    key = _key(vec)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:cut])
    for i in range(len(data)):
        for bit in range(8):
            mutated = bytearray(data)
            mutated[i] ^= 1 << bit
            try:
                decode(bytes(mutated))
            except DecodeError:
                continue
            assert not (
                verify_integrity(bytes(mutated), key) or verify_integrity_sha256(bytes(mutated), key)
            ), f"flip of byte {i} bit {bit} went unnoticed"
