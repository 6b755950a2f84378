"""Cursors: the highest seq delivered per user and room, forward only, with dirty marks for the flusher."""

from __future__ import annotations

from pystacker.engine.base import Cursors, Engine
from tests.engine.support import unique_int


async def _take_all_dirty(cursors: Cursors, users: set[int]) -> list[tuple[int, int, int]]:
    """Every dirty cursor of these users (others may share the store), in the order taken."""
    taken: list[tuple[int, int, int]] = []
    while batch := await cursors.take_dirty(1000):
        taken += [cursor for cursor in batch if cursor[0] in users]
    return taken


async def test_get_returns_the_cursors_that_exist(engine: Engine) -> None:
    user, other_user = unique_int(), unique_int()
    room_a, room_b, room_c = unique_int(), unique_int(), unique_int()
    assert await engine.cursors.get(user, [room_a]) == {}
    await engine.cursors.advance([(user, room_a, 5), (user, room_b, 2), (other_user, room_c, 9)])
    assert await engine.cursors.get(user, [room_a, room_b, room_c]) == {room_a: 5, room_b: 2}
    assert await engine.cursors.get(other_user, [room_a, room_c]) == {room_c: 9}


async def test_a_cursor_only_moves_forward(engine: Engine) -> None:
    user, room = unique_int(), unique_int()
    await engine.cursors.advance([(user, room, 5)])
    await engine.cursors.advance([(user, room, 3)])
    assert await engine.cursors.get(user, [room]) == {room: 5}
    await engine.cursors.advance([(user, room, 8), (user, room, 6)])
    assert await engine.cursors.get(user, [room]) == {room: 8}


async def test_take_dirty_hands_out_changed_cursors_once(engine: Engine) -> None:
    await _take_all_dirty(engine.cursors, set())
    user = unique_int()
    room_a, room_b = unique_int(), unique_int()
    await engine.cursors.advance([(user, room_a, 5), (user, room_b, 3)])
    await engine.cursors.advance([(user, room_a, 6)])  # dirty already: reported once, with the latest seq
    assert sorted(await _take_all_dirty(engine.cursors, {user})) == sorted([(user, room_a, 6), (user, room_b, 3)])
    assert await _take_all_dirty(engine.cursors, {user}) == []

    await engine.cursors.advance([(user, room_b, 2)])  # backwards: no change, nothing to flush
    assert await _take_all_dirty(engine.cursors, {user}) == []
    await engine.cursors.advance([(user, room_b, 4)])  # taken before, changed since: dirty again
    assert await _take_all_dirty(engine.cursors, {user}) == [(user, room_b, 4)]


async def test_take_dirty_hands_out_at_most_max_items(engine: Engine) -> None:
    await _take_all_dirty(engine.cursors, set())
    user = unique_int()
    rooms = [unique_int() for _ in range(5)]
    await engine.cursors.advance([(user, room, 1) for room in rooms])
    first = await engine.cursors.take_dirty(2)
    rest = await _take_all_dirty(engine.cursors, {user})
    assert len(first) == 2
    assert sorted(first + rest) == sorted((user, room, 1) for room in rooms)


async def test_rooms_lists_every_room_with_a_cursor(engine: Engine) -> None:
    user, other_user = unique_int(), unique_int()
    room_a, room_b = unique_int(), unique_int()
    assert await engine.cursors.rooms(user) == []
    await engine.cursors.advance([(user, room_b, 0), (user, room_a, 4), (other_user, room_a, 1)])
    await engine.cursors.advance([(user, room_a, 9)])
    assert await engine.cursors.rooms(user) == sorted([room_a, room_b])
