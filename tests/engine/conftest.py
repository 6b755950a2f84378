"""The engine contract suite: every test runs once per backend in BACKENDS.

Adding a backend is one entry: a function that opens an engine for given settings and seq seed, and
one that cleans up after the test. Tests use fresh random gateway, room, user and channel ids, so
backends whose store outlives an engine (Redis) can share one store between tests and runs; the only
global structures of the contract (the flush queue, the dirty cursors) are drained by the tests that
inspect them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from pystacker.engine.base import Engine, EngineSettings, SeqSeed
from pystacker.engine.memory import MemoryEngine
from tests.engine.support import OpenEngine, zero_seed


@dataclass(frozen=True)
class Backend:
    open: Callable[[EngineSettings, SeqSeed], Awaitable[Engine]]
    cleanup: Callable[[Engine], Awaitable[None]]  # after each test, for every engine it opened


async def _open_memory(settings: EngineSettings, seq_seed: SeqSeed) -> Engine:
    return MemoryEngine(settings, seq_seed)


async def _close(engine: Engine) -> None:
    await engine.close()


DEFAULT_SETTINGS = EngineSettings()

BACKENDS: dict[str, Backend] = {
    "memory": Backend(open=_open_memory, cleanup=_close),
}


@pytest.fixture(params=list(BACKENDS))
async def open_engine(request: pytest.FixtureRequest) -> AsyncIterator[OpenEngine]:
    """Opens engines of one backend with the settings a test needs; cleans all of them up afterwards."""
    backend = BACKENDS[request.param]
    opened: list[Engine] = []

    async def open_engine(settings: EngineSettings = DEFAULT_SETTINGS, seq_seed: SeqSeed = zero_seed) -> Engine:
        engine = await backend.open(settings, seq_seed)
        opened.append(engine)
        return engine

    yield open_engine
    for engine in opened:
        await backend.cleanup(engine)


@pytest.fixture
async def engine(open_engine: OpenEngine) -> Engine:
    """An engine with the default settings and a seq seed of 0."""
    return await open_engine()
