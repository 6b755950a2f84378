"""The SQL of the meta service: users, rooms, members, join requests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pystacker.db.schema import chat_rooms, join_requests, room_members, users
from pystacker.db.sqlutil import escape_like, insert_ignoring_duplicates, utcnow


def _new_id(result: Any) -> int:
    """The id the database gave the row an INSERT made."""
    key = result.inserted_primary_key
    assert key is not None  # an INSERT of one row always has one
    return int(key[0])


class DuplicateError(Exception):
    """A unique key refused the row (username taken, request already pending)."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    nickname: str
    password_hash: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Room:
    id: int
    name: str
    is_group: bool
    creator_id: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    user_id: int
    username: str
    role: int
    nickname: str | None
    joined_at: datetime


@dataclass(frozen=True, slots=True)
class JoinRequest:
    id: int
    room_id: int
    user_id: int
    message: str | None
    created_at: datetime


class MetaStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    # -- users -----------------------------------------------------------------------------------

    async def create_user(self, username: str, password_hash: str, nickname: str) -> int:
        now = utcnow()
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(users.insert().values(
                    username=username, password_hash=password_hash, nickname=nickname,
                    created_at=now, updated_at=now))
                return _new_id(result)
        except IntegrityError:
            raise DuplicateError(username) from None

    async def user_by_name(self, username: str) -> User | None:
        """Usernames match without case (MySQL's collation does it and keeps its index usable)."""
        if self.dialect in ("mysql", "mariadb"):
            return await self._one_user(users.c.username == username)
        return await self._one_user(func.lower(users.c.username) == username.lower())

    async def user_by_id(self, user_id: int) -> User | None:
        return await self._one_user(users.c.id == user_id)

    async def _one_user(self, condition: Any) -> User | None:
        query = select(users.c.id, users.c.username, users.c.nickname, users.c.password_hash,
                       users.c.created_at).where(condition)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return User(*row) if row else None

    async def touch_login(self, user_id: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(users).where(users.c.id == user_id).values(last_login_at=utcnow()))

    async def existing_user_ids(self, user_ids: Iterable[int]) -> set[int]:
        wanted = list(set(user_ids))
        if not wanted:
            return set()
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(users.c.id).where(users.c.id.in_(wanted)))
            return {int(r[0]) for r in rows}

    # -- rooms -----------------------------------------------------------------------------------

    async def create_room(self, name: str, is_group: bool, creator_id: int, roles: dict[int, int]) -> int:
        """Room and its members in one transaction, so a room never exists without its owner."""
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(chat_rooms.insert().values(
                name=name, is_group=is_group, creator_id=creator_id, created_at=now))
            room_id = _new_id(result)
            await conn.execute(room_members.insert(), [
                {"room_id": room_id, "user_id": uid, "role": role, "joined_at": now}
                for uid, role in roles.items()])
        return room_id

    async def room(self, room_id: int) -> Room | None:
        query = select(chat_rooms.c.id, chat_rooms.c.name, chat_rooms.c.is_group,
                       chat_rooms.c.creator_id, chat_rooms.c.created_at).where(chat_rooms.c.id == room_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return Room(int(row[0]), row[1], bool(row[2]), int(row[3]), row[4]) if row else None

    async def search_groups(self, text: str, limit: int) -> list[Room]:
        query = (select(chat_rooms.c.id, chat_rooms.c.name, chat_rooms.c.is_group, chat_rooms.c.creator_id,
                        chat_rooms.c.created_at)
                 .where(chat_rooms.c.is_group.is_(True))
                 .order_by(chat_rooms.c.id)
                 .limit(limit))
        if text:
            # ILIKE: PostgreSQL's LIKE is case-sensitive, MySQL's and SQLite's are not; answer alike.
            query = query.where(chat_rooms.c.name.ilike(f"%{escape_like(text)}%", escape="\\"))
        async with self.engine.connect() as conn:
            rows = await conn.execute(query)
            return [Room(int(r[0]), r[1], bool(r[2]), int(r[3]), r[4]) for r in rows]

    # -- members (changed through the roster cache: messaging/rosters.py) --------------------------

    async def usernames(self, user_ids: Sequence[int]) -> dict[int, str]:
        if not user_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(users.c.id, users.c.username).where(users.c.id.in_(list(set(user_ids)))))
            return {int(r[0]): r[1] for r in rows}

    # -- join requests ---------------------------------------------------------------------------

    async def create_join_request(self, room_id: int, user_id: int, message: str | None) -> int:
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(join_requests.insert().values(
                    room_id=room_id, user_id=user_id, message=message, created_at=utcnow()))
                return _new_id(result)
        except IntegrityError:
            raise DuplicateError(f"{room_id}/{user_id}") from None

    async def join_request(self, request_id: int) -> JoinRequest | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(join_requests).where(join_requests.c.id == request_id))).first()
        return _join_request(row) if row else None

    async def join_requests_of(self, room_id: int) -> list[JoinRequest]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(join_requests).where(join_requests.c.room_id == room_id)
                                      .order_by(join_requests.c.created_at, join_requests.c.id))
            return [_join_request(r) for r in rows]

    async def delete_join_request(self, request_id: int) -> bool:
        """False if it was answered already."""
        async with self.engine.begin() as conn:
            deleted = await conn.execute(delete(join_requests).where(join_requests.c.id == request_id))
            return deleted.rowcount > 0

    async def restore_join_request(self, request: JoinRequest) -> None:
        """Put back a request whose approval could not be applied, so it can be answered again."""
        async with self.engine.begin() as conn:
            await conn.execute(insert_ignoring_duplicates(join_requests, self.dialect).values(
                id=request.id, room_id=request.room_id, user_id=request.user_id, message=request.message,
                created_at=request.created_at))


def _join_request(row: Any) -> JoinRequest:
    m = row._mapping
    return JoinRequest(int(m["id"]), int(m["room_id"]), int(m["user_id"]), m["message"], m["created_at"])
