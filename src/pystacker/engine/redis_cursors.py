"""Delivery cursors, read marks and named devices' cursors on Redis: one HASH per owner (room -> seq)
and a dirty ZSET per owner partition, for each of the three kinds of watermark (RedisCursors.delivery,
.reading and .devices; an owner is a user, or a device key for the last).

A user's hash and the dirty set of his partition share a hash tag (`{<prefix>pystacker:c<n>}`, n =
user_id % partitions), so that moving a cursor and marking it dirty is one script: a cursor can never
move without the flusher hearing of it. Dirty members are "<user>:<room>:<seq>" scored by when the
cursor first changed since it was last taken, so take_dirty hands out the oldest first (as the memory
engine does) and reads nothing but the dirty set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from pystacker.engine.redis_common import Client, pipeline, register, run, text
from pystacker.engine.redis_keys import RedisKeys

# KEYS: the partition's dirty set, then user hashes. ARGV: (index of the user's hash in KEYS, user, room,
# seq) quadruples. A cursor only moves forward; a dirty cursor that moves again keeps its place in line.
_ADVANCE = """
local dirty = KEYS[1]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 1, #ARGV, 4 do
  local hash, user, room, seq = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local current = redis.call('HGET', hash, room)
  if not current or tonumber(seq) > tonumber(current) then
    redis.call('HSET', hash, room, seq)
    local score = now_ms
    if current then
      local previous = user .. ':' .. room .. ':' .. current
      local since = redis.call('ZSCORE', dirty, previous)
      if since then
        score = since
        redis.call('ZREM', dirty, previous)
      end
    end
    redis.call('ZADD', dirty, score, user .. ':' .. room .. ':' .. seq)
  end
end
return 1
"""


class RedisCursors:
    def __init__(self, client: Client, keys: RedisKeys, *, hash_of: Callable[[int], str],
                 dirty_of: Callable[[int], str]) -> None:
        """`hash_of(user_id)`: the user's HASH; `dirty_of(partition)`: the partition's dirty ZSET; both
        in the user's partition tag."""
        self._client = client
        self._keys = keys
        self._hash_of = hash_of
        self._dirty_of = dirty_of
        self._advance = register(client, _ADVANCE)
        self._next_partition = 0  # take_dirty starts here: no partition waits behind a busy one

    @classmethod
    def delivery(cls, client: Client, keys: RedisKeys) -> RedisCursors:
        return cls(client, keys, hash_of=keys.cursors, dirty_of=keys.dirty_cursors)

    @classmethod
    def reading(cls, client: Client, keys: RedisKeys) -> RedisCursors:
        return cls(client, keys, hash_of=keys.read_marks, dirty_of=keys.dirty_read_marks)

    @classmethod
    def devices(cls, client: Client, keys: RedisKeys) -> RedisCursors:
        return cls(client, keys, hash_of=keys.device_cursors, dirty_of=keys.dirty_device_cursors)

    async def get(self, user_id: int, room_ids: Sequence[int]) -> dict[int, int]:
        if not room_ids:
            return {}
        values = await self._client.hmget(self._hash_of(user_id), [str(room) for room in room_ids])
        return {room: int(value) for room, value in zip(room_ids, values, strict=True) if value is not None}

    async def of_users(self, user_ids: Sequence[int], room_id: int) -> dict[int, int]:
        if not user_ids:
            return {}
        pipe = pipeline(self._client)
        for user_id in user_ids:
            pipe.hget(self._hash_of(user_id), str(room_id))
        values = await pipe.execute()
        return {user: int(value) for user, value in zip(user_ids, values, strict=True) if value is not None}

    async def rooms(self, user_id: int) -> list[int]:
        return sorted(int(room) for room in await self._client.hkeys(self._hash_of(user_id)))

    async def advance(self, updates: Sequence[tuple[int, int, int]]) -> None:
        # One script per partition, all at once (partitions live in different slots on a cluster).
        await asyncio.gather(*(run(self._advance, keys, args) for keys, args in self._advance_calls(updates)))

    def queue_advance(self, pipe: Any, updates: Sequence[tuple[int, int, int]]) -> list[tuple[list[str], list[Any]]]:
        """Queue advance(updates) on a pipeline of this cursor store's (non-cluster) client as bare
        EVALSHAs, one per partition. Finish with advanced_from and the pipeline's replies to them."""
        calls = self._advance_calls(updates)
        for keys, args in calls:
            pipe.evalsha(self._advance.sha, len(keys), *keys, *args)
        return calls

    async def advanced_from(self, calls: list[tuple[list[str], list[Any]]], replies: Sequence[Any]) -> None:
        """A NoScriptError reply (the script is not loaded on this server yet) moved nothing: that call
        is run again, which loads it; any other error is raised."""
        for (keys, args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):
                await run(self._advance, keys, args)
            elif isinstance(reply, Exception):
                raise reply

    def _advance_calls(self, updates: Sequence[tuple[int, int, int]]) -> list[tuple[list[str], list[Any]]]:
        by_partition: dict[int, list[tuple[int, int, int]]] = {}
        for user_id, room_id, seq in updates:
            by_partition.setdefault(self._keys.user_partition(user_id), []).append((user_id, room_id, seq))
        calls: list[tuple[list[str], list[Any]]] = []
        for partition, items in by_partition.items():
            keys = [self._dirty_of(partition)]
            index: dict[int, int] = {}
            args: list[Any] = []
            for user_id, room_id, seq in items:
                if user_id not in index:
                    keys.append(self._hash_of(user_id))
                    index[user_id] = len(keys)  # Lua counts from 1
                args += [index[user_id], user_id, room_id, int(seq)]
            calls.append((keys, args))
        return calls

    async def forget(self, owner_ids: Sequence[int]) -> None:
        # Their dirty members stay in the partition's set (finding them would mean a scan per owner):
        # the flusher writes them to SQL, and its next sweep deletes rows of devices that are gone.
        for owner in owner_ids:
            await self._client.delete(self._hash_of(owner))

    async def take_dirty(self, max_items: int) -> list[tuple[int, int, int]]:
        if max_items <= 0:
            return []
        partitions = self._keys.partitions
        order = [(self._next_partition + i) % partitions for i in range(partitions)]
        self._next_partition = (self._next_partition + 1) % partitions
        pipe = pipeline(self._client)
        for partition in order:
            pipe.zcard(self._dirty_of(partition))
        sizes = await pipe.execute()

        # Take exactly what fits: ZPOPMIN removes what it returns, and a cursor taken is not seen again.
        plan: list[tuple[int, int]] = []
        remaining = max_items
        for partition, size in zip(order, sizes, strict=True):
            if remaining <= 0:
                break
            if size:
                plan.append((partition, min(int(size), remaining)))
                remaining -= plan[-1][1]
        if not plan:
            return []
        pipe = pipeline(self._client)
        for partition, count in plan:
            pipe.zpopmin(self._dirty_of(partition), count)
        taken: list[tuple[int, int, int]] = []
        for popped in await pipe.execute():
            for member, _score in popped:
                user, room, seq = text(member).split(":")
                taken.append((int(user), int(room), int(seq)))
        return taken
