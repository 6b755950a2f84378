"""Read state: how far each user has read each room, the unread counts it gives, and the `read`
frames that tell the reader's devices and the room's other members.

A read mark per (user, room) only moves forward (Tinode's `read`, OpenIM's hasReadSeq, Matrix's "up
to" receipts); there is no flag per message. It lives in the engine (`read_marks`) and the flusher
copies it to SQL (`room_cursors.read_seq`) after the messages it counts. Sending a message moves the
sender's mark to it, so a user's own messages are never unread and unread = last_seq - read_seq.

Read frames are ephemeral: never stored, never given a seq, never written to an inbox as a message.
The reader's own sockets always get one (the badge clears everywhere). The room's other members get
the same frame as a read receipt: in a private room each time, in a group at most once per reader and
room per `limits.read_receipt_interval_ms` (the last mark of the interval is sent at its end), and a
group's receipts are the first thing dropped when too many are in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pystacker.engine.base import Engine, LogEnd, MessageLog
from pystacker.messaging.content import preview
from pystacker.messaging.events import is_event
from pystacker.messaging.handoff import Handoff
from pystacker.messaging.history import History
from pystacker.messaging.model import EntryType, PushEntry
from pystacker.messaging.store import MessageStore
from pystacker.observability import metrics

log = logging.getLogger("pystacker.readstate")



class ReadMarks:
    """The engine's read marks, with SQL's copy behind them. A mark missing from the engine (a Redis
    restarted without persistence, or a room the user was in before read state existed) is taken
    from SQL, and an advance starts from SQL's copy, so a mark never moves backwards."""

    def __init__(self, engine: Engine, store: MessageStore) -> None:
        self.engine = engine
        self.store = store

    async def of(self, user_id: int, last_seqs: dict[int, int]) -> dict[int, int]:
        """The read seq of each room of `last_seqs` (room -> its last seq), at most that last seq. A
        room with no mark anywhere counts as read to its end: the user was in it before read state
        existed, and its history is not news to him."""
        rooms = list(last_seqs)
        marks = await self.engine.read_marks.get(user_id, rooms)
        missing = [room for room in rooms if room not in marks]
        if missing:
            marks.update(await self.store.load_read_marks(user_id, missing))
        return {room: min(marks.get(room, last), last) for room, last in last_seqs.items()}

    async def of_members(self, user_ids: Sequence[int], room_id: int, last_seq: int) -> dict[int, int]:
        marks = await self.engine.read_marks.of_users(user_ids, room_id)
        missing = [user for user in user_ids if user not in marks]
        if missing:
            marks.update(await self.store.read_marks_of_users(missing, room_id))
        return {user: min(marks.get(user, last_seq), last_seq) for user in user_ids}

    async def advance(self, user_id: int, room_id: int, seq: int) -> int:
        """Move the mark forward to `seq`; returns the mark now (which may be ahead of `seq`)."""
        current = (await self.engine.read_marks.get(user_id, [room_id])).get(room_id)
        if current is None:
            current = (await self.store.load_read_marks(user_id, [room_id])).get(room_id, 0)
        mark = max(current, seq)
        await self.engine.read_marks.advance([(user_id, room_id, mark)])
        return mark

    async def advance_many(self, updates: Sequence[tuple[int, int, int]]) -> None:
        """(user, room, seq) moves known to be at or past SQL's copy: a join (the room's end) and a
        send (the sender's own message, the room's newest)."""
        await self.engine.read_marks.advance(updates)


class RoomKinds:
    """Whether a room is a group, read from SQL once per room (a room never changes kind)."""

    def __init__(self, store: MessageStore, *, max_rooms: int = 100_000) -> None:
        self.store = store
        self.max_rooms = max_rooms
        self._groups: OrderedDict[int, bool] = OrderedDict()

    async def is_group(self, room_id: int) -> bool:
        known = self._groups.get(room_id)
        if known is None:
            # A room meta has not written yet cannot have members to read it: a group is the safe
            # answer (its receipts are paced).
            known = await self.store.is_group(room_id) is not False
            self._groups[room_id] = known
            while len(self._groups) > self.max_rooms:
                self._groups.popitem(last=False)
        return known


# -- pacing the receipts of groups -----------------------------------------------------------------------


class Pace(Enum):
    NOW = "now"  # send this receipt now: a new interval starts
    LATER = "later"  # hold it: send the newest mark when the interval ends (schedule due())
    MERGED = "merged"  # one is held already: it now carries this newer mark


@dataclass(slots=True)
class _Slot:
    sent_at: float  # when the last receipt of this (reader, room) went out
    waiting: int | None = None  # the newest mark to send when the interval ends


class ReceiptPacer:
    """At most one receipt per (reader, room) per interval; the newest mark of an interval goes out at
    its end. Decides only (clock injected); the caller sends and schedules. Holds at most `max_keys`
    slots, the least recently used forgotten first (a receipt held in a forgotten slot is dropped:
    receipts may be shed, read marks are not)."""

    def __init__(self, interval: float, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._slots: OrderedDict[tuple[int, int], _Slot] = OrderedDict()

    def offer(self, reader: int, room_id: int, seq: int) -> tuple[Pace, float]:
        """What to do with a new mark, and for Pace.LATER the seconds until due()."""
        key, now = (reader, room_id), self.clock()
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
        if slot is not None and slot.waiting is not None:
            slot.waiting = max(slot.waiting, seq)
            return Pace.MERGED, 0.0
        if slot is not None and now - slot.sent_at < self.interval:
            slot.waiting = seq
            return Pace.LATER, slot.sent_at + self.interval - now
        self._slots[key] = _Slot(now)
        self._slots.move_to_end(key)
        while len(self._slots) > self.max_keys:
            self._slots.popitem(last=False)
        return Pace.NOW, 0.0

    def due(self, reader: int, room_id: int) -> int | None:
        """The interval ended: the held mark to send now, if any (a new interval starts with it)."""
        slot = self._slots.get((reader, room_id))
        if slot is None or slot.waiting is None:
            return None
        seq, slot.waiting, slot.sent_at = slot.waiting, None, self.clock()
        return seq


class ReadNotifier:
    """Sends `read` frames through the users' gateways (an inbox entry per gateway, as a hand-on)."""

    def __init__(self, handoff: Handoff, *, interval: float, max_in_flight: int = 256) -> None:
        self.handoff = handoff
        self.pacer = ReceiptPacer(interval)
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, reader: int, room_id: int, seq: int, members: Collection[int], *, private: bool) -> None:
        """The reader's mark is `seq` now: tell his sockets, and the others as the room's kind says."""
        others = [member for member in members if member != reader]
        if private:
            await self._deliver([reader, *others], reader, room_id, seq)
            return
        await self._deliver([reader], reader, room_id, seq)
        if not others:
            return
        pace, wait = self.pacer.offer(reader, room_id, seq)
        if pace is Pace.NOW:
            self._spawn(self._receipt(others, reader, room_id, seq))
        else:
            metrics.READ_RECEIPTS.labels("coalesced").inc()
            if pace is Pace.LATER:
                asyncio.get_running_loop().call_later(wait, self._release, others, reader, room_id)

    def _release(self, others: list[int], reader: int, room_id: int) -> None:
        seq = self.pacer.due(reader, room_id)
        if seq is not None:
            self._spawn(self._receipt(others, reader, room_id, seq))

    async def _receipt(self, others: list[int], reader: int, room_id: int, seq: int) -> None:
        if self._in_flight >= self.max_in_flight:
            metrics.READ_RECEIPTS.labels("shed").inc()  # the first thing to go under load
            return
        metrics.READ_RECEIPTS.labels("sent").inc()
        await self._deliver(others, reader, room_id, seq)

    async def _deliver(self, targets: list[int], reader: int, room_id: int, seq: int) -> None:
        self._in_flight += 1
        try:
            await self.handoff.to_users(targets, PushEntry(type=EntryType.READ, room_id=room_id, sender_id=reader, seq=seq))
        except Exception:
            log.exception("read frames not delivered", extra={"room_id": room_id, "user_id": reader})
        finally:
            self._in_flight -= 1

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)


@dataclass(frozen=True, slots=True)
class RoomReadState:
    """One room as a reader sees it: unread counts the messages after his read seq (room events,
    edits and reactions, are not unread: the entries' msg_no counts messages only)."""

    last_seq: int
    read_seq: int
    unread: int


class ReadState:
    """The read-state operations of the services; callers check who may read which room."""

    def __init__(self, log: MessageLog, marks: ReadMarks, notifier: ReadNotifier, kinds: RoomKinds,
                 history: History) -> None:
        self.log = log
        self.history = history
        self.marks = marks
        self.notifier = notifier
        self.kinds = kinds

    async def mark(self, reader: int, room_id: int, seq: int, members: Collection[int]) -> int:
        """`reader` (a member) has read the room up to `seq`; a seq past the room's end counts as its
        end. Returns his mark now, which every socket of his and the others are told."""
        last = (await self.log.last_seqs([room_id])).get(room_id, 0)
        mark = await self.marks.advance(reader, room_id, min(seq, last))
        metrics.READ_MARKS_MOVED.inc()
        await self.notifier.read(reader, room_id, mark, members, private=not await self.kinds.is_group(room_id))
        return mark

    async def of_members(self, room_id: int, members: Collection[int]) -> tuple[int, dict[int, int]]:
        """The room's last seq, and each member's read seq."""
        last = (await self.log.last_seqs([room_id])).get(room_id, 0)
        return last, await self.marks.of_members(sorted(members), room_id, last)

    async def rooms(self, user_id: int, room_ids: Sequence[int]) -> dict[int, RoomReadState]:
        ends = await self.log.ends(room_ids)
        read_seqs = await self.marks.of(user_id, {room: end.seq for room, end in ends.items()})
        behind = [room for room, end in ends.items() if 0 < read_seqs[room] < end.seq]
        # The msg_no where each mark stands (one entry read per room the reader is behind in).
        read_nos = dict(zip(behind, await asyncio.gather(*(self._msg_no_at(room, read_seqs[room]) for room in behind)),
                            strict=True))
        return {room: RoomReadState(end.seq, read_seqs[room], _unread(end, read_seqs[room], read_nos.get(room)))
                for room, end in ends.items()}

    async def _msg_no_at(self, room_id: int, seq: int) -> int | None:
        entry = await self.history.at(room_id, seq)
        return None if entry is None else entry.msg_no

    async def joined(self, room_id: int, user_ids: Sequence[int]) -> None:
        """New members have read all that came before they joined: only what comes next is unread."""
        last = (await self.log.last_seqs([room_id])).get(room_id, 0)
        await self.marks.advance_many([(user_id, room_id, last) for user_id in user_ids])


def _unread(end: LogEnd, read_seq: int, read_no: int | None) -> int:
    if read_seq >= end.seq:
        return 0
    if read_seq <= 0:
        return end.msg_no
    if read_no is None:  # the entry at the mark is not readable (a store that lost it): count seqs
        return end.seq - read_seq
    return max(end.msg_no - read_no, 0)


LAST_MESSAGE_PAGE = 20


async def room_summaries(reading: ReadState, history: History, user_id: int,
                         room_ids: Sequence[int]) -> list[dict[str, object]]:
    """What a room list shows for each of the user's rooms: last seq, read seq, unread count, and the
    last message (None for a room without messages)."""
    states = await reading.rooms(user_id, room_ids)

    async def last_message(room_id: int, last_seq: int) -> dict[str, object] | None:
        if last_seq <= 0:
            return None
        # The last message, not the last entry: paging back over the room events after it.
        upper = last_seq + 1
        message = None
        while message is None and upper > 1:
            found = await history.before(room_id, upper, LAST_MESSAGE_PAGE)
            if not found:
                return None
            message = next((m for m in reversed(found) if not is_event(m)), None)
            upper = found[0].seq
        if message is None:
            return None
        return {"id": message.msg_id, "id_str": str(message.msg_id), "seq": message.seq,
                "sender_id": message.sender_id, "content_type": message.type, "preview": preview(message),
                "ts": message.created_at_ms}

    lasts = await asyncio.gather(*(last_message(room, states[room].last_seq) for room in room_ids))
    return [{"room_id": room, "last_seq": states[room].last_seq, "read_seq": states[room].read_seq,
             "unread": states[room].unread, "last_message": last}
            for room, last in zip(room_ids, lasts, strict=True)]
