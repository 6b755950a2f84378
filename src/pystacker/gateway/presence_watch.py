"""The gateway's presence watchers: which of its sockets watch which users, and the `presence`
frames they get (messaging/user_presence.py says what presence is).

A client sends `{"type":"presence_subscribe","user_ids":[...]}` (at most MAX_WATCHED; a new one
replaces the old, an empty list stops watching) and gets the current state of each at once, then a
`presence` frame whenever one of them changes: from the bus's announcements, and from a re-read of
every watched user each `recheck` seconds (a dead gateway announces nothing). A user's changes go out
at most once per COALESCE_SECONDS: the first at once, the newest state at the end of the window.
Bounded: a socket watches at most MAX_WATCHED users, and what is kept per user is one state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from pystacker.engine.base import Bus
from pystacker.gateway.connection import Connection, RawFrame
from pystacker.messaging.frames import encode
from pystacker.messaging.user_presence import (
    COALESCE_SECONDS,
    MAX_WATCHED,
    PRESENCE_CHANNEL,
    Presence,
    PresenceState,
    decode_announcement,
)

log = logging.getLogger("pystacker.gateway.presence")

RECHECK_CHUNK = 500


def presence_frame(user_id: int, state: PresenceState) -> dict[str, object]:
    """GoStacker's frame keys too (`id` -1, `sender_id` = the user, `payload` null)."""
    return {"id": -1, "type": "presence", "room_id": 0, "sender_id": user_id, "payload": None,
            **state.to_json(user_id)}


class PresenceWatch:
    def __init__(self, presence: Presence, *, recheck: float, coalesce: float = COALESCE_SECONDS) -> None:
        self.presence = presence
        self.recheck = recheck
        self.coalesce = coalesce
        self._watchers: dict[int, set[Connection]] = {}  # watched user -> sockets
        self._watching: dict[Connection, frozenset[int]] = {}
        self._known: dict[int, PresenceState] = {}  # the newest state of each watched user
        self._sent: dict[int, tuple[float, PresenceState]] = {}  # when and what was last told
        self._due: set[int] = set()  # users whose newest state waits for the end of their window
        self._task: asyncio.Task[None] | None = None

    async def listen(self, bus: Bus) -> None:
        async def on_announcement(_: str, data: bytes) -> None:
            decoded = decode_announcement(data)
            if decoded is not None and decoded[0] in self._watchers:
                self._changed(*decoded)

        await bus.subscribe(PRESENCE_CHANNEL, on_announcement)

    def start(self) -> None:
        self._task = asyncio.create_task(self._recheck_forever(), name="presence-recheck")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- sockets ------------------------------------------------------------------------------------

    async def subscribe(self, conn: Connection, user_ids: Sequence[int]) -> None:
        """Watch these users (replacing what the socket watched), and tell their states now."""
        if len(set(user_ids)) > MAX_WATCHED:
            raise ValueError(f"at most {MAX_WATCHED} users")
        self.forget(conn)
        users = frozenset(user_ids)
        if not users:
            return
        self._watching[conn] = users
        for user in users:
            self._watchers.setdefault(user, set()).add(conn)
        states = await self.presence.states(sorted(users))
        for user, state in states.items():
            self._known.setdefault(user, state)
            conn.offer(RawFrame(encode(presence_frame(user, state))))

    def forget(self, conn: Connection) -> None:
        for user in self._watching.pop(conn, frozenset()):
            watchers = self._watchers.get(user)
            if watchers is not None:
                watchers.discard(conn)
                if not watchers:
                    del self._watchers[user]
                    self._known.pop(user, None)
                    self._sent.pop(user, None)
                    self._due.discard(user)

    # -- changes ------------------------------------------------------------------------------------

    def _changed(self, user_id: int, state: PresenceState) -> None:
        known = self._known.get(user_id)
        if known is not None and known.online == state.online:
            return  # not a change (a second device, or an announcement the re-check saw first)
        self._known[user_id] = state
        sent = self._sent.get(user_id)
        now = time.monotonic()
        if sent is None or now - sent[0] >= self.coalesce:
            self._tell(user_id, state, now)
        elif user_id not in self._due:
            self._due.add(user_id)
            asyncio.get_running_loop().call_later(sent[0] + self.coalesce - now, self._window_ended, user_id)

    def _window_ended(self, user_id: int) -> None:
        self._due.discard(user_id)
        state = self._known.get(user_id)
        sent = self._sent.get(user_id)
        if state is not None and (sent is None or sent[1].online != state.online):
            self._tell(user_id, state, time.monotonic())

    def _tell(self, user_id: int, state: PresenceState, now: float) -> None:
        self._sent[user_id] = (now, state)
        text = encode(presence_frame(user_id, state))
        for conn in list(self._watchers.get(user_id, ())):
            conn.offer(RawFrame(text))

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(self.recheck)
            users = list(self._watchers)
            for start in range(0, len(users), RECHECK_CHUNK):
                try:
                    states = await self.presence.states(users[start:start + RECHECK_CHUNK])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("presence re-check failed")
                    continue
                for user, state in states.items():
                    if user not in self._watchers:
                        continue
                    known = self._known.get(user)
                    if known is not None and known.online and not state.online and state.last_seen is None:
                        state = await self.presence.noticed_offline(user)  # his gateway died
                    self._changed(user, state)
