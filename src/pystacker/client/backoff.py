"""Reconnect delays: exponential, jittered, capped, with an optional limit on attempts. Pure logic."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """`next_delay()` gives the pause before the next attempt, or None once `max_attempts` consecutive
    attempts failed. The n-th delay is drawn from [d/2, d] with d = min(initial * factor**(n-1), max_delay):
    the jitter spreads a reconnect storm (a gateway restart drops thousands of clients at once) and the
    lower half-bound keeps it from collapsing to zero."""

    def __init__(self, initial: float = 0.5, max_delay: float = 30.0, factor: float = 2.0,
                 max_attempts: int | None = None, rand: Callable[[], float] = random.random) -> None:
        if initial <= 0 or max_delay < initial or factor < 1:
            raise ValueError("need 0 < initial <= max_delay and factor >= 1")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.initial = initial
        self.max_delay = max_delay
        self.factor = factor
        self.max_attempts = max_attempts
        self._rand = rand
        self.attempts = 0

    def next_delay(self) -> float | None:
        if self.max_attempts is not None and self.attempts >= self.max_attempts:
            return None
        ceiling = min(self.initial * self.factor ** self.attempts, self.max_delay)
        self.attempts += 1
        return ceiling / 2 + self._rand() * ceiling / 2

    def reset(self) -> None:
        self.attempts = 0
