"""A latency histogram with logarithmic buckets.

Memory stays bounded however many deliveries a run makes (a few thousand buckets at most), client
processes merge theirs by adding counts, and percentiles are within 1% of the exact value (the
bucket width). The exact minimum and maximum are kept besides.
"""

from __future__ import annotations

import math
from typing import Any

RATIO = 1.01  # each bucket is 1% wider than the previous one
FLOOR = 1e-6  # seconds; anything faster lands in bucket 0
_INV_LOG_RATIO = 1.0 / math.log(RATIO)


class Histogram:
    __slots__ = ("buckets", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, seconds: float) -> None:
        if seconds < 0:
            seconds = 0.0  # cannot happen with one monotonic clock; never let it break the buckets
        index = 0 if seconds < FLOOR else int(math.log(seconds / FLOOR) * _INV_LOG_RATIO) + 1
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: Histogram) -> Histogram:
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    @staticmethod
    def _upper(index: int) -> float:
        return FLOOR if index == 0 else FLOOR * RATIO**index

    def percentile(self, p: float) -> float | None:
        """The value below which p percent of the samples fall (bucket upper bound, clamped to max)."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(p / 100.0 * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(max(self._upper(index), self.min), self.max)
        return self.max

    def summary_ms(self) -> dict[str, float | int | None]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return {"count": self.count, "p50": ms(self.percentile(50)), "p90": ms(self.percentile(90)),
                "p99": ms(self.percentile(99)), "max": ms(self.max if self.count else None),
                "mean": ms(self.total / self.count if self.count else None)}

    def cdf_ms(self) -> list[tuple[float, float]]:
        """(upper bound in ms, fraction of samples at or below) per non-empty bucket, for plots."""
        points, seen = [], 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            points.append((min(self._upper(index), self.max) * 1000.0, seen / self.count))
        return points

    def to_json(self) -> dict[str, Any]:
        return {"ratio": RATIO, "floor_s": FLOOR, "count": self.count, "total_s": self.total,
                "min_s": self.min if self.count else None, "max_s": self.max if self.count else None,
                "buckets": sorted(self.buckets.items())}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        hist = cls()
        hist.buckets = {int(i): int(n) for i, n in data["buckets"]}
        hist.count = int(data["count"])
        hist.total = float(data["total_s"])
        hist.min = math.inf if data["min_s"] is None else float(data["min_s"])
        hist.max = 0.0 if data["max_s"] is None else float(data["max_s"])
        return hist
