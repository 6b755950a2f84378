"""Reading a room's messages by seq: the engine's recent window first, SQL for what it no longer holds.

Used by the gateway (catch-up on connect, gap fill, `sync` frames) and by send's history route.
Identical concurrent reads (a reconnect storm asking for the same room range) share one query.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pystacker.engine.base import MessageLog
from pystacker.messaging.content import preview
from pystacker.messaging.model import StoredMessage
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

    async def at(self, room_id: int, seq: int) -> StoredMessage | None:
        """The room's entry with this seq (None: there is none)."""
        found = await self.after(room_id, seq - 1, 1)
        return found[0] if found and found[0].seq == seq else None

    async def find(self, msg_id: int) -> StoredMessage | None:
        """An entry by id, in its current state: the window's copy while it holds one (room events
        change it there at once), else SQL's (which the flusher brings up to date)."""
        unflushed = await self.log.unflushed_by_id(msg_id)
        if unflushed is not None:
            return unflushed
        stored = await self.store.by_id(msg_id)
        if stored is None:
            return None
        held = await self.log.read(stored.room_id, stored.seq - 1, 1)
        return held[0] if held and held[0].msg_id == msg_id else stored

    async def quotes(self, messages: list[StoredMessage]) -> dict[int, dict[str, Any]]:
        """The quote of the message each reply answers (by the replied-to id), in its current state."""
        wanted = {m.reply_to for m in messages if m.reply_to is not None}
        if not wanted:
            return {}
        known = {m.msg_id: m for m in messages if m.msg_id in wanted}
        missing = [msg_id for msg_id in wanted if msg_id not in known]
        for found in await asyncio.gather(*(self.find(msg_id) for msg_id in missing)):
            if found is not None:
                known[found.msg_id] = found
        return {msg_id: quote(message) for msg_id, message in known.items()}

    async def before(self, room_id: int, before_seq: int, limit: int) -> list[StoredMessage]:
        """The `limit` newest messages with seq < before_seq, ascending (paging back through history)."""
        after_seq = max(before_seq - 1 - limit, 0)
        messages = await self.after(room_id, after_seq, limit)
        return [m for m in messages if m.seq < before_seq]


def quote(message: StoredMessage) -> dict[str, Any]:
    """What a reply shows of the message it answers."""
    return {"message_id": message.msg_id, "message_id_str": str(message.msg_id), "sender_id": message.sender_id,
            "preview": preview(message), "recalled": message.recalled_by is not None}


def _contiguous_from(first_seq: int, messages: list[StoredMessage]) -> list[StoredMessage]:
    """The run of messages that continues first_seq without a hole (the window may move while read)."""
    for index, message in enumerate(messages):
        if message.seq != first_seq + index:
            return messages[:index]
    return messages
