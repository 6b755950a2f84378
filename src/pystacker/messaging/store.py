"""The SQL of messages and delivery cursors: batch inserts by the flusher, reads for history and catch-up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from datetime import datetime, timezone

import orjson
from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pystacker.db.schema import chat_messages, chat_rooms, room_cursors, room_members
from pystacker.db.sqlutil import insert_ignoring_duplicates, utcnow
from pystacker.engine.base import StoredMessage


def _to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).replace(tzinfo=None)


def _to_ms(value: datetime) -> int:
    return int(value.replace(tzinfo=timezone.utc).timestamp() * 1000)


_COLUMNS = (chat_messages.c.id, chat_messages.c.room_id, chat_messages.c.seq, chat_messages.c.sender_id,
            chat_messages.c.type, chat_messages.c.content, chat_messages.c.created_at, chat_messages.c.client_msg_id)


def _row_to_message(row) -> StoredMessage:  # type: ignore[no-untyped-def]
    try:
        content = orjson.loads(row[5])
    except orjson.JSONDecodeError:
        content = {"text": row[5]}  # a row written by something else than PyStacker
    return StoredMessage(int(row[0]), int(row[1]), int(row[2]), int(row[3]), row[4], content,
                         _to_ms(row[6]), row[7])


class MessageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    async def insert_batch(self, messages: Sequence[StoredMessage],
                           before_commit: Callable[[], Awaitable[None]] | None = None) -> None:
        """Insert in one statement; rows already there (same id, seq or client key) are skipped, so a
        batch retried after a crash, or holding one bad duplicate, never blocks the flusher.
        `before_commit` runs inside the transaction after the insert: if it raises, nothing is kept."""
        if not messages:
            return
        rows = [{"id": m.msg_id, "room_id": m.room_id, "seq": m.seq, "sender_id": m.sender_id, "type": m.type,
                 "content": orjson.dumps(m.content).decode(), "client_msg_id": m.client_msg_id,
                 "created_at": _to_datetime(m.created_at_ms)} for m in messages]
        async with self.engine.begin() as conn:
            await conn.execute(insert_ignoring_duplicates(chat_messages, self.dialect), rows)
            if before_commit is not None:
                await before_commit()

    async def read(self, room_id: int, after_seq: int, limit: int, before_seq: int | None = None) -> list[StoredMessage]:
        """Messages with after_seq < seq (< before_seq), ascending."""
        condition = and_(chat_messages.c.room_id == room_id, chat_messages.c.seq > after_seq)
        if before_seq is not None:
            condition = and_(condition, chat_messages.c.seq < before_seq)
        query = select(*_COLUMNS).where(condition).order_by(chat_messages.c.seq).limit(limit)
        async with self.engine.connect() as conn:
            return [_row_to_message(r) for r in await conn.execute(query)]

    async def read_latest(self, room_id: int, before_seq: int, limit: int) -> list[StoredMessage]:
        """The `limit` newest messages with seq < before_seq, ascending (history pages going back)."""
        query = (select(*_COLUMNS).where(and_(chat_messages.c.room_id == room_id, chat_messages.c.seq < before_seq))
                 .order_by(chat_messages.c.seq.desc()).limit(limit))
        async with self.engine.connect() as conn:
            rows = [_row_to_message(r) for r in await conn.execute(query)]
        rows.reverse()
        return rows

    async def by_id(self, msg_id: int) -> StoredMessage | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(chat_messages.c.id == msg_id))).first()
        return _row_to_message(row) if row else None

    async def max_seq(self, room_id: int) -> int:
        async with self.engine.connect() as conn:
            value = (await conn.execute(select(func.max(chat_messages.c.seq))
                                        .where(chat_messages.c.room_id == room_id))).scalar()
        return int(value or 0)

    # -- cursors ---------------------------------------------------------------------------------

    async def save_cursors(self, cursors: Sequence[tuple[int, int, int]]) -> None:
        """(user_id, room_id, seq) of delivery cursors: insert new rows, move existing ones forward only."""
        await self._save_marks(cursors, room_cursors.c.delivered_seq)

    async def save_read_marks(self, marks: Sequence[tuple[int, int, int]]) -> None:
        """(user_id, room_id, seq) of read marks, as save_cursors does for delivery."""
        await self._save_marks(marks, room_cursors.c.read_seq)

    async def _save_marks(self, marks: Sequence[tuple[int, int, int]], column: Any) -> None:
        if not marks:
            return
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(insert_ignoring_duplicates(room_cursors, self.dialect), [
                {"user_id": u, "room_id": r, "delivered_seq": 0, "read_seq": 0, "updated_at": now}
                for u, r, _ in marks])
            # One executemany: forward-only thanks to the `column < seq` condition.
            await conn.execute(
                update(room_cursors).where(and_(
                    room_cursors.c.user_id == bindparam("u"), room_cursors.c.room_id == bindparam("r"),
                    column < bindparam("s"))).values({column.name: bindparam("s"), "updated_at": now}),
                [{"u": u, "r": r, "s": s} for u, r, s in marks])

    async def load_cursors(self, user_id: int, room_ids: Sequence[int]) -> dict[int, int]:
        return await self._load_marks(user_id, room_ids, room_cursors.c.delivered_seq)

    async def load_read_marks(self, user_id: int, room_ids: Sequence[int]) -> dict[int, int]:
        return await self._load_marks(user_id, room_ids, room_cursors.c.read_seq)

    async def _load_marks(self, user_id: int, room_ids: Sequence[int], column: Any) -> dict[int, int]:
        if not room_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(room_cursors.c.room_id, column).where(and_(
                room_cursors.c.user_id == user_id, room_cursors.c.room_id.in_(list(room_ids)))))
            return {int(r[0]): int(r[1]) for r in rows}

    async def read_marks_of_users(self, user_ids: Sequence[int], room_id: int) -> dict[int, int]:
        if not user_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(room_cursors.c.user_id, room_cursors.c.read_seq).where(and_(
                room_cursors.c.room_id == room_id, room_cursors.c.user_id.in_(list(user_ids)))))
            return {int(r[0]): int(r[1]) for r in rows}

    async def is_group(self, room_id: int) -> bool | None:
        """Whether the room is a group (False: a private room); None for no such room."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(chat_rooms.c.is_group).where(chat_rooms.c.id == room_id))).first()
            return None if row is None else bool(row[0])

    async def rooms_of(self, user_id: int) -> list[int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(room_members.c.room_id).where(room_members.c.user_id == user_id))
            return [int(r[0]) for r in rows]
