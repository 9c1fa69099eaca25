"""Shared fixtures. Published test vectors live in ``tests/vectors/`` (their provenance is in its README)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Property tests assert behaviour, never speed: on a shared 2-core machine one example can take
# longer than Hypothesis's default 200 ms deadline, which would fail a correct test.
settings.register_profile("coremesh", deadline=None)
settings.load_profile("coremesh")

VECTORS = Path(__file__).resolve().parent / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The repository's own copy of the published vectors: a clone needs nothing beside it."""
    if not VECTORS.is_dir():
        pytest.fail(f"published test vectors not found at {VECTORS}")
    return VECTORS
