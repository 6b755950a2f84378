"""Devices: every device of a user online at once, each with its own delivery cursors.

A connection names its device (`?device_id=` or the `X-Device-Id` header); one that names none is
the device `default`, which keeps the user's cursors (engine `cursors`, SQL `room_cursors`): a
GoStacker client behaves exactly as before. A named device gets a device key (SQL `devices`), under
which its cursors live (engine `device_cursors`, copied to SQL `device_cursors` by the flusher).

Where a named device has no cursor in a room (a device never seen before, or a room it was never
sent anything of) it starts from the user's read state: at most the last `backlog` messages after his
read seq, so a new laptop shows the recent conversation without replaying years, and a device that
was offline keeps its own place. A device not seen for `limits.device_ttl` is forgotten with its
cursors; if it comes back it is new again.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pystacker.db.schema import device_cursors, devices
from pystacker.db.sqlutil import insert_ignoring_duplicates, utcnow
from pystacker.engine.base import Cursors, Engine
from pystacker.messaging.cursors import CursorBook
from pystacker.messaging.model import DEFAULT_DEVICE
from pystacker.messaging.readstate import ReadState

# Printable ASCII; spaces inside only (HTTP drops them at the ends of a header).
SEEN_RESOLUTION = timedelta(hours=1)  # how exactly `devices.last_seen_at` follows the connects
_DEVICE_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?")
DEVICE_ID_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?$"
DEVICE_ID_RULE = "1 to 64 printable ASCII characters, not starting or ending with a space"


def parse_device_id(raw: str | None) -> str:
    """The device a connection or request names; absent or empty: `default`. ValueError if invalid."""
    if not raw:
        return DEFAULT_DEVICE
    if not _DEVICE_ID.fullmatch(raw):
        raise ValueError(f"device_id: {DEVICE_ID_RULE}")
    return raw


class DeviceStore:
    """The SQL of named devices and their cursors."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    async def attach(self, user_id: int, device_id: str) -> tuple[int, bool]:
        """The device's key, and whether the device is new (never seen, or forgotten since)."""
        now = utcnow()
        async with self.engine.begin() as conn:
            known = await self._key(conn, user_id, device_id)
            if known is not None:
                key, seen = known
                if seen < now - SEEN_RESOLUTION:  # a write per hour at most: not one per reconnect
                    await conn.execute(update(devices).where(devices.c.device_key == key).values(last_seen_at=now))
                return key, False
            # Two first connects of one device at once: one insert wins, both read its key.
            inserted = await conn.execute(insert_ignoring_duplicates(devices, self.dialect),
                                          [{"user_id": user_id, "device_id": device_id, "last_seen_at": now}])
            known = await self._key(conn, user_id, device_id)
            assert known is not None
            return known[0], bool(inserted.rowcount)

    @staticmethod
    async def _key(conn: AsyncConnection, user_id: int, device_id: str) -> tuple[int, datetime] | None:
        row = (await conn.execute(select(devices.c.device_key, devices.c.last_seen_at).where(and_(
            devices.c.user_id == user_id, devices.c.device_id == device_id)))).first()
        return None if row is None else (int(row[0]), row[1])

    async def keys_of(self, user_ids: Sequence[int]) -> list[int]:
        """The device keys of these users' named devices."""
        if not user_ids:
            return []
        async with self.engine.connect() as conn:
            return [int(row[0]) for row in await conn.execute(
                select(devices.c.device_key).where(devices.c.user_id.in_(list(user_ids))))]

    async def touch(self, keys: Sequence[int]) -> None:
        """These devices are connected now (a device online for longer than the TTL is not forgotten)."""
        if keys:
            async with self.engine.begin() as conn:
                await conn.execute(update(devices).where(devices.c.device_key.in_(list(keys)))
                                   .values(last_seen_at=utcnow()))

    async def load_cursors(self, key: int, room_ids: Sequence[int]) -> dict[int, int]:
        if not room_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(device_cursors.c.room_id, device_cursors.c.delivered_seq).where(and_(
                device_cursors.c.device_key == key, device_cursors.c.room_id.in_(list(room_ids)))))
            return {int(room): int(seq) for room, seq in rows}

    async def save_cursors(self, cursors: Sequence[tuple[int, int, int]]) -> None:
        """(device_key, room_id, seq): insert new rows, move existing ones forward only."""
        if not cursors:
            return
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(insert_ignoring_duplicates(device_cursors, self.dialect), [
                {"device_key": key, "room_id": room, "delivered_seq": 0, "updated_at": now} for key, room, _ in cursors])
            await conn.execute(
                update(device_cursors).where(and_(
                    device_cursors.c.device_key == bindparam("k"), device_cursors.c.room_id == bindparam("r"),
                    device_cursors.c.delivered_seq < bindparam("s"))).values(delivered_seq=bindparam("s"), updated_at=now),
                [{"k": key, "r": room, "s": seq} for key, room, seq in cursors])

    async def forget_unseen(self, ttl_seconds: int) -> list[int]:
        """Delete the devices not seen for `ttl_seconds` and their cursors; returns their keys. Rows of
        cursors whose device is gone (written behind after it was forgotten) go too."""
        cutoff = utcnow() - timedelta(seconds=ttl_seconds)
        async with self.engine.begin() as conn:
            keys = [int(row[0]) for row in await conn.execute(
                select(devices.c.device_key).where(devices.c.last_seen_at < cutoff))]
            if keys:
                await conn.execute(delete(devices).where(devices.c.device_key.in_(keys)))
            await conn.execute(delete(device_cursors).where(
                device_cursors.c.device_key.not_in(select(devices.c.device_key))))
        return keys


class DeviceCursors:
    """Where a named device stands in each room: the `CursorSource` of its connection."""

    __slots__ = ("book", "key", "engine", "store", "reading", "backlog")

    def __init__(self, book: CursorBook, key: int, *, engine: Engine, store: DeviceStore, reading: ReadState,
                 backlog: int) -> None:
        self.book = book
        self.key = key
        self.engine = engine
        self.store = store
        self.reading = reading
        self.backlog = backlog

    @property
    def watermarks(self) -> Cursors:
        return self.engine.device_cursors

    def owner(self, user_id: int) -> int:
        return self.key

    async def starting_points(self, user_id: int, room_ids: list[int]) -> dict[int, int]:
        """The device's cursor, else SQL's copy, else the read-state rule (module doc)."""
        if not room_ids:
            return {}
        points = await self.engine.device_cursors.get(self.key, room_ids)
        missing = [r for r in room_ids if r not in points]
        if missing:
            saved = await self.store.load_cursors(self.key, missing)
            points.update(saved)
            missing = [r for r in missing if r not in saved]
        if missing:
            for room_id, state in (await self.reading.rooms(user_id, missing)).items():
                points[room_id] = max(state.read_seq, state.last_seq - self.backlog)
        return points

    async def ensure_positions(self, user_id: int, room_ids: list[int]) -> None:
        """Store a position in every room that has none, as the device connects: the read-state rule
        is applied once, now. Applied later (at the first live message of a room) it would read a
        read mark that moved meanwhile (a message the user sent from another device moves it) and
        skip that message."""
        stored = await self.engine.device_cursors.get(self.key, room_ids)
        missing = [room for room in room_ids if room not in stored]
        if missing:
            points = await self.starting_points(user_id, missing)
            await self.engine.device_cursors.advance([(self.key, room, seq) for room, seq in points.items()])

    async def rooms_of(self, user_id: int) -> list[int]:
        return await self.book.rooms_of(user_id)

    async def last_seqs(self, room_ids: list[int]) -> dict[int, int]:
        return await self.book.last_seqs(room_ids)


KEY_CACHE_SECONDS = 3600.0  # a device forgotten meanwhile is seen as such at most this late
KEY_CACHE_SIZE = 100_000


class Devices:
    """The gateway's view of devices: the cursor source of each connection. Device keys are kept in
    memory for an hour (bounded), so that a reconnect storm of known devices costs SQL nothing; the
    gateways mark connected devices seen every hour anyway."""

    def __init__(self, book: CursorBook, store: DeviceStore, engine: Engine, reading: ReadState, *,
                 backlog: int) -> None:
        self.book = book
        self.store = store
        self.engine = engine
        self.reading = reading
        self.backlog = backlog
        self._keys: OrderedDict[tuple[int, str], tuple[int, float]] = OrderedDict()  # -> (key, until)

    async def key_of(self, user_id: int, device_id: str) -> int:
        cached = self._keys.get((user_id, device_id))
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        key, _new = await self.store.attach(user_id, device_id)
        self._keys[(user_id, device_id)] = (key, now + KEY_CACHE_SECONDS)
        self._keys.move_to_end((user_id, device_id))
        while len(self._keys) > KEY_CACHE_SIZE:
            self._keys.popitem(last=False)
        return key

    async def joined(self, room_id: int, user_ids: Sequence[int]) -> None:
        """New members' named devices start at the room's current end, as their users do
        (CursorBook.joined): what is sent from now on, to every device."""
        keys = await self.store.keys_of(user_ids)
        if keys:
            last = (await self.engine.messages.last_seqs([room_id])).get(room_id, 0)
            await self.engine.device_cursors.advance([(key, room_id, last) for key in keys])

    async def cursors_for(self, user_id: int, device_id: str) -> CursorBook | DeviceCursors:
        if device_id == DEFAULT_DEVICE:
            return self.book
        return DeviceCursors(self.book, await self.key_of(user_id, device_id), engine=self.engine, store=self.store,
                             reading=self.reading, backlog=self.backlog)
