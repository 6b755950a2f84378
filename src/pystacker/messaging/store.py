"""The SQL of messages and delivery cursors: batch inserts by the flusher, reads for history and catch-up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pystacker.db.schema import (
    chat_messages,
    chat_rooms,
    hidden_messages,
    message_reactions,
    room_cursors,
    room_members,
)
from pystacker.db.sqlutil import insert_ignoring_duplicates, utcnow
from pystacker.engine.base import LogEnd
from pystacker.messaging.events import EDIT, EVENT_TYPES, RECALL, blank_edit, event_target
from pystacker.messaging.model import StoredMessage

# Answers whether a message is still on its way to SQL (the engine's unflushed index).
PendingCheck = Callable[[int], Awaitable[bool]]


class TargetNotFlushed(Exception):
    """A room event of the batch is about a message that another batch has not written yet: the
    batch waits (it is handed out again later) so that an event is never applied before its target."""


class TooManyReactions(Exception):
    """The message has the most distinct emoji it may have."""


def _to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def _to_ms(value: datetime) -> int:
    return int(value.replace(tzinfo=UTC).timestamp() * 1000)


_COLUMNS = (chat_messages.c.id, chat_messages.c.room_id, chat_messages.c.seq, chat_messages.c.sender_id,
            chat_messages.c.type, chat_messages.c.content, chat_messages.c.created_at, chat_messages.c.client_msg_id,
            chat_messages.c.reply_to, chat_messages.c.edited_at, chat_messages.c.recalled_by,
            chat_messages.c.recalled_at, chat_messages.c.msg_no)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_ms(value: datetime | None) -> int | None:
    return None if value is None else _to_ms(value)


def _row_to_message(row: Any) -> StoredMessage:
    try:
        content = orjson.loads(row[5])
    except orjson.JSONDecodeError:
        content = {"text": row[5]}  # a row written by something else than PyStacker
    return StoredMessage(msg_id=int(row[0]), room_id=int(row[1]), seq=int(row[2]), sender_id=int(row[3]), type=row[4],
                         content=content, created_at_ms=_to_ms(row[6]), client_msg_id=row[7],
                         reply_to=_optional_int(row[8]), edited_at_ms=_optional_ms(row[9]),
                         recalled_by=_optional_int(row[10]), recalled_at_ms=_optional_ms(row[11]),
                         msg_no=int(row[12]))


def _row(m: StoredMessage) -> dict[str, Any]:
    return {"id": m.msg_id, "room_id": m.room_id, "seq": m.seq, "sender_id": m.sender_id, "type": m.type,
            "content": orjson.dumps(m.content).decode(), "client_msg_id": m.client_msg_id,
            "created_at": _to_datetime(m.created_at_ms), "reply_to": m.reply_to, "msg_no": m.msg_no,
            "target_id": event_target(m) if m.type in EVENT_TYPES else None}


class MessageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    async def insert_batch(self, messages: Sequence[StoredMessage],
                           before_commit: Callable[[], Awaitable[None]] | None = None,
                           target_pending: PendingCheck | None = None) -> None:
        """Insert in one statement; rows already there (same id, seq or client key) are skipped, so a
        batch retried after a crash, or holding one bad duplicate, never blocks the flusher. Then the
        batch's room events are applied to their messages, in seq order (TargetNotFlushed when one's
        message is still in an unwritten batch, as `target_pending` tells).
        `before_commit` runs inside the transaction after the insert: if it raises, nothing is kept."""
        if not messages:
            return
        async with self.engine.begin() as conn:
            await conn.execute(insert_ignoring_duplicates(chat_messages, self.dialect), [_row(m) for m in messages])
            events = sorted((m for m in messages if m.type in (EDIT, RECALL)), key=lambda m: (m.room_id, m.seq))
            if events:
                await self._apply_events(conn, events, target_pending)
            if before_commit is not None:
                await before_commit()

    async def _apply_events(self, conn: Any, events: list[StoredMessage], target_pending: PendingCheck | None) -> None:
        """A message's state after its edits and its recall. Each change holds only if it is newer than
        the last one applied (rev_seq), and a recall also blanks the message's edit rows: the content
        is gone from every row. An edit row written after its message was recalled is blanked too."""
        targets = {event_target(e) for e in events}
        rows = await conn.execute(select(chat_messages.c.id, chat_messages.c.recalled)
                                  .where(chat_messages.c.id.in_(list(targets))))
        recalled = {int(row[0]): bool(row[1]) for row in rows}
        for target in targets - recalled.keys():
            if target_pending is not None and await target_pending(target):
                raise TargetNotFlushed(target)
        for event in events:
            target = event_target(event)
            if target not in recalled:
                continue  # the message never reached SQL (a store that lost it): nothing to change
            newer = and_(chat_messages.c.id == target, chat_messages.c.rev_seq < event.seq)
            if event.type == EDIT:
                if recalled[target]:
                    await conn.execute(update(chat_messages).where(chat_messages.c.id == event.msg_id).values(
                        content=orjson.dumps(blank_edit(event).content).decode()))
                    continue
                new = event.content.get("content") or {}
                await conn.execute(update(chat_messages).where(newer).values(
                    type=str(new.get("type", "text")),
                    content=orjson.dumps({k: v for k, v in new.items() if k != "type"}).decode(),
                    edited_at=_to_datetime(event.created_at_ms), rev_seq=event.seq))
            else:
                await conn.execute(update(chat_messages).where(newer).values(
                    content="{}", recalled=True, recalled_by=event.sender_id,
                    recalled_at=_to_datetime(event.created_at_ms), rev_seq=event.seq))
                edits = await conn.execute(select(*_COLUMNS).where(and_(
                    chat_messages.c.target_id == target, chat_messages.c.type == EDIT)))
                for edit in [_row_to_message(row) for row in edits]:
                    await conn.execute(update(chat_messages).where(chat_messages.c.id == edit.msg_id).values(
                        content=orjson.dumps(blank_edit(edit).content).decode()))
                recalled[target] = True

    async def read(self, room_id: int, after_seq: int, limit: int, before_seq: int | None = None) -> list[StoredMessage]:
        """Messages with after_seq < seq (< before_seq), ascending."""
        condition = and_(chat_messages.c.room_id == room_id, chat_messages.c.seq > after_seq)
        if before_seq is not None:
            condition = and_(condition, chat_messages.c.seq < before_seq)
        query = select(*_COLUMNS).where(condition).order_by(chat_messages.c.seq).limit(limit)
        async with self.engine.connect() as conn:
            return [_row_to_message(r) for r in await conn.execute(query)]

    async def by_id(self, msg_id: int) -> StoredMessage | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(chat_messages.c.id == msg_id))).first()
        return _row_to_message(row) if row else None

    # -- reactions and hidden messages (written when they are made) -------------------------------------

    async def set_reaction(self, message_id: int, room_id: int, user_id: int, emoji: str, on: bool, *,
                           max_emoji: int) -> tuple[bool, int]:
        """Add or remove one user's emoji on a message: (whether that changed anything, the emoji's
        count now). TooManyReactions when it would be the message's max_emoji + 1st distinct emoji."""
        is_this = and_(message_reactions.c.message_id == message_id, message_reactions.c.user_id == user_id,
                       message_reactions.c.emoji == emoji)
        async with self.engine.begin() as conn:
            held = [(str(row[0]), int(row[1])) for row in await conn.execute(
                select(message_reactions.c.emoji, message_reactions.c.user_id)
                .where(message_reactions.c.message_id == message_id))]
            mine = (emoji, user_id) in held
            if on and not mine:
                if emoji not in {e for e, _ in held} and len({e for e, _ in held}) >= max_emoji:
                    raise TooManyReactions(message_id)
                await conn.execute(insert_ignoring_duplicates(message_reactions, self.dialect), [{
                    "message_id": message_id, "user_id": user_id, "emoji": emoji, "room_id": room_id,
                    "created_at": utcnow()}])
            elif not on and mine:
                await conn.execute(message_reactions.delete().where(is_this))
            changed = on != mine
            count = (await conn.execute(select(func.count()).select_from(message_reactions).where(and_(
                message_reactions.c.message_id == message_id, message_reactions.c.emoji == emoji)))).scalar()
        return changed, int(count or 0)

    async def reactions_of(self, message_ids: Sequence[int], viewer: int) -> dict[int, list[dict[str, Any]]]:
        """Each message's reactions: per emoji its count and whether `viewer` is among them, in the
        order each emoji first came."""
        if not message_ids:
            return {}
        query = (select(message_reactions.c.message_id, message_reactions.c.emoji, message_reactions.c.user_id)
                 .where(message_reactions.c.message_id.in_(list(message_ids)))
                 .order_by(message_reactions.c.created_at, message_reactions.c.user_id))
        found: dict[int, dict[str, dict[str, Any]]] = {}
        async with self.engine.connect() as conn:
            for message_id, emoji, user_id in await conn.execute(query):
                entry = found.setdefault(int(message_id), {}).setdefault(emoji, {"emoji": emoji, "count": 0, "me": False})
                entry["count"] += 1
                entry["me"] = entry["me"] or int(user_id) == viewer
        return {message_id: list(by_emoji.values()) for message_id, by_emoji in found.items()}

    async def clear_reactions(self, message_id: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(message_reactions.delete().where(message_reactions.c.message_id == message_id))

    async def hide(self, user_id: int, message_id: int, room_id: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert_ignoring_duplicates(hidden_messages, self.dialect), [{
                "user_id": user_id, "message_id": message_id, "room_id": room_id, "hidden_at": utcnow()}])

    async def hidden_among(self, user_id: int, message_ids: Sequence[int]) -> set[int]:
        if not message_ids:
            return set()
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(hidden_messages.c.message_id).where(and_(
                hidden_messages.c.user_id == user_id, hidden_messages.c.message_id.in_(list(message_ids)))))
            return {int(row[0]) for row in rows}

    async def log_end(self, room_id: int) -> LogEnd:
        """Where SQL's copy of the room's log ends (the engine's counters are seeded from it)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(chat_messages.c.seq, chat_messages.c.msg_no)
                                      .where(chat_messages.c.room_id == room_id)
                                      .order_by(chat_messages.c.seq.desc()).limit(1))).first()
        return LogEnd(0, 0) if row is None else LogEnd(int(row[0]), int(row[1]))

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
