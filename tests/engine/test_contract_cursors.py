"""Cursors: forward-only watermarks per user and room with dirty marks for the flusher. Both parts of
that shape run the same tests: `cursors` (the highest seq delivered) and `read_marks` (read state)."""

from __future__ import annotations

import pytest

from pystacker.engine.base import Cursors, Engine
from tests.engine.support import unique_int


@pytest.fixture(params=["cursors", "read_marks"])
def marks(engine: Engine, request: pytest.FixtureRequest) -> Cursors:
    return getattr(engine, request.param)  # type: ignore[no-any-return]


async def _take_all_dirty(cursors: Cursors, users: set[int]) -> list[tuple[int, int, int]]:
    """Every dirty cursor of these users (others may share the store), in the order taken."""
    taken: list[tuple[int, int, int]] = []
    while batch := await cursors.take_dirty(1000):
        taken += [cursor for cursor in batch if cursor[0] in users]
    return taken


async def test_get_returns_the_cursors_that_exist(marks: Cursors) -> None:
    user, other_user = unique_int(), unique_int()
    room_a, room_b, room_c = unique_int(), unique_int(), unique_int()
    assert await marks.get(user, [room_a]) == {}
    await marks.advance([(user, room_a, 5), (user, room_b, 2), (other_user, room_c, 9)])
    assert await marks.get(user, [room_a, room_b, room_c]) == {room_a: 5, room_b: 2}
    assert await marks.get(other_user, [room_a, room_c]) == {room_c: 9}


async def test_a_cursor_only_moves_forward(marks: Cursors) -> None:
    user, room = unique_int(), unique_int()
    await marks.advance([(user, room, 5)])
    await marks.advance([(user, room, 3)])
    assert await marks.get(user, [room]) == {room: 5}
    await marks.advance([(user, room, 8), (user, room, 6)])
    assert await marks.get(user, [room]) == {room: 8}


async def test_take_dirty_hands_out_changed_cursors_once(marks: Cursors) -> None:
    await _take_all_dirty(marks, set())
    user = unique_int()
    room_a, room_b = unique_int(), unique_int()
    await marks.advance([(user, room_a, 5), (user, room_b, 3)])
    await marks.advance([(user, room_a, 6)])  # dirty already: reported once, with the latest seq
    assert sorted(await _take_all_dirty(marks, {user})) == sorted([(user, room_a, 6), (user, room_b, 3)])
    assert await _take_all_dirty(marks, {user}) == []

    await marks.advance([(user, room_b, 2)])  # backwards: no change, nothing to flush
    assert await _take_all_dirty(marks, {user}) == []
    await marks.advance([(user, room_b, 4)])  # taken before, changed since: dirty again
    assert await _take_all_dirty(marks, {user}) == [(user, room_b, 4)]


async def test_take_dirty_hands_out_at_most_max_items(marks: Cursors) -> None:
    await _take_all_dirty(marks, set())
    user = unique_int()
    rooms = [unique_int() for _ in range(5)]
    await marks.advance([(user, room, 1) for room in rooms])
    first = await marks.take_dirty(2)
    rest = await _take_all_dirty(marks, {user})
    assert len(first) == 2
    assert sorted(first + rest) == sorted((user, room, 1) for room in rooms)


async def test_rooms_lists_every_room_with_a_cursor(marks: Cursors) -> None:
    user, other_user = unique_int(), unique_int()
    room_a, room_b = unique_int(), unique_int()
    assert await marks.rooms(user) == []
    await marks.advance([(user, room_b, 0), (user, room_a, 4), (other_user, room_a, 1)])
    await marks.advance([(user, room_a, 9)])
    assert await marks.rooms(user) == sorted([room_a, room_b])


async def test_of_users_reads_one_room_for_many_users(marks: Cursors) -> None:
    room, other_room = unique_int(), unique_int()
    alice, bob, carol = unique_int(), unique_int(), unique_int()
    await marks.advance([(alice, room, 3), (bob, room, 7), (carol, other_room, 1)])
    assert await marks.of_users([alice, bob, carol], room) == {alice: 3, bob: 7}
    assert await marks.of_users([], room) == {}


async def test_delivery_cursors_and_read_marks_are_apart(engine: Engine) -> None:
    user, room = unique_int(), unique_int()
    await engine.cursors.advance([(user, room, 9)])
    await engine.read_marks.advance([(user, room, 4)])
    assert await engine.cursors.get(user, [room]) == {room: 9}
    assert await engine.read_marks.get(user, [room]) == {room: 4}
