"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemons import Nodes


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    """Daemon processes of one test, every one stopped by its PID afterwards, also on failure."""
    manager = Nodes(tmp_path)
    try:
        yield manager
    finally:
        manager.stop_all()
