"""Rosters: the membership write-back cache. Load before mutate, versioned changes, dirty marks that
only a flush of the current version clears, TTLs that keep dirty rosters and let clean ones go."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from pystacker.engine.base import Engine, Roster, RosterConflict, RosterEntry, Rosters
from tests.engine.conftest import DEFAULT_SETTINGS
from tests.engine.support import OpenEngine, unique_int
from tests.ws import poll

OWNER = RosterEntry(role=0, nickname=None, joined_at=1_700_000_000.0)
MEMBER = RosterEntry(role=2, nickname="bob | the \"builder\"", joined_at=1_700_000_001.5)


async def _dirty_among(rosters: Rosters, rooms: set[int]) -> list[int]:
    """The dirty rooms among these (other tests' rooms may share the store), in the order handed out."""
    return [room for room in await rosters.dirty(100_000) if room in rooms]


async def test_a_roster_is_missing_until_loaded(engine: Engine) -> None:
    room, owner = unique_int(), unique_int()
    assert await engine.rosters.get(room) is None
    loaded = await engine.rosters.load(room, Roster({owner: OWNER}, 7))
    assert loaded == Roster({owner: OWNER}, 7)
    assert await engine.rosters.get(room) == loaded
    assert await _dirty_among(engine.rosters, {room}) == []  # a load is SQL's own state: nothing to write


async def test_a_load_never_overwrites_a_cached_roster(engine: Engine) -> None:
    room, owner, member = unique_int(), unique_int(), unique_int()
    await engine.rosters.load(room, Roster({owner: OWNER}, 1))
    await engine.rosters.change(room, 1, {member: MEMBER})
    stale_copy_of_sql = Roster({owner: OWNER}, 1)
    assert await engine.rosters.load(room, stale_copy_of_sql) == Roster({owner: OWNER, member: MEMBER}, 2)


async def test_a_change_needs_the_cached_roster_at_the_version_read(engine: Engine) -> None:
    room, owner, member = unique_int(), unique_int(), unique_int()
    with pytest.raises(RosterConflict):  # not cached: load before mutate (spec 13.3 #27)
        await engine.rosters.change(room, 0, {member: MEMBER})
    await engine.rosters.load(room, Roster({owner: OWNER}, 0))
    changed = await engine.rosters.change(room, 0, {member: MEMBER})
    assert changed == Roster({owner: OWNER, member: MEMBER}, 1)
    with pytest.raises(RosterConflict):  # someone else's change came first: read again
        await engine.rosters.change(room, 0, {}, remove=[member])
    promoted = dataclasses.replace(MEMBER, role=1)
    assert await engine.rosters.change(room, 1, {member: promoted}, remove=[owner]) == Roster({member: promoted}, 2)
    assert await engine.rosters.get(room) == Roster({member: promoted}, 2)


async def test_concurrent_changes_at_one_version_let_exactly_one_through(engine: Engine) -> None:
    room = unique_int()
    await engine.rosters.load(room, Roster({}, 3))
    users = [unique_int() for _ in range(10)]
    results = await asyncio.gather(*(engine.rosters.change(room, 3, {user: MEMBER}) for user in users),
                                   return_exceptions=True)
    winners = [r for r in results if isinstance(r, Roster)]
    assert len(winners) == 1 and sum(isinstance(r, RosterConflict) for r in results) == 9
    assert (await engine.rosters.get(room)) == winners[0]


async def test_dirty_rooms_come_oldest_first_until_flushed(engine: Engine) -> None:
    first, second = unique_int(), unique_int()
    for room in (first, second):
        await engine.rosters.load(room, Roster({}, 0))
    await engine.rosters.change(first, 0, {unique_int(): MEMBER})
    await engine.rosters.change(second, 0, {unique_int(): MEMBER})
    await engine.rosters.change(first, 1, {unique_int(): MEMBER})  # still dirty: keeps its place
    assert await _dirty_among(engine.rosters, {first, second}) == [first, second]
    assert await engine.rosters.flushed(first, 2)
    assert await _dirty_among(engine.rosters, {first, second}) == [second]


async def test_a_flush_of_an_older_version_leaves_the_room_dirty(engine: Engine) -> None:
    """No lost update between the flusher's read and its clearing of the mark (spec 13.3 #29)."""
    room, owner, late = unique_int(), unique_int(), unique_int()
    await engine.rosters.load(room, Roster({owner: OWNER}, 0))
    await engine.rosters.change(room, 0, {unique_int(): MEMBER})
    read_by_flusher = await engine.rosters.get(room)
    assert read_by_flusher is not None
    await engine.rosters.change(room, 1, {late: MEMBER})  # between the flusher's read and its mark
    assert not await engine.rosters.flushed(room, read_by_flusher.version)
    assert await _dirty_among(engine.rosters, {room}) == [room]
    assert await engine.rosters.flushed(room, 2)
    assert await _dirty_among(engine.rosters, {room}) == []


async def test_dirty_rosters_never_expire_and_flushed_ones_do(open_engine: OpenEngine) -> None:
    engine = await open_engine(dataclasses.replace(DEFAULT_SETTINGS, roster_ttl=1, roster_flushed_ttl=1))
    clean, dirty = unique_int(), unique_int()
    await engine.rosters.load(clean, Roster({}, 0))
    await engine.rosters.load(dirty, Roster({}, 0))
    await engine.rosters.change(dirty, 0, {unique_int(): MEMBER})

    async def expired(room: int) -> bool:
        # A load stores its roster only where none is cached, and (unlike get) slides no TTL.
        return (await engine.rosters.load(room, Roster({}, 99))).version == 99

    await poll(lambda: expired(clean), "the clean roster to expire", timeout=5, interval=0.1)
    assert not await expired(dirty)  # dirty: no TTL however long unread
    assert await engine.rosters.flushed(dirty, 1)
    await poll(lambda: expired(dirty), "the flushed roster to expire", timeout=5, interval=0.1)
