"""The seed's sliding-window monitor, without its defect.

A monitor keeps the last `capacity` completed operations (end time, duration, success) of one kind
(sql, send, push_ws) in a ring buffer and answers the average duration, success ratio and count over
the last `window` seconds. GoStacker sent every sample into a channel that nothing read, so after 100
SQL statements every service froze. Here recording is one `deque.append` on the caller's thread:
nothing to wait for, and a full buffer simply forgets its oldest sample. Samples older than the window
are dropped when the stats are read (and from the head while recording, so the buffer stays small).

The stats are exported at scrape time as `app_monitor_avg_time_ms`, `app_monitor_success_rate` and
`app_monitor_count` (label `monitor`, GoStacker's names) and as JSON at `/debug/stats`.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

WINDOW_SECONDS = 60.0
DEFAULT_CAPACITY = 10_000

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Stats:
    avg_time_ms: float
    success_rate: float
    count: int

    def to_json(self) -> dict[str, float | int]:
        return {"avg_time_ms": round(self.avg_time_ms, 3), "success_rate": round(self.success_rate, 4),
                "count": self.count}


class Monitor:
    def __init__(self, name: str, *, capacity: int = DEFAULT_CAPACITY, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.window = window
        self.clock = clock
        # (end time, duration in seconds, success); maxlen makes a full buffer drop its oldest sample.
        self._samples: deque[tuple[float, float, bool]] = deque(maxlen=capacity)

    def record(self, duration: float, ok: bool = True) -> None:
        """One finished operation. Never blocks: an append, plus dropping expired samples from the head."""
        now = self.clock()
        self._samples.append((now, duration, ok))
        self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        samples = self._samples
        try:
            while samples and samples[0][0] < horizon:
                samples.popleft()
        except IndexError:  # emptied meanwhile by another thread's record: nothing left to drop
            pass

    def stats(self) -> Stats:
        now = self.clock()
        self._expire(now)
        horizon = now - self.window
        # list() copies the deque in one C call (atomic under the GIL), so a concurrent record cannot
        # break the iteration.
        recent = [s for s in list(self._samples) if s[0] >= horizon]
        if not recent:
            return Stats(0.0, 0.0, 0)
        total = sum(duration for _, duration, _ in recent)
        succeeded = sum(1 for *_, ok in recent if ok)
        return Stats(total / len(recent) * 1000, succeeded / len(recent), len(recent))

    @contextmanager
    def track(self) -> Iterator[None]:
        """Time the block; an exception counts as a failure unless it is a client's mistake."""
        started = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self.record(time.perf_counter() - started, not counts_as_failure(exc))
            raise
        self.record(time.perf_counter() - started, True)


def counts_as_failure(exc: BaseException) -> bool:
    """A client's mistake (an HTTP 4xx answer such as 403 not a member) is not the service failing."""
    status = getattr(exc, "status", None)
    return not (isinstance(status, int) and 400 <= status < 500)


class Monitors:
    """The process's monitors by name, created on first use."""

    def __init__(self) -> None:
        self._by_name: dict[str, Monitor] = {}

    def get(self, name: str) -> Monitor:
        monitor = self._by_name.get(name)
        if monitor is None:
            monitor = self._by_name[name] = Monitor(name)
        return monitor

    def snapshot(self) -> dict[str, Stats]:
        return {name: monitor.stats() for name, monitor in sorted(self._by_name.items())}


MONITORS = Monitors()


def monitored(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate a coroutine function: each call is one operation of monitor `name`."""
    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with MONITORS.get(name).track():
                return await func(*args, **kwargs)
        return wrapper
    return decorate


class MonitorCollector(Collector):
    """Computes the app_monitor_* gauges when Prometheus scrapes (no sampler task to forget to start:
    GoStacker's never ran, so its series never appeared)."""

    def __init__(self, monitors: Monitors) -> None:
        self.monitors = monitors

    def collect(self) -> Iterator[GaugeMetricFamily]:
        avg = GaugeMetricFamily("app_monitor_avg_time_ms", "Average duration (ms) over the last 60 s.",
                                labels=["monitor"])
        rate = GaugeMetricFamily("app_monitor_success_rate", "Share of successful operations (0..1) over the "
                                 "last 60 s.", labels=["monitor"])
        count = GaugeMetricFamily("app_monitor_count", "Operations recorded over the last 60 s (at most the "
                                  "buffer's capacity).", labels=["monitor"])
        for name, stats in self.monitors.snapshot().items():
            avg.add_metric([name], stats.avg_time_ms)
            rate.add_metric([name], stats.success_rate)
            count.add_metric([name], stats.count)
        yield from (avg, rate, count)


REGISTRY.register(MonitorCollector(MONITORS))
for _name in ("sql", "send", "push_ws"):  # present (at 0) from the start, so dashboards find them
    MONITORS.get(_name)

