"""The membership write-back cache end to end: changes made through meta's routes land in SQL after a
flush with roles and nicknames kept, concurrent changes are neither lost nor half-applied, and the
GoStacker failures (spec 13.3 #27-29) cannot happen. Runs on SQLite, MariaDB and PostgreSQL.

The meta fixture runs, as deployed, over the engine's roster cache with a flusher writing rosters to
SQL at every round and letting a flushed roster expire from the cache one second later.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from pystacker.db.schema import chat_rooms, room_members
from pystacker.engine.base import EngineSettings, Roster, RosterEntry
from pystacker.engine.memory import MemoryEngine
from pystacker.messaging.rosters import RosterBook, RosterChange, RosterFlusher, RosterSQL
from pystacker.runtime import Runtime
from tests.client import Http, User
from tests.engine.support import zero_seed
from tests.test_meta_rooms import (
    ADD_MEMBERS,
    ADMIN,
    CHANGE_NICKNAME,
    CHANGE_ROLE,
    JOIN,
    LEAVE,
    MEMBER,
    OWNER,
    REMOVE_MEMBER,
    create_room,
    joined,
    new_users,
)
from tests.ws import poll


async def sql_members(runtime: Runtime, room_id: int) -> dict[int, tuple[int, str | None]]:
    """user_id -> (role, nickname) as room_members holds them."""
    async with runtime.sql.connect() as conn:
        rows = await conn.execute(select(room_members.c.user_id, room_members.c.role, room_members.c.nickname)
                                  .where(room_members.c.room_id == room_id))
        return {int(r[0]): (int(r[1]), r[2]) for r in rows}


async def wait_for_sql(runtime: Runtime, room_id: int, expected: dict[int, tuple[int, str | None]]) -> None:
    async def matches() -> bool:
        return await sql_members(runtime, room_id) == expected

    await poll(matches, f"room {room_id} in SQL to be {expected}", timeout=15)


async def ok(meta: Http, path: str, body: dict, user: User) -> None:  # type: ignore[type-arg]
    answer = await meta.post(path, body, token=user.token)
    assert answer.status == 200, answer


async def test_changes_reach_sql_with_roles_and_nicknames_kept(meta: Http, meta_runtime: Runtime) -> None:
    owner, admin, member, leaver, removed = await new_users(meta, "ro", "ra", "rm", "rl", "rr")
    room = await create_room(meta, owner, admin, member, leaver, removed)
    await ok(meta, CHANGE_ROLE, {"room_id": room, "target_user_id": admin.id, "new_role": ADMIN}, owner)
    await ok(meta, CHANGE_NICKNAME, {"room_id": room, "nickname": "the admin"}, admin)
    await ok(meta, CHANGE_NICKNAME, {"room_id": room, "nickname": "just me"}, member)
    await ok(meta, REMOVE_MEMBER, {"room_id": room, "target_user_id": removed.id}, admin)
    await ok(meta, LEAVE, {"room_id": room}, leaver)
    expected = {owner.id: (OWNER, None), admin.id: (ADMIN, "the admin"), member.id: (MEMBER, "just me")}
    await wait_for_sql(meta_runtime, room, expected)

    # A cache that has forgotten the room (expired, or a Redis restarted) loads the whole roster from
    # SQL before changing it; GoStacker changed whatever partial set was left and wrote that back,
    # wiping the room and its roles (spec 13.3 #27, #28).
    forgetful = MemoryEngine(EngineSettings(), zero_seed)
    rosters = RosterBook(forgetful, RosterSQL(meta_runtime.sql))
    newcomer, = await new_users(meta, "rn")
    joined_at = time.time()
    await rosters.change(room, lambda roster: RosterChange(
        None, put={newcomer.id: RosterEntry(MEMBER, None, joined_at)}))
    assert await RosterFlusher(forgetful, RosterSQL(meta_runtime.sql)).flush_once() == 1
    assert await sql_members(meta_runtime, room) == {**expected, newcomer.id: (MEMBER, None)}


async def test_ownership_transfer_reaches_sql_in_one_change(meta: Http, meta_runtime: Runtime) -> None:
    owner, heir = await new_users(meta, "to", "th")
    room = await create_room(meta, owner, heir)
    await ok(meta, CHANGE_ROLE, {"room_id": room, "target_user_id": heir.id, "new_role": OWNER}, owner)
    await wait_for_sql(meta_runtime, room, {owner.id: (ADMIN, None), heir.id: (OWNER, None)})


async def test_concurrent_changes_are_all_kept(meta: Http, meta_runtime: Runtime) -> None:
    """Twenty joins, nickname changes and role changes at once: every one lands in the cache and in SQL
    (GoStacker lost changes made between the flusher's read and its clearing of the mark, #29)."""
    owner, *others = await new_users(meta, "co", *[f"c{i}" for i in range(20)])
    room = await create_room(meta, owner)
    await asyncio.gather(*(ok(meta, JOIN, {"room_id": room}, user) for user in others))
    promoted, renamed = others[:10], others[10:]
    await asyncio.gather(
        *(ok(meta, CHANGE_ROLE, {"room_id": room, "target_user_id": u.id, "new_role": ADMIN}, owner)
          for u in promoted),
        *(ok(meta, CHANGE_NICKNAME, {"room_id": room, "nickname": f"nick {u.id}"}, u) for u in renamed))
    expected = {owner.id: (OWNER, None), **{u.id: (ADMIN, None) for u in promoted},
                **{u.id: (MEMBER, f"nick {u.id}") for u in renamed}}
    await wait_for_sql(meta_runtime, room, expected)
    for user in others:
        assert room in await joined(meta, user)


async def test_added_members_are_listed_before_the_flush(meta: Http, meta_runtime: Runtime) -> None:
    owner, late = await new_users(meta, "jo", "jl")
    room = await create_room(meta, owner)
    await ok(meta, ADD_MEMBERS, {"room_id": room, "member_ids": [late.id]}, owner)
    # Whatever SQL holds at this instant, the cache answers: the user is in the room now.
    assert room in await joined(meta, late)
    await ok(meta, LEAVE, {"room_id": room}, late)
    assert room not in await joined(meta, late)


async def test_sql_never_takes_an_older_roster_than_it_holds(meta: Http, meta_runtime: Runtime) -> None:
    """Two flushers racing on one room: whichever writes last, SQL keeps the newest version."""
    owner, = await new_users(meta, "vo")
    room = await create_room(meta, owner)
    sql = RosterSQL(meta_runtime.sql)
    newer = Roster({owner.id: RosterEntry(OWNER, "newest", 1.0)}, 1_000_002)
    older = Roster({owner.id: RosterEntry(OWNER, "older", 1.0)}, 1_000_001)
    assert await sql.write(room, newer)
    assert not await sql.write(room, older)
    assert not await sql.write(room, newer)  # the same version again: nothing to do
    assert await sql_members(meta_runtime, room) == {owner.id: (OWNER, "newest")}
    async with meta_runtime.sql.connect() as conn:
        version = (await conn.execute(select(chat_rooms.c.members_version).where(chat_rooms.c.id == room))).scalar()
    assert version == 1_000_002
    loaded = await sql.load(room)
    assert loaded is not None and loaded.version == 1_000_002 and loaded.members[owner.id].nickname == "newest"
