"""Running bus handlers, shared by the memory and Redis buses.

One task per handler and message: a slow or failing handler delays nobody, the publisher included.
The event loop keeps only weak references to tasks, so they are held here until they finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from pystacker.engine.base import BusHandler

log = logging.getLogger("pystacker.engine")


class HandlerTasks:
    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()

    def run(self, handlers: Iterable[BusHandler], channel: str, data: bytes) -> None:
        for handler in handlers:
            task = asyncio.create_task(self._deliver(handler, channel, data))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    @staticmethod
    async def _deliver(handler: BusHandler, channel: str, data: bytes) -> None:
        try:
            await handler(channel, data)
        except Exception:
            log.exception("bus handler failed", extra={"channel": channel})

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
