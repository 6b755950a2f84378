"""The registry on Redis, with GoStacker's keys.

`registry:gateway:<id>` and `registry:send:<id>` hold JSON records with the heartbeat TTL; the
`...:instances` SETs index them. Only the records expire, so listing skips ids whose record is gone
and removes them from the index (GoStacker cleaned the send index only, and its gateway index grew
for ever). `route:user:<uid>` holds the route JSON of the user's most recent device, with his other
devices in `others` (registry/device_routes.py), until its last device's route expires.

Records and indexes are in different slots on a cluster, so writes are two commands (record first,
then index); reads use MGET, split by slot on a cluster (redis_common.get_many).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import orjson

from pystacker.engine.base import GatewayInfo, SendInfo, UserRoute
from pystacker.engine.redis_common import MGET_CHUNK, Client, get_many, register, run, text
from pystacker.engine.redis_keys import RedisKeys
from pystacker.registry.device_routes import compose, expiry, record_ttl, with_device

log = logging.getLogger("pystacker.engine.redis")

T = TypeVar("T")

# KEYS: route. ARGV: the value read before (empty: none), the new value, its TTL in seconds (0: none)
# -> 1 if the route still held the value read and was replaced, 0 if another writer came first.
_REPLACE_ROUTE_IF = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"""
ROUTE_WRITE_ATTEMPTS = 50  # concurrent connects of one user's devices: each retry sees the other's write

# KEYS: route. ARGV: gateway id -> 1 if the route pointed there and was deleted.
_DELETE_ROUTE_IF = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, route = pcall(cjson.decode, raw)
if not ok or type(route) ~= 'table' or route['gateway_id'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def _seconds(value: Any) -> float:
    """Unix seconds; GoStacker's own records carry RFC 3339 times instead."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return 0.0


def _gateway(fields: dict[str, Any]) -> GatewayInfo:
    return GatewayInfo(gateway_id=str(fields["gateway_id"]), address=str(fields.get("address", "")),
                       port=int(fields.get("port", 0)), capacity=int(fields.get("capacity", 0)),
                       load=float(fields.get("load", 0.0)), connected_users=int(fields.get("connected_users", 0)),
                       last_heartbeat=_seconds(fields.get("last_heartbeat")), epoch=str(fields.get("epoch", "")))


def _send(fields: dict[str, Any]) -> SendInfo:
    return SendInfo(instance_id=str(fields["instance_id"]), address=str(fields.get("address", "")),
                    port=int(fields.get("port", 0)), last_heartbeat=_seconds(fields.get("last_heartbeat")))


def _route(fields: dict[str, Any], now: float | None = None) -> UserRoute:
    route = UserRoute(int(fields["user_id"]), str(fields["gateway_id"]), str(fields.get("address", "")),
                      _seconds(fields.get("connected_at")), str(fields.get("status", "connected")),
                      str(fields.get("epoch", "")))
    if "device_id" in fields:  # a named device (GoStacker's record and the default device have none)
        route.device_id = str(fields["device_id"])
    if "expires_at" in fields:
        route.expires_at = float(fields["expires_at"])
    if "others" not in fields:
        return route  # one device: the record as it is (its key expires with it)
    # A device's lease may have ended before the record.
    composed = compose([route, *(_route(other) for other in fields["others"])], now)
    if composed is None:
        raise ValueError("every device's route has expired")
    return composed


def _parse(raw: bytes | str | None, build: Callable[[dict[str, Any]], T], key: str) -> T | None:
    """A record, or None if there is none; an unreadable one is logged and treated as absent."""
    if raw is None:
        return None
    try:
        return build(orjson.loads(raw))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("unreadable registry record ignored", extra={"key": key})
        return None


# Distinct route records kept decoded (about 0.5 KiB each): more than one send instance's online users
# rarely are; past it the memo starts again empty, which costs only decoding again.
DECODED_ROUTES_MAX = 32768


class DecodedRoutes:
    """Route records decoded once per distinct value.

    Every send reads the route record of every member of the room (after the append: a route cached
    for even a second would send messages to a gateway the user has left), and most records do not
    change between two sends. Decoding them (JSON, then the record) was a fifth of a send instance's
    CPU; the bytes still come from Redis on every send, and only their decoding is remembered. A
    record of several devices is decoded again once the lease of one of them ends, since that device
    then drops out of it (registry/device_routes.compose).
    """

    def __init__(self, max_records: int = DECODED_ROUTES_MAX) -> None:
        self._max = max_records
        self._by_value: dict[bytes, tuple[UserRoute | None, float]] = {}  # value -> (route, valid until)

    def decode(self, raw: bytes, key: str, now: float) -> UserRoute | None:
        known = self._by_value.get(raw)
        if known is not None and now < known[1]:
            return known[0]
        route = _parse(raw, lambda fields: _route(fields, now), key)
        if len(self._by_value) >= self._max:
            self._by_value.clear()
        self._by_value[raw] = (route, _valid_until(route))
        return route

    def __len__(self) -> int:
        return len(self._by_value)


def _valid_until(route: UserRoute | None) -> float:
    """Until when decoding the record gives this route again: for ever for one device, else until the
    lease of one of its devices ends."""
    if route is None or not route.others:
        return math.inf
    return min((r.expires_at for r in route.devices() if r.expires_at), default=math.inf)


class RedisRegistry:
    def __init__(self, client: Client, keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys
        self._decoded = DecodedRoutes()
        self._delete_route_if = register(client, _DELETE_ROUTE_IF)
        self._replace_route_if = register(client, _REPLACE_ROUTE_IF)

    async def _get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await get_many(self._client, keys)

    async def _put(self, key: str, index: str, member: str, record: dict[str, Any], ttl: int) -> None:
        # Record first: an id in the index without its record is skipped (and cleaned) by readers.
        await self._client.set(key, orjson.dumps(record), ex=max(int(ttl), 1))
        await self._client.sadd(index, member)

    async def _list(self, index: str, key_of: Callable[[str], str], build: Callable[[dict[str, Any]], T]) -> list[T]:
        members = sorted(text(member) for member in await self._client.smembers(index))
        raws = await self._get_many([key_of(member) for member in members])
        found: list[T] = []
        expired: list[str] = []
        for member, raw in zip(members, raws, strict=True):
            record = _parse(raw, build, key_of(member))
            if record is not None:
                found.append(record)
            elif raw is None:
                expired.append(member)
        if expired:
            await self._client.srem(index, *expired)
            # One of them may have registered again between our GET and SREM: put it back.
            again = await self._get_many([key_of(member) for member in expired])
            back = [member for member, raw in zip(expired, again, strict=True) if raw is not None]
            if back:
                await self._client.sadd(index, *back)
        return found

    # -- gateways -----------------------------------------------------------------------------------------

    async def put_gateway(self, info: GatewayInfo, ttl: int) -> None:
        await self._put(self._keys.gateway(info.gateway_id), self._keys.gateway_instances, info.gateway_id,
                        info.to_json(), ttl)

    async def get_gateway(self, gateway_id: str) -> GatewayInfo | None:
        key = self._keys.gateway(gateway_id)
        return _parse(await self._client.get(key), _gateway, key)

    async def list_gateways(self) -> list[GatewayInfo]:
        return await self._list(self._keys.gateway_instances, self._keys.gateway, _gateway)

    async def remove_gateway(self, gateway_id: str) -> None:
        await self._client.delete(self._keys.gateway(gateway_id))
        await self._client.srem(self._keys.gateway_instances, gateway_id)

    # -- send instances -----------------------------------------------------------------------------------

    async def put_send(self, info: SendInfo, ttl: int) -> None:
        await self._put(self._keys.send(info.instance_id), self._keys.send_instances, info.instance_id,
                        info.to_json(), ttl)

    async def get_send(self, instance_id: str) -> SendInfo | None:
        key = self._keys.send(instance_id)
        return _parse(await self._client.get(key), _send, key)

    async def list_send(self) -> list[SendInfo]:
        return await self._list(self._keys.send_instances, self._keys.send, _send)

    async def remove_send(self, instance_id: str) -> None:
        await self._client.delete(self._keys.send(instance_id))
        await self._client.srem(self._keys.send_instances, instance_id)

    # -- routes ---------------------------------------------------------------------------------------------

    async def set_route(self, route: UserRoute, ttl: int | None, *,
                        only_if: Callable[[UserRoute | None], bool] | None = None) -> UserRoute | None:
        # Read, merge the device in, write if nobody wrote meanwhile: the merge and the condition are
        # Python's (one home, device_routes.py), the compare-and-set Redis's. The record's TTL is its
        # last device's.
        key = self._keys.route(route.user_id)
        for _ in range(ROUTE_WRITE_ATTEMPTS):
            now = time.time()
            raw = await self._client.get(key)
            current = _parse(raw, _route, key)
            if only_if is not None and not only_if(current.device(route.device_id) if current is not None else None):
                return current
            record = with_device(current, replace(route, expires_at=expiry(ttl, now), others=()), now)
            if await run(self._replace_route_if, [key], [raw or b"", orjson.dumps(record.to_json()),
                                                         record_ttl(record, now) or 0]):
                return record
        raise RuntimeError(f"route of user {route.user_id}: {ROUTE_WRITE_ATTEMPTS} concurrent writes in a row")

    async def get_routes(self, user_ids: Sequence[int]) -> dict[int, UserRoute]:
        users, keys = self._route_keys(user_ids)
        return self._routes(users, keys, await self._get_many(keys))

    def queue_routes(self, pipe: Any, user_ids: Sequence[int]) -> tuple[list[int], list[str]]:
        """Queue the route reads on a pipeline of this registry's (non-cluster) client: one MGET per
        MGET_CHUNK users. Returns the users and their keys, for routes_from."""
        users, keys = self._route_keys(user_ids)
        for start in range(0, len(keys), MGET_CHUNK):
            pipe.mget(keys[start:start + MGET_CHUNK])
        return users, keys

    def routes_from(self, users: list[int], keys: list[str],
                    replies: Sequence[list[bytes | None]]) -> dict[int, UserRoute]:
        """The routes from the replies of queue_routes' MGETs."""
        return self._routes(users, keys, [raw for reply in replies for raw in reply])

    def _route_keys(self, user_ids: Sequence[int]) -> tuple[list[int], list[str]]:
        users = list(dict.fromkeys(user_ids))
        return users, [self._keys.route(user_id) for user_id in users]

    def _routes(self, users: list[int], keys: list[str], raws: Sequence[bytes | None]) -> dict[int, UserRoute]:
        routes: dict[int, UserRoute] = {}
        now = time.time()
        decode = self._decoded.decode
        for user_id, key, raw in zip(users, keys, raws, strict=True):
            if raw is None:
                continue
            route = decode(raw, key, now)
            if route is not None:
                routes[user_id] = route
        return routes

    async def set_last_seen(self, user_id: int, seen_at: float, ttl: int) -> None:
        await self._client.set(self._keys.last_seen(user_id), repr(seen_at), ex=max(int(ttl), 1))

    async def last_seen(self, user_ids: Sequence[int]) -> dict[int, float]:
        users = list(dict.fromkeys(user_ids))
        raws = await self._get_many([self._keys.last_seen(user_id) for user_id in users])
        return {user: float(raw) for user, raw in zip(users, raws, strict=True) if raw is not None}

    async def delete_route_if(self, user_id: int, gateway_id: str) -> bool:
        return bool(await run(self._delete_route_if, [self._keys.route(user_id)], [gateway_id]))
