"""The store metrics: every SQL statement is timed and its failures counted by kind (on SQLite, MariaDB
and PostgreSQL), every Redis engine call by its contract method's name, never by a key.

Both read the process's Prometheus registry: the metrics of the engines these tests open land there,
as those of a service land on its /metrics.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from pystacker.config import RedisConfig
from pystacker.db.engine import create_engine
from pystacker.engine.base import Bus, Cursors, EngineSettings, Inbox, MessageLog, Registry
from pystacker.engine.redis_engine import RedisEngine, make_client
from pystacker.observability.monitor import MONITORS
from pystacker.observability.stores import contract_methods, statement_kind, watch_sql
from tests.deployment import free_ports
from tests.engine.conftest import delete_prefixed_keys
from tests.engine.support import new_message, unique_int, unique_name, zero_seed


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Counts:
    """Samples of the registry now, to compare with later (other tests share the registry)."""

    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self.before = {(name, tuple(sorted(labels.items()))): sample(name, **labels) for name, labels in series}

    def grown(self) -> dict[tuple[str, str], float]:
        """How much each series grew, keyed by (name, the label value)."""
        return {(name, labels[0][1] if labels else ""): sample(name, **dict(labels)) - was
                for (name, labels), was in self.before.items()}


def test_statement_kinds() -> None:
    assert statement_kind("SELECT 1") == "select"
    assert statement_kind("\n   insert into t values (1)") == "insert"
    assert statement_kind("UPDATE t SET x = 1") == "update"
    assert statement_kind("DELETE FROM t") == "delete"
    assert statement_kind("CREATE TABLE t (x INT)") == "other"
    assert statement_kind("WITH x AS (SELECT 1) SELECT * FROM x") == "other"
    assert statement_kind("") == statement_kind(None) == "other"


# -- SQL ----------------------------------------------------------------------------------------------


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator:  # type: ignore[type-arg]
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


SQL_KINDS = ("select", "insert", "update", "delete", "other")


async def test_every_sql_statement_is_timed_by_kind_and_failures_are_counted(sql) -> None:  # type: ignore[no-untyped-def]
    table = f"metrics_probe_{uuid.uuid4().hex[:8]}"
    counts = Counts(*(("pystacker_sql_query_seconds_count", {"operation": k}) for k in SQL_KINDS),
                    *(("pystacker_sql_errors_total", {"operation": k}) for k in SQL_KINDS))
    async with sql.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (x INTEGER)"))
        await conn.execute(text(f"INSERT INTO {table} (x) VALUES (1)"))
        await conn.execute(text(f"INSERT INTO {table} (x) VALUES (2)"))
        await conn.execute(text(f"UPDATE {table} SET x = 3 WHERE x = 1"))
        assert (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar() == 2
        await conn.execute(text(f"DELETE FROM {table}"))
    with pytest.raises(DBAPIError):
        async with sql.connect() as conn:
            await conn.execute(text(f"SELECT x FROM {table}_missing"))
    async with sql.begin() as conn:
        await conn.execute(text(f"DROP TABLE {table}"))

    grown = counts.grown()
    # At least: the registry is the process's, and the session's systems go on writing in the
    # background (their flushers); a dialect's first connect also reads its settings with selects.
    # (test_statement_kinds pins the kind of each statement exactly.)
    assert grown["pystacker_sql_query_seconds_count", "insert"] >= 2
    assert grown["pystacker_sql_query_seconds_count", "update"] >= 1
    assert grown["pystacker_sql_query_seconds_count", "delete"] >= 1
    assert grown["pystacker_sql_query_seconds_count", "select"] >= 2  # the count, and the failed one
    assert grown["pystacker_sql_query_seconds_count", "other"] >= 2  # create, drop
    # nothing else fails meanwhile: the one failure is ours, counted once, as a select
    assert grown["pystacker_sql_errors_total", "select"] == 1
    assert sum(grown["pystacker_sql_errors_total", k] for k in SQL_KINDS) == 1


@pytest.mark.parametrize("driver", ["postgresql+asyncpg", "mysql+asyncmy"])
async def test_a_failed_connect_counts_once_as_a_connect_error(driver: str) -> None:
    """Once, whatever the driver raises: asyncmy's error goes through SQLAlchemy's error handling,
    asyncpg's refused connection does not."""
    port = free_ports(1)[0]  # nothing listens there
    engine = create_async_engine(f"{driver}://root@127.0.0.1:{port}/none")
    watch_sql(engine.sync_engine)
    before = sample("pystacker_sql_errors_total", operation="connect")
    try:
        with pytest.raises((DBAPIError, OSError)):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    assert sample("pystacker_sql_errors_total", operation="connect") == before + 1


# -- Redis --------------------------------------------------------------------------------------------


@pytest.fixture
async def redis_engine() -> AsyncIterator[RedisEngine]:
    engine = RedisEngine(EngineSettings(), zero_seed, client=make_client(RedisConfig()),
                         prefix=f"metrics-{uuid.uuid4().hex[:10]}:", owns_clients=True)
    yield engine
    await delete_prefixed_keys(engine.client, engine.keys.prefix)
    await engine.close()


def operations() -> set[str]:
    """Every operation label the Redis engine can export: its parts' contract methods, and ping."""
    parts = {"inbox": Inbox, "messages": MessageLog, "cursors": Cursors, "registry": Registry, "bus": Bus}
    return {f"{part}.{method}" for part, contract in parts.items() for method in contract_methods(contract)} | {"ping"}


async def test_each_redis_engine_call_is_timed_by_its_operation(redis_engine: RedisEngine) -> None:
    gateway = unique_name("gw")
    counts = Counts(*(("pystacker_redis_call_seconds_count", {"operation": op})
                      for op in ("messages.append", "inbox.add", "inbox.ensure_group", "ping")))
    monitor = MONITORS.get("redis")
    since = monitor.clock()
    await redis_engine.ping()
    await redis_engine.inbox.ensure_group(gateway)
    await redis_engine.messages.append(new_message(unique_int()))
    await redis_engine.messages.append(new_message(unique_int()))
    await redis_engine.inbox.add([(gateway, b"{}")])
    assert counts.grown() == {("pystacker_redis_call_seconds_count", "messages.append"): 2,
                              ("pystacker_redis_call_seconds_count", "inbox.add"): 1,
                              ("pystacker_redis_call_seconds_count", "inbox.ensure_group"): 1,
                              ("pystacker_redis_call_seconds_count", "ping"): 1}
    # the `redis` monitor got the same five calls (its raw samples: end time, duration, success)
    assert sum(1 for end, _, ok in monitor._samples if end >= since and ok) >= 5  # noqa: SLF001 (+ other engines of this process)
    # labels are operation names, a fixed set: never a key, a gateway id or a room
    exported = {s.labels["operation"] for family in REGISTRY.collect() if family.name.startswith("pystacker_redis_")
                for s in family.samples}
    assert exported, "no Redis series on the registry"
    assert all(re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", op) for op in exported), exported
    assert operations() <= exported  # the error counters exist (at 0) for every operation from the start
    assert not any(gateway in op or redis_engine.keys.prefix in op for op in exported)


async def test_a_failing_redis_call_is_counted_as_an_error_of_its_operation() -> None:
    port = free_ports(1)[0]  # nothing listens there: the connection is refused
    engine = RedisEngine(EngineSettings(), zero_seed, client=make_client(RedisConfig(port=port)),
                         prefix="never:", owns_clients=True)
    counts = Counts(("pystacker_redis_errors_total", {"operation": "registry.list_gateways"}),
                    ("pystacker_redis_call_seconds_count", {"operation": "registry.list_gateways"}))
    try:
        with pytest.raises(Exception) as raised:
            await engine.registry.list_gateways()
        assert "Connect" in type(raised.value).__name__ or "connect" in str(raised.value).lower(), raised.value
    finally:
        await engine.close()
    assert counts.grown() == {("pystacker_redis_errors_total", "registry.list_gateways"): 1,
                              ("pystacker_redis_call_seconds_count", "registry.list_gateways"): 1}
    assert MONITORS.get("redis")._samples[-1][2] is False  # noqa: SLF001 - recorded as a failure


async def test_a_cancelled_redis_call_is_neither_an_error_nor_a_latency(redis_engine: RedisEngine) -> None:
    gateway = unique_name("gw")
    await redis_engine.inbox.ensure_group(gateway)
    counts = Counts(("pystacker_redis_errors_total", {"operation": "inbox.read_new"}),
                    ("pystacker_redis_call_seconds_count", {"operation": "inbox.read_new"}))
    # The read waits for an entry that never comes; the caller gives up first (as at a gateway's stop).
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(redis_engine.inbox.read_new(gateway, "c", 10, block_ms=5000), timeout=0.3)
    assert counts.grown() == {("pystacker_redis_errors_total", "inbox.read_new"): 0,
                              ("pystacker_redis_call_seconds_count", "inbox.read_new"): 0}
