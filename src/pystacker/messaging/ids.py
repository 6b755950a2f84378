"""Snowflake message ids, bit-compatible with GoStacker's (bwmarrin/snowflake defaults).

id = (ms since 2010-11-04T01:42:54.657Z) << 22 | node << 12 | sequence. GoStacker hard-codes node 1,
so two send instances can mint the same id (compatibility.md #24); here the node is the config's machine_id,
which must differ between send instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable

EPOCH_MS = 1288834974657
NODE_BITS = 10
SEQUENCE_BITS = 12
MAX_NODE = (1 << NODE_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1


class Snowflake:
    def __init__(self, node: int, clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"snowflake node must be in 0..{MAX_NODE}, got {node}")
        self._node_bits = node << SEQUENCE_BITS
        self._clock_ms = clock_ms
        self._last_ms = -1
        self._sequence = 0

    def next_id(self) -> int:
        now = self._clock_ms()
        if now < self._last_ms:
            # The wall clock stepped back: keep counting on the last millisecond so ids never repeat.
            now = self._last_ms
        if now == self._last_ms:
            self._sequence = (self._sequence + 1) & MAX_SEQUENCE
            if self._sequence == 0:
                now = self._last_ms + 1  # 4096 ids in one ms: borrow the next ms instead of spinning
        else:
            self._sequence = 0
        self._last_ms = now
        return int(((now - EPOCH_MS) << (NODE_BITS + SEQUENCE_BITS)) | self._node_bits | self._sequence)


def timestamp_ms(snowflake_id: int) -> int:
    return (snowflake_id >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS
