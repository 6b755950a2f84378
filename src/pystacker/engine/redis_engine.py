"""The `redis` engine: the engine contract (base.py) on Redis >= 6.2, one server or a Redis Cluster.

Each part has its module: redis_inbox.py (streams), redis_messages.py (seq, window, flush queue),
redis_cursors.py, redis_registry.py, redis_bus.py; redis_keys.py names every key.

Clients by role: GoStacker's send service may put its streams, queues and caches on
separate Redis servers (`send_redis.stream/.queue/.cache`). Here the inbox uses the stream role, the
message log the cache role, cursors the queue role; a role without its block uses the global `redis`
client, as do the rosters (as GoStacker's membership cache is), the registry
and the bus. Every process of a deployment must then agree on the blocks
(a gateway's inbox must be where send writes it), so give all services the same `send_redis` section.

Errors from Redis propagate: callers log and retry. Nothing answers "empty" on an error (GoStacker's
route lookup did, compatibility.md #25).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from pystacker.config import Config, RedisConfig
from pystacker.engine.base import (
    Appended,
    Bus,
    Cursors,
    EngineSettings,
    Inbox,
    MessageLog,
    Registry,
    Rosters,
    SeqSeed,
    UserRoute,
    hand_on_in_turn,
)
from pystacker.engine.redis_bus import RedisBus
from pystacker.engine.redis_common import IDLE_CHECK_SECONDS, Client, ReconnectingConnection, check_client, pipeline
from pystacker.engine.redis_cursors import RedisCursors
from pystacker.engine.redis_inbox import RedisInbox
from pystacker.engine.redis_keys import DEFAULT_PARTITIONS, RedisKeys
from pystacker.engine.redis_messages import RedisMessageLog
from pystacker.engine.redis_registry import RedisRegistry
from pystacker.engine.redis_rosters import RedisRosters
from pystacker.messaging.model import NewMessage
from pystacker.observability.stores import time_engine_calls

# A command answers within this or fails (a dead server must not hang a caller). Must stay above the
# inbox's blocking-read slice (redis_inbox.BLOCK_SLICE_MS), the longest a healthy command takes.
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
# How long a command waits for a free pooled connection (pool_size caps them) before failing.
POOL_WAIT = 20.0
# Connections per cluster node beyond pool_size: pipelines and the client's own cluster discovery
# take connections without going through WaitingRedisCluster's limit.
CLUSTER_HEADROOM = 32


class WaitingRedisCluster(RedisCluster):
    """A cluster client whose commands wait for a free connection instead of failing.

    redis-py's asyncio cluster client raises MaxConnectionsError when a node's pool is exhausted (its
    plain client can use a BlockingConnectionPool instead): a burst of sends would fail. Here at most
    `limit` commands are in flight at once, fewer than any node's pool holds, and the others queue.
    """

    def __init__(self, *args: Any, limit: int, **kwargs: Any) -> None:
        super().__init__(*args, max_connections=limit + CLUSTER_HEADROOM, **kwargs)  # type: ignore[misc]  # kwargs hold no max_connections
        self._in_flight = asyncio.Semaphore(limit)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._in_flight:
            return await super().execute_command(*args, **kwargs)


def describe(client: Any) -> str:
    """host:port of a client (its startup nodes on a cluster), for error messages."""
    if isinstance(client, RedisCluster):
        return ",".join(node.name for node in client.nodes_manager.startup_nodes.values())
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def _same_server(a: Client, b: Client) -> bool:
    """Two plain clients of the same server and database (a cluster client never is)."""
    if isinstance(a, RedisCluster) or isinstance(b, RedisCluster):
        return False
    if a is b:
        return True
    address = [{key: client.connection_pool.connection_kwargs.get(key) for key in ("host", "port", "path", "db")}
               for client in (a, b)]
    return address[0] == address[1]


def make_client(config: RedisConfig) -> Client:
    password = config.password.get_secret_value() or None
    if config.cluster:
        if config.db != 0:
            raise ValueError(f"Redis Cluster at {config.host}:{config.port} has no db {config.db}: use db 0")
        return WaitingRedisCluster(host=config.host, port=config.port, password=password, limit=config.pool_size,
                                   socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT)
    pool = BlockingConnectionPool(host=config.host, port=config.port, db=config.db, password=password,
                                  max_connections=config.pool_size, timeout=POOL_WAIT,
                                  socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT,
                                  # idle connections are checked, and made again after a Redis restart
                                  connection_class=ReconnectingConnection, health_check_interval=IDLE_CHECK_SECONDS)
    return Redis(connection_pool=pool)


def make_subscriber(config: RedisConfig, client: Client) -> Redis:
    """The connection the bus subscribes on. On a cluster, a plain client of the startup node: PUBLISH
    reaches every node's subscribers, and a plain client behaves the same in every redis-py >= 5."""
    if not isinstance(client, RedisCluster):
        return client
    return Redis(host=config.host, port=config.port, password=config.password.get_secret_value() or None,
                 socket_connect_timeout=CONNECT_TIMEOUT)


class RedisEngine:
    # Typed as the interfaces, so that the type checker holds each class to its protocol.
    inbox: Inbox
    messages: MessageLog
    cursors: Cursors
    read_marks: Cursors
    device_cursors: Cursors
    rosters: Rosters
    registry: Registry
    bus: Bus

    def __init__(self, settings: EngineSettings, seq_seed: SeqSeed, *, client: Client,
                 stream: Client | None = None, queue: Client | None = None, cache: Client | None = None,
                 subscriber: Redis | None = None, prefix: str = "", partitions: int = DEFAULT_PARTITIONS,
                 owns_clients: bool = False) -> None:
        """Over clients made by the caller (decode_responses=False). `stream`, `queue`, `cache`: the
        role clients, `client` where one is missing. `subscriber`: where the bus subscribes (`client`
        by default; must be a plain client if `client` is a cluster client of a redis-py without
        cluster Pub/Sub). `prefix` goes in front of every key and channel. `owns_clients`: close()
        closes them. A cluster client must be initialized before use (`await client.initialize()`,
        or the engine's ping()): redis-py's asyncio cluster client requires it, and commands started
        together on a fresh one race with its discovery of the cluster."""
        self.settings = settings
        self.client = client
        self.keys = RedisKeys(prefix, partitions)
        self._roles: dict[str, Client] = {"global": check_client(client)}
        for role, role_client in (("stream", stream), ("queue", queue), ("cache", cache)):
            if role_client is not None:
                self._roles[role] = check_client(role_client)
        self._subscriber = subscriber if subscriber is not None else client
        self._owns_clients = owns_clients
        self._inbox = self.inbox = RedisInbox(stream or client, self.keys, settings)
        self._log = self.messages = RedisMessageLog(cache or client, self.keys, settings, seq_seed)
        self.cursors = RedisCursors.delivery(queue or client, self.keys)
        self._read_marks = self.read_marks = RedisCursors.reading(queue or client, self.keys)
        self.device_cursors = RedisCursors.devices(queue or client, self.keys)
        self.rosters = RedisRosters(client, self.keys, settings)
        self._registry = self.registry = RedisRegistry(client, self.keys)
        # The append and the route reads can share a pipeline only on one plain server: a cluster
        # pipeline sends each node its part, in no order across nodes (the reads must follow the append).
        # GoStacker's files name the `cache` role's server apart, usually the same one as `redis`.
        self._pipelined_send = _same_server(cache or client, client)
        # The same for a push's inbox writes and the read marks it moves.
        self._pipelined_hand_on = _same_server(stream or client, queue or client)
        self._hand_on_client = stream or client
        self._bus = RedisBus(client, self._subscriber, self.keys)  # kept as itself: close() is not in Bus
        self.bus = self._bus
        # pystacker_redis_call_seconds / _errors_total{operation}: every contract method, timed here once.
        time_engine_calls(self)

    @classmethod
    def from_config(cls, config: Config, settings: EngineSettings, seq_seed: SeqSeed, *,
                    prefix: str = "") -> RedisEngine:
        """Clients from the `redis` block and the optional `send_redis` role blocks. Nothing connects
        yet: call ping() to find out whether Redis is there. ValueError for a config Redis cannot serve."""
        client = make_client(config.redis)
        roles = config.send_redis

        def role(block: RedisConfig | None) -> Client | None:
            return None if block is None else make_client(block)

        return cls(settings, seq_seed, client=client, subscriber=make_subscriber(config.redis, client),
                   prefix=prefix, owns_clients=True, stream=role(roles.stream), queue=role(roles.queue),
                   cache=role(roles.cache))

    async def append_and_route(self, message: NewMessage,
                               user_ids: Sequence[int]) -> tuple[Appended, dict[int, UserRoute]]:
        """One pipeline, EVALSHA append then MGET routes, where the log and the registry share one plain
        server (Redis runs a connection's commands in order); else the two calls one after the other.
        The pipeline saves a round trip per send, ~10% of a send instance's CPU on private rooms."""
        appended, routes = await self._pipelined(message, user_ids) if self._pipelined_send else (None, None)
        if appended is None:  # the plain way: append() loads the script or seeds the room's counter
            appended = await self.messages.append(message)
        if routes is None:  # read after the append, so never before it
            routes = await self.registry.get_routes(user_ids)
        return appended, routes

    async def _pipelined(self, message: NewMessage, user_ids: Sequence[int]
                         ) -> tuple[Appended | None, dict[int, UserRoute] | None]:
        """(None, None) when nothing was appended (script not loaded on this server, or the room has
        no counter); (appended, None) when only the route reads failed."""
        pipe = pipeline(self.client)
        self._log.queue_append(pipe, message)
        users, keys = self._registry.queue_routes(pipe, user_ids)
        first, *reads = await pipe.execute(raise_on_error=False)
        if isinstance(first, NoScriptError):
            return None, None
        if isinstance(first, Exception):
            raise first
        appended = self._log.appended_from(message, first)
        if appended is None or any(isinstance(reply, Exception) for reply in reads):
            return appended, None
        return appended, self._registry.routes_from(users, keys, reads)

    async def hand_on(self, entries: Sequence[tuple[str, bytes]], *, then: Sequence[tuple[str, bytes]] = (),
                      read_marks: Sequence[tuple[int, int, int]] = ()) -> None:
        """One pipeline of EVALSHAs where the inbox and the read marks share one plain server: Redis
        runs one connection's commands in order, so `then` is written after `entries` as two calls
        would write it, with two round trips fewer per send (a group send with its ack and its
        sender's read mark took three). A call refused for a script not loaded yet (after a Redis
        restart) is run again after the pipeline; then alone can an ack reach its stream before
        another stream's copy, a moment earlier, as with two calls of which the first failed.
        Elsewhere (a cluster: no order across nodes), the calls one after the other."""
        if not self._pipelined_hand_on:
            await hand_on_in_turn(self.inbox, self.read_marks, entries, then, read_marks)
            return
        pipe = pipeline(self._hand_on_client)
        first = self._inbox.queue_add(pipe, entries)
        second = self._inbox.queue_add(pipe, then)
        marks = self._read_marks.queue_advance(pipe, read_marks)
        if not (first.by_gateway or second.by_gateway or marks):
            return
        replies = await pipe.execute(raise_on_error=False)
        split = len(first.by_gateway), len(first.by_gateway) + len(second.by_gateway)
        await self._inbox.added_from(first, replies[:split[0]])
        await self._inbox.added_from(second, replies[split[0]:split[1]])
        await self._read_marks.advanced_from(marks, replies[split[1]:])

    async def ping(self) -> None:
        """Raise ConnectionError, in one line naming the server, if a role's Redis does not answer."""
        for role, client in self._roles.items():
            try:
                if isinstance(client, RedisCluster):
                    await client.initialize()  # discovers the nodes; a no-op once done
                await client.ping()
            except Exception as exc:
                detail = next(iter(str(exc).strip().splitlines()), "") or type(exc).__name__
                raise ConnectionError(f"cannot reach Redis ({role}) at {describe(client)}: {detail}") from exc

    async def close(self) -> None:
        await self._bus.close()
        if not self._owns_clients:
            return
        clients = {id(c): c for c in [*self._roles.values(), self._subscriber]}
        for client in clients.values():
            await client.aclose()
            if isinstance(client, Redis):
                # A pool handed to Redis() is not closed with it.
                await client.connection_pool.disconnect()
