"""Write-behind of messages, delivery cursors (users' and named devices'), read marks and rosters
(memberships) to SQL; and the forgetting of devices not seen for `limits.device_ttl`.

A batch is taken from the engine, inserted in one statement, then confirmed; a flusher that dies
between take and confirm leaves the batch to be handed out again (compatibility.md #23: GoStacker's LPOP
lost it), and rows SQL already has are skipped, so a retried or duplicate batch never blocks the
queue. It loops at once while batches come full and waits `idle_interval` when there is nothing.
Rosters are written every `roster_interval` seconds (GoStacker's group_cache.flush_interval_seconds):
readers never need SQL's copy of a roster that is cached, so it may lag a little. Devices unseen
for the TTL are looked for every `device_sweep_interval` seconds, first at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TypedDict

from pystacker.config import Config
from pystacker.engine.base import Engine, FlushBatch
from pystacker.messaging.devices import DeviceStore
from pystacker.messaging.rosters import RosterFlusher, RosterSQL
from pystacker.messaging.store import MessageStore, TargetNotFlushed
from pystacker.observability import metrics

log = logging.getLogger("pystacker.flusher")

# Message batches a cursor flush may write to catch up with the queue before it saves the cursors.
CURSOR_DRAIN_ROUNDS = 20


DEVICE_SWEEP_INTERVAL = 3600.0


class FlusherSettings(TypedDict):
    """The MessageFlusher arguments the config sets (GoStacker's group_cache block, limits.device_ttl)."""

    roster_interval: float
    roster_batch_size: int
    device_ttl: float


def flusher_settings(config: Config) -> FlusherSettings:
    return {"roster_interval": config.group_cache.flush_interval_seconds,
            "roster_batch_size": config.group_cache.batch_size, "device_ttl": config.limits.device_ttl}


class _BatchForgotten(Exception):
    """The engine no longer knows a batch the flusher took (see flush_messages_once)."""


class MessageFlusher:
    def __init__(self, engine: Engine, store: MessageStore, *, batch_size: int = 500,
                 idle_interval: float = 0.2, error_backoff: float = 1.0, roster_interval: float = 5.0,
                 roster_batch_size: int = 100, device_ttl: float = 30 * 86400,
                 device_sweep_interval: float = DEVICE_SWEEP_INTERVAL) -> None:
        self.engine = engine
        self.store = store
        self.batch_size = batch_size
        self.idle_interval = idle_interval
        self.error_backoff = error_backoff
        self.rosters = RosterFlusher(engine, RosterSQL(store.engine), batch_size=roster_batch_size)
        self.roster_interval = roster_interval
        self._next_roster_flush = 0.0  # time.monotonic()
        self.devices = DeviceStore(store.engine)
        self.device_ttl = device_ttl
        self.device_sweep_interval = device_sweep_interval
        self._next_device_sweep = 0.0  # time.monotonic()
        self.flushed = 0
        self.failures = 0
        self._unfinished: FlushBatch | None = None  # taken, not yet confirmed: the next round retries it
        # Taken from the engine, not yet in SQL: delivery cursors and read marks.
        self._unsaved_cursors: list[tuple[int, int, int]] = []
        self._unsaved_read_marks: list[tuple[int, int, int]] = []
        self._unsaved_device_cursors: list[tuple[int, int, int]] = []

    async def flush_messages_once(self) -> int:
        # A batch whose insert or confirm failed (SQL or Redis unreachable) is tried again first.
        # Taking a new one instead left it pending until the claim timeout handed it out again: after
        # a database outage, its messages reached SQL only 30 s after the database was back.
        batch = self._unfinished or await self.engine.messages.take_batch(self.batch_size)
        if batch is None:
            return 0
        self._unfinished = batch

        async def still_taken() -> None:
            # Checked inside the transaction, before its commit. A Redis restarted without persistence
            # has forgotten the batch and re-seeds the seq counters of its rooms from SQL: committing
            # these rows after that would give their seqs to two messages (SQL keeps one, and the
            # other one, sent after the restart and maybe already delivered, would never be stored).
            if not await self.engine.messages.batch_pending(batch.token):
                raise _BatchForgotten()

        async def target_pending(msg_id: int) -> bool:
            return await self.engine.messages.unflushed_by_id(msg_id) is not None

        try:
            await self.store.insert_batch(batch.messages, before_commit=still_taken, target_pending=target_pending)
        except TargetNotFlushed as exc:
            # Its message is in a batch a flusher took and did not confirm (it died): that batch is
            # handed out again first, after the claim timeout, and this one after it.
            self._unfinished = None
            log.warning("a room event's message is not in SQL yet: the batch waits for it",
                        extra={"msg_id": exc.args[0], "messages": len(batch.messages)})
            return 0
        except _BatchForgotten:
            self._unfinished = None
            log.warning("the engine no longer holds this batch (a store restart lost it, or another flusher "
                        "confirmed it): not written", extra={"messages": len(batch.messages)})
            return 0
        await self.engine.messages.confirm_batch(batch.token)
        self._unfinished = None
        self.flushed += len(batch.messages)
        metrics.FLUSHER_BATCH_SIZE.observe(len(batch.messages))
        metrics.FLUSHER_MESSAGES.inc(len(batch.messages))
        return len(batch.messages)

    async def flush_cursors_once(self) -> int:
        # An old SQL copy of a cursor only means a few messages sent twice after an engine restart; a
        # copy AHEAD of SQL's messages meant lost ones: after a Redis restart that lost the unflushed
        # messages, the rooms' seqs continue from SQL's last one, and a catch-up from such a cursor
        # skipped the new messages that took the lost ones' seqs. So the cursors are taken first, then
        # the message queue is flushed up to now (every message a taken cursor counts was appended
        # before the cursor moved), and only then are the cursors saved. Cursors not saved (a failure,
        # a backlog that did not drain) are kept for the next round. Read marks follow the same rule
        # for the same reason: a read mark ahead of SQL's messages would count the lost seqs' new
        # messages as read.
        cursors = self._unsaved_cursors + await self.engine.cursors.take_dirty(self.batch_size)
        self._unsaved_cursors = cursors
        read_marks = self._unsaved_read_marks + await self.engine.read_marks.take_dirty(self.batch_size)
        self._unsaved_read_marks = read_marks
        device_cursors = self._unsaved_device_cursors + await self.engine.device_cursors.take_dirty(self.batch_size)
        self._unsaved_device_cursors = device_cursors
        if not cursors and not read_marks and not device_cursors:
            return 0
        for _ in range(CURSOR_DRAIN_ROUNDS):
            if await self.flush_messages_once() < self.batch_size:
                break
        else:
            return 0  # a backlog of messages: these cursors wait for it
        await self.store.save_cursors(cursors)
        self._unsaved_cursors = []
        await self.store.save_read_marks(read_marks)
        self._unsaved_read_marks = []
        await self.devices.save_cursors(device_cursors)
        self._unsaved_device_cursors = []
        metrics.FLUSHER_CURSORS.inc(len(cursors) + len(device_cursors))
        metrics.FLUSHER_READ_MARKS.inc(len(read_marks))
        return len(cursors) + len(read_marks) + len(device_cursors)

    async def forget_unseen_devices(self) -> int:
        """Devices not seen for device_ttl go, with their cursors in SQL and in the engine."""
        keys = await self.devices.forget_unseen(int(self.device_ttl))
        if keys:
            await self.engine.device_cursors.forget(keys)
            log.info("forgot devices not seen for %ds", int(self.device_ttl), extra={"devices": len(keys)})
        return len(keys)

    async def flush_rosters_once(self) -> int:
        return await self.rosters.flush_once()

    async def flush_all(self) -> None:
        """Everything now (graceful stop)."""
        while (await self.flush_messages_once() or await self.flush_cursors_once()
               or await self.flush_rosters_once()):
            pass

    async def _flush_once(self) -> int:
        moved = await self.flush_messages_once() + await self.flush_cursors_once()
        if time.monotonic() >= self._next_roster_flush:
            while await self.flush_rosters_once() >= self.rosters.batch_size:
                pass  # a full batch: more rooms wait
            self._next_roster_flush = time.monotonic() + self.roster_interval
        if time.monotonic() >= self._next_device_sweep:
            self._next_device_sweep = time.monotonic() + self.device_sweep_interval
            await self.forget_unseen_devices()
        return moved

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
