"""Conformance of coremesh.secure.noise with the published cacophony test vectors.

The vectors are read from ``tests/vectors/`` (the ``vectors_dir`` fixture of ``tests/conftest.py``; its
README says where they come from). Every
(pattern, hash) pair the module supports must have a vector and pass it.

Message order: message ``i`` is sent by the initiator when ``i`` is even, through the handshake and
on into the transport messages (for a one-way pattern, every message is the initiator's). For the
three-message patterns (XN, XK, XX) the first transport message is therefore the responder's.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from coremesh.secure.noise import PATTERNS, CipherState, HandshakeState, KeyPair

VECTOR_FILE = "noise-cacophony-25519-chachapoly.json"
HASHES = ("BLAKE2s", "BLAKE2b", "SHA256", "SHA512")
PROTOCOL_NAMES = [
    f"Noise_{pattern}_25519_ChaChaPoly_{hash_name}"
    for pattern, hash_name in itertools.product(PATTERNS, HASHES)
]


@pytest.fixture(scope="module")
def vectors(vectors_dir: Path) -> dict[str, dict[str, Any]]:
    path = vectors_dir / VECTOR_FILE
    if not path.is_file():
        pytest.fail(f"Noise test vectors not found at {path}")
    data = json.loads(path.read_text())
    return {v["protocol_name"]: v for v in data["vectors"]}


def _hex(vector: dict[str, Any], key: str) -> bytes | None:
    return bytes.fromhex(vector[key]) if key in vector else None


def _keypair(vector: dict[str, Any], key: str) -> KeyPair | None:
    private = _hex(vector, key)
    return None if private is None else KeyPair.from_private(private)


def _no_randomness(n: int) -> bytes:
    raise AssertionError("the vectors fix every ephemeral key; no randomness may be drawn")


def test_file_has_exactly_the_supported_protocols(vectors: dict[str, dict[str, Any]]) -> None:
    assert sorted(vectors) == sorted(PROTOCOL_NAMES)
    assert len(vectors) == 36


@pytest.mark.parametrize("protocol_name", PROTOCOL_NAMES)
def test_vector(vectors: dict[str, dict[str, Any]], protocol_name: str) -> None:
    if protocol_name not in vectors:
        pytest.fail(f"no vector for {protocol_name} in {VECTOR_FILE}")
    v = vectors[protocol_name]
    init = HandshakeState(
        protocol_name,
        initiator=True,
        prologue=_hex(v, "init_prologue") or b"",
        s=_keypair(v, "init_static"),
        e=_keypair(v, "init_ephemeral"),
        rs=_hex(v, "init_remote_static"),
        random_bytes=_no_randomness,
    )
    resp = HandshakeState(
        protocol_name,
        initiator=False,
        prologue=_hex(v, "resp_prologue") or b"",
        s=_keypair(v, "resp_static"),
        e=_keypair(v, "resp_ephemeral"),
        rs=_hex(v, "resp_remote_static"),
        random_bytes=_no_randomness,
    )
    pattern = PATTERNS[protocol_name.split("_")[1]]
    n_handshake = len(pattern.messages)
    assert len(v["messages"]) > n_handshake, "the vector should exercise the transport phase"

    init_send: CipherState | None = None
    init_recv: CipherState | None = None
    resp_send: CipherState | None = None
    resp_recv: CipherState | None = None
    transport_nonce = {True: 0, False: 0}  # per direction, keyed by "initiator sends"
    for i, message in enumerate(v["messages"]):
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        initiator_sends = pattern.one_way or i % 2 == 0
        if i < n_handshake:
            sender, receiver = (init, resp) if initiator_sends else (resp, init)
            assert sender.write_message(payload) == expected, f"handshake message {i}"
            assert receiver.read_message(expected) == payload, f"handshake message {i}"
            if i == n_handshake - 1:
                assert init.complete and resp.complete
                assert init.handshake_hash == resp.handshake_hash == bytes.fromhex(v["handshake_hash"])
                init_send, init_recv = init.split()
                resp_recv, resp_send = resp.split()
            continue
        assert init_send and init_recv and resp_send and resp_recv
        send, recv = (init_send, resp_recv) if initiator_sends else (resp_send, init_recv)
        # The explicit-nonce path must agree with the counter path on the same nonce.
        nonce = transport_nonce[initiator_sends]
        assert send.encrypt_with_nonce(nonce, b"", payload) == expected, f"transport message {i}"
        assert send.encrypt_with_ad(b"", payload) == expected, f"transport message {i}"
        assert recv.decrypt_with_ad(b"", expected) == payload, f"transport message {i}"
        transport_nonce[initiator_sends] = nonce + 1

    # Each side learned (or was given) the other's static key, where the pattern has one.
    if "init_static" in v:
        assert resp.remote_static == KeyPair.from_private(bytes.fromhex(v["init_static"])).public
    if "resp_static" in v:
        assert init.remote_static == KeyPair.from_private(bytes.fromhex(v["resp_static"])).public
    assert init.remote_ephemeral == KeyPair.from_private(bytes.fromhex(v["resp_ephemeral"])).public
    assert resp.remote_ephemeral == KeyPair.from_private(bytes.fromhex(v["init_ephemeral"])).public
