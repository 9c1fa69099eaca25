"""What a keyed relay admits (keyedrelay/limits.py): RelayLimits and the unregistered connections' cap."""

from __future__ import annotations

import pytest

from coremesh.keyedrelay.limits import RelayLimits, UnregisteredLimiter


def test_limits_are_validated_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="rate_bytes_per_s must be a positive number"):
        RelayLimits(rate_bytes_per_s=0)
    with pytest.raises(ValueError, match="max_frame must be an integer in"):
        RelayLimits(max_frame=100)
    with pytest.raises(ValueError, match="max_sessions"):
        RelayLimits(max_sessions=0)
    with pytest.raises(ValueError, match="max_unregistered"):
        RelayLimits(max_unregistered=0)


def test_unregistered_limiter_evicts_the_oldest_of_the_same_source_first() -> None:
    lim: UnregisteredLimiter[str] = UnregisteredLimiter(max_total=5, max_per_source=2)
    assert lim.admit("a1", "A") == [] and lim.admit("a2", "A") == []
    assert lim.admit("b1", "B") == []
    assert lim.admit("a3", "A") == ["a1"]  # A is at its cap: its oldest goes, not B's
    assert lim.count("A") == 2 and "a1" not in lim and "b1" in lim
    lim.remove("a2")  # registered
    lim.remove("a2")  # unknown keys are ignored
    assert lim.admit("a4", "A") == [] and len(lim) == 3


def test_unregistered_limiter_evicts_the_oldest_overall_at_the_total_cap() -> None:
    lim: UnregisteredLimiter[int] = UnregisteredLimiter(max_total=3, max_per_source=3)
    for key, source in ((1, "A"), (2, "B"), (3, "C")):
        assert lim.admit(key, source) == []
    assert lim.admit(4, "D") == [1]
    assert lim.admit(5, "B") == [2] and lim.count("B") == 1 and lim.count("A") == 0
    assert len(lim) == 3
    with pytest.raises(ValueError):
        UnregisteredLimiter(max_total=2, max_per_source=3)
