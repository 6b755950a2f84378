"""Fan-out: hand a stored message to the inbox of every gateway that holds an online member.

One inbox entry per gateway (with that gateway's members as targets), then an `ack` entry for the
sender once every entry is written, and the sender's read mark moved to his message: one call to the
engine (`hand_on`), one round trip on one Redis. A room's messages go through one worker (room id modulo the
worker count), so a send instance writes each room's entries in seq order. Queues are bounded: when
they are full the HTTP request waits (back-pressure) instead of dropping the push as GoStacker did.
Nothing is lost if a push fails: the message is already in the log, and the gateway's gap fill or
the catch-up on connect delivers it; the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from pystacker.engine.base import Engine, UserRoute
from pystacker.messaging.events import is_event
from pystacker.messaging.fanout import inbox_entries
from pystacker.messaging.handoff import Handoff
from pystacker.messaging.model import DEFAULT_DEVICE, PushEntry, StoredMessage
from pystacker.messaging.offline_notify import OfflineNotifier
from pystacker.observability import metrics, tracing

log = logging.getLogger("pystacker.send.fanout")


class FanoutJob:
    __slots__ = ("message", "members", "routes", "ack_sender", "trace", "ack_device", "new", "quote")

    def __init__(self, message: StoredMessage, members: Collection[int], routes: dict[int, UserRoute] | None,
                 ack_sender: bool, trace: Any, ack_device: str, new: bool, quote: dict[str, Any] | None) -> None:
        self.message = message
        self.members = members
        self.routes = routes  # the members' routes read after the append (None: read them when pushing)
        self.ack_sender = ack_sender
        self.trace = trace  # the send span the fan-out continues (None: tracing off)
        self.ack_device = ack_device  # the sender's device that sent: it gets the ack
        self.new = new  # first push of the message (not a duplicate or a resend): offline members are notified
        self.quote = quote  # a reply's quote of the message it answers


class Fanout:
    def __init__(self, engine: Engine, handoff: Handoff, *, workers: int, queue_size: int,
                 notifier: OfflineNotifier | None = None) -> None:
        self.engine = engine
        self.handoff = handoff  # routes -> plan -> inbox entries, the one path of every push
        self.notifier = notifier  # told of new messages' members with no device online (None: off)
        self._queues = [asyncio.Queue[FanoutJob](maxsize=max(queue_size, 1)) for _ in range(max(workers, 1))]
        self._tasks: list[asyncio.Task[None]] = []
        self.failures = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(q), name=f"fanout-{i}") for i, q in enumerate(self._queues)]
        if self.notifier is not None:
            self.notifier.start()

    async def submit(self, message: StoredMessage, members: Collection[int], *, ack_sender: bool = True,
                     routes: dict[int, UserRoute] | None = None, trace: Any = None,
                     ack_device: str = DEFAULT_DEVICE, new: bool = False, quote: dict[str, Any] | None = None) -> None:
        """Queue the push; waits while the room's worker queue is full. `routes`: the members' routes,
        read after the message was appended (None: read when pushing). `trace`: the span of the send."""
        await self._queues[message.room_id % len(self._queues)].put(
            FanoutJob(message, members, routes, ack_sender, trace, ack_device, new, quote))

    async def drain(self, timeout: float) -> None:
        """Let queued pushes finish (graceful stop)."""
        try:
            await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), timeout)
        except TimeoutError:
            log.warning("fan-out queues not drained in %.0fs; their messages reach users by catch-up", timeout)

    async def stop(self) -> None:
        if self.notifier is not None:
            await self.notifier.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _work(self, queue: asyncio.Queue[FanoutJob]) -> None:
        while True:
            job = await queue.get()
            try:
                await self.push(job.message, job.members, ack_sender=job.ack_sender, routes=job.routes,
                                trace=job.trace, ack_device=job.ack_device, new=job.new, quote=job.quote)
            except Exception:
                self.failures += 1
                metrics.FANOUT_FAILURES.inc()
                log.exception("fan-out failed; members will get the message by gap fill or catch-up",
                              extra={"msg_id": job.message.msg_id, "room_id": job.message.room_id})
            finally:
                queue.task_done()

    async def push(self, message: StoredMessage, members: Collection[int], *, ack_sender: bool = True,
                   routes: dict[int, UserRoute] | None = None, trace: Any = None,
                   ack_device: str = DEFAULT_DEVICE, new: bool = False, quote: dict[str, Any] | None = None) -> None:
        """`trace`: the send's span, continued by a fan-out span whose context goes into the entries
        (None, tracing off: no span, and the entries carry no trace key)."""
        span = None if trace is None else tracing.start_span(
            "fanout", parent=trace, kind="producer", attributes=tracing.message_attributes(message))
        trace_parent = None if span is None else tracing.traceparent(span)
        try:
            if routes is None:
                routes = await self.engine.registry.get_routes(list(members))
            plan = await self.handoff.plan(members, routes)
            entries = inbox_entries(plan, PushEntry.for_message(message, [], trace_parent, quote))
            sender_record = routes.get(message.sender_id)
            sender_route = None
            if sender_record is not None:
                sender_route = sender_record if not sender_record.others else sender_record.device(ack_device)
            # The sender's own message is never unread (a mark only moves forward: a resent old message
            # changes nothing). A room event is never unread: it moves nobody's mark, its author's included.
            read_marks = [] if is_event(message) else [(message.sender_id, message.room_id, message.seq)]
            if (ack_sender and sender_route is not None and sender_route.device_id == ack_device
                    and message.sender_id not in plan.offline):
                # The ack comes after every copy is in an inbox: "ack" means handed on, as in
                # GoStacker. The other gateways' entries are written first; the sender's gateway's
                # entry and the ack go after them, in one stream, which keeps their order.
                ack_gateway = sender_route.gateway_id
                ack = PushEntry.for_ack(message, trace_parent, ack_device).encode()
                await self.engine.hand_on([e for e in entries if e[0] != ack_gateway],
                                          then=[*(e for e in entries if e[0] == ack_gateway), (ack_gateway, ack)],
                                          read_marks=read_marks)
                metrics.INBOX_ENTRIES_WRITTEN.labels("ack").inc()
            else:
                await self.engine.hand_on(entries, read_marks=read_marks)
            if entries:
                metrics.INBOX_ENTRIES_WRITTEN.labels("message").inc(len(entries))
            if new and self.notifier is not None and plan.offline:
                self.notifier.offer(message, plan.offline)
        except BaseException as exc:
            if span is not None:
                tracing.end_span(span, exc)
            raise
        if span is not None:
            span.set_attributes({"gateways": len(entries), "offline": len(plan.offline)})
            tracing.end_span(span)
        if log.isEnabledFor(logging.DEBUG):  # the extra dict is built only when the line is written
            log.debug("fan-out", extra={"msg_id": message.msg_id, "room_id": message.room_id, "seq": message.seq,
                                        "gateways": len(entries), "offline": len(plan.offline)})

