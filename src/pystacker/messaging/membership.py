"""Room membership as send and gateway need it: member ids in a process-local cache over the rosters
(the engine's membership cache, messaging/rosters.py), invalidated on change.

Meta publishes the room id on the bus after every membership change; every process drops its cached
copy at once. The TTL only bounds staleness if an invalidation is missed (the bus is best-effort).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from pystacker.engine.base import Bus
from pystacker.messaging.rosters import RosterBook

MEMBERSHIP_CHANNEL = "pystacker:membership"


class MembershipCache:
    def __init__(self, rosters: RosterBook, *, ttl: float = 30.0, max_rooms: int = 100_000) -> None:
        self.rosters = rosters
        self.ttl = ttl
        self.max_rooms = max_rooms
        self._rooms: OrderedDict[int, tuple[float, frozenset[int]]] = OrderedDict()
        self._loading: dict[int, asyncio.Task[frozenset[int]]] = {}
        self._stale_loads: set[int] = set()  # rooms invalidated while their load was running
        self._listening = False

    async def members(self, room_id: int) -> frozenset[int]:
        cached = self._rooms.get(room_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        task = self._loading.get(room_id)
        if task is None:  # one SQL query per room however many sends wait for it
            task = asyncio.create_task(self._load(room_id))
            self._loading[room_id] = task
            task.add_done_callback(lambda _: self._load_finished(room_id))
        return await asyncio.shield(task)

    def _load_finished(self, room_id: int) -> None:
        self._loading.pop(room_id, None)
        self._stale_loads.discard(room_id)

    async def _load(self, room_id: int) -> frozenset[int]:
        roster = await self.rosters.roster(room_id)
        members = frozenset(roster.members) if roster is not None else frozenset()
        if room_id not in self._stale_loads:
            self._rooms[room_id] = (time.monotonic() + self.ttl, members)
            self._rooms.move_to_end(room_id)
            while len(self._rooms) > self.max_rooms:
                self._rooms.popitem(last=False)
        return members

    def invalidate(self, room_id: int) -> None:
        self._rooms.pop(room_id, None)
        if room_id in self._loading:
            self._stale_loads.add(room_id)

    async def listen(self, bus: Bus) -> None:
        """Subscribe to invalidations (once per process, however many services share the cache)."""
        if self._listening:
            return
        self._listening = True

        async def on_change(_: str, data: bytes) -> None:
            self.invalidate(int(data))

        await bus.subscribe(MEMBERSHIP_CHANNEL, on_change)


async def announce_membership_change(bus: Bus, room_id: int) -> None:
    await bus.publish(MEMBERSHIP_CHANNEL, str(room_id).encode())
