"""Helpers of the engine contract tests: unique ids, polling with a deadline."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from pystacker.engine.base import Engine, EngineSettings, LogEnd, MessageLog, SeqSeed
from pystacker.messaging.model import NewMessage

T = TypeVar("T")


async def zero_seed(room_id: int) -> LogEnd:
    """SQL holds nothing yet: seqs start at 1."""
    return LogEnd(0, 0)


class OpenEngine(Protocol):
    """Opens an engine of the backend under test; the fixture cleans it up after the test."""

    def __call__(self, settings: EngineSettings = ..., seq_seed: SeqSeed = ...) -> Awaitable[Engine]: ...


def unique_name(prefix: str) -> str:
    """Gateway ids, consumer names, channels: unique, so tests can share one backing store."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unique_int() -> int:
    """Room, user and message ids: unique, positive, below 2**53 (exact in JSON and Lua numbers)."""
    return secrets.randbits(52) + 1


def new_message(room_id: int, sender_id: int = 7, *, client_msg_id: str | None = None,
                text: str = "hi") -> NewMessage:
    return NewMessage(msg_id=unique_int(), room_id=room_id, sender_id=sender_id, type="text",
                      content={"text": text}, created_at_ms=1_700_000_000_000, client_msg_id=client_msg_id)


async def until(fetch: Callable[[], Awaitable[T]], accept: Callable[[T], bool] = bool,
                timeout: float = 5.0, interval: float = 0.02) -> T:
    """Call fetch until accept(result) holds and return that result; fail after `timeout` seconds.

    For conditions that need time to pass (TTLs, idle times, claim timeouts): the test waits exactly
    as long as the engine needs, and a broken engine fails at the deadline instead of hanging.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await fetch()
        if accept(result):
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last result: {result!r}")
        await asyncio.sleep(interval)


async def drain_flush_queue(log: MessageLog) -> None:
    """Take and confirm whatever earlier users of a shared store left in the flush queue."""
    while (batch := await log.take_batch(1000)) is not None:
        await log.confirm_batch(batch.token)
