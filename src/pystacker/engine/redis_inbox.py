"""The inbox on Redis Streams: one stream per gateway with one consumer group (GoStacker's names).

What GoStacker got wrong and this fixes (compatibility.md #12, #21): entries are acknowledged by entry id; pending
entries are re-read after a restart (read_pending) and reclaimed when idle (claim_idle); trimming never
drops an entry that is unread or pending (plain MAXLEN does, redis #5570/#6199); consumers are never
deleted (XGROUP DELCONSUMER drops their pending entries, redis #11567); a new group starts at the end
of the stream instead of replaying its history.

Each stream is one key, so every script here has one key and runs on a cluster as it does on one server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from pystacker.engine.base import EngineSettings, InboxEntry, InboxStats
from pystacker.engine.redis_common import LUA_ID_LESS, Client, error_code, is_entry_id, register, run, text
from pystacker.engine.redis_keys import RedisKeys


@dataclass(frozen=True, slots=True)
class AddCalls:
    """The add scripts queued on a pipeline (RedisInbox.queue_add): one per stream, in this order."""

    entries: Sequence[tuple[str, bytes]]
    by_gateway: dict[str, list[int]]  # gateway -> indexes of its entries


def _by_gateway(entries: Sequence[tuple[str, bytes]]) -> dict[str, list[int]]:
    by_gateway: dict[str, list[int]] = {}
    for index, (gateway_id, _) in enumerate(entries):
        by_gateway.setdefault(gateway_id, []).append(index)
    return by_gateway


# A blocking read waits in slices of at most this long: the client's socket timeout (redis-py's default
# is 5 s) must not cut a long wait short.
BLOCK_SLICE_MS = 1000
# XRANGE at most this many entries per add to find where a MAXLEN trim would cut: a stream held back
# by an old pending entry catches up over several adds instead of stalling Redis in one.
TRIM_STEP = 1000
# claim_idle follows XAUTOCLAIM's cursor for at most this many pages (each scans 10 x count entries).
CLAIM_PAGES = 100

# KEYS: stream. ARGV: max_len, trim step, data... -> {created (0/1), id...}
_ADD = LUA_ID_LESS + """
local stream = KEYS[1]
local created = redis.call('EXISTS', stream) == 0 and 1 or 0
local reply = {created}
for i = 3, #ARGV do
  reply[#reply + 1] = redis.call('XADD', stream, '*', 'data', ARGV[i])
end

-- Trim to about max_len, but only below the lowest id that a group has not finished: its oldest
-- pending entry, or the entry after its last delivered one. A stream without a group is all unread.
local excess = redis.call('XLEN', stream) - tonumber(ARGV[1])
if excess <= 0 then return reply end
local groups = group_info(stream)
if #groups == 0 then return reply end
local bound = nil
for _, group in ipairs(groups) do
  local candidate = group['last-delivered-id']  -- kept itself: one extra entry, no id arithmetic
  local pending = redis.call('XPENDING', stream, group['name'])
  if pending[1] > 0 and id_less(pending[2], candidate) then candidate = pending[2] end
  if bound == nil or id_less(candidate, bound) then bound = candidate end
end
-- Nothing below the bound (an old entry still pending): done, without reading entries.
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if not id_less(first[1][1], bound) then return reply end
-- The entry at index `excess` is the oldest one a MAXLEN trim would keep.
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', math.min(excess, tonumber(ARGV[2])) + 1)
local keep_from = head[#head][1]
if id_less(keep_from, bound) then bound = keep_from end
-- '~': whole stream nodes only, which is cheap; it never removes an id at or above the bound.
redis.call('XTRIM', stream, 'MINID', '~', bound)
return reply
"""

# Appends id, data, delivery count of each entry to the reply: XREADGROUP and XAUTOCLAIM do not report
# the count, XPENDING does (one lookup per entry, O(log n) each).
_LUA_DELIVERIES = """
local function with_deliveries(stream, group, entries, reply)
  for _, entry in ipairs(entries) do
    local pending = redis.call('XPENDING', stream, group, entry[1], entry[1], 1)
    local data = ''
    for i = 1, #entry[2], 2 do
      if entry[2][i] == 'data' then data = entry[2][i + 1] end
    end
    reply[#reply + 1] = entry[1]
    reply[#reply + 1] = data
    reply[#reply + 1] = pending[1] and pending[1][4] or 1
  end
  return reply
end

-- Entries deleted from the stream while pending come back without fields (Redis 6.2): nobody can
-- deliver them any more, so they leave the pending list instead of coming back forever.
local function present(stream, group, entries)
  local kept, gone = {}, {}
  for _, entry in ipairs(entries) do
    if entry[2] then kept[#kept + 1] = entry else gone[#gone + 1] = entry[1] end
  end
  if #gone > 0 then redis.call('XACK', stream, group, unpack(gone)) end
  return kept
end
"""

# KEYS: stream. ARGV: group, consumer, count, after_id -> {healed (0/1), id, data, count, ...}
_READ_PENDING = LUA_ID_LESS + _LUA_DELIVERIES + """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local read = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', ARGV[3], 'STREAMS', stream, ARGV[4])
if is_error(read, 'NOGROUP') then
  -- As the memory engine: the gateway's own read re-creates a removed stream and group (at the end).
  redis.call('XGROUP', 'CREATE', stream, group, '$', 'MKSTREAM')
  return {1}
elseif type(read) == 'table' and read.err then
  return redis.error_reply(read.err)
end
local entries = read and read[1] and read[1][2] or {}
return with_deliveries(stream, group, present(stream, group, entries), {0})
"""

# KEYS: stream. ARGV: group, consumer, min_idle_ms, cursor, count -> {next cursor, id, data, count, ...}
_CLAIM = LUA_ID_LESS + _LUA_DELIVERIES + """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local claimed = redis.pcall('XAUTOCLAIM', stream, group, consumer, ARGV[3], ARGV[4], 'COUNT', ARGV[5])
if is_error(claimed, 'NOGROUP') then return {'0-0'} end
if type(claimed) == 'table' and claimed.err then return redis.error_reply(claimed.err) end
return with_deliveries(stream, group, present(stream, group, claimed[2]), {claimed[1]})
"""

# KEYS: stream. ARGV: group -> {length, pending, idle of the oldest pending entry}
_STATS = """
local stream, group = KEYS[1], ARGV[1]
local length = redis.call('XLEN', stream)
local summary = redis.pcall('XPENDING', stream, group)
if (type(summary) == 'table' and summary.err) or summary[1] == 0 then return {length, 0, 0} end
local oldest = redis.call('XPENDING', stream, group, '-', '+', 1)
return {length, summary[1], oldest[1][3]}
"""

# KEYS: stream -> 1 removed, 0 kept (something unread or pending), -1 no such stream
_REMOVE_IF_DRAINED = LUA_ID_LESS + """
local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then return -1 end
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local groups = group_info(stream)
-- Without a group every entry is unread: a stream with entries nobody read is kept.
if #groups == 0 and #last > 0 then return 0 end
for _, group in ipairs(groups) do
  if group['pending'] > 0 then return 0 end
  if #last > 0 and id_less(group['last-delivered-id'], last[1][1]) then return 0 end
end
redis.call('DEL', stream)
return 1
"""


def _entries(flat: Sequence[Any]) -> list[InboxEntry]:
    """Script replies list entries as id, data, deliveries triples."""
    return [InboxEntry(text(flat[i]), bytes(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]


def _read_reply_entries(reply: Any) -> list[tuple[Any, Any]]:
    """The entries of an XREADGROUP reply on one stream, as redis-py parses it for RESP2 or RESP3."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
    entries: list[tuple[Any, Any]] = []
    for stream_entries in streams:
        entries += [(entry[0], entry[1]) for entry in stream_entries]
    return entries


class RedisInbox:
    def __init__(self, client: Client, keys: RedisKeys, settings: EngineSettings) -> None:
        self._client = client
        self._keys = keys
        self._max_len = settings.inbox_max_len
        self._add = register(client, _ADD)
        self._read_pending = register(client, _READ_PENDING)
        self._claim = register(client, _CLAIM)
        self._stats = register(client, _STATS)
        self._remove_if_drained = register(client, _REMOVE_IF_DRAINED)

    async def _list(self, gateway_id: str) -> None:
        # Always after the stream exists (see remove_if_drained for why the order matters).
        await self._client.sadd(self._keys.inbox_gateways, gateway_id)

    async def ensure_group(self, gateway_id: str) -> None:
        try:
            await self._client.xgroup_create(self._keys.stream(gateway_id), self._keys.group(gateway_id),
                                             id="$", mkstream=True)
        except ResponseError as exc:
            if error_code(exc) != "BUSYGROUP":  # exists already: it stays where it was
                raise
        await self._list(gateway_id)

    async def add(self, entries: Sequence[tuple[str, bytes]]) -> list[str]:
        by_gateway = _by_gateway(entries)
        # One script per stream, all at once: streams live in different slots on a cluster.
        replies = await asyncio.gather(*(run(self._add, *self._add_call(gateway_id, entries, indexes))
                                         for gateway_id, indexes in by_gateway.items()))
        return await self._added(entries, by_gateway, replies)

    def queue_add(self, pipe: Any, entries: Sequence[tuple[str, bytes]]) -> AddCalls:
        """Queue add(entries) on a pipeline of this inbox's (non-cluster) client as bare EVALSHAs, one per
        stream, in order. Finish with added_from and the pipeline's replies to them (a NoScriptError
        among them: that stream's entries were not written; add() them)."""
        by_gateway = _by_gateway(entries)
        for gateway_id, indexes in by_gateway.items():
            keys, args = self._add_call(gateway_id, entries, indexes)
            pipe.evalsha(self._add.sha, len(keys), *keys, *args)
        return AddCalls(entries, by_gateway)

    async def added_from(self, calls: AddCalls, replies: Sequence[Any]) -> list[str]:
        """The entry ids, as add() returns them. A NoScriptError reply (the script is not loaded on this
        server yet) wrote nothing to its stream: that stream's call is run again, which loads it; any
        other error is raised."""
        finished = list(replies)
        for position, ((gateway_id, indexes), reply) in enumerate(zip(calls.by_gateway.items(), replies, strict=True)):
            if isinstance(reply, NoScriptError):
                finished[position] = await run(self._add, *self._add_call(gateway_id, calls.entries, indexes))
            elif isinstance(reply, Exception):
                raise reply
        return await self._added(calls.entries, calls.by_gateway, finished)

    def _add_call(self, gateway_id: str, entries: Sequence[tuple[str, bytes]],
                  indexes: list[int]) -> tuple[list[str], list[Any]]:
        return [self._keys.stream(gateway_id)], [self._max_len, TRIM_STEP, *(entries[i][1] for i in indexes)]

    async def _added(self, entries: Sequence[tuple[str, bytes]], by_gateway: dict[str, list[int]],
                     replies: Sequence[Any]) -> list[str]:
        ids: list[str] = [""] * len(entries)
        created: list[str] = []
        for (gateway_id, indexes), reply in zip(by_gateway.items(), replies, strict=True):
            if reply[0]:
                created.append(gateway_id)
            for index, entry_id in zip(indexes, reply[1:], strict=True):
                ids[index] = text(entry_id)
        if created:
            await self._client.sadd(self._keys.inbox_gateways, *created)
        return ids

    async def read_new(self, gateway_id: str, consumer: str, count: int, block_ms: int) -> list[InboxEntry]:
        if count <= 0:
            return []
        # block_ms <= 0 does not wait at all (Redis's BLOCK 0 would wait forever: no caller wants that).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(block_ms, 0) / 1000
        stream, group = self._keys.stream(gateway_id), self._keys.group(gateway_id)
        while True:
            remaining_ms = int((deadline - loop.time()) * 1000)
            block = min(remaining_ms, BLOCK_SLICE_MS) if remaining_ms > 0 else None
            try:
                reply = await self._client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block)
            except ResponseError as exc:
                # NOGROUP: the stream or its group is gone (removed by a msgflusher that thought this
                # gateway departed). UNBLOCKED: it went away while we waited (Redis >= 7). Either way,
                # re-create it at once, as the memory engine does, so that new entries find the group.
                if error_code(exc) not in ("NOGROUP", "UNBLOCKED"):
                    raise
                await self.ensure_group(gateway_id)
                reply = None
            entries = _read_reply_entries(reply)
            if entries:
                return [InboxEntry(text(entry_id), bytes((fields or {}).get(b"data", b"")), 1)
                        for entry_id, fields in entries]
            if block is None or loop.time() >= deadline:
                return []

    async def read_pending(self, gateway_id: str, consumer: str, count: int,
                           after_id: str = "0-0") -> list[InboxEntry]:
        if count <= 0:
            return []
        start = after_id if is_entry_id(after_id) else "0-0"
        reply = await run(self._read_pending, [self._keys.stream(gateway_id)],
                          [self._keys.group(gateway_id), consumer, count, start])
        if reply[0]:
            await self._list(gateway_id)
        return _entries(reply[1:])

    async def ack(self, gateway_id: str, entry_ids: Sequence[str]) -> int:
        valid = [entry_id for entry_id in entry_ids if is_entry_id(entry_id)]
        if not valid:
            return 0
        return int(await self._client.xack(self._keys.stream(gateway_id), self._keys.group(gateway_id), *valid))

    async def claim_idle(self, gateway_id: str, consumer: str, min_idle_ms: int, count: int) -> list[InboxEntry]:
        claimed: list[InboxEntry] = []
        cursor = "0-0"
        for _ in range(CLAIM_PAGES):
            if len(claimed) >= count:
                break
            reply = await run(self._claim, [self._keys.stream(gateway_id)],
                              [self._keys.group(gateway_id), consumer, max(min_idle_ms, 0), cursor,
                               count - len(claimed)])
            claimed += _entries(reply[1:])
            cursor = text(reply[0])
            if cursor == "0-0":  # the whole pending list was scanned
                break
        return claimed

    async def gateways(self) -> list[str]:
        return sorted(text(member) for member in await self._client.smembers(self._keys.inbox_gateways))

    async def stats(self, gateway_id: str) -> InboxStats:
        length, pending, oldest_ms = await run(self._stats, [self._keys.stream(gateway_id)],
                                               [self._keys.group(gateway_id)])
        return InboxStats(length=int(length), pending=int(pending), oldest_pending_ms=int(oldest_ms))

    async def remove_if_drained(self, gateway_id: str) -> bool:
        # The id leaves the set first and comes back if the stream stays. add() lists a stream only
        # after creating it, so an add racing with this removal always ends listed: either the script
        # sees its entry and keeps the stream (listed again below), or the add re-creates the stream
        # after the delete and lists it after our SREM.
        await self._client.srem(self._keys.inbox_gateways, gateway_id)
        outcome = int(await run(self._remove_if_drained, [self._keys.stream(gateway_id)], []))
        if outcome == 0:
            await self._list(gateway_id)
        return outcome == 1
