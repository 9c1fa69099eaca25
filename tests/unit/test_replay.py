"""coremesh.secure.replay: the sliding anti-replay window, against hand cases and a set-based model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.errors import LocalProtocolError
from coremesh.secure.replay import COUNTER_LIMIT, ReplayWindow


def test_fresh_window() -> None:
    w = ReplayWindow()
    assert w.size == 8192 and w.highest is None
    assert w.check(0) and w.check(12345) and w.check(COUNTER_LIMIT - 1)
    assert not w.check(-1) and not w.check(COUNTER_LIMIT)


def test_in_order_and_duplicates() -> None:
    w = ReplayWindow(64)
    for n in range(1000):
        assert w.check_and_update(n)
        assert not w.check(n)
        assert not w.check_and_update(n)
        assert w.highest == n


def test_check_does_not_record() -> None:
    w = ReplayWindow()
    assert w.check(5) and w.check(5)
    assert w.highest is None
    w.update(5)
    assert not w.check(5)


def test_out_of_order_within_the_window() -> None:
    w = ReplayWindow(128)
    assert w.check_and_update(100)
    for n in range(99, -1, -1):
        assert w.check_and_update(n), n
    for n in range(101):
        assert not w.check(n), n
    assert w.highest == 100


def test_too_old_is_rejected() -> None:
    w = ReplayWindow(8192)
    w.update(10_000)
    assert not w.check(10_000 - 8192)
    assert not w.check(0)
    assert w.check(10_000 - 8191)


@pytest.mark.parametrize("size", [2, 7, 8, 9, 64, 100, 8192])
def test_boundary(size: int) -> None:
    w = ReplayWindow(size)
    top = 5 * size + 3
    w.update(top)
    assert w.check(top - (size - 1))  # the oldest counter still inside the window
    assert not w.check(top - size)  # just outside
    w.update(top - (size - 1))
    assert not w.check(top - (size - 1))
    w.update(top - size)  # too old: a no-op, not an error
    assert w.highest == top
    # Moving on by one pushes the oldest slot out.
    w.update(top + 1)
    assert not w.check(top + 1 - size)
    assert not w.check(top - (size - 1))


def test_window_of_one_accepts_only_newer_counters() -> None:
    w = ReplayWindow(1)
    assert w.check_and_update(10)
    assert not w.check(9) and not w.check(10)
    assert w.check_and_update(12)
    assert not w.check(11)


def test_window_jump_forgets_old_marks() -> None:
    w = ReplayWindow(64)
    for n in range(64):
        w.update(n)
    w.update(1_000_000)
    assert not w.check(63)  # now far too old
    for n in range(1_000_000 - 63, 1_000_000):
        assert w.check(n), n  # slots reused from the old marks read as unseen
    # A jump smaller than the window keeps what is still inside it.
    w.update(1_000_000 - 10)
    w.update(1_000_000 + 20)
    assert not w.check(1_000_000 - 10)
    assert not w.check(1_000_000)
    assert w.check(1_000_000 - 9)
    assert w.check(1_000_000 + 19)


@pytest.mark.parametrize("size", [8, 9, 64, 65])
def test_every_jump_clears_exactly_the_entered_slots(size: int) -> None:
    """Fill the window densely, jump by every distance, then read back every counter around it.

    The bit ring is reused modulo its length, so stale marks from counters one lap behind sit in
    the slots a jump enters; each jump size (including ones that wrap the ring) must clear them.
    """
    for start in (size - 1, 3 * size + 5):
        for jump in range(1, 2 * size + 20):
            w, m = ReplayWindow(size), Model(size)
            for n in range(start - size + 1, start + 1):
                w.update(n)
                m.update(n)
            w.update(start + jump)
            m.update(start + jump)
            for probe in range(start - size - 2, start + jump + 3):
                assert w.check(probe) == m.check(probe), (start, jump, probe)


def test_counter_limits() -> None:
    w = ReplayWindow()
    assert w.check_and_update(COUNTER_LIMIT - 1)  # 2^64-2, the last usable counter
    assert not w.check(COUNTER_LIMIT)
    with pytest.raises(LocalProtocolError):
        w.update(COUNTER_LIMIT)
    with pytest.raises(LocalProtocolError):
        ReplayWindow().update(-1)
    assert not w.check_and_update(COUNTER_LIMIT)
    with pytest.raises(ValueError):
        ReplayWindow(0)


class Model:
    """The reference: a set of seen counters and the window's definition, nothing clever."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.highest: int | None = None

    def check(self, n: int) -> bool:
        if not 0 <= n < COUNTER_LIMIT or n in self.seen:
            return False
        return self.highest is None or n > self.highest - self.size

    def update(self, n: int) -> None:
        if self.highest is not None and n <= self.highest - self.size:
            return
        self.seen.add(n)
        self.highest = n if self.highest is None else max(self.highest, n)


@st.composite
def counter_walks(draw: st.DrawFn) -> tuple[int, list[tuple[str, int]]]:
    """A window size and a walk of operations on counters clustered around the window's edges."""
    size = draw(st.sampled_from([1, 2, 7, 8, 9, 16, 63, 64, 65, 100, 1024, 8192]))
    base = draw(st.sampled_from([0, 1, 8, size, 2**40, COUNTER_LIMIT - 4 * size - 10]))
    steps = st.one_of(
        st.integers(-2 * size - 2, 2 * size + 2),
        st.integers(-3, 3),
        st.sampled_from([size - 1, size, size + 1, -(size - 1), -size, -(size + 1)]),
        st.integers(0, 10 * size),
    )
    kinds = st.sampled_from(["check", "update", "check_and_update"])
    walk = draw(st.lists(st.tuples(kinds, steps), min_size=1, max_size=120))
    current = base
    ops: list[tuple[str, int]] = []
    for op, step in walk:
        counter = max(0, min(current + step, COUNTER_LIMIT - 1))
        ops.append((op, counter))
        current = max(current, counter)
    return size, ops


@settings(max_examples=400, deadline=None)
@given(counter_walks())
def test_model(walk: tuple[int, list[tuple[str, int]]]) -> None:
    size, ops = walk
    w, m = ReplayWindow(size), Model(size)
    for op, n in ops:
        expected = m.check(n)
        assert w.check(n) == expected, (op, n)
        if op == "update" and expected:
            w.update(n)
            m.update(n)
        elif op == "update":
            w.update(n)  # a replay or a too-old counter: recording it again changes nothing
            m.update(n)
        elif op == "check_and_update":
            assert w.check_and_update(n) == expected
            if expected:
                m.update(n)
        assert w.highest == m.highest
        # Probe the whole neighbourhood of the window edge, not just the counter just used.
        if m.highest is not None:
            edge = m.highest - size
            probes: range | tuple[int, ...] = (edge - 1, edge, edge + 1, edge + 2, m.highest - 1, m.highest)
            if size <= 100:
                probes = range(edge - 1, m.highest + 2)  # small windows: read every slot back
            for probe in probes:
                assert w.check(probe) == m.check(probe), probe
