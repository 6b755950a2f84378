"""Write-behind of messages and cursors to SQL.

A batch is taken from the engine, inserted in one statement, then confirmed; a flusher that dies
between take and confirm leaves the batch to be handed out again (spec 13.2 #23: GoStacker's LPOP
lost it), and rows SQL already has are skipped, so a retried or duplicate batch never blocks the
queue. It loops at once while batches come full and waits `idle_interval` when there is nothing.
"""

from __future__ import annotations

import asyncio
import logging

from pystacker.engine.base import Engine
from pystacker.messaging.store import MessageStore
from pystacker.observability import metrics

log = logging.getLogger("pystacker.flusher")


class MessageFlusher:
    def __init__(self, engine: Engine, store: MessageStore, *, batch_size: int = 500,
                 idle_interval: float = 0.2, error_backoff: float = 1.0) -> None:
        self.engine = engine
        self.store = store
        self.batch_size = batch_size
        self.idle_interval = idle_interval
        self.error_backoff = error_backoff
        self.flushed = 0
        self.failures = 0

    async def flush_messages_once(self) -> int:
        batch = await self.engine.messages.take_batch(self.batch_size)
        if batch is None:
            return 0
        await self.store.insert_batch(batch.messages)
        await self.engine.messages.confirm_batch(batch.token)
        self.flushed += len(batch.messages)
        metrics.FLUSHER_BATCH_SIZE.observe(len(batch.messages))
        metrics.FLUSHER_MESSAGES.inc(len(batch.messages))
        return len(batch.messages)

    async def flush_cursors_once(self) -> int:
        # A failed save leaves SQL's copy behind; the engine still has the cursors, and an old SQL copy
        # only means a few messages sent twice after an engine restart, never a lost one.
        cursors = await self.engine.cursors.take_dirty(self.batch_size)
        await self.store.save_cursors(cursors)
        metrics.FLUSHER_CURSORS.inc(len(cursors))
        return len(cursors)

    async def flush_all(self) -> None:
        """Everything now (graceful stop)."""
        while await self.flush_messages_once() or await self.flush_cursors_once():
            pass

    async def _flush_once(self) -> int:
        return await self.flush_messages_once() + await self.flush_cursors_once()

    async def run(self) -> None:
        while True:
            # A stop (cancel) must not cut a flush in half: a write cancelled inside its SQLite
            # transaction leaves the connection holding the database's write lock, so the final
            # flush_all waited the 30 s busy timeout and then failed (the messages stayed only in
            # memory). The flush runs shielded; a cancel lets it finish, then stops the loop.
            step = asyncio.ensure_future(self._flush_once())
            try:
                moved = await asyncio.shield(step)
            except asyncio.CancelledError:
                await asyncio.gather(step, return_exceptions=True)
                raise
            except Exception:
                self.failures += 1
                metrics.FLUSHER_FAILURES.inc()
                log.exception("flush failed; the batch is handed out again later")
                await asyncio.sleep(self.error_backoff)
                continue
            if moved < self.batch_size:
                await asyncio.sleep(self.idle_interval)
