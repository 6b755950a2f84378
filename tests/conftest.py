from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from pystacker.config import load_config
from pystacker.flusher.messages import MessageFlusher, flusher_settings
from pystacker.meta.app import build_meta_app
from pystacker.runtime import Runtime
from pystacker.web.server import Listener, Servers, bind_socket
from tests import databases
from tests.client import Http
from tests.engine.redis_servers import LocalCluster, free_cluster_ports

TEST_JWT_SECRET = "test-secret-that-is-long-enough-0123456789"


@pytest.fixture(scope="session", params=databases.selected())
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """One fresh database per kind for the whole session, dropped at the end."""
    kind = request.param
    url = await databases.create_database(kind, tmp_path_factory.mktemp(kind))
    yield url
    await databases.drop_database(kind, url)


# The suite registers and logs hundreds of users in from 127.0.0.1, some tests make a hundred rooms
# with one user, and the slow-consumer tests flood a room from one user on purpose: no send, room
# change or per-address limit here. The limits have their own tests (tests/test_security_limits.py),
# against systems with tiny ones.
TEST_LIMITS = {"login_address_rate": 0, "register_address_rate": 0, "room_change_rate": 0, "send_rate": 0}


def make_config(database_url: str, tmp_path: Path, **overrides: object):  # type: ignore[no-untyped-def]
    base = {"database": {"url": database_url}, "jwt": {"secret": TEST_JWT_SECRET},
            "data_dir": str(tmp_path), "host": "127.0.0.1", "engine": "memory", "limits": TEST_LIMITS}
    base.update(overrides)
    return load_config(None, overrides=base)


@pytest.fixture(scope="session")
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
async def meta_runtime(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Runtime]:
    # As deployed: meta over the engine's roster cache, and a flusher writing the rosters to SQL.
    runtime = Runtime(make_config(database_url, tmp_path_factory.mktemp("meta"),
                                  group_cache={"flush_interval_seconds": 0, "post_flush_ttl_seconds": 1}))
    await runtime.open_sql(migrate_to_head=True)
    await runtime.open_engine()
    flusher = MessageFlusher(runtime.engine, runtime.parts.store, **flusher_settings(runtime.config))
    flushing = asyncio.create_task(flusher.run())
    yield runtime
    flushing.cancel()
    await asyncio.gather(flushing, return_exceptions=True)
    await runtime.close()


@pytest.fixture(scope="session")
async def meta_url(meta_runtime: Runtime) -> AsyncIterator[str]:
    """The meta service on a free port of 127.0.0.1, against the session's database."""
    servers = Servers()
    await servers.start([Listener("meta", build_meta_app(meta_runtime), bind_socket("127.0.0.1", 0))])
    yield f"http://127.0.0.1:{servers.bound['meta']}"
    await servers.stop()


@pytest.fixture
def meta(meta_url: str, http_session: aiohttp.ClientSession) -> Http:
    return Http(meta_url, http_session)


@asynccontextmanager
async def embedded_system(data_dir: Path, **overrides: object):  # type: ignore[no-untyped-def]
    """The whole embedded system (`pystacker up`) in-process on free ports, with its own SQLite file
    in `data_dir`; `overrides` replace config sections (e.g. `limits`, `internal`)."""
    from pystacker.embedded import EmbeddedSystem

    config = load_config(None, overrides={
        "engine": "memory", "data_dir": str(data_dir), "host": "127.0.0.1",
        "jwt": {"secret": TEST_JWT_SECRET}, "ports": {"send": 0, "meta": 0, "registry": 0, "gateway": 0},
        "limits": TEST_LIMITS, **overrides})
    embedded = EmbeddedSystem(config)
    await embedded.start()
    try:
        yield embedded
    finally:
        await embedded.stop()


@pytest.fixture(scope="session")
async def system(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    async with embedded_system(tmp_path_factory.mktemp("embedded")) as embedded:
        yield embedded


@pytest.fixture(scope="session")
async def distributed_mariadb(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A fresh MariaDB database for the tests of deployments as processes, dropped at the end."""
    url = await databases.create_database("mariadb", tmp_path_factory.mktemp("dist-db"))
    yield url
    await databases.drop_database("mariadb", url)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-master Redis Cluster on free ports, started on first use and shared by the whole session
    (the engine contract tests and the distributed tests)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), free_cluster_ports())
    cluster.start()
    yield cluster
    cluster.stop()
