"""Shared fixtures. Published test vectors are read from ../shared/vectors (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _vectors_dir() -> Path:
    return Path(os.environ.get("COREMESH_VECTORS", REPO.parent / "shared" / "vectors"))


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    path = _vectors_dir()
    if not path.is_dir():
        pytest.fail(f"published test vectors not found at {path} (set COREMESH_VECTORS)")
    return path
