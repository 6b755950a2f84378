"""Room memberships through the write-back cache: read and change them in the engine, write them to SQL.

The engine holds each room's roster (members with role, nickname, join time, and a version); meta
changes it and every reader reads it, and the flusher writes dirty rosters to `room_members`. SQL is
only read to load a roster that is not cached, and only written by the flusher (and by room creation,
which writes the room and its first members in one transaction before anyone can see the room).

Fixed against GoStacker's cache (compatibility.md #27-#29): a change applies to the whole roster as loaded from
SQL, never to a partial set; the flusher writes the difference between the roster and SQL, so roles,
nicknames and join times survive; versions make a concurrent change retry instead of being lost, and a
slower flusher can never write an older roster over a newer one (room.members_version).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pystacker.db.schema import chat_rooms, room_members
from pystacker.engine.base import Engine, Roster, RosterConflict, RosterEntry
from pystacker.observability import metrics

log = logging.getLogger("pystacker.rosters")

# A change retries when another process's change came between its read and its write (changes in one
# process queue per room instead); this many times in a row means the room is changing faster than we
# can keep up with: the caller answers 503.
MAX_ATTEMPTS = 10
RETRY_PAUSE = 0.005  # seconds, times the attempt number, with jitter: racing processes fall out of step
# A consistent load (version, members, version again) retries this often if a flush keeps landing.
LOAD_ATTEMPTS = 5

Result = TypeVar("Result")


class MembershipBusy(Exception):
    """A change lost the race MAX_ATTEMPTS times in a row."""


def to_unix(value: datetime) -> float:
    return value.replace(tzinfo=UTC).timestamp()


def from_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


@dataclass(slots=True)
class RosterChange(Generic[Result]):
    """What a decision wants done to a roster, and what it answers its caller."""

    result: Result
    put: dict[int, RosterEntry] = field(default_factory=dict)
    remove: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.put and not self.remove


class RosterSQL:
    """room_members and chat_rooms.members_version: the rosters as SQL keeps them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    async def load(self, room_id: int) -> Roster | None:
        """The room's roster, None if the room does not exist. Read as version, members, version again:
        equal versions mean no flush committed in between, so the members belong to that version."""
        async with self.engine.connect() as conn:
            for _ in range(LOAD_ATTEMPTS):
                before = await self._version(conn, room_id)
                if before is None:
                    return None
                rows = await conn.execute(select(
                    room_members.c.user_id, room_members.c.role, room_members.c.nickname, room_members.c.joined_at,
                ).where(room_members.c.room_id == room_id))
                members = {int(r[0]): RosterEntry(int(r[1]), r[2], to_unix(r[3])) for r in rows}
                if await self._version(conn, room_id) == before:
                    return Roster(members, before)
                await conn.rollback()  # a new snapshot for the next attempt (REPEATABLE READ databases)
        raise MembershipBusy(room_id)

    @staticmethod
    async def _version(conn: AsyncConnection, room_id: int) -> int | None:
        row = (await conn.execute(select(chat_rooms.c.members_version).where(chat_rooms.c.id == room_id))).first()
        return int(row[0]) if row else None

    async def write(self, room_id: int, roster: Roster) -> bool:
        """Make room_members hold the roster, in one transaction, if SQL holds an older version.
        False when SQL already holds this version or a newer one (another flusher was first)."""
        async with self.engine.begin() as conn:
            # The room row's lock orders concurrent flushes of the room; the loser finds the version moved.
            claimed = await conn.execute(update(chat_rooms).where(and_(
                chat_rooms.c.id == room_id, chat_rooms.c.members_version < roster.version,
            )).values(members_version=roster.version))
            if claimed.rowcount == 0:
                return False
            rows = await conn.execute(select(room_members.c.user_id, room_members.c.role, room_members.c.nickname)
                                      .where(room_members.c.room_id == room_id))
            stored = {int(r[0]): (int(r[1]), r[2]) for r in rows}
            gone = [uid for uid in stored if uid not in roster.members]
            new = [(uid, e) for uid, e in roster.members.items() if uid not in stored]
            changed = [(uid, e) for uid, e in roster.members.items()
                       if uid in stored and stored[uid] != (e.role, e.nickname)]
            if gone:
                await conn.execute(delete(room_members).where(and_(
                    room_members.c.room_id == room_id, room_members.c.user_id.in_(gone))))
            if new:
                await conn.execute(room_members.insert(), [
                    {"room_id": room_id, "user_id": uid, "role": e.role, "nickname": e.nickname,
                     "joined_at": from_unix(e.joined_at)} for uid, e in new])
            if changed:
                await conn.execute(update(room_members).where(and_(
                    room_members.c.room_id == room_id, room_members.c.user_id == bindparam("uid"),
                )).values(role=bindparam("new_role"), nickname=bindparam("new_nickname")), [
                    {"uid": uid, "new_role": e.role, "new_nickname": e.nickname} for uid, e in changed])
        return True


class RosterBook:
    """Rosters for the services: read from the engine, loaded from SQL on a miss, changed by decisions
    that are retried on a race."""

    def __init__(self, engine: Engine, sql: RosterSQL) -> None:
        self.engine = engine
        self.sql = sql
        self._loading: dict[int, asyncio.Task[Roster | None]] = {}
        # Rooms with changes in progress in this process: a lock and how many hold or wait for it.
        self._changing: dict[int, tuple[asyncio.Lock, list[int]]] = {}

    async def roster(self, room_id: int) -> Roster | None:
        """None if the room does not exist."""
        cached = await self.engine.rosters.get(room_id)
        if cached is not None:
            return cached
        task = self._loading.get(room_id)
        if task is None:  # one SQL load per room however many callers miss at once
            task = asyncio.create_task(self._load(room_id))
            self._loading[room_id] = task
            task.add_done_callback(lambda _: self._loading.pop(room_id, None))
        return await asyncio.shield(task)

    async def _load(self, room_id: int) -> Roster | None:
        stored = await self.sql.load(room_id)
        if stored is None:
            return None
        return await self.engine.rosters.load(room_id, stored)

    async def role_of(self, room_id: int, user_id: int) -> int | None:
        roster = await self.roster(room_id)
        entry = roster.members.get(user_id) if roster is not None else None
        return entry.role if entry is not None else None

    async def change(self, room_id: int, decide: Callable[[Roster], RosterChange[Result]]) -> Result:
        """Read the roster, let `decide` check permissions and say what to change (it raises to refuse),
        and apply that to the version it saw; if another change came first, decide again on the new
        roster. LookupError if the room does not exist."""
        lock, users = self._changing.setdefault(room_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                return await self._change(room_id, decide)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._changing[room_id]  # do not keep a lock for every room ever changed

    async def _change(self, room_id: int, decide: Callable[[Roster], RosterChange[Result]]) -> Result:
        for attempt in range(MAX_ATTEMPTS):
            roster = await self.roster(room_id)
            if roster is None:
                raise LookupError(room_id)
            change = decide(roster)
            if change.empty:
                return change.result
            try:
                await self.engine.rosters.change(room_id, roster.version, change.put, change.remove)
            except RosterConflict:
                await asyncio.sleep(RETRY_PAUSE * (attempt + 1) * random.uniform(0.5, 1.5))
                continue
            return change.result
        raise MembershipBusy(room_id)


class RosterFlusher:
    """Writes dirty rosters to SQL; the engine clears each dirty mark only if no change came since."""

    def __init__(self, engine: Engine, sql: RosterSQL, *, batch_size: int = 100) -> None:
        self.engine = engine
        self.sql = sql
        self.batch_size = batch_size

    async def flush_once(self) -> int:
        """One batch of dirty rooms; the number of rooms handled. A failure leaves the rest dirty."""
        rooms = await self.engine.rosters.dirty(self.batch_size)
        for room_id in rooms:
            roster = await self.engine.rosters.get(room_id)
            if roster is None:  # a dirty roster never expires: only a lost Redis gets here
                await self.engine.rosters.flushed(room_id, 0)
                continue
            if await self.sql.write(room_id, roster):
                metrics.FLUSHER_ROSTERS.inc()
            else:
                # Another flusher wrote it first, or this one died between its commit and the mark.
                log.debug("room %d: SQL holds roster version %d or newer already", room_id, roster.version)
            await self.engine.rosters.flushed(room_id, roster.version)
        return len(rooms)
