"""The shared token bucket: exact refill and burst cap against a hand clock, time going backwards
adds nothing, and (property-based) no sequence of requests gets more than the rate allows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremesh.ratelimit import TokenBucket


def test_token_bucket_is_exact_with_a_hand_clock() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5.0, now=0.0)
    assert [bucket.consume(1, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.consume(1, 0.05)  # half a token
    assert bucket.consume(1, 0.1) and not bucket.consume(1, 0.1)
    assert bucket.tokens(10.0) == 5.0  # capped at capacity
    assert not bucket.consume(6, 10.0)  # more than capacity never passes, and takes nothing
    assert bucket.consume(5, 10.0) and bucket.tokens(10.0) == 0.0
    assert bucket.tokens(9.0) == 0.0  # time going backwards adds nothing
    assert bucket.consume(2.5, 10.25)


def test_token_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0, 0.0)


def test_refill_is_rate_times_elapsed_up_to_the_cap() -> None:
    bucket = TokenBucket(rate=100, capacity=1000, now=5.0)
    assert bucket.consume(1000, 5.0) and bucket.tokens(5.0) == 0.0
    assert bucket.tokens(6.0) == 100.0
    assert bucket.tokens(8.5) == 350.0
    assert bucket.tokens(100.0) == 1000.0  # a long silence banks no more than the burst


def test_time_going_backwards_is_a_no_op_until_time_passes_the_latest_now() -> None:
    bucket = TokenBucket(rate=1.0, capacity=10.0, now=100.0)
    assert bucket.consume(10, 100.0)
    assert bucket.tokens(50.0) == 0.0 and not bucket.consume(1, 50.0)
    # The step back did not move the bucket's clock: refill resumes from 100, not from 50.
    assert bucket.tokens(101.0) == 1.0


def test_idle_full_after_a_whole_refill_of_silence() -> None:
    bucket = TokenBucket(rate=20.0, capacity=40.0, now=0.0)
    assert bucket.consume(1, 1.0)
    assert not bucket.idle_full(2.999)
    assert bucket.idle_full(3.0)  # two seconds since the last use: full, like a new bucket
    assert bucket.tokens(3.0) == 40.0


@given(
    rate=st.floats(min_value=0.01, max_value=1e6),
    capacity=st.floats(min_value=0.01, max_value=1e6),
    steps=st.lists(
        st.tuples(st.floats(min_value=-10.0, max_value=10.0), st.floats(min_value=0.0, max_value=2e6)),
        max_size=60,
    ),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, capacity: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, capacity, now=0.0)
    now = latest = 0.0
    granted = 0.0
    for dt, amount in steps:
        now += dt
        before = bucket.tokens(now)
        assert 0.0 <= before <= capacity
        took = bucket.consume(amount, now)
        assert took == (amount <= before)
        after = bucket.tokens(now)
        assert after == (before - amount if took else before)
        granted += amount if took else 0.0
        latest = max(latest, now)
    allowed = capacity + rate * latest
    assert granted <= allowed * (1 + 1e-9) + 1e-6


@given(
    start=st.floats(min_value=-1e6, max_value=1e6),
    back=st.floats(min_value=0.0, max_value=1e6),
    drained=st.floats(min_value=0.0, max_value=1.0),
)
def test_a_step_back_in_time_never_adds_tokens(start: float, back: float, drained: float) -> None:
    bucket = TokenBucket(rate=3.0, capacity=9.0, now=start)
    assert bucket.consume(9.0 * drained, start)
    left = bucket.tokens(start)
    assert bucket.tokens(start - back) == left
    assert bucket.tokens(start) == left


def test_charge_goes_into_debt_and_consume_waits_for_it_to_be_repaid() -> None:
    b = TokenBucket(rate=10.0, capacity=5.0, now=0.0)
    b.charge(8.0, 0.0)  # work already done: 3 tokens in debt
    assert b.tokens(0.0) == -3.0
    assert not b.consume(0.5, 0.2)  # -1 banked
    assert b.consume(0.5, 0.4)  # +1 banked
    assert b.tokens(10.0) == 5.0  # repaid and capped
