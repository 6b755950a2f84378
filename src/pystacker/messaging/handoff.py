"""Handing a message or a catch-up request to the gateway that holds a user now.

Used when a push missed its user (a gateway found him gone), by GoStacker's internal pushback and
notify_online routes, and by msgflusher for entries a dead gateway never finished. A user without a
live route needs nothing: his cursor and the message log serve him when he connects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from typing import Any

from pystacker.engine.base import Engine, GatewayInfo, UserRoute
from pystacker.messaging.fanout import FanoutPlan, inbox_entries, plan_fanout
from pystacker.messaging.model import EntryType, PushEntry, in_int64


class LiveGateways:
    """The registry's live gateways, re-read at most every `ttl` seconds (one read for many sends)."""

    def __init__(self, engine: Engine, ttl: float = 1.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._expires = 0.0
        self._gateways: dict[str, GatewayInfo] = {}
        self._refresh: asyncio.Task[None] | None = None

    async def get(self) -> dict[str, GatewayInfo]:
        if time.monotonic() < self._expires:
            return self._gateways
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._reload())
        await asyncio.shield(self._refresh)
        return self._gateways

    async def _reload(self) -> None:
        gateways = await self.engine.registry.list_gateways()
        self._gateways = {g.gateway_id: g for g in gateways}
        self._expires = time.monotonic() + self.ttl

    def forget(self) -> None:
        self._expires = 0.0




class Handoff:
    def __init__(self, engine: Engine, live: LiveGateways) -> None:
        self.engine = engine
        self.live = live

    async def plan(self, user_ids: Collection[int], routes: Mapping[int, UserRoute] | None = None) -> FanoutPlan:
        """Which live gateway holds which of the users (`routes`: theirs, if read already)."""
        if routes is None:
            routes = await self.engine.registry.get_routes(list(user_ids))
        return plan_fanout(user_ids, routes, await self.live.get())

    async def to_users(self, user_ids: list[int], entry: PushEntry, *, not_to: str | None = None) -> list[int]:
        """Put `entry` in the inbox of each user's live gateway (one entry per gateway, with that
        gateway's users as targets), skipping gateway `not_to`; returns the users it reached."""
        if not user_ids:
            return []
        plan = await self.plan(user_ids)
        if not_to is not None:
            plan.by_gateway.pop(not_to, None)
        if not plan.by_gateway:
            return []
        await self.engine.inbox.add(inbox_entries(plan, entry))
        return [uid for targets in plan.by_gateway.values() for uid in targets]

    async def pushback(self, user_id: int, forward_req: Any) -> bool:
        """GoStacker's pushback: a ClientMessage that did not reach `user_id`. GoStacker parked it in an
        offline list until the next connect; here it goes to his gateway now if he is online."""
        if not isinstance(forward_req, dict):
            return False
        payload = forward_req.get("payload")
        entry = PushEntry(
            type=str(forward_req.get("type", "chat")), msg_id=_int(forward_req.get("id")),
            room_id=_int(forward_req.get("room_id")), sender_id=_int(forward_req.get("sender_id")),
            target_ids=[user_id], payload=payload, seq=_int(forward_req.get("seq")),
            client_msg_id=forward_req.get("client_msg_id") if isinstance(forward_req.get("client_msg_id"), str) else None,
            ts=_int(forward_req.get("ts")), content_type=str(forward_req.get("content_type") or "text"))
        return bool(await self.to_users([user_id], entry))

    async def catch_up(self, user_id: int) -> bool:
        return bool(await self.to_users([user_id], PushEntry(type=EntryType.CATCH_UP, target_ids=[user_id])))


def _int(value: Any) -> int:
    # Outside 64 bits counts as absent, like a non-number: such a value cannot be encoded for the
    # gateway's inbox (orjson refuses it).
    if isinstance(value, int) and not isinstance(value, bool) and in_int64(value):
        return value
    return 0
