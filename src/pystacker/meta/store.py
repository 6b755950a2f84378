"""The SQL of the meta service: users, rooms, members, join requests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pystacker.db.schema import ROLE_ADMIN, ROLE_MEMBER, ROLE_OWNER, chat_rooms, join_requests, room_members, users
from pystacker.db.sqlutil import escape_like, insert_ignoring_duplicates, utcnow


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
                return int(result.inserted_primary_key[0])
        except IntegrityError:
            raise DuplicateError(username) from None

    async def user_by_name(self, username: str) -> User | None:
        """Usernames match without case (MySQL's collation does it and keeps its index usable)."""
        if self.dialect in ("mysql", "mariadb"):
            return await self._one_user(users.c.username == username)
        return await self._one_user(func.lower(users.c.username) == username.lower())

    async def user_by_id(self, user_id: int) -> User | None:
        return await self._one_user(users.c.id == user_id)

    async def _one_user(self, condition) -> User | None:  # type: ignore[no-untyped-def]
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
            room_id = int(result.inserted_primary_key[0])
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

    # -- members ---------------------------------------------------------------------------------

    async def role_of(self, room_id: int, user_id: int, conn: AsyncConnection | None = None) -> int | None:
        query = select(room_members.c.role).where(
            and_(room_members.c.room_id == room_id, room_members.c.user_id == user_id))
        if conn is not None:
            row = (await conn.execute(query)).first()
        else:
            async with self.engine.connect() as own:
                row = (await own.execute(query)).first()
        return int(row[0]) if row else None

    async def add_members(self, room_id: int, user_ids: Sequence[int], role: int) -> list[int]:
        """Add whoever is not a member yet; existing members keep their role and nickname.

        Returns the ids that were really added.
        """
        if not user_ids:
            return []
        now = utcnow()
        async with self.engine.begin() as conn:
            before = await self._member_ids_in(conn, room_id, user_ids)
            fresh = [uid for uid in dict.fromkeys(user_ids) if uid not in before]
            if fresh:
                await conn.execute(insert_ignoring_duplicates(room_members, self.dialect), [
                    {"room_id": room_id, "user_id": uid, "role": role, "joined_at": now} for uid in fresh])
        return fresh

    async def _member_ids_in(self, conn: AsyncConnection, room_id: int, user_ids: Sequence[int]) -> set[int]:
        rows = await conn.execute(select(room_members.c.user_id).where(
            and_(room_members.c.room_id == room_id, room_members.c.user_id.in_(list(set(user_ids))))))
        return {int(r[0]) for r in rows}

    async def remove_member(self, room_id: int, user_id: int) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(room_members).where(
                and_(room_members.c.room_id == room_id, room_members.c.user_id == user_id)))
            return result.rowcount > 0

    async def set_role(self, room_id: int, user_id: int, role: int) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(update(room_members).where(
                and_(room_members.c.room_id == room_id, room_members.c.user_id == user_id)).values(role=role))
            return result.rowcount > 0

    async def transfer_ownership(self, room_id: int, owner: int, new_owner: int) -> None:
        """In one transaction, so the room always has exactly one owner."""
        async with self.engine.begin() as conn:
            for user_id, role in ((new_owner, ROLE_OWNER), (owner, ROLE_ADMIN)):
                await conn.execute(update(room_members).where(
                    and_(room_members.c.room_id == room_id, room_members.c.user_id == user_id)).values(role=role))

    async def set_nickname(self, room_id: int, user_id: int, nickname: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(room_members).where(
                and_(room_members.c.room_id == room_id, room_members.c.user_id == user_id))
                .values(nickname=nickname))

    async def members(self, room_id: int) -> list[Member]:
        query = (select(room_members.c.user_id, users.c.username, room_members.c.role,
                        room_members.c.nickname, room_members.c.joined_at)
                 .join(users, users.c.id == room_members.c.user_id)
                 .where(room_members.c.room_id == room_id)
                 .order_by(room_members.c.role, room_members.c.user_id))
        async with self.engine.connect() as conn:
            rows = await conn.execute(query)
            return [Member(int(r[0]), r[1], int(r[2]), r[3], r[4]) for r in rows]

    async def member_ids(self, room_id: int) -> list[int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(room_members.c.user_id).where(room_members.c.room_id == room_id))
            return [int(r[0]) for r in rows]

    async def member_count(self, room_id: int) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(room_members)
                                           .where(room_members.c.room_id == room_id))).scalar_one())

    async def joined_room_ids(self, user_id: int) -> list[int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(room_members.c.room_id).where(room_members.c.user_id == user_id)
                                      .order_by(room_members.c.room_id))
            return [int(r[0]) for r in rows]

    # -- join requests ---------------------------------------------------------------------------

    async def create_join_request(self, room_id: int, user_id: int, message: str | None) -> int:
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(join_requests.insert().values(
                    room_id=room_id, user_id=user_id, message=message, created_at=utcnow()))
                return int(result.inserted_primary_key[0])
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

    async def answer_join_request(self, request: JoinRequest, approve: bool) -> bool:
        """Delete the request and, if approved, add the member, atomically. False if already answered."""
        now = utcnow()
        async with self.engine.begin() as conn:
            deleted = await conn.execute(delete(join_requests).where(join_requests.c.id == request.id))
            if deleted.rowcount == 0:
                return False
            if approve:
                await conn.execute(insert_ignoring_duplicates(room_members, self.dialect).values(
                    room_id=request.room_id, user_id=request.user_id, role=ROLE_MEMBER, joined_at=now))
        return True


def _join_request(row) -> JoinRequest:  # type: ignore[no-untyped-def]
    m = row._mapping
    return JoinRequest(int(m["id"]), int(m["room_id"]), int(m["user_id"]), m["message"], m["created_at"])
