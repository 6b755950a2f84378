"""Stopping the message flusher in the middle of an SQL write (what `pystacker up` and the flusher
service do on shutdown) must leave SQLite usable, so the final flush_all stores everything."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from sqlalchemy import event, func, select

from pystacker.db.engine import create_engine
from pystacker.db.migrate import upgrade
from pystacker.db.schema import chat_messages
from pystacker.engine.base import EngineSettings, FlushBatch
from pystacker.engine.memory import MemoryRosters
from pystacker.flusher.messages import MessageFlusher
from pystacker.messaging.model import StoredMessage
from pystacker.messaging.store import MessageStore

TOTAL = 30_000
BATCH = 20_000  # big enough that the INSERT is still running in aiosqlite's thread when the cancel lands


class QueueLog:
    """The engine side of the flusher: batches handed out until confirmed."""

    def __init__(self, messages: list[StoredMessage]) -> None:
        self.queue = messages
        self.unconfirmed: dict[str, list[StoredMessage]] = {}

    async def take_batch(self, max_messages: int) -> FlushBatch | None:
        if not self.queue:
            return None
        taken, self.queue = self.queue[:max_messages], self.queue[max_messages:]
        token = f"b{len(self.unconfirmed)}-{len(self.queue)}"
        self.unconfirmed[token] = taken
        return FlushBatch(token, taken)

    async def confirm_batch(self, token: str) -> None:
        del self.unconfirmed[token]

    async def batch_pending(self, token: str) -> bool:
        return token in self.unconfirmed


class NoCursors:
    async def take_dirty(self, max_items: int) -> list[tuple[int, int, int]]:
        return []


async def test_cancel_during_an_insert_leaves_sqlite_usable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sql = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'flush.db'}")
    await upgrade(sql)
    now = int(time.time() * 1000)
    messages = [StoredMessage(msg_id=i, room_id=1, seq=i, sender_id=7, type="text", content={"text": f"m{i}"},
                              created_at_ms=now) for i in range(1, TOTAL + 1)]
    log = QueueLog(messages)
    flusher = MessageFlusher(SimpleNamespace(messages=log, cursors=NoCursors(), read_marks=NoCursors(),
                                             device_cursors=NoCursors(),
                                             rosters=MemoryRosters(EngineSettings())), MessageStore(sql),  # type: ignore[arg-type]
                             batch_size=BATCH)

    loop = asyncio.get_running_loop()
    insert_running = asyncio.Event()

    @event.listens_for(sql.sync_engine, "before_cursor_execute")
    def _started(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT"):  # runs in aiosqlite's thread, right before the INSERT
            loop.call_soon_threadsafe(insert_running.set)

    task = asyncio.create_task(flusher.run())
    await asyncio.wait_for(insert_running.wait(), 10)
    task.cancel()  # the shutdown's cancel, while the INSERT runs
    await asyncio.gather(task, return_exceptions=True)

    started = time.monotonic()
    await asyncio.wait_for(flusher.flush_all(), 20)
    assert time.monotonic() - started < 5  # no wait on a write lock left behind by the cancelled write
    assert not log.queue and not log.unconfirmed
    async with sql.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(chat_messages))).scalar()
    assert stored == TOTAL
    await sql.dispose()
