"""The bus on Redis Pub/Sub: best-effort broadcast for cache invalidation, never for delivery.

One subscriber connection and one reader task per engine. subscribe() returns only once Redis has
confirmed the subscription, so a publish made after it returns reaches the handler (Redis would
otherwise drop a message that arrives before the SUBSCRIBE is processed). Each handler runs in its own
task: a slow or failing handler delays nobody, and its failure is logged.

On a cluster, PUBLISH reaches the subscribers of every node, so the subscriber connection may be a
plain connection to any one node (the engine passes the startup node).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pystacker.engine.base import BusHandler
from pystacker.engine.bus_handlers import HandlerTasks
from pystacker.engine.redis_common import Client, text
from pystacker.engine.redis_keys import RedisKeys

log = logging.getLogger("pystacker.engine.redis")

# How long subscribe() waits for Redis to confirm: an answer slower than this means Redis is unusable.
CONFIRM_TIMEOUT = 10.0
# The reader's wait per poll (bounds how long close() waits for it) and its pause after an error
# (the connection is re-made and the channels subscribed again on the next read).
POLL_SECONDS = 1.0
ERROR_PAUSE = (0.1, 5.0)


class RedisBus:
    def __init__(self, publisher: Client, subscriber: Any, keys: RedisKeys) -> None:
        """`subscriber`: a redis.asyncio.Redis whose pubsub() the reader uses."""
        self._publisher = publisher
        self._subscriber = subscriber
        self._keys = keys
        self._pubsub: Any = None
        self._handlers: dict[str, list[BusHandler]] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._subscribe_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._tasks = HandlerTasks()

    async def publish(self, channel: str, data: bytes) -> None:
        await self._publisher.publish(self._keys.channel(channel), data)

    async def subscribe(self, channel: str, handler: BusHandler) -> None:
        async with self._subscribe_lock:
            handlers = self._handlers.get(channel)
            if handlers is not None:
                handlers.append(handler)
                return
            redis_channel = self._keys.channel(channel)
            confirmed = self._confirmations[redis_channel] = asyncio.get_running_loop().create_future()
            self._handlers[channel] = [handler]
            try:
                if self._pubsub is None:
                    self._pubsub = self._subscriber.pubsub()
                await self._pubsub.subscribe(redis_channel)
                if self._reader is None:
                    self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")
                await asyncio.wait_for(confirmed, CONFIRM_TIMEOUT)
            except BaseException:
                del self._handlers[channel]
                raise
            finally:
                self._confirmations.pop(redis_channel, None)

    async def _read(self) -> None:
        pause = ERROR_PAUSE[0]
        while True:
            try:
                message = await self._pubsub.get_message(timeout=POLL_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("redis bus read failed; reconnecting", exc_info=True)
                await asyncio.sleep(pause)
                pause = min(pause * 2, ERROR_PAUSE[1])
                continue
            pause = ERROR_PAUSE[0]
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        redis_channel = text(message["channel"])
        if message["type"] == "subscribe":
            confirmed = self._confirmations.get(redis_channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if message["type"] != "message":
            return
        channel = self._keys.channel_name(redis_channel)
        self._tasks.run(self._handlers.get(channel, ()), channel, bytes(message["data"]))

    async def close(self) -> None:
        await self._tasks.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._reader = None
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            close = getattr(pubsub, "aclose", None) or pubsub.close  # aclose() from redis-py 5.0.1
            await close()
