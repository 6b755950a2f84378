"""Bus: best-effort broadcast to every subscriber of a channel."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pystacker.engine.base import BusHandler, Engine
from tests.engine.support import unique_name, until

DELIVERY_DEADLINE = 5.0


def _collector() -> tuple[BusHandler, asyncio.Queue[tuple[str, bytes]]]:
    received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def handler(channel: str, data: bytes) -> None:
        received.put_nowait((channel, data))

    return handler, received


async def _next(received: asyncio.Queue[tuple[str, bytes]]) -> tuple[str, bytes]:
    return await asyncio.wait_for(received.get(), DELIVERY_DEADLINE)


async def test_every_subscriber_of_the_channel_gets_the_message(engine: Engine) -> None:
    channel, other_channel = unique_name("chan"), unique_name("chan")
    (first, got_first), (second, got_second), (other, got_other) = _collector(), _collector(), _collector()
    await engine.bus.subscribe(channel, first)
    await engine.bus.subscribe(channel, second)
    await engine.bus.subscribe(other_channel, other)

    await engine.bus.publish(other_channel, b"elsewhere")
    await engine.bus.publish(channel, b"invalidate room 7")
    assert await _next(got_first) == (channel, b"invalidate room 7")
    assert await _next(got_second) == (channel, b"invalidate room 7")
    assert await _next(got_other) == (other_channel, b"elsewhere")
    assert got_first.empty() and got_second.empty() and got_other.empty()


async def test_a_slow_handler_blocks_neither_publish_nor_other_handlers(engine: Engine) -> None:
    channel = unique_name("chan")
    release = asyncio.Event()
    slow_done = asyncio.Event()

    async def slow(channel: str, data: bytes) -> None:
        await release.wait()
        slow_done.set()

    fast, got_fast = _collector()
    await engine.bus.subscribe(channel, slow)
    await engine.bus.subscribe(channel, fast)
    await asyncio.wait_for(engine.bus.publish(channel, b"x"), DELIVERY_DEADLINE)
    assert await _next(got_fast) == (channel, b"x")
    release.set()
    await asyncio.wait_for(slow_done.wait(), DELIVERY_DEADLINE)


async def test_a_failing_handler_is_logged_and_does_not_stop_delivery(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    channel = unique_name("chan")

    async def failing(channel: str, data: bytes) -> None:
        raise RuntimeError("handler bug")

    working, received = _collector()
    await engine.bus.subscribe(channel, failing)
    await engine.bus.subscribe(channel, working)
    await engine.bus.publish(channel, b"1")
    await engine.bus.publish(channel, b"2")
    assert [await _next(received), await _next(received)] == [(channel, b"1"), (channel, b"2")]

    async def failures_logged() -> int:
        # By the engine: asyncio's own "Task exception was never retrieved" would mean nobody handled it.
        return sum(record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
                   for record in caplog.records if record.levelno >= logging.ERROR and record.name != "asyncio")

    assert await until(failures_logged, lambda count: count == 2)
