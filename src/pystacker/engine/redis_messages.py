"""The message log on Redis: seq counters, recent windows, idempotency keys and the flush queue.

Keys (redis_keys.py), all of one room in its partition's hash tag `{<prefix>pystacker:p<n>}`:
- `seq:<room>`: the last allocated seq. Missing means "unknown", never 0: the counter is seeded from SQL
  (seq_seed) before use, so after a Redis restart seqs continue instead of restarting at 1;
- `win:<room>`: ZSET of message JSON by seq: every unflushed message plus the newest window_size;
- `unfl:<room>`: ZSET of the seqs not yet confirmed by the flusher (they bound the window's trimming);
- `unfl:ids`: one HASH per partition, msg id -> "<room>:<seq>" of its unconfirmed messages, so that a
  message is found by id (resend) before SQL has it;
- `idem:<room>:<sender>:<client_msg_id>`: the first message sent under that key, for idempotency_ttl.
  Idempotency is per (room, sender, client_msg_id), on both engines and in SQL's unique key: the room
  must be in the key, since on a cluster a script may only touch the slot of its room;
- `flush`: one stream per partition, read through the consumer group `flushers`. Its entry ids are
  server time in microseconds (kept strictly increasing), so take_batch can merge the partitions
  oldest first. A batch is the partitions' entries it took; confirming it XACKs and XDELs them.
  Entries a flusher took and did not confirm within flush_claim_timeout are idle in the group's
  pending list, and the next take_batch claims them (XCLAIM with a minimum idle time, so two flushers
  never both get one).

`append` is one Lua script (idempotency check, INCR, window, unflushed mark, flush entry, trimming):
nothing can see half an append, and a crash cannot leave a seq without its message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson

from pystacker.engine.base import Appended, EngineSettings, FlushBatch, LogEnd, SeqSeed, TargetChange
from pystacker.engine.redis_common import LUA_ID_LESS, Client, id_order, pipeline, register, run, text
from pystacker.engine.redis_keys import RedisKeys
from pystacker.messaging.model import NewMessage, StoredMessage

FLUSH_GROUP = "flushers"
# Every flusher reads under one consumer name: ownership is tracked by batch (the token), and a
# consumer per process would pile up in the group with every restart.
FLUSH_CONSUMER = "flusher"
# A batch is at most this big: the scripts pass its ids to XCLAIM/XACK/XDEL in one call (Lua's unpack
# has a limit near 8000).
MAX_BATCH = 2000
# A seq counter may vanish again between its seeding and the retry (a restart, a FLUSHALL): give up
# after this many seedings instead of looping.
SEED_ATTEMPTS = 3

_LUA_WINDOW = """
-- Drop the window's messages below both the oldest unflushed seq and the newest window_size.
local function trim_window(win, unfl, last_seq, window_size)
  local bound = last_seq - window_size + 1
  local oldest = redis.call('ZRANGE', unfl, 0, 0, 'WITHSCORES')
  if #oldest > 0 and tonumber(oldest[2]) < bound then bound = tonumber(oldest[2]) end
  redis.call('ZREMRANGEBYSCORE', win, '-inf', '(' .. string.format('%d', bound))
end
"""

_LUA_APPEND = _LUA_WINDOW + """
-- Append one entry: K = {seq, window, unflushed, flush, flush clock, unflushed ids, msg_no}, idem =
-- the idempotency key or nil, A = {entry JSON without its seq, window_size, idempotency_ttl, msg id,
-- room id}; `counts`: a message (its msg_no is one more), not a room event.
-- -> {'ok', seq, msg_no} | {'seed'} (no counters: nothing was written; seed them and call again)
local function append_entry(K, idem, A, counts)
  local seq_key, win, unfl, flush, clock, ids, mno = K[1], K[2], K[3], K[4], K[5], K[6], K[7]
  if redis.call('EXISTS', seq_key) == 0 or redis.call('EXISTS', mno) == 0 then return {'seed'} end

  -- Reads first: a script is not rolled back when a command fails, so nothing may fail after a write.
  -- The flush entry id: microseconds of server time, above every id the stream has had.
  local now = redis.call('TIME')
  local flush_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last_us = redis.call('GET', clock)
  if not last_us then
    -- The clock is kept with the stream; should it be lost alone, start above the stream's last id.
    local info = redis.pcall('XINFO', 'STREAM', flush)
    last_us = 0
    if type(info) == 'table' and not info.err then
      for i = 1, #info, 2 do
        if info[i] == 'last-generated-id' then last_us = tonumber(string.match(info[i + 1], '^(%d+)-')) end
      end
    end
  end
  last_us = tonumber(last_us)
  if flush_us <= last_us then flush_us = last_us + 1 end
  local flush_id = string.format('%.0f', flush_us)

  local seq = string.format('%d', redis.call('INCR', seq_key))
  local no
  if counts then no = string.format('%d', redis.call('INCR', mno)) else no = redis.call('GET', mno) end
  local stored = '{"seq":' .. seq .. ',"msg_no":' .. no .. ',' .. string.sub(A[1], 2)
  redis.call('ZADD', win, seq, stored)
  redis.call('ZADD', unfl, seq, seq)
  redis.call('HSET', ids, A[4], A[5] .. ':' .. seq)
  redis.call('SET', clock, flush_id)
  redis.call('XADD', flush, flush_id .. '-0', 'm', stored)
  if idem then redis.call('SET', idem, stored, 'EX', A[3]) end
  trim_window(win, unfl, tonumber(seq), tonumber(A[2]))
  return {'ok', seq, no}
end
"""

# KEYS: seq, window, unflushed, flush, flush clock, unflushed ids, msg_no[, idempotency key]
# ARGV: the message JSON without its seq, window_size, idempotency_ttl, msg id, room id
# -> {'ok', seq, msg_no} | {'dup', first message JSON} | {'seed'} (no counters: seed them and call again)
_APPEND = _LUA_APPEND + """
local idem = KEYS[8]
if idem then
  local first = redis.call('GET', idem)
  if first then return {'dup', first} end
end
return append_entry(KEYS, idem, ARGV, true)
"""

# KEYS: the seven room keys as for _APPEND, the target's revision record, the event's idempotency key
# (or any key of the room when it has none), then the patches' idempotency keys.
# ARGV: the five of _APPEND, has idempotency key (0/1), has expected record (0/1), expected record,
# new record, patch count, then per patch: seq, msg id, entry JSON, index in KEYS of its idempotency
# key (0: none).
# -> as _APPEND, or {'changed'}: the revision record is not the expected one (nothing written).
_APPEND_EVENT = _LUA_APPEND + """
local idem = nil
if ARGV[6] == '1' then idem = KEYS[9] end
if idem then
  local first = redis.call('GET', idem)
  if first then return {'dup', first} end
end
local current = redis.call('GET', KEYS[8])
if ARGV[7] == '1' then
  if current ~= ARGV[8] then return {'changed'} end
elseif current then
  return {'changed'}
end
local reply = append_entry(KEYS, idem, ARGV, false)
if reply[1] ~= 'ok' then return reply end
redis.call('SET', KEYS[8], (string.gsub(ARGV[9], '%$seq', reply[2])), 'EX', ARGV[3])
local win = KEYS[2]
local at = 11
for _ = 1, tonumber(ARGV[10]) do
  local seq, marker, entry, key_index = ARGV[at], '"msg_id":' .. ARGV[at + 1] .. ',', ARGV[at + 2], tonumber(ARGV[at + 3])
  at = at + 4
  for _, held in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], seq, seq)) do
    if string.find(held, marker, 1, true) then
      redis.call('ZREM', win, held)
      redis.call('ZADD', win, seq, entry)
    end
  end
  if key_index > 0 then redis.call('SET', KEYS[key_index], entry, 'XX', 'KEEPTTL') end
end
return reply
"""

# KEYS: seq, window -> {'ok', lowest seq held (last + 1 when none)} | {'seed'}
_WINDOW_START = """
local last = redis.call('GET', KEYS[1])
if not last then return {'seed'} end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first > 0 then return {'ok', first[2]} end
return {'ok', tonumber(last) + 1}
"""

# KEYS: flush. ARGV: group, claim timeout ms, count -> {expired ids, unread ids}, oldest first, each at
# most count. Only looks: take_batch first chooses across partitions, then takes.
_PEEK = LUA_ID_LESS + """
local flush, group = KEYS[1], ARGV[1]
-- At id 0: every entry of a flush queue is still to be flushed, including those of a re-created stream.
local created = redis.pcall('XGROUP', 'CREATE', flush, group, '0', 'MKSTREAM')
if type(created) == 'table' and created.err and not is_error(created, 'BUSYGROUP') then
  return redis.error_reply(created.err)
end
local expired = {}
for _, p in ipairs(redis.call('XPENDING', flush, group, 'IDLE', ARGV[2], '-', '+', ARGV[3])) do
  expired[#expired + 1] = p[1]
end
local last_delivered = '0-0'
for _, info in ipairs(group_info(flush)) do
  if info['name'] == group then last_delivered = info['last-delivered-id'] end
end
local unread = {}
for _, entry in ipairs(redis.call('XRANGE', flush, '(' .. last_delivered, '+', 'COUNT', ARGV[3])) do
  unread[#unread + 1] = entry[1]
end
return {expired, unread}
"""

# KEYS: flush. ARGV: group, consumer, claim timeout ms, new count, expired ids...
# -> {{id, json, ...} claimed, {id, json, ...} new}
_TAKE = """
local flush, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local function field(entry)
  for i = 1, #entry[2], 2 do
    if entry[2][i] == 'm' then return entry[2][i + 1] end
  end
  return '{}'
end
local claimed, fresh = {}, {}
if #ARGV > 4 then
  local ids = {}
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
  -- XCLAIM re-checks the idle time: an entry another flusher claimed meanwhile is not taken twice.
  for _, entry in ipairs(redis.call('XCLAIM', flush, group, consumer, ARGV[3], unpack(ids))) do
    if entry[2] then
      claimed[#claimed + 1] = entry[1]
      claimed[#claimed + 1] = field(entry)
    end
  end
end
if tonumber(ARGV[4]) > 0 then
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', ARGV[4], 'STREAMS', flush, '>')
  if read then
    for _, entry in ipairs(read[1][2]) do
      fresh[#fresh + 1] = entry[1]
      fresh[#fresh + 1] = field(entry)
    end
  end
end
return {claimed, fresh}
"""

# KEYS: flush, unflushed ids, then seq, window, unflushed of each room of the batch
# ARGV: group, window_size, id count, entry ids..., msg id count, msg ids..., then for each room:
# seq count, seqs...
_CONFIRM = _LUA_WINDOW + """
local flush, group, window_size = KEYS[1], ARGV[1], tonumber(ARGV[2])
local id_count = tonumber(ARGV[3])
if id_count > 0 then
  local ids = {}
  for i = 1, id_count do ids[i] = ARGV[3 + i] end
  redis.call('XACK', flush, group, unpack(ids))
  redis.call('XDEL', flush, unpack(ids))
end
local at = 4 + id_count
local msg_count = tonumber(ARGV[at])
if msg_count > 0 then
  local msg_ids = {}
  for i = 1, msg_count do msg_ids[i] = ARGV[at + i] end
  redis.call('HDEL', KEYS[2], unpack(msg_ids))
end
at = at + 1 + msg_count
for k = 3, #KEYS, 3 do
  local seq_key, win, unfl = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local seqs = {}
  for i = 1, tonumber(ARGV[at]) do seqs[i] = ARGV[at + i] end
  at = at + 1 + #seqs
  if #seqs > 0 then redis.call('ZREM', unfl, unpack(seqs)) end
  local last = redis.call('GET', seq_key)
  if last then trim_window(win, unfl, tonumber(last), window_size) end
end
return 1
"""


def encode_body(message: NewMessage) -> bytes:
    """The stored JSON without its seq: the script puts `"seq":N` in front."""
    fields: dict[str, Any] = {"msg_id": message.msg_id, "room_id": message.room_id, "sender_id": message.sender_id,
                              "type": message.type, "content": message.content,
                              "created_at_ms": message.created_at_ms, "client_msg_id": message.client_msg_id}
    if message.reply_to is not None:
        fields["reply_to"] = message.reply_to
    return orjson.dumps(fields)


# A message's state after room events: kept in its entry only once set, so that entries of messages
# nothing changed stay as small as they were.
_STATE_FIELDS = ("reply_to", "edited_at_ms", "recalled_by", "recalled_at_ms")


def encode_stored(message: StoredMessage) -> bytes:
    """The whole entry, seq first (as the append script writes it, which the patches rely on:
    `"msg_id":<id>,` follows the seq)."""
    fields: dict[str, Any] = {"seq": message.seq, "msg_no": message.msg_no, "msg_id": message.msg_id,
                              "room_id": message.room_id,
                              "sender_id": message.sender_id, "type": message.type, "content": message.content,
                              "created_at_ms": message.created_at_ms, "client_msg_id": message.client_msg_id}
    for name in _STATE_FIELDS:
        value = getattr(message, name)
        if value is not None:
            fields[name] = value
    return orjson.dumps(fields)


def decode_stored(raw: Any) -> StoredMessage:
    """An entry as the window holds it (redis-py types a sorted set's members loosely: bytes here)."""
    fields = orjson.loads(raw)
    return StoredMessage(msg_id=int(fields["msg_id"]), room_id=int(fields["room_id"]), seq=int(fields["seq"]),
                         sender_id=int(fields["sender_id"]), type=str(fields["type"]), content=fields["content"],
                         created_at_ms=int(fields["created_at_ms"]), client_msg_id=fields.get("client_msg_id"),
                         reply_to=fields.get("reply_to"), edited_at_ms=fields.get("edited_at_ms"),
                         recalled_by=fields.get("recalled_by"), recalled_at_ms=fields.get("recalled_at_ms"),
                         msg_no=int(fields.get("msg_no", 0)))


def _plan_batch(peeks: Sequence[tuple[list[str], list[str]]], limit: int) -> dict[int, tuple[list[str], int]]:
    """Which entries a batch takes from each partition: partition -> (expired ids to claim, new count).

    `peeks` holds each partition's expired and unread ids, oldest first. Expired entries come first, as
    the memory engine puts expired batches back at the head of its queue; then the oldest unread
    entries of all partitions (their ids are server time, so they merge by id).
    """
    expired = sorted((id_order(i), p, i) for p, (ids, _) in enumerate(peeks) for i in ids)[:limit]
    unread = sorted((id_order(i), p) for p, (_, ids) in enumerate(peeks) for i in ids)[:limit - len(expired)]
    plan: dict[int, tuple[list[str], int]] = {}
    for _, p, entry_id in expired:
        plan.setdefault(p, ([], 0))[0].append(entry_id)
    for _, p in unread:
        ids, count = plan.get(p, ([], 0))
        plan[p] = (ids, count + 1)
    return plan


def _parse_token(token: str) -> list[tuple[int, str, int, int, int]]:
    """(partition, entry id, room, seq, msg id) of each message of a batch token."""
    try:
        return [(int(p), str(entry_id), int(room), int(seq), int(msg_id))
                for p, entry_id, room, seq, msg_id in orjson.loads(token)]
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"not a flush batch token: {token[:80]!r}") from exc


def _pairs(flat: Sequence[Any]) -> list[tuple[str, bytes]]:
    return [(text(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]


class RedisMessageLog:
    def __init__(self, client: Client, keys: RedisKeys, settings: EngineSettings, seq_seed: SeqSeed) -> None:
        self._client = client
        self._keys = keys
        self._settings = settings
        self._seq_seed = seq_seed
        self._claim_ms = max(int(settings.flush_claim_timeout * 1000), 1)
        # One seeding per room at a time in this process (others wait for it); SET NX settles races
        # between processes.
        self._seeding: dict[int, asyncio.Future[None]] = {}
        self._append = register(client, _APPEND)
        self._append_event = register(client, _APPEND_EVENT)
        self._window_start = register(client, _WINDOW_START)
        self._peek = register(client, _PEEK)
        self._take = register(client, _TAKE)
        self._confirm = register(client, _CONFIRM)

    # -- seq counters ---------------------------------------------------------------------------------

    async def _seed(self, room_id: int) -> None:
        flight = self._seeding.get(room_id)
        if flight is None:
            flight = asyncio.ensure_future(self._seed_once(room_id))
            self._seeding[room_id] = flight
            flight.add_done_callback(lambda _: self._seeding.pop(room_id, None))
        # Shielded: a caller that gives up must not cancel the seeding others wait for.
        await asyncio.shield(flight)

    async def _seed_once(self, room_id: int) -> None:
        keys = [self._keys.seq(room_id), self._keys.msg_no(room_id)]
        # A seeding that finished while our script ran has set them: SQL need not be asked again.
        if await self._client.exists(*keys) == len(keys):
            return
        end = await self._seq_seed(room_id)
        pipe = pipeline(self._client)
        pipe.set(keys[0], int(end.seq), nx=True)
        pipe.set(keys[1], int(end.msg_no), nx=True)
        await pipe.execute()

    # -- MessageLog -------------------------------------------------------------------------------------

    async def append(self, message: NewMessage) -> Appended:
        keys, args = self._append_call(message)
        for _ in range(SEED_ATTEMPTS + 1):
            appended = self.appended_from(message, await run(self._append, keys, args))
            if appended is not None:
                return appended
            await self._seed(message.room_id)
        raise RuntimeError(f"the seq counter of room {message.room_id} keeps vanishing after seeding")

    async def append_event(self, event: NewMessage, change: TargetChange) -> Appended | None:
        keys = self._keys.room_keys(event.room_id)
        keys.append(self._keys.revision(event.room_id, change.target_id))
        keys.append(self._keys.idempotency(event.room_id, event.sender_id, event.client_msg_id)
                    if event.client_msg_id is not None else keys[0])
        args: list[Any] = [encode_body(event), self._settings.window_size, self._settings.idempotency_ttl,
                           event.msg_id, event.room_id, int(event.client_msg_id is not None),
                           int(change.expected is not None), change.expected or "", change.revision,
                           len(change.patches)]
        for patch in change.patches:
            key_index = 0
            if patch.client_msg_id is not None:
                keys.append(self._keys.idempotency(patch.room_id, patch.sender_id, patch.client_msg_id))
                key_index = len(keys)  # Lua counts from 1
            args += [patch.seq, patch.msg_id, encode_stored(patch), key_index]
        for _ in range(SEED_ATTEMPTS + 1):
            reply = await run(self._append_event, keys, args)
            if text(reply[0]) == "changed":
                return None
            appended = self.appended_from(event, reply)
            if appended is not None:
                return appended
            await self._seed(event.room_id)
        raise RuntimeError(f"the seq counter of room {event.room_id} keeps vanishing after seeding")

    async def revision(self, room_id: int, msg_id: int) -> str | None:
        found = await self._client.get(self._keys.revision(room_id, msg_id))
        return None if found is None else text(found)

    def queue_append(self, pipe: Any, message: NewMessage) -> None:
        """Queue the append script on a pipeline of this log's client, as a bare EVALSHA (a redis-py
        Script in a pipeline asks SCRIPT EXISTS first: one more round trip). Read its reply with
        appended_from; a NoScriptError reply means the script is not loaded yet: call append()."""
        keys, args = self._append_call(message)
        pipe.evalsha(self._append.sha, len(keys), *keys, *args)

    def appended_from(self, message: NewMessage, reply: Any) -> Appended | None:
        """The append script's reply; None when the room's seq counter is missing (nothing was
        appended: seed the counter, then append again)."""
        outcome = text(reply[0])
        if outcome == "ok":
            stored = StoredMessage(msg_id=message.msg_id, room_id=message.room_id, seq=int(reply[1]),
                                   sender_id=message.sender_id, type=message.type, content=message.content,
                                   created_at_ms=message.created_at_ms, client_msg_id=message.client_msg_id,
                                   reply_to=message.reply_to)
            return Appended(replace(stored, msg_no=int(reply[2])), duplicate=False)
        if outcome == "dup":
            return Appended(decode_stored(reply[1]), duplicate=True)
        return None

    def _append_call(self, message: NewMessage) -> tuple[list[str], list[Any]]:
        keys = self._keys.room_keys(message.room_id)
        if message.client_msg_id is not None:
            keys.append(self._keys.idempotency(message.room_id, message.sender_id, message.client_msg_id))
        return keys, [encode_body(message), self._settings.window_size, self._settings.idempotency_ttl,
                      message.msg_id, message.room_id]

    async def read(self, room_id: int, after_seq: int, limit: int) -> list[StoredMessage]:
        if limit <= 0:
            return []
        raw = await self._client.zrangebyscore(self._keys.window(room_id), f"({after_seq}", "+inf",
                                               start=0, num=limit)
        return [decode_stored(item) for item in raw]

    async def unflushed_by_id(self, msg_id: int) -> StoredMessage | None:
        # The id says nothing of its room: ask every partition's index (one round trip; a rare call).
        pipe = pipeline(self._client)
        for partition in range(self._keys.partitions):
            pipe.hget(self._keys.unflushed_ids(partition), str(msg_id))
        for found in await pipe.execute():
            if found is None:
                continue
            room_id, seq = (int(part) for part in text(found).split(":"))
            raw = await self._client.zrangebyscore(self._keys.window(room_id), seq, seq)
            for item in raw:
                message = decode_stored(item)
                if message.msg_id == msg_id:
                    return message
        return None

    async def window_start(self, room_id: int) -> int:
        keys = [self._keys.seq(room_id), self._keys.window(room_id)]
        for _ in range(SEED_ATTEMPTS + 1):
            reply = await run(self._window_start, keys, [])
            if text(reply[0]) == "ok":
                return int(reply[1])
            # Answering from an empty window without a counter would tell readers the window holds
            # everything, and they would skip SQL.
            await self._seed(room_id)
        raise RuntimeError(f"the seq counter of room {room_id} keeps vanishing after seeding")

    async def last_seqs(self, room_ids: Sequence[int]) -> dict[int, int]:
        return {room: end.seq for room, end in (await self.ends(room_ids)).items()}

    async def ends(self, room_ids: Sequence[int]) -> dict[int, LogEnd]:
        rooms = list(dict.fromkeys(room_ids))
        found: dict[int, LogEnd] = {}
        for _ in range(SEED_ATTEMPTS + 1):
            missing = [room for room in rooms if room not in found]
            if not missing:
                return found
            pipe = pipeline(self._client)
            for room in missing:
                pipe.get(self._keys.seq(room))
                pipe.get(self._keys.msg_no(room))
            values = await pipe.execute()
            for index, room in enumerate(missing):
                seq, msg_no = values[2 * index], values[2 * index + 1]
                if seq is not None and msg_no is not None:
                    found[room] = LogEnd(int(seq), int(msg_no))
            # Seeded like append: 0 for a lost counter would hide SQL's messages from the catch-up.
            await asyncio.gather(*(self._seed(room) for room in missing if room not in found))
        raise RuntimeError(f"log counters keep vanishing after seeding: rooms {missing}")

    # -- the flush queue --------------------------------------------------------------------------------

    async def take_batch(self, max_messages: int) -> FlushBatch | None:
        limit = min(max_messages, MAX_BATCH)
        if limit <= 0:
            return None
        # Look at every partition's queue, choose the oldest entries overall, then take them: taking
        # more than we keep would leave the rest owned by this batch until the claim timeout.
        peeks = await asyncio.gather(*(
            run(self._peek, [self._keys.flush(p)], [FLUSH_GROUP, self._claim_ms, limit])
            for p in range(self._keys.partitions)))
        plan = _plan_batch([([text(i) for i in expired], [text(i) for i in unread]) for expired, unread in peeks],
                           limit)
        if not plan:
            return None
        taken = await asyncio.gather(*(
            run(self._take, [self._keys.flush(p)], [FLUSH_GROUP, FLUSH_CONSUMER, self._claim_ms, count, *ids])
            for p, (ids, count) in plan.items()))

        claimed: list[tuple[tuple[int, int], int, str, bytes]] = []
        new: list[tuple[tuple[int, int], int, str, bytes]] = []
        for p, (claimed_flat, new_flat) in zip(plan, taken, strict=True):
            claimed += [(id_order(i), p, i, raw) for i, raw in _pairs(claimed_flat)]
            new += [(id_order(i), p, i, raw) for i, raw in _pairs(new_flat)]
        entries = sorted(claimed) + sorted(new)
        if not entries:
            return None  # other flushers took them between the look and the take
        messages = [decode_stored(raw) for _, _, _, raw in entries]
        token = orjson.dumps([[p, entry_id, message.room_id, message.seq, message.msg_id]
                              for (_, p, entry_id, _), message in zip(entries, messages, strict=True)])
        return FlushBatch(token.decode(), messages)

    async def batch_pending(self, token: str) -> bool:
        items = _parse_token(token)
        by_partition: dict[int, list[str]] = {}
        for p, entry_id, _, _, _ in items:
            by_partition.setdefault(p, []).append(entry_id)
        pipe = pipeline(self._client)
        for p, ids in by_partition.items():
            ordered = sorted(ids, key=id_order)
            pipe.xpending_range(self._keys.flush(p), FLUSH_GROUP, ordered[0], ordered[-1], len(ids) + MAX_BATCH)
        answers = await pipe.execute(raise_on_error=False)
        for ids, answer in zip(by_partition.values(), answers, strict=True):
            if isinstance(answer, Exception):
                return False  # NOGROUP: the stream or its group is gone with the store
            pending = {text(entry["message_id"]) for entry in answer}
            if not set(ids) <= pending:
                return False
        return True

    async def confirm_batch(self, token: str) -> None:
        # A token of a batch confirmed already, or of one that expired and went to another flusher,
        # changes nothing: its entries are gone or SQL has them either way.
        items = _parse_token(token)
        by_partition: dict[int, tuple[list[str], list[int], dict[int, list[int]]]] = {}
        for p, entry_id, room, seq, msg_id in items:
            ids, msg_ids, rooms = by_partition.setdefault(p, ([], [], {}))
            ids.append(entry_id)
            msg_ids.append(msg_id)
            rooms.setdefault(room, []).append(seq)
        await asyncio.gather(*(self._confirm_partition(p, ids, msg_ids, rooms)
                               for p, (ids, msg_ids, rooms) in by_partition.items()))

    async def _confirm_partition(self, partition: int, ids: list[str], msg_ids: list[int],
                                 rooms: dict[int, list[int]]) -> None:
        keys = [self._keys.flush(partition), self._keys.unflushed_ids(partition)]
        args: list[Any] = [FLUSH_GROUP, self._settings.window_size, len(ids), *ids, len(msg_ids), *msg_ids]
        for room, seqs in rooms.items():
            keys += [self._keys.seq(room), self._keys.window(room), self._keys.unflushed(room)]
            args += [len(seqs), *seqs]
        await run(self._confirm, keys, args)
