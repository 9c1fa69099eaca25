from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremesh.errors import IdentityError, InvalidPeerId
from coremesh.identity import (
    KEY_FILE_NAME,
    Identity,
    PeerId,
    load_or_create_identity,
    verify_signature,
)


def test_peer_id_text_round_trips() -> None:
    peer = Identity.generate().peer_id
    text = peer.to_text()
    assert len(text) == 56 and text == text.lower()
    assert PeerId.from_text(text) == peer
    assert PeerId.from_text(text.upper()) == peer
    assert PeerId.from_public_key(peer.to_bytes()) == peer
    assert str(peer) == text


@given(st.binary(min_size=32, max_size=32))
def test_any_key_round_trips_through_text(key: bytes) -> None:
    peer = PeerId(key)
    assert PeerId.from_text(peer.to_text()) == peer


@given(st.integers(0, 55), st.sampled_from("abcdefghijklmnopqrstuvwxyz234567"))
def test_single_character_typos_are_rejected(position: int, replacement: str) -> None:
    text = PeerId(bytes(range(32))).to_text()
    if text[position] == replacement:
        return
    typo = text[:position] + replacement + text[position + 1 :]
    with pytest.raises(InvalidPeerId):
        PeerId.from_text(typo)


@pytest.mark.parametrize("text", ["", "abc", "0" * 56, "!" * 56, PeerId(bytes(32)).to_text() + "a"])
def test_malformed_text_is_rejected(text: str) -> None:
    with pytest.raises(InvalidPeerId):
        PeerId.from_text(text)


def test_peer_id_needs_32_bytes() -> None:
    with pytest.raises(InvalidPeerId):
        PeerId(b"short")


def test_distance_is_xor_and_symmetric() -> None:
    a, b = PeerId(bytes(31) + b"\x01"), PeerId(bytes(31) + b"\x03")
    assert a.distance(b) == b.distance(a) == 2
    assert a.distance(a) == 0
    assert a.bucket_index(b) == 1
    assert a.bucket_index(a) == -1
    assert PeerId(bytes(32)).bucket_index(PeerId(b"\x80" + bytes(31))) == 255


def test_x25519_key_matches_identity() -> None:
    identity = Identity.generate()
    assert identity.peer_id.x25519_public() == identity.x25519_public


def test_signatures_verify_only_with_the_right_key() -> None:
    a, b = Identity.generate(), Identity.generate()
    sig = a.sign(b"record")
    assert verify_signature(a.peer_id, b"record", sig)
    assert not verify_signature(b.peer_id, b"record", sig)
    assert not verify_signature(a.peer_id, b"other", sig)


def test_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_identity(tmp_path / "data").peer_id == first.peer_id
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"coremesh-ed25519-v1\n!!!notbase64", b"coremesh-ed25519-v1\nAAAA\n"],
)
def test_corrupt_key_file_is_an_error_not_a_new_identity(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(IdentityError):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == content


def test_foreign_key_file_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    path = tmp_path / KEY_FILE_NAME
    data = bytearray(path.read_bytes())
    data[-5] = ord("A") if data[-5] != ord("A") else ord("B")  # public part no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(IdentityError):
        load_or_create_identity(tmp_path)


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    (tmp_path / KEY_FILE_NAME).chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create_identity(tmp_path)


def test_key_survives_a_killed_writer(tmp_path: Path) -> None:
    """A process killed right after creating its key leaves a complete, loadable file."""
    code = (
        "import os, sys; from pathlib import Path; from coremesh.identity import load_or_create_identity;"
        "i = load_or_create_identity(Path(sys.argv[1])); print(i.peer_id, flush=True);"
        "os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, timeout=30)
    assert proc.returncode == -9
    printed = proc.stdout.decode().strip()
    assert str(load_or_create_identity(tmp_path).peer_id) == printed
    assert os.listdir(tmp_path) == [KEY_FILE_NAME]
