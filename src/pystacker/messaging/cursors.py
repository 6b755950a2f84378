"""Where each user stands in each room: the engine's cursors, SQL's saved copy, and the rule for
a room without either."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pystacker.engine.base import Cursors, Engine
from pystacker.messaging.membership import MembershipCache
from pystacker.messaging.store import MessageStore


class CursorBook:
    """Also the cursor source of every user's `default` device (gateway/connection.py CursorSource)."""

    def __init__(self, engine: Engine, store: MessageStore, members: MembershipCache) -> None:
        self.engine = engine
        self.store = store
        self.members = members

    @property
    def watermarks(self) -> Cursors:
        return self.engine.cursors

    def owner(self, user_id: int) -> int:
        return user_id

    async def ensure_positions(self, user_id: int, room_ids: list[int]) -> None:
        """Nothing to do: the user's cursor in a room is set when he joins it."""

    async def starting_points(self, user_id: int, room_ids: list[int]) -> dict[int, int]:
        """The delivered seq of each room: the engine's cursor, else SQL's, else the room's last seq.
        The last rule means no replay of history for a room the user never had a cursor in: meta
        sets a cursor when someone joins, so it only applies to rooms older than the cursor data."""
        if not room_ids:
            return {}
        points = await self.engine.cursors.get(user_id, room_ids)
        missing = [r for r in room_ids if r not in points]
        if missing:
            saved = await self.store.load_cursors(user_id, missing)
            points.update(saved)
            missing = [r for r in missing if r not in saved]
        if missing:
            points.update(await self.engine.messages.last_seqs(missing))
        return points

    async def rooms_of(self, user_id: int) -> list[int]:
        """The rooms the user is a member of now. SQL's room_members lags the rosters by up to a flush,
        so the candidates are SQL's rooms of the user plus the rooms he has a cursor in (meta sets one
        when he joins), each confirmed against the room's current members."""
        candidates = sorted(set(await self.store.rooms_of(user_id)) | set(await self.engine.cursors.rooms(user_id)))
        memberships = await asyncio.gather(*(self.members.members(room_id) for room_id in candidates))
        return [room_id for room_id, members in zip(candidates, memberships, strict=True) if user_id in members]

    async def last_seqs(self, room_ids: list[int]) -> dict[int, int]:
        return await self.engine.messages.last_seqs(room_ids)

    async def joined(self, room_id: int, user_ids: Sequence[int]) -> None:
        """New members start at the room's current end: they get what is sent from now on."""
        last = (await self.engine.messages.last_seqs([room_id])).get(room_id, 0)
        await self.engine.cursors.advance([(user_id, room_id, last) for user_id in user_ids])

    async def save(self, updates: Sequence[tuple[int, int, int]]) -> None:
        if updates:
            await self.engine.cursors.advance(updates)
