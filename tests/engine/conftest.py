"""The engine contract suite: every test runs once per backend in BACKENDS.

Adding a backend is one entry: a function that opens an engine for given settings and seq seed, and
one that cleans up after the test; `needs` names a session fixture (e.g. a running server) whose value
the opener gets. Tests use fresh random gateway, room, user and channel ids, so backends whose store
outlives an engine (Redis) can share one store between tests and runs; the only global structures of
the contract (the flush queue, the dirty cursors) are drained by the tests that inspect them. The
Redis backends give each engine its own key prefix besides, and delete its keys afterwards.

Redis must run on 127.0.0.1:6379, and redis-server / redis-cli must be installed for the cluster
backend: without them the Redis tests fail (they are never skipped). The cluster itself is the session
fixture `redis_cluster` of tests/conftest.py, shared with the distributed tests (its ports are fixed).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from pystacker.config import RedisConfig
from pystacker.engine.base import Engine, EngineSettings, SeqSeed
from pystacker.engine.memory import MemoryEngine
from pystacker.engine.redis_engine import RedisEngine, make_client, make_subscriber
from tests.engine.redis_servers import REDIS_HOST, REDIS_PORT, LocalCluster
from tests.engine.support import OpenEngine, zero_seed


@dataclass(frozen=True)
class Backend:
    open: Callable[[EngineSettings, SeqSeed, Any], Awaitable[Engine]]
    cleanup: Callable[[Engine], Awaitable[None]]  # after each test, for every engine it opened
    needs: str | None = None  # a session fixture whose value `open` gets as its third argument


async def _open_memory(settings: EngineSettings, seq_seed: SeqSeed, _: Any) -> Engine:
    return MemoryEngine(settings, seq_seed)


async def _close(engine: Engine) -> None:
    await engine.close()


def _test_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


async def _open_redis(settings: EngineSettings, seq_seed: SeqSeed, _: Any) -> Engine:
    # The service's own client factory: pools and timeouts as in production.
    client = make_client(RedisConfig(host=REDIS_HOST, port=REDIS_PORT))
    return RedisEngine(settings, seq_seed, client=client, prefix=_test_prefix(), owns_clients=True)


async def _open_redis_cluster(settings: EngineSettings, seq_seed: SeqSeed, cluster: LocalCluster) -> Engine:
    config = RedisConfig(host=cluster.host, port=cluster.port, cluster=True)
    client = make_client(config)
    await client.initialize()  # redis-py needs it before concurrent use (see RedisEngine)
    return RedisEngine(settings, seq_seed, client=client, subscriber=make_subscriber(config, client),
                       prefix=_test_prefix(), owns_clients=True)


async def delete_prefixed_keys(client: Redis | RedisCluster, prefix: str) -> None:
    """Every key under the prefix: plain ones (`<prefix>...`) and hash-tagged ones (`{<prefix>...`)."""
    for pattern in (f"{prefix}*", f"{{{prefix}*"):
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        for key in keys:  # one by one: on a cluster they live in different slots
            await client.delete(key)


async def _cleanup_redis(engine: Engine) -> None:
    assert isinstance(engine, RedisEngine)
    await delete_prefixed_keys(engine.client, engine.keys.prefix)
    await engine.close()


DEFAULT_SETTINGS = EngineSettings()

BACKENDS: dict[str, Backend] = {
    "memory": Backend(open=_open_memory, cleanup=_close),
    "redis": Backend(open=_open_redis, cleanup=_cleanup_redis),
    "redis-cluster": Backend(open=_open_redis_cluster, cleanup=_cleanup_redis, needs="redis_cluster"),
}
REDIS_BACKENDS = [name for name in BACKENDS if name.startswith("redis")]


async def _engines_of(request: pytest.FixtureRequest, name: str) -> AsyncIterator[OpenEngine]:
    backend = BACKENDS[name]
    resource = request.getfixturevalue(backend.needs) if backend.needs else None
    opened: list[Engine] = []

    async def open_engine(settings: EngineSettings = DEFAULT_SETTINGS, seq_seed: SeqSeed = zero_seed) -> Engine:
        engine = await backend.open(settings, seq_seed, resource)
        opened.append(engine)
        return engine

    yield open_engine
    for engine in opened:
        await backend.cleanup(engine)


@pytest.fixture(params=list(BACKENDS))
async def open_engine(request: pytest.FixtureRequest) -> AsyncIterator[OpenEngine]:
    """Opens engines of one backend with the settings a test needs; cleans all of them up afterwards."""
    async for opener in _engines_of(request, request.param):
        yield opener


@pytest.fixture(params=REDIS_BACKENDS)
async def open_redis_engine(request: pytest.FixtureRequest) -> AsyncIterator[OpenEngine]:
    """The same, for the Redis backends only (tests of Redis-specific behaviour)."""
    async for opener in _engines_of(request, request.param):
        yield opener


@pytest.fixture
async def engine(open_engine: OpenEngine) -> Engine:
    """An engine with the default settings and a seq seed of 0."""
    return await open_engine()
