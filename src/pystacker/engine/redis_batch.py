"""One pipeline for the commands that concurrent sends issue in the same turn of the event loop.

Each send of a loaded send instance makes two pipelines (the append with the routes, then the push),
and a pipeline's cost is mostly its own, not its commands': a connection taken from the pool and given
back, one write and one read on the socket, and redis-py's machinery around them. Sends that arrive
together (a loaded instance reads several requests per turn) therefore share one: each caller queues its
commands, and the batch goes out once the loop has run everything that was ready, or at once when it
holds `max_callers`. Redis runs a connection's commands in order, so each caller's commands run in its
own order, one after the other, as in a pipeline of its own; only callers that could already run at the
same moment are batched, so nothing about their relative order is promised that was promised before.

A failure of the whole pipeline (the connection broke) fails every caller in it, as it would have failed
each one's own pipeline; an error reply reaches only the caller whose command it answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pystacker.engine.redis_common import Client, pipeline

MAX_CALLERS = 64  # callers per pipeline: bounds what one batch holds and what one reply carries


class SharedPipeline:
    """Batches the commands of concurrent callers on a plain (non-cluster) client."""

    def __init__(self, client: Client, max_callers: int = MAX_CALLERS) -> None:
        self._client = client
        self._max = max(max_callers, 1)
        self._waiting: list[tuple[Callable[[Any], None], asyncio.Future[list[Any]]]] = []
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references to tasks

    async def execute(self, queue: Callable[[Any], None]) -> list[Any]:
        """Run the commands that `queue(pipe)` adds to the pipeline; returns their replies in order, an
        error reply as its exception (as `execute(raise_on_error=False)` gives them)."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((queue, reply))
        if len(self._waiting) >= self._max:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await reply

    def _flush(self) -> None:
        self._scheduled = False
        callers, self._waiting = self._waiting, []
        if callers:
            task = asyncio.get_running_loop().create_task(self._run(callers))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _run(self, callers: list[tuple[Callable[[Any], None], asyncio.Future[list[Any]]]]) -> None:
        pipe = pipeline(self._client)
        spans: list[tuple[int, int, asyncio.Future[list[Any]]]] = []
        for queue, reply in callers:
            start = len(pipe)
            try:
                queue(pipe)
            except Exception as exc:  # a caller's bad arguments are its own failure, not the batch's
                reply.set_exception(exc)
            spans.append((start, len(pipe), reply))  # what a failed caller queued still runs: skipped
        if not any(not reply.done() for _, _, reply in spans):
            return
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, _, reply in spans:
                if reply.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    reply.cancel()
                else:
                    reply.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for start, end, reply in spans:
            if not reply.done():  # done: it failed to queue, or its caller was cancelled meanwhile
                reply.set_result(replies[start:end])
