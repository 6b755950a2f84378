"""The token bucket, with an injected clock: no sleeping."""

from __future__ import annotations

import pytest

from pystacker.web.ratelimit import RateLimited, TokenBucketLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.try_acquire("u") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire("u") == pytest.approx(0.5)  # one token every 1/rate s
    clock.now += 0.25
    assert limiter.try_acquire("u") == pytest.approx(0.25)  # a refused request takes nothing
    clock.now += 0.25
    assert limiter.try_acquire("u") == 0.0
    assert limiter.try_acquire("u") > 0
    clock.now += 100  # refills to the burst, no further
    assert [limiter.try_acquire("u") for _ in range(4)][-1] > 0


def test_keys_are_independent() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.try_acquire(1) == 0.0
    assert limiter.try_acquire(1) > 0
    assert limiter.try_acquire(2) == 0.0


def test_memory_is_bounded_and_full_buckets_are_not_kept() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=1.0, burst=2, max_keys=3, clock=clock)
    for key in range(10):
        limiter.try_acquire(key)
    assert len(limiter) == 3  # the least recently used were dropped
    limiter.try_acquire(9)  # recently used: kept
    limiter.try_acquire(9)
    assert limiter.try_acquire(9) > 0
    clock.now += 10  # everyone refilled: a refilled bucket is dropped on its next use
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    limiter.try_acquire("x")
    clock.now += 5
    limiter.try_acquire("y")
    assert len(limiter) == 2


def test_a_clock_going_backwards_mints_nothing() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.try_acquire("u") == 0.0
    clock.now -= 50
    assert limiter.try_acquire("u") > 0


def test_rate_zero_disables() -> None:
    limiter = TokenBucketLimiter(rate=0, burst=1, clock=Clock())
    assert all(limiter.try_acquire("u") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_check_raises_429_with_whole_seconds_rounded_up() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=0.4, burst=1, clock=clock)
    limiter.check("u", "messages")
    with pytest.raises(RateLimited) as info:
        limiter.check("u", "messages")
    assert info.value.status == 429 and info.value.retry_after == 3  # 2.5 s rounded up
    assert info.value.headers == {"Retry-After": "3"} and "messages" in info.value.msg
    fast = TokenBucketLimiter(rate=1000, burst=1, clock=clock)
    fast.check("u", "x")
    with pytest.raises(RateLimited) as info:
        fast.check("u", "x")
    assert info.value.retry_after == 1  # never 0: a client told 0 would retry at once


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter(rate=1, burst=0)
    with pytest.raises(ValueError):
        TokenBucketLimiter(rate=1, burst=1, max_keys=0)
