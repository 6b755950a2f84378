"""What the application may read next: each room's messages once, in seq order, without a hole.

Pure logic, no I/O (like the gateway's `messaging/ordering.py`, one level up). The session offers every
entry of a room's log it receives: chat messages and room events (edits, recalls, reactions: each has
its own seq in the same sequence), from live pushes, catch-up batches and `sync` answers, in any order
and any number of times. Below, "message" means any such entry. The inbox keeps, per room:
- `next_seq`: the seq the application gets next (unknown until the room is first seen or set);
- `held`: messages beyond `next_seq`, waiting for the hole before them to be filled;
- `highest`: the highest seq seen, kept even when a message had to be dropped.
A room is *behind* when `next_seq <= highest` and `next_seq` is not held: messages exist that the
inbox does not have, and the session must fetch them (`sync`) before anything later is readable.

Everything is bounded. The ready queue holds `max_ready` items; when it is full, in-order messages are
held instead; when the held space is full, messages are dropped and the room becomes behind. Nothing
is lost by dropping: the server's log has every message, and the session fetches them when there is
room again. Dropping instead of blocking keeps the socket reader responsive (answers to `send`, pings).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum

from pystacker.client.models import (
    ChatMessage,
    Delivered,
    EditEvent,
    PresenceEvent,
    ReactionEvent,
    ReadEvent,
    RecallEvent,
    RoomEntry,
    TypingEvent,
)

Item = ChatMessage | EditEvent | RecallEvent | ReactionEvent | Delivered | ReadEvent | TypingEvent | PresenceEvent
ROOM_ENTRIES = (ChatMessage, EditEvent, RecallEvent, ReactionEvent)  # ordered by seq; the rest are not


class Offer(Enum):
    READY = "ready"  # readable now (or as soon as the ready queue has room)
    HELD = "held"  # waits for an earlier seq
    DUPLICATE = "duplicate"  # already had it
    DROPPED = "dropped"  # no space: the room is behind and must be fetched again


@dataclass(slots=True)
class RoomState:
    next_seq: int | None = None
    held: dict[int, RoomEntry] = field(default_factory=dict)
    highest: int = 0
    consumed: int = 0  # the last seq the application read

    def behind(self) -> bool:
        return self.next_seq is not None and self.next_seq <= self.highest and self.next_seq not in self.held


class InOrderInbox:
    def __init__(self, *, max_ready: int = 1000, max_held: int = 5000, recent_ids: int = 4096) -> None:
        if max_ready < 1 or max_held < 1:
            raise ValueError("max_ready and max_held must be at least 1")
        self.max_ready = max_ready
        self.max_held = max_held
        self.rooms: dict[int, RoomState] = {}
        self._ready: deque[Item] = deque()
        self._ready_chats = 0  # room entries in _ready (the bound counts only those)
        self._held_total = 0
        self._stalled: set[int] = set()  # rooms with a held next_seq that waits for ready space
        self._gapped: set[int] = set()  # rooms that held or dropped something: maybe behind
        # Frames without a seq (from GoStacker components) can only be deduplicated by id.
        self._recent_ids: OrderedDict[int, None] = OrderedDict()
        self._recent_limit = recent_ids
        self.skipped = 0  # seqs given up on (see skip_to)

    # -- positions -------------------------------------------------------------------------------

    def set_position(self, room_id: int, seq: int) -> None:
        """The application already has the room up to `seq` (resuming a stored position)."""
        room = self.rooms.setdefault(room_id, RoomState())
        if room.next_seq is None or seq + 1 > room.next_seq:
            self._advance(room_id, room, seq + 1)
            room.consumed = max(room.consumed, seq)
            room.highest = max(room.highest, seq)

    def received(self, room_id: int) -> int | None:
        """The last seq of the room the inbox has without a hole (what to sync after); None if unknown."""
        room = self.rooms.get(room_id)
        return None if room is None or room.next_seq is None else room.next_seq - 1

    def positions(self) -> dict[int, int]:
        """The last seq the application read, per room: what to resume from and to acknowledge."""
        return {room_id: room.consumed for room_id, room in self.rooms.items() if room.consumed > 0}

    def behind(self) -> dict[int, int]:
        """Rooms with messages to fetch: room -> the seq to sync after."""
        found: dict[int, int] = {}
        for room_id in list(self._gapped):
            room = self.rooms[room_id]
            if room.next_seq is not None and room.behind():
                found[room_id] = room.next_seq - 1
            elif room.next_seq is None or room.next_seq > room.highest:
                self._gapped.discard(room_id)  # caught up
        return found

    @property
    def maybe_behind(self) -> bool:
        """Cheap: False means behind() is surely empty."""
        return bool(self._gapped)

    # -- input -----------------------------------------------------------------------------------

    def offer(self, message: RoomEntry) -> Offer:
        if message.seq <= 0:
            return self._offer_unordered(message)
        room = self.rooms.setdefault(message.room_id, RoomState())
        if room.next_seq is None:
            room.next_seq = message.seq  # first sight of the room: it starts here
        if message.seq < room.next_seq or message.seq in room.held:
            return Offer.DUPLICATE
        room.highest = max(room.highest, message.seq)
        if message.seq == room.next_seq and self._ready_chats < self.max_ready:
            self._push_ready(message)
            room.next_seq += 1
            self._release(message.room_id, room)
            return Offer.READY
        self._gapped.add(message.room_id)
        if self._held_total >= self.max_held:
            return Offer.DROPPED
        room.held[message.seq] = message
        self._held_total += 1
        self._release(message.room_id, room)
        return Offer.READY if message.seq < room.next_seq else Offer.HELD

    def offer_event(self, event: Delivered | ReadEvent | TypingEvent | PresenceEvent) -> bool:
        """A non-room event; dropped (False) when the ready queue is full: it is informational."""
        if len(self._ready) >= self.max_ready * 2:
            return False
        self._ready.append(event)
        return True

    def skip_to(self, room_id: int, seq: int) -> int:
        """Give up on the seqs before `seq` (they could not be fetched); returns how many were skipped."""
        room = self.rooms.get(room_id)
        if room is None or room.next_seq is None or seq <= room.next_seq:
            return 0
        skipped = sum(1 for s in range(room.next_seq, seq) if s not in room.held)
        for s in sorted(s for s in room.held if s < seq):
            self._push_ready(room.held.pop(s))  # what we do have before the hole still counts
            self._held_total -= 1
        room.next_seq = seq
        self._release(room_id, room)
        self.skipped += skipped
        return skipped

    # -- output ----------------------------------------------------------------------------------

    def pop(self) -> Item | None:
        if not self._ready:
            return None
        item = self._ready.popleft()
        if isinstance(item, ROOM_ENTRIES):
            self._ready_chats -= 1
            room = self.rooms.get(item.room_id)
            if room is not None and item.seq > room.consumed:
                room.consumed = item.seq
            if self._stalled:
                for room_id in list(self._stalled):
                    self._release(room_id, self.rooms[room_id])
        return item

    def __len__(self) -> int:
        return len(self._ready)

    def space(self) -> int:
        """How many more room entries (messages and room events) fit in the ready queue."""
        return max(self.max_ready - self._ready_chats, 0)

    # -- internals -------------------------------------------------------------------------------

    def _push_ready(self, item: RoomEntry) -> None:
        self._ready.append(item)
        self._ready_chats += 1

    def _release(self, room_id: int, room: RoomState) -> None:
        assert room.next_seq is not None
        while room.next_seq in room.held:
            if self._ready_chats >= self.max_ready:
                self._stalled.add(room_id)
                return
            self._push_ready(room.held.pop(room.next_seq))
            self._held_total -= 1
            room.next_seq += 1
        self._stalled.discard(room_id)

    def _advance(self, room_id: int, room: RoomState, next_seq: int) -> None:
        for s in [s for s in room.held if s < next_seq]:
            del room.held[s]
            self._held_total -= 1
        room.next_seq = next_seq
        self._release(room_id, room)

    def _offer_unordered(self, message: RoomEntry) -> Offer:
        if message.id in self._recent_ids:
            return Offer.DUPLICATE
        if self._ready_chats >= self.max_ready:
            return Offer.DROPPED  # without a seq it cannot be fetched again: the bound wins
        self._recent_ids[message.id] = None
        if len(self._recent_ids) > self._recent_limit:
            self._recent_ids.popitem(last=False)
        self._push_ready(message)
        return Offer.READY
