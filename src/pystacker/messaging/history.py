"""Reading a room's messages by seq: the engine's recent window first, SQL for what it no longer holds.

Used by the gateway (catch-up on connect, gap fill, `sync` frames) and by send's history route.
Identical concurrent reads (a reconnect storm asking for the same room range) share one query.
"""

from __future__ import annotations

import asyncio

from pystacker.engine.base import MessageLog, StoredMessage
from pystacker.messaging.store import MessageStore


class History:
    def __init__(self, log: MessageLog, store: MessageStore) -> None:
        self.log = log
        self.store = store
        self._inflight: dict[tuple[int, int, int], asyncio.Future[list[StoredMessage]]] = {}

    async def after(self, room_id: int, after_seq: int, limit: int) -> list[StoredMessage]:
        """Up to `limit` messages with seq > after_seq, ascending, with no hole."""
        key = (room_id, after_seq, limit)
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[list[StoredMessage]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._read_after(room_id, after_seq, limit)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) get it, nobody else must
            raise
        finally:
            del self._inflight[key]

    async def _read_after(self, room_id: int, after_seq: int, limit: int) -> list[StoredMessage]:
        window_start = await self.log.window_start(room_id)
        messages: list[StoredMessage] = []
        if after_seq + 1 < window_start:
            # The head of the range is older than the window: SQL has it (the window keeps all unflushed).
            messages = await self.store.read(room_id, after_seq, limit, before_seq=window_start)
        if len(messages) < limit:
            last = messages[-1].seq if messages else after_seq
            messages += await self.log.read(room_id, last, limit - len(messages))
        return _contiguous_from(after_seq + 1, messages)

    async def before(self, room_id: int, before_seq: int, limit: int) -> list[StoredMessage]:
        """The `limit` newest messages with seq < before_seq, ascending (paging back through history)."""
        after_seq = max(before_seq - 1 - limit, 0)
        messages = await self.after(room_id, after_seq, limit)
        return [m for m in messages if m.seq < before_seq]




def _contiguous_from(first_seq: int, messages: list[StoredMessage]) -> list[StoredMessage]:
    """The run of messages that continues first_seq without a hole (the window may move while read)."""
    for index, message in enumerate(messages):
        if message.seq != first_seq + index:
            return messages[:index]
    return messages
