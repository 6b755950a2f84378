"""A service's own entry in the registry, kept alive by a heartbeat.

Each heartbeat writes the whole entry with its TTL, so an entry that expired while the registry's
store was unreachable comes back on the next beat (GoStacker registered once and then got 404
forever: compatibility.md #7). Stopping removes the entry at once instead of waiting for the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from pystacker.engine.base import GatewayInfo, Registry, SendInfo

log = logging.getLogger("pystacker.registry.presence")

HEARTBEAT_SECONDS = 10.0


class _Heartbeat(ABC):
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def beat(self) -> None:
        """Write this instance's entry with a fresh TTL."""

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except Exception:
                log.exception("heartbeat failed; retrying at the next beat")

    async def stop_beating(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class SendPresence(_Heartbeat):
    def __init__(self, registry: Registry, instance_id: str, address: str, port: int, *, ttl: int,
                 interval: float = HEARTBEAT_SECONDS) -> None:
        super().__init__(min(interval, ttl / 3))
        self.registry = registry
        self.info = SendInfo(instance_id, address, port)
        self.ttl = ttl

    async def beat(self) -> None:
        self.info.last_heartbeat = time.time()
        await self.registry.put_send(self.info, self.ttl)

    async def stop(self) -> None:
        await self.stop_beating()
        await self.registry.remove_send(self.info.instance_id)


class GatewayPresence(_Heartbeat):
    def __init__(self, registry: Registry, gateway_id: str, address: str, port: int, capacity: int,
                 connected: Callable[[], int], *, ttl: int, interval: float = HEARTBEAT_SECONDS) -> None:
        super().__init__(min(interval, ttl / 3))
        self.registry = registry
        # A new epoch at every start: routes written by a previous life of this gateway are stale.
        self.info = GatewayInfo(gateway_id, address, port, capacity, epoch=uuid.uuid4().hex[:12])
        self.connected = connected
        self.ttl = ttl
        # Called when a beat finds this gateway's entry gone: the registry's store lost its state (a
        # Redis restarted without persistence), or the entry expired because this process could not
        # beat for longer than its TTL (starved, Redis unreachable). Either way fan-outs skipped this
        # gateway's users meanwhile. Set by the gateway.
        self.on_vanished: Callable[[], Awaitable[None]] | None = None
        self._last_beat: float | None = None

    async def beat(self) -> None:
        vanished = False
        if self.on_vanished is not None and self._last_beat is not None:
            vanished = await self.registry.get_gateway(self.info.gateway_id) is None
        users = self.connected()
        self.info.connected_users = users
        self.info.load = users / self.info.capacity if self.info.capacity else 1.0
        self.info.last_heartbeat = time.time()
        await self.registry.put_gateway(self.info, self.ttl)
        self._last_beat = time.monotonic()
        if vanished and self.on_vanished is not None:
            await self.on_vanished()

    async def stop(self) -> None:
        await self.stop_beating()
        self._last_beat = None  # removed on purpose: the next start is not a vanishing
        await self.registry.remove_gateway(self.info.gateway_id)
