"""pytest helpers: the ``natlab`` fixture and a loud root check (no skips: a missing prerequisite
fails the test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .lab import Lab, LabError, check_prerequisites
from .topology import Topology


def require_root() -> None:
    """Fail the test (not skip) when the lab cannot run here."""
    try:
        check_prerequisites()
    except LabError as exc:
        pytest.fail(f"{exc} (the test command installs what it needs: sh scripts/test.sh)")


@pytest.fixture
def natlab() -> Iterator[Callable[..., Lab]]:
    """A factory: ``lab = natlab(topology, **kwargs)`` builds and starts a :class:`Lab`; every lab it
    made is taken down when the test ends, pass or fail."""
    require_root()
    labs: list[Lab] = []

    def make(topology: Topology, **kwargs: Any) -> Lab:
        lab = Lab(topology, **kwargs)
        labs.append(lab)
        lab.up()
        return lab

    try:
        yield make
    finally:
        for lab in reversed(labs):
            lab.down()
