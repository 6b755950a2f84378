"""Concurrent callers' commands share one pipeline (engine/redis_batch.SharedPipeline), on a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from pystacker.engine.redis_batch import SharedPipeline
from tests.engine.redis_servers import REDIS_HOST, REDIS_PORT
from tests.engine.support import unique_name


class CountingRedis(Redis):
    """Counts the pipelines made on it: one per batch."""

    pipelines = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.pipelines += 1
        return super().pipeline(*args, **kwargs)


@pytest.fixture
async def client() -> AsyncIterator[CountingRedis]:
    redis = CountingRedis(host=REDIS_HOST, port=REDIS_PORT)
    prefix = unique_name("batch-test")
    redis.test_prefix = prefix  # type: ignore[attr-defined]  # the keys this test may touch
    yield redis
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_callers_of_one_turn_share_a_pipeline_and_each_gets_its_own_replies(client: CountingRedis) -> None:
    shared = SharedPipeline(client)
    prefix = client.test_prefix  # type: ignore[attr-defined]

    def incr_twice(key: str) -> Any:
        def queue(pipe: Any) -> None:
            pipe.incr(key)
            pipe.incrby(key, 10)
        return queue

    replies = await asyncio.gather(*(shared.execute(incr_twice(f"{prefix}:{i % 3}")) for i in range(9)))
    assert client.pipelines == 1
    # Each caller's commands ran together and in its order; callers in the order they came.
    assert replies == [[1, 11], [1, 11], [1, 11], [12, 22], [12, 22], [12, 22], [23, 33], [23, 33], [23, 33]]
    assert await shared.execute(incr_twice(f"{prefix}:0")) == [34, 44]
    assert client.pipelines == 2


async def test_an_error_reply_reaches_only_its_caller(client: CountingRedis) -> None:
    shared = SharedPipeline(client)
    prefix = client.test_prefix  # type: ignore[attr-defined]
    await client.set(f"{prefix}:text", "not a number")

    def incr(key: str) -> Any:
        return lambda pipe: pipe.incr(key)

    def bad_arguments(pipe: Any) -> None:
        pipe.incr(f"{prefix}:half-queued")
        raise ValueError("refused before anything was sent")

    results = await asyncio.gather(shared.execute(incr(f"{prefix}:a")), shared.execute(incr(f"{prefix}:text")),
                                   shared.execute(bad_arguments), shared.execute(incr(f"{prefix}:a")),
                                   return_exceptions=True)
    assert results[0] == [1] and results[3] == [2]
    assert isinstance(results[1], list) and isinstance(results[1][0], ResponseError)
    assert isinstance(results[2], ValueError)


async def test_a_batch_is_sent_at_once_when_it_is_full(client: CountingRedis) -> None:
    shared = SharedPipeline(client, max_callers=4)
    prefix = client.test_prefix  # type: ignore[attr-defined]
    replies = await asyncio.gather(*(shared.execute(lambda pipe: pipe.incr(f"{prefix}:n")) for _ in range(10)))
    assert sorted(r[0] for r in replies) == list(range(1, 11))
    assert client.pipelines == 3  # 4 + 4 + the 2 left when the turn ended


async def test_a_broken_connection_fails_every_caller_of_the_batch() -> None:
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens on port 1
    shared = SharedPipeline(unreachable)
    results = await asyncio.gather(*(shared.execute(lambda pipe: pipe.ping()) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, RedisConnectionError) for result in results), results
    await unreachable.aclose()
