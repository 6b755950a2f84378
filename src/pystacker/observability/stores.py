"""Latency and errors of the stores, each fed in one place: every SQL statement of every engine that
db/engine.py creates (SQLAlchemy cursor events), and every call of the Redis engine's contract methods.

SQL: the `sql` monitor and `pystacker_sql_query_seconds` / `pystacker_sql_errors_total`, labelled by
the statement's kind (select, insert, update, delete, other), read from its first word, so that every
store is covered without touching its queries.

Redis: `time_engine_calls` wraps, on one engine instance, each async method of the contract interfaces
its parts are typed as (engine/base.py: `inbox.add`, `messages.append`, ...) plus `ping`. The label is
that name: a fixed set of a few dozen values, never a key. A part added to the engine is covered by
its annotation alone.

Cost per call: each wrapper binds its series once (errors when it is made, so they are at 0 from the
start; latency on the first call, so that operations a process never uses export nothing), then one
`perf_counter` pair and one `observe`.
"""

from __future__ import annotations

import inspect
import time
import typing
from typing import Any

from pystacker.observability.metrics import REDIS_CALL_SECONDS, REDIS_ERRORS, SQL_ERRORS, SQL_KINDS, SQL_QUERY_SECONDS
from pystacker.observability.monitor import MONITORS

# -- SQL --------------------------------------------------------------------------------------------

_SQL_STARTED = "pystacker_sql_started"  # conn.info key: start times of the statements in flight
_KIND_WORDS = frozenset(SQL_KINDS) - {"other"}


def statement_kind(statement: str | None) -> str:
    """select, insert, update, delete, or other, from the statement's first word. Each of the four
    words has six letters, so a slice of the head is enough (never a copy of a big statement)."""
    if not statement:
        return "other"
    word = statement[:24].lstrip()[:6].lower()
    return word if word in _KIND_WORDS else "other"


def watch_sql(sync_engine: Any) -> None:
    """Feed the `sql` monitor and the SQL metrics from every statement of an engine (SQLAlchemy events
    of the sync engine under an AsyncEngine). The start time is kept on the connection, as a stack for
    nested statements."""
    from sqlalchemy import event

    monitor = MONITORS.get("sql")
    errors = {kind: SQL_ERRORS.labels(kind) for kind in (*SQL_KINDS, "connect")}
    latency: dict[str, Any] = {}  # kind -> its histogram series, bound on the kind's first statement

    def observe(kind: str, seconds: float) -> None:
        series = latency.get(kind)
        if series is None:
            series = latency[kind] = SQL_QUERY_SECONDS.labels(kind)
        series.observe(seconds)

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _started(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        conn.info.setdefault(_SQL_STARTED, []).append(time.perf_counter())

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _finished(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        started = conn.info.get(_SQL_STARTED)
        if started:
            seconds = time.perf_counter() - started.pop()
            monitor.record(seconds, True)
            observe(statement_kind(statement), seconds)

    @event.listens_for(sync_engine, "handle_error")
    def _failed(context: Any) -> None:
        conn = context.connection
        if conn is None:
            return  # a failed connect, which _connect below has counted
        kind = statement_kind(context.statement)
        started = conn.info.get(_SQL_STARTED)
        if started:
            seconds = time.perf_counter() - started.pop()
            monitor.record(seconds, False)
            observe(kind, seconds)
        else:  # a failed commit or rollback has no statement start: a failure of no duration
            monitor.record(0.0, False)
        errors[kind].inc()

    # Failed connects are counted here, around the driver's connect, rather than in handle_error:
    # asyncpg's refused connection is a plain OSError, which never reaches handle_error. This makes
    # the connection the way SQLAlchemy would (dialect.connect), so it must stay the engine's only
    # do_connect listener that returns one.
    @event.listens_for(sync_engine, "do_connect")
    def _connect(dialect: Any, connection_record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception:
            monitor.record(0.0, False)
            errors["connect"].inc()
            raise


# -- Redis ------------------------------------------------------------------------------------------


# Calls that wait for data by design (a blocking read): their duration is not Redis's latency, so the
# `redis` monitor's average leaves them out (the histogram keeps them, under their own label).
_WAITING_CALLS = frozenset({"inbox.read_new"})


class _TimedCall:
    """One engine method, timed. Cancellation (a caller that gave up, a task stopped at shutdown) is
    neither a latency nor an error of Redis: it passes through unrecorded."""

    __slots__ = ("_call", "operation", "_errors", "_latency", "_monitor")

    def __init__(self, call: Any, operation: str) -> None:
        self._call = call
        self.operation = operation
        self._errors = REDIS_ERRORS.labels(operation)
        self._latency: Any = None
        self._monitor = None if operation in _WAITING_CALLS else MONITORS.get("redis")

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await self._call(*args, **kwargs)
        except Exception:
            self._errors.inc()
            self._observe(time.perf_counter() - started, False)
            raise
        self._observe(time.perf_counter() - started, True)
        return result

    def _observe(self, seconds: float, ok: bool) -> None:
        if self._monitor is not None:
            self._monitor.record(seconds, ok)
        latency = self._latency
        if latency is None:
            latency = self._latency = REDIS_CALL_SECONDS.labels(self.operation)
        latency.observe(seconds)

    def __repr__(self) -> str:
        return f"<timed {self.operation}: {self._call!r}>"


def contract_methods(contract: type) -> list[str]:
    """The async methods an engine interface (a Protocol of engine/base.py) declares."""
    return [name for name, value in vars(contract).items()
            if not name.startswith("_") and inspect.iscoroutinefunction(value)]


def time_engine_calls(engine: Any) -> None:
    """Time every contract method of the engine's parts, and its ping, on this instance.

    The parts are the engine class's attributes annotated with an interface (`inbox: Inbox`, ...); each
    method is replaced on the part instance by its timed wrapper, named `<part>.<method>`."""
    for part_name, contract in typing.get_type_hints(type(engine)).items():
        if not getattr(contract, "_is_protocol", False):
            continue
        part = getattr(engine, part_name)
        for method in contract_methods(contract):
            setattr(part, method, _TimedCall(getattr(part, method), f"{part_name}.{method}"))
    engine.ping = _TimedCall(engine.ping, "ping")
    engine.append_and_route = _TimedCall(engine.append_and_route, "append_and_route")
    engine.hand_on = _TimedCall(engine.hand_on, "hand_on")
