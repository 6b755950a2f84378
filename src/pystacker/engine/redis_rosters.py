"""Rosters (the membership write-back cache) on Redis: one HASH per room and a dirty ZSET per partition.

GoStacker kept bare SETs of user ids and rewrote SQL from whatever the set held, so a set that had
expired and was then changed wiped the room in MySQL, roles were lost at every flush, and a change made
between the flusher's read and its clearing of the dirty mark vanished (compatibility.md #27-#29). Here a
roster carries roles, nicknames and a version; every change is one script that refuses a roster that
is not cached or not at the version the caller read, and the flusher's "written" clears the dirty mark
only if the version is still the one it wrote. The roster hash and its partition's dirty set share the
room's hash tag, so each script touches one Redis Cluster slot.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence

from pystacker.engine.base import EngineSettings, Roster, RosterConflict, RosterEntry
from pystacker.engine.redis_common import Client, pipeline, register, run, text
from pystacker.engine.redis_keys import RedisKeys

VERSION_FIELD = "v"

# KEYS: roster, dirty set. ARGV: room, ttl. A read slides the TTL of a clean roster; a dirty one has none.
_GET = """
local all = redis.call('HGETALL', KEYS[1])
if #all > 0 and not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return all
"""

# KEYS: roster. ARGV: ttl, version, then (user, entry) pairs. Loads only into an empty slot: a roster
# cached meanwhile (maybe changed already) wins over this copy of SQL.
_LOAD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'v', ARGV[2])
  for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: roster, dirty set. ARGV: room, expected version, number of puts, (user, entry) pairs, then the
# users to remove. Nil when the roster is missing or at another version.
_CHANGE = """
local version = redis.call('HGET', KEYS[1], 'v')
if not version or version ~= ARGV[2] then return nil end
local puts = tonumber(ARGV[3])
local i = 4
for _ = 1, puts do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for j = i, #ARGV do redis.call('HDEL', KEYS[1], ARGV[j]) end
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('PERSIST', KEYS[1])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], 'NX', now[1] + now[2] / 1000000, ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: roster, dirty set. ARGV: room, flushed version, ttl after the flush.
_FLUSHED = """
local version = redis.call('HGET', KEYS[1], 'v')
if version and version ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if version then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


def encode_entry(entry: RosterEntry) -> str:
    return json.dumps([entry.role, entry.joined_at, entry.nickname], separators=(",", ":"))


def decode_roster(flat: Sequence[bytes | str]) -> Roster | None:
    """HGETALL's flat reply (name, value, name, value...) as a Roster; None for a missing hash."""
    if not flat:
        return None
    version = 0
    members: dict[int, RosterEntry] = {}
    for name, value in zip(flat[::2], flat[1::2], strict=True):
        field = text(name)
        if field == VERSION_FIELD:
            version = int(value)
        else:
            role, joined_at, nickname = json.loads(value)
            members[int(field)] = RosterEntry(int(role), nickname, float(joined_at))
    return Roster(members, version)


class RedisRosters:
    def __init__(self, client: Client, keys: RedisKeys, settings: EngineSettings) -> None:
        self._client = client
        self._keys = keys
        self._settings = settings
        self._get = register(client, _GET)
        self._load = register(client, _LOAD)
        self._change = register(client, _CHANGE)
        self._flushed = register(client, _FLUSHED)

    def _room_keys(self, room_id: int) -> list[str]:
        return [self._keys.roster(room_id), self._keys.dirty_rosters(self._keys.room_partition(room_id))]

    async def get(self, room_id: int) -> Roster | None:
        flat = await run(self._get, self._room_keys(room_id), [room_id, self._settings.roster_ttl])
        return decode_roster(flat)

    async def load(self, room_id: int, roster: Roster) -> Roster:
        args: list[str | int] = [self._settings.roster_ttl, roster.version]
        for user_id, entry in roster.members.items():
            args += [user_id, encode_entry(entry)]
        flat = await run(self._load, [self._keys.roster(room_id)], args)
        loaded = decode_roster(flat)
        assert loaded is not None  # the script just wrote it, or found it
        return loaded

    async def change(self, room_id: int, version: int, put: dict[int, RosterEntry],
                     remove: Sequence[int] = ()) -> Roster:
        args: list[str | int] = [room_id, version, len(put)]
        for user_id, entry in put.items():
            args += [user_id, encode_entry(entry)]
        args += [int(user_id) for user_id in remove]
        flat = await run(self._change, self._room_keys(room_id), args)
        changed = decode_roster(flat) if flat else None
        if changed is None:
            raise RosterConflict(room_id)
        return changed

    async def dirty(self, max_rooms: int) -> list[int]:
        if max_rooms <= 0:
            return []
        pipe = pipeline(self._client)
        for partition in range(self._keys.partitions):
            pipe.zrange(self._keys.dirty_rosters(partition), 0, max_rooms - 1, withscores=True)
        replies = await pipe.execute()
        # Oldest change first across partitions, as the memory engine hands them out.
        merged = heapq.merge(*([(float(score), int(text(room))) for room, score in reply] for reply in replies))
        return [room for _, room in list(merged)[:max_rooms]]

    async def flushed(self, room_id: int, version: int) -> bool:
        done = await run(self._flushed, self._room_keys(room_id),
                         [room_id, version, self._settings.roster_flushed_ttl])
        return bool(done)
