"""What the parts of the `redis` engine share: the client type, Lua scripts, stream ids, error codes.

Clients must be made with `decode_responses=False`: inbox entries are bytes. Either RESP version works:
the scripts' replies do not depend on it, and the few plain commands are parsed for both shapes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Client: TypeAlias = Redis | RedisCluster

# A stream entry id as XACK accepts it. Anything else is filtered out before the call: one malformed id
# would make Redis refuse the whole XACK (GoStacker's "-1" did exactly that).
_ENTRY_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
_U64_MAX = 2**64 - 1


def is_entry_id(entry_id: str) -> bool:
    if not _ENTRY_ID.match(entry_id):
        return False
    ms, _, n = entry_id.partition("-")
    return int(ms) <= _U64_MAX and int(n or 0) <= _U64_MAX


def id_order(entry_id: str) -> tuple[int, int]:
    """Stream ids compare as (ms, n) pairs, as Redis compares them."""
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def error_code(exc: ResponseError) -> str:
    """The first word of a Redis error, e.g. NOGROUP, BUSYGROUP, UNBLOCKED."""
    message = str(exc)
    return message.split(" ", 1)[0] if message else ""


def check_client(client: Client) -> Client:
    if client.get_encoder().decode_responses:
        raise ValueError("the redis engine needs clients made with decode_responses=False")
    return client


def register(client: Client, source: str) -> AsyncScript:
    """A script bound to a client. redis-py sends EVALSHA and loads the script on NOSCRIPT (a restarted
    or failed-over server has lost it); on a cluster it loads it on every primary."""
    return client.register_script(source)


async def run(script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
    return await script(keys=list(keys), args=list(args))


# A pooled connection idle this long is checked with a PING before its next command (see below).
IDLE_CHECK_SECONDS = 1.0


class ReconnectingConnection(Connection):
    """A pooled connection that survives a restart of the server it was connected to.

    After Redis restarted, every idle pooled connection is dead, and the first command on each
    failed: a 500 for a send, a room creation, a WebSocket connect, in every process, until each
    connection had failed once. With `health_check_interval`, a connection idle that long is pinged
    before its next command; when the PING fails, this connects again once and the command goes on
    on the new connection. Only the PING is ever repeated, never a command (a command that failed
    may have run, and running it again is not always harmless)."""

    _reconnecting = False

    async def check_health(self) -> None:
        try:
            await super().check_health()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if self._reconnecting:  # connect() checks health too: one new connection, not a loop
                raise
            self._reconnecting = True
            try:
                await self.disconnect()
                await self.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            finally:
                self._reconnecting = False


# Keys per MGET: one command per this many keys, so a huge room's lookup never holds the server long.
MGET_CHUNK = 1000


async def get_many(client: Client, keys: Sequence[str]) -> list[Any]:
    """The values of `keys`, in order (None where a key is missing), with MGET: one command per
    MGET_CHUNK keys instead of a GET each. A pipeline of GETs cost 6x the client CPU (redis-py packs
    and parses every command in Python): 0.8 ms per 100 keys, the largest part of a group send.
    On a cluster, redis-py's mget_nonatomic splits the keys by slot and sends each node its part."""
    values: list[Any] = []  # bytes or None: the clients are made with decode_responses=False
    for start in range(0, len(keys), MGET_CHUNK):
        chunk = list(keys[start:start + MGET_CHUNK])
        if isinstance(client, RedisCluster):
            values.extend(await client.mget_nonatomic(chunk))
        else:
            values.extend(await client.mget(chunk))
    return values


def pipeline(client: Client) -> Any:
    """A non-transactional pipeline: on a cluster, its commands may span slots (redis-py splits it by node)."""
    return client.pipeline(transaction=False)


# Lua helpers shared by the stream scripts.
LUA_ID_LESS = """
-- Stream ids compare as (ms, n) pairs; both fit a Lua number for any id Redis generates today.
local function id_less(a, b)
  local am, an = string.match(a, '^(%d+)-(%d+)$')
  local bm, bn = string.match(b, '^(%d+)-(%d+)$')
  am, an, bm, bn = tonumber(am), tonumber(an), tonumber(bm), tonumber(bn)
  return am < bm or (am == bm and an < bn)
end

-- XINFO GROUPS answers each group as a flat list of names and values.
local function group_info(stream)
  local groups = {}
  for _, flat in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local group = {}
    for i = 1, #flat, 2 do group[flat[i]] = flat[i + 1] end
    groups[#groups + 1] = group
  end
  return groups
end

local function is_error(reply, code)
  return type(reply) == 'table' and reply.err ~= nil and string.find(reply.err, code, 1, true) == 1
end
"""
