"""Per-connection, per-room ordering: each client sees a room's messages once, in seq order, no holes.

Pure logic, no I/O. The live push may arrive out of order (two send instances race to a gateway's
inbox), twice (a reclaimed entry, a resend) or with holes (a message whose entry went to a stale
gateway). The gateway asks this sequencer about every message before writing it:
- seq <= last delivered: a duplicate, drop it;
- seq == last + 1: deliver;
- seq > last + 1: first fetch (last, seq) from the message log, then deliver (the fill);
so correctness never depends on the push.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    GAP = "gap"
    UNKNOWN_ROOM = "unknown_room"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    missing_from: int = 0  # with GAP: the first missing seq
    missing_to: int = 0  # with GAP: the last missing seq


class RoomSequencer:
    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[int, int] = {}

    def knows(self, room_id: int) -> bool:
        return room_id in self._last

    def start(self, room_id: int, delivered_seq: int) -> None:
        """Set where the client stands in a room (from its cursor), unless already known."""
        self._last.setdefault(room_id, delivered_seq)

    def last(self, room_id: int) -> int:
        return self._last.get(room_id, 0)

    def is_next(self, room_id: int, seq: int) -> bool:
        """seq directly follows what the room delivered (decide() would say DELIVER), without a Decision."""
        return self._last.get(room_id) == seq - 1

    def decide(self, room_id: int, seq: int) -> Decision:
        last = self._last.get(room_id)
        if last is None:
            return Decision(Verdict.UNKNOWN_ROOM)
        if seq <= last:
            return Decision(Verdict.DUPLICATE)
        if seq == last + 1:
            return Decision(Verdict.DELIVER)
        return Decision(Verdict.GAP, last + 1, seq - 1)

    def delivered(self, room_id: int, seq: int) -> None:
        if seq > self._last.get(room_id, 0):
            self._last[room_id] = seq

    def positions(self) -> dict[int, int]:
        return dict(self._last)
