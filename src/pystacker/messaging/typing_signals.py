"""Typing: "this user is typing in this room", an ephemeral signal (issue 14).

Never stored, never given a seq, never in a catch-up, never handed on to a gateway a user moved to:
a typing signal that arrives late is wrong, so losing one costs nothing. A client sends
`{"type":"typing","room_id"}`; the room's other members get `{"type":"typing","room_id","user_id"}`
on every device that is online (an inbox entry of type `typing` per gateway, like read receipts). At
most one per user and room per `TYPING_INTERVAL` is forwarded, the rest dropped silently (clients
repeat it while the user types); the gateway holding the socket keeps that count, so two devices of
one user typing on two gateways at once may forward one each. A gateway drops a typing frame for a
connection whose queue is more than half full: it is the first thing shed under load.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from pystacker.messaging.handoff import Handoff
from pystacker.messaging.model import EntryType, PushEntry
from pystacker.observability import metrics

log = logging.getLogger("pystacker.typing")

TYPING_INTERVAL = 3.0  # seconds: one forwarded signal per user and room in this long


class TypingPacer:
    """Which signals go on: the first of each (user, room) per interval. Bounded: the oldest entries
    go first past `max_keys` (a forgotten one only lets one more signal through)."""

    def __init__(self, interval: float = TYPING_INTERVAL, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._last: OrderedDict[tuple[int, int], float] = OrderedDict()

    def allow(self, user_id: int, room_id: int) -> bool:
        now = self.clock()
        key = (user_id, room_id)
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True


class TypingSignals:
    def __init__(self, handoff: Handoff, pacer: TypingPacer | None = None) -> None:
        self.handoff = handoff
        self.pacer = pacer or TypingPacer()

    async def typing(self, user_id: int, room_id: int, members: Collection[int]) -> bool:
        """`user_id` (a member) is typing in `room_id`; True if the signal went to the others."""
        others = [member for member in members if member != user_id]
        if not others or not self.pacer.allow(user_id, room_id):
            metrics.TYPING_SIGNALS.labels("dropped").inc()
            return False
        try:
            await self.handoff.to_users(others, PushEntry(type=EntryType.TYPING, room_id=room_id, sender_id=user_id))
        except Exception:  # a lost typing signal costs nothing: the next one replaces it
            log.warning("typing signal not forwarded", exc_info=True, extra={"room_id": room_id, "user_id": user_id})
            return False
        metrics.TYPING_SIGNALS.labels("forwarded").inc()
        return True
