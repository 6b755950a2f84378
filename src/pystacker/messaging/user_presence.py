"""Presence: a user is online while any of his devices is connected, on any gateway (issue 14).

Nothing new is stored to know it: the registry's record of a user holds every device's route, and
a device is online when its route is `connected` and names a live gateway (messaging/fanout.py
route_is_live), so a user whose gateway died shows offline as soon as that gateway leaves the live
list. What is stored is `last_seen`: when a user's last device leaves, the gateway writes the time
(kept LAST_SEEN_TTL) and announces the change on the engine's bus (best effort: the channel
`presence`). A user whose gateway died has no such moment: his last_seen is when a watcher noticed.

Watching (gateway/presence_watch.py) reads the same states: a client names up to MAX_WATCHED users;
its gateway tells it of their changes as the bus announces them, and re-reads their states every
half `registry.presence_ttl`, which catches dead gateways and lost announcements. Changes of one user
reach a client at most once per COALESCE_SECONDS (the newest state at the end of the window).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from pystacker.engine.base import Engine, GatewayInfo, UserRoute
from pystacker.messaging.fanout import route_is_live
from pystacker.messaging.handoff import LiveGateways

log = logging.getLogger("pystacker.presence")

PRESENCE_CHANNEL = "presence"
LAST_SEEN_TTL = 90 * 86400
MAX_WATCHED = 200  # users one client may watch, and ids in one GET /api/presence
COALESCE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class PresenceState:
    online: bool
    last_seen: float | None  # unix seconds when the last device left; None while online or unknown

    def to_json(self, user_id: int) -> dict[str, object]:
        return {"user_id": user_id, "online": self.online,
                "last_seen": None if self.last_seen is None else int(self.last_seen * 1000)}


def online_in(record: UserRoute | None, live: Mapping[str, GatewayInfo], *, besides: str | None = None) -> bool:
    """A device of the record (other than `besides`) is connected to a live gateway."""
    if record is None:
        return False
    return any(r.status == "connected" and r.device_id != besides and route_is_live(r, live) for r in record.devices())


class Presence:
    def __init__(self, engine: Engine, live: LiveGateways) -> None:
        self.engine = engine
        self.live = live

    async def states(self, user_ids: Sequence[int]) -> dict[int, PresenceState]:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        routes = await self.engine.registry.get_routes(users)
        live = await self.live.get()
        offline = [user for user in users if not online_in(routes.get(user), live)]
        seen = await self.engine.registry.last_seen(offline) if offline else {}
        return {user: PresenceState(True, None) if user not in offline else PresenceState(False, seen.get(user))
                for user in users}

    async def connected(self, user_id: int, device_id: str, record: UserRoute) -> None:
        """A device of the user connected (`record`: his routes after it): announce him online if no
        other device of his was."""
        if not online_in(record, await self.live.get(), besides=device_id):
            await self._announce(user_id, PresenceState(True, None))

    async def left(self, user_id: int, record: UserRoute | None) -> None:
        """A device of the user left (`record`: his routes after it): if none is online now, he is
        offline from now."""
        if online_in(record, await self.live.get()):
            return
        now = time.time()
        await self.engine.registry.set_last_seen(user_id, now, LAST_SEEN_TTL)
        await self._announce(user_id, PresenceState(False, now))

    async def noticed_offline(self, user_id: int) -> PresenceState:
        """A watcher found the user offline with no last_seen (his gateway died): it is now."""
        now = time.time()
        await self.engine.registry.set_last_seen(user_id, now, LAST_SEEN_TTL)
        return PresenceState(False, now)

    async def _announce(self, user_id: int, state: PresenceState) -> None:
        try:
            await self.engine.bus.publish(PRESENCE_CHANNEL, orjson.dumps(
                {"u": user_id, "on": state.online, "s": state.last_seen}))
        except Exception:  # best effort: the watchers' re-check finds the change anyway
            log.warning("presence change not announced", exc_info=True, extra={"user_id": user_id})


def decode_announcement(data: bytes) -> tuple[int, PresenceState] | None:
    try:
        fields = orjson.loads(data)
        seen = fields.get("s")
        return int(fields["u"]), PresenceState(bool(fields["on"]), None if seen is None else float(seen))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
