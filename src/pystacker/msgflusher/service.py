"""Reclaim idle inbox entries.

Every `interval` seconds, for every gateway that has an inbox, live or gone (GoStacker only looked at
live ones, so a dead gateway's entries were never reclaimed), entries pending longer than
`claim_idle_seconds` are claimed (and a departed gateway's unread entries read), their targets handed
to the gateways that hold them now, and the entries acknowledged. Entries are decoded in both key
styles (GoStacker's decoder read CamelCase entries as empty and acknowledged them without delivering
anything). A target who is offline needs
nothing: his cursor and the message log serve him on connect. A departed gateway's inbox is removed
once drained.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pystacker.engine.base import Engine, InboxEntry
from pystacker.messaging.handoff import Handoff
from pystacker.messaging.model import EntryType, decode_entry
from pystacker.observability import metrics

log = logging.getLogger("pystacker.msgflusher")


class Reclaimer:
    def __init__(self, engine: Engine, handoff: Handoff, *, consumer: str, claim_idle_seconds: float,
                 batch_size: int) -> None:
        self.engine = engine
        self.handoff = handoff
        self.consumer = consumer
        self.min_idle_ms = int(claim_idle_seconds * 1000)
        self.batch_size = batch_size
        self.reclaimed = 0
        self.handed_on = 0

    async def run_once(self) -> int:
        """One pass over every inbox; returns how many entries were finished."""
        live = {g.gateway_id for g in await self.engine.registry.list_gateways()}
        finished = 0
        inbox = self.engine.inbox
        for gateway_id in await inbox.gateways():
            finished += await self._finish(gateway_id, lambda g: inbox.claim_idle(
                g, self.consumer, self.min_idle_ms, self.batch_size))
            if gateway_id in live:
                continue
            # A departed gateway's entries that it never even read: nobody else will.
            finished += await self._finish(gateway_id, lambda g: inbox.read_new(g, self.consumer, self.batch_size, 0))
            if await inbox.remove_if_drained(gateway_id):
                log.info("removed the drained inbox of a departed gateway", extra={"gateway_id": gateway_id})
        return finished

    async def _finish(self, gateway_id: str, fetch: Callable[[str], Awaitable[list[InboxEntry]]]) -> int:
        """Hand on and acknowledge the entries `fetch` gives, batch after batch."""
        finished = 0
        while True:
            entries = await fetch(gateway_id)
            if not entries:
                return finished
            done: list[str] = []
            for entry in entries:
                try:
                    push = decode_entry(entry.data)
                except ValueError as exc:
                    log.error("undecodable entry dropped: %s", exc, extra={"gateway_id": gateway_id,
                                                                           "entry_id": entry.entry_id})
                    done.append(entry.entry_id)
                    continue
                if push.type in (EntryType.CHAT, EntryType.CATCH_UP) and push.target_ids:
                    reached = await self.handoff.to_users(push.target_ids, push)
                    self.handed_on += len(reached)
                    metrics.HANDED_ON.labels("msgflusher").inc(len(reached))
                done.append(entry.entry_id)
            await self.engine.inbox.ack(gateway_id, done)
            self.reclaimed += len(done)
            metrics.RECLAIMED.inc(len(done))
            finished += len(done)
            log.info("reclaimed idle entries", extra={"gateway_id": gateway_id, "count": len(done)})
            if len(entries) < self.batch_size:
                return finished

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reclaim pass failed; retrying next interval")
            await asyncio.sleep(interval)
