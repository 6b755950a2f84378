"""Per-key token buckets: the per-user send limit and the per-username / per-address login limit.

Pure bookkeeping (no I/O, the clock is injected) so that it is tested without sleeping. The limits
are per process: with N send instances (or gateways) a user may send N times the configured rate
if his requests are spread over all of them. They stop one client from flooding a room or guessing
passwords at full speed; they are not a cluster-wide quota.

Memory is bounded: at most `max_keys` buckets, the least recently used dropped first. Dropping a
bucket forgets its debt, which only ever errs on the side of letting a request through; an idle
bucket refills to `burst` after `burst / rate` seconds anyway, so old buckets carry no information.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from pystacker.web.envelope import ApiError

DEFAULT_MAX_KEYS = 100_000


class RateLimited(ApiError):
    """429 with the seconds to wait: `Retry-After` over HTTP, `retry_after` in a WebSocket error frame."""

    def __init__(self, what: str, retry_after: float) -> None:
        # Retry-After is whole seconds (RFC 9110); round up so that a retry at that time succeeds.
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(429, f"too many {what}: retry after {self.retry_after} s",
                         headers={"Retry-After": str(self.retry_after)})


class TokenBucketLimiter:
    """`rate` tokens per second up to `burst` per key; a request takes one. `rate <= 0` disables it."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = DEFAULT_MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or max_keys < 1:
            raise ValueError("burst and max_keys must be at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        # key -> (tokens left, when they were counted); ordered oldest use first, for eviction.
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def try_acquire(self, key: Hashable) -> float:
        """Take a token for `key`: 0.0 when granted, else the seconds until one is available."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        tokens, since = self._buckets.pop(key, (float(self.burst), now))
        # A clock that goes backwards (it should not: monotonic) must not mint tokens.
        tokens = min(float(self.burst), tokens + max(0.0, now - since) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        if tokens < self.burst:  # a full bucket is the same as no bucket: keep only those in debt
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait

    def check(self, key: Hashable, what: str) -> None:
        """Take a token or raise RateLimited."""
        wait = self.try_acquire(key)
        if wait > 0:
            raise RateLimited(what, wait)
