"""The `memory` engine: the engine contract (base.py) for one process, with Redis semantics.

These are real data structures, not mocks: inbox streams have consumer groups, pending lists, idle
times and trimming; keys expire; the flush queue re-hands batches whose flusher went silent. Everything
runs on one event loop and no thread touches it, so a method is atomic up to its first `await`; the
only awaits are the blocking read's wait and the seeding of a room's seq counter from SQL.

Time: entry ids use the wall clock (like Redis), every duration (TTL, idle, claim timeout) uses
time.monotonic() so that a clock step can neither expire nor revive anything.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Generic, TypeVar

from pystacker.engine.base import (
    Appended,
    Bus,
    BusHandler,
    Cursors,
    EngineSettings,
    FlushBatch,
    GatewayInfo,
    Inbox,
    InboxEntry,
    InboxStats,
    LogEnd,
    MessageLog,
    Registry,
    Roster,
    RosterConflict,
    RosterEntry,
    Rosters,
    SendInfo,
    SeqSeed,
    TargetChange,
    UserRoute,
    hand_on_in_turn,
)
from pystacker.engine.bus_handlers import HandlerTasks
from pystacker.messaging.model import NewMessage, StoredMessage
from pystacker.registry.device_routes import compose, expiry, record_ttl, with_device

# -- inbox ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    """One entry of a group's pending list (Redis: PEL)."""

    consumer: str
    delivered_at: float  # time.monotonic() of the last hand-out: idle time counts from here
    count: int  # hand-outs so far


class _Stream:
    """One gateway's stream and its (single) consumer group.

    The entries form one ordered sequence, kept in two parts: `delivered` (up to and including the
    group's last-delivered id) and `unread` (after it). Entries are only appended to `unread`, move
    from its head to the tail of `delivered` when handed out, and leave only from the head of
    `delivered` when trimmed; so both parts stay in id order without ever sorting.
    """

    def __init__(self, *, with_group: bool) -> None:
        self.delivered: OrderedDict[str, bytes] = OrderedDict()
        self.unread: deque[tuple[str, bytes]] = deque()
        # Entries enter the pending list only when first handed out, which happens in id order, and
        # claims update them in place: so the dict's order is id order, as Redis keeps its PEL.
        self.pending: dict[str, _Pending] = {}
        self.has_group = with_group
        self.last_id = (0, 0)
        self.arrived = asyncio.Event()  # replaced at every add; blocked readers wait on it

    def __len__(self) -> int:
        return len(self.delivered) + len(self.unread)

    def next_id(self) -> str:
        """A new "<ms>-<n>" id, strictly above the last one even if the wall clock went back."""
        now_ms = time.time_ns() // 1_000_000
        last_ms, last_n = self.last_id
        self.last_id = (now_ms, 0) if now_ms > last_ms else (last_ms, last_n + 1)
        return f"{self.last_id[0]}-{self.last_id[1]}"

    def wake_readers(self) -> None:
        self.arrived.set()
        self.arrived = asyncio.Event()

    def create_group_at_end(self) -> None:
        # Everything already in the stream counts as delivered: a new group never replays history.
        self.delivered.update(self.unread)
        self.unread.clear()
        self.has_group = True

    def trim(self, max_len: int) -> None:
        """Drop the oldest entries beyond max_len, but only delivered ones, and never past a pending one."""
        while len(self) > max_len and self.delivered:
            oldest = next(iter(self.delivered))
            if oldest in self.pending:
                break
            self.delivered.popitem(last=False)


def _id_key(entry_id: str) -> tuple[int, int]:
    """Stream ids compare as (ms, n) pairs, as Redis compares them."""
    ms, _, n = entry_id.partition("-")
    try:
        return int(ms), int(n or 0)
    except ValueError:
        return (-1, -1)


def _idle_ms(pending: _Pending, now: float) -> float:
    return (now - pending.delivered_at) * 1000


class MemoryInbox:
    def __init__(self, settings: EngineSettings) -> None:
        self._max_len = settings.inbox_max_len
        self._streams: dict[str, _Stream] = {}

    def _grouped_stream(self, gateway_id: str) -> _Stream:
        """The gateway's stream with its group, creating what is missing as ensure_group would.

        Redis answers NOGROUP to a read of a missing group; here the gateway's own reads heal it
        instead, because a stream removed under a live gateway (remove_if_drained by a msgflusher that
        thought it gone) must not silence that gateway for good.
        """
        stream = self._streams.get(gateway_id)
        if stream is None:
            stream = self._streams[gateway_id] = _Stream(with_group=True)
        elif not stream.has_group:
            stream.create_group_at_end()
        return stream

    async def ensure_group(self, gateway_id: str) -> None:
        self._grouped_stream(gateway_id)

    async def add(self, entries: Sequence[tuple[str, bytes]]) -> list[str]:
        ids: list[str] = []
        touched: dict[str, _Stream] = {}
        for gateway_id, data in entries:
            stream = self._streams.get(gateway_id)
            if stream is None:
                # Like XADD: the stream appears, its group only with ensure_group (or the gateway's read).
                stream = self._streams[gateway_id] = _Stream(with_group=False)
            entry_id = stream.next_id()
            stream.unread.append((entry_id, data))
            touched[gateway_id] = stream
            ids.append(entry_id)
        for stream in touched.values():
            stream.trim(self._max_len)
            stream.wake_readers()
        return ids

    async def read_new(self, gateway_id: str, consumer: str, count: int, block_ms: int) -> list[InboxEntry]:
        # block_ms <= 0 does not wait at all (Redis's BLOCK 0 would wait forever: no caller wants that).
        deadline = time.monotonic() + block_ms / 1000
        while True:
            # Looked up again after every wait: the stream may have been removed and re-created meanwhile.
            stream = self._grouped_stream(gateway_id)
            if stream.unread:
                return self._hand_out_new(stream, consumer, count)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                async with asyncio.timeout(remaining):
                    await stream.arrived.wait()
            except TimeoutError:
                return []
            # Woken by an add; another consumer may have taken the entries already, hence the loop.

    def _hand_out_new(self, stream: _Stream, consumer: str, count: int) -> list[InboxEntry]:
        now = time.monotonic()
        handed: list[InboxEntry] = []
        while stream.unread and len(handed) < count:
            entry_id, data = stream.unread.popleft()
            stream.delivered[entry_id] = data
            stream.pending[entry_id] = _Pending(consumer, now, 1)
            handed.append(InboxEntry(entry_id, data, 1))
        return handed

    async def read_pending(self, gateway_id: str, consumer: str, count: int,
                           after_id: str = "0-0") -> list[InboxEntry]:
        stream = self._grouped_stream(gateway_id)
        now = time.monotonic()
        start = _id_key(after_id)
        handed: list[InboxEntry] = []
        for entry_id, pending in stream.pending.items():
            if len(handed) >= count:
                break
            if pending.consumer == consumer and _id_key(entry_id) > start:
                # A re-read is a delivery, as XREADGROUP with id 0 counts it.
                pending.count += 1
                pending.delivered_at = now
                handed.append(InboxEntry(entry_id, stream.delivered[entry_id], pending.count))
        return handed

    async def ack(self, gateway_id: str, entry_ids: Sequence[str]) -> int:
        stream = self._streams.get(gateway_id)
        if stream is None:
            return 0
        # Ids that are not pending (unknown, already acknowledged, malformed) count 0, as XACK counts them.
        return sum(stream.pending.pop(entry_id, None) is not None for entry_id in entry_ids)

    async def claim_idle(self, gateway_id: str, consumer: str, min_idle_ms: int, count: int) -> list[InboxEntry]:
        stream = self._streams.get(gateway_id)
        if stream is None:
            return []
        now = time.monotonic()
        claimed: list[InboxEntry] = []
        for entry_id, pending in stream.pending.items():
            if len(claimed) >= count:
                break
            if _idle_ms(pending, now) >= min_idle_ms:
                pending.consumer = consumer
                pending.delivered_at = now
                pending.count += 1
                claimed.append(InboxEntry(entry_id, stream.delivered[entry_id], pending.count))
        return claimed

    async def gateways(self) -> list[str]:
        return list(self._streams)

    async def stats(self, gateway_id: str) -> InboxStats:
        stream = self._streams.get(gateway_id)
        if stream is None:
            return InboxStats(length=0, pending=0, oldest_pending_ms=0)
        oldest = next(iter(stream.pending.values()), None)
        oldest_ms = int(_idle_ms(oldest, time.monotonic())) if oldest is not None else 0
        return InboxStats(length=len(stream), pending=len(stream.pending), oldest_pending_ms=oldest_ms)

    async def remove_if_drained(self, gateway_id: str) -> bool:
        stream = self._streams.get(gateway_id)
        if stream is None or stream.unread or stream.pending:
            return False
        del self._streams[gateway_id]
        # A reader blocked on the removed stream re-creates it with its group at once, so that entries
        # added from now on do not land in a group-less stream whose group would then start after them.
        stream.wake_readers()
        return True


# -- messages ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Room:
    # The recent window: consecutive seqs, ascending. Trimmed from the head only, so that
    # "every seq >= window_start is here" holds (readers fetch below window_start from SQL).
    window: deque[StoredMessage] = field(default_factory=deque)
    unflushed: set[int] = field(default_factory=set)  # seqs whose flush batch is not yet confirmed
    # Held while the counter is seeded from SQL, so that concurrent first appends seed only once.
    seed_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_K = TypeVar("_K")
_V = TypeVar("_V")


def _unexpired(entries: OrderedDict[_K, tuple[_V, float]], key: _K) -> _V | None:
    """The value of `key` unless expired, in a map of (value, expiry) kept in expiry order: the
    expired ones are dropped from its front first."""
    now = time.monotonic()
    while entries:
        oldest, (_, expires_at) = next(iter(entries.items()))
        if expires_at > now:
            break
        del entries[oldest]
    found = entries.get(key)
    return found[0] if found is not None else None


@dataclass(slots=True)
class _Batch:
    messages: list[StoredMessage]
    expires_at: float  # time.monotonic() after which the batch is handed out again


class MemoryMessageLog:
    def __init__(self, settings: EngineSettings, seq_seed: SeqSeed) -> None:
        self._settings = settings
        self._seq_seed = seq_seed
        self._last_seq: dict[int, int] = {}  # the seq counters; a room missing here gets seeded
        self._last_no: dict[int, int] = {}  # the msg_no counters, seeded with them
        self._rooms: dict[int, _Room] = {}
        # (room_id, sender_id, client_msg_id) -> (first message, expiry). Every key lives idempotency_ttl, so
        # insertion order is expiry order and expired keys are purged from the front.
        self._first_of_key: OrderedDict[tuple[int, int, str], tuple[StoredMessage, float]] = OrderedDict()
        self._flush_queue: deque[StoredMessage] = deque()  # not yet taken by a flusher, oldest first
        self._unflushed_by_id: dict[int, StoredMessage] = {}  # every message SQL may not have yet
        # msg id -> (revision record, expiry), in expiry order (TargetChange).
        self._revisions: OrderedDict[int, tuple[str, float]] = OrderedDict()
        # Taken and not confirmed. One timeout for all, so insertion order is expiry order.
        self._batches: dict[str, _Batch] = {}

    def _room(self, room_id: int) -> _Room:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _Room()
        return room

    async def _ensure_counter(self, room_id: int) -> None:
        """Give the room a seq counter, continuing from what SQL holds (first use, or a lost counter)."""
        if room_id in self._last_seq:
            return
        async with self._room(room_id).seed_lock:
            if room_id not in self._last_seq:  # seeded by the holder we waited for
                end = await self._seq_seed(room_id)
                self._last_seq[room_id], self._last_no[room_id] = end.seq, end.msg_no

    async def append(self, message: NewMessage) -> Appended:
        await self._ensure_counter(message.room_id)
        # No await from here on: the key check, the seq allocation and the three stores are one step.
        first = self._duplicate_of(message)
        return first if first is not None else self._store(message, counts=True)

    async def append_event(self, event: NewMessage, change: TargetChange) -> Appended | None:
        await self._ensure_counter(event.room_id)
        # No await from here on, as in append: check, append and change are one step.
        first = self._duplicate_of(event)
        if first is not None:
            return first
        if self._revision_of(change.target_id) != change.expected:
            return None
        appended = self._store(event, counts=False)
        record = change.revision.replace("$seq", str(appended.message.seq))
        self._revisions[change.target_id] = (record, time.monotonic() + self._settings.idempotency_ttl)
        self._revisions.move_to_end(change.target_id)
        for patch in change.patches:
            self._patch(patch)
        return appended

    async def revision(self, room_id: int, msg_id: int) -> str | None:
        return self._revision_of(msg_id)

    def _revision_of(self, msg_id: int) -> str | None:
        # Every record lives idempotency_ttl from its last change: the map is in expiry order.
        return _unexpired(self._revisions, msg_id)

    def _patch(self, entry: StoredMessage) -> None:
        """Replace the window's copy of the entry (and the idempotency key's, and the unflushed
        index's) where they are still held."""
        room = self._rooms.get(entry.room_id)
        if room is not None and room.window:
            index = entry.seq - room.window[0].seq  # the window's seqs are consecutive
            if 0 <= index < len(room.window) and room.window[index].msg_id == entry.msg_id:
                room.window[index] = entry
        if entry.msg_id in self._unflushed_by_id:
            self._unflushed_by_id[entry.msg_id] = entry
        if entry.client_msg_id is not None:
            key = (entry.room_id, entry.sender_id, entry.client_msg_id)
            kept = self._first_of_key.get(key)
            if kept is not None and kept[0].msg_id == entry.msg_id:
                self._first_of_key[key] = (entry, kept[1])

    def _duplicate_of(self, message: NewMessage) -> Appended | None:
        if message.client_msg_id is None:
            return None
        first = self._remembered((message.room_id, message.sender_id, message.client_msg_id))
        return Appended(first, duplicate=True) if first is not None else None

    def _store(self, message: NewMessage, *, counts: bool) -> Appended:
        seq = self._last_seq[message.room_id] + 1
        self._last_seq[message.room_id] = seq
        msg_no = self._last_no[message.room_id] + counts
        self._last_no[message.room_id] = msg_no
        stored = StoredMessage(msg_id=message.msg_id, room_id=message.room_id, seq=seq,
                               sender_id=message.sender_id, type=message.type, content=message.content,
                               created_at_ms=message.created_at_ms, client_msg_id=message.client_msg_id,
                               reply_to=message.reply_to, msg_no=msg_no)
        room = self._room(message.room_id)
        room.window.append(stored)
        room.unflushed.add(seq)
        self._flush_queue.append(stored)
        self._unflushed_by_id[stored.msg_id] = stored
        if message.client_msg_id is not None:
            self._first_of_key[(message.room_id, message.sender_id, message.client_msg_id)] = (
                stored, time.monotonic() + self._settings.idempotency_ttl)
        self._trim_window(room)
        return Appended(stored, duplicate=False)

    def _remembered(self, key: tuple[int, int, str]) -> StoredMessage | None:
        return _unexpired(self._first_of_key, key)

    def _trim_window(self, room: _Room) -> None:
        while len(room.window) > self._settings.window_size and room.window[0].seq not in room.unflushed:
            room.window.popleft()

    async def read(self, room_id: int, after_seq: int, limit: int) -> list[StoredMessage]:
        room = self._rooms.get(room_id)
        if room is None or not room.window or limit <= 0:
            return []
        start = max(after_seq + 1 - room.window[0].seq, 0)  # the window's seqs are consecutive
        if start >= len(room.window):  # past the end; also keeps islice's bounds under sys.maxsize
            return []
        return list(islice(room.window, start, start + limit))

    async def unflushed_by_id(self, msg_id: int) -> StoredMessage | None:
        return self._unflushed_by_id.get(msg_id)

    async def window_start(self, room_id: int) -> int:
        # A room without a counter is seeded first: answering 1 for a room whose counter was lost
        # would tell readers that the (empty) window holds everything, and they would skip SQL.
        await self._ensure_counter(room_id)
        room = self._room(room_id)
        return room.window[0].seq if room.window else self._last_seq[room_id] + 1

    async def last_seqs(self, room_ids: Sequence[int]) -> dict[int, int]:
        # Seeded like window_start: after a restart, 0 would hide every message SQL holds from the
        # catch-up, which compares the user's cursor with this.
        for room_id in room_ids:
            await self._ensure_counter(room_id)
        return {room_id: self._last_seq[room_id] for room_id in room_ids}

    async def ends(self, room_ids: Sequence[int]) -> dict[int, LogEnd]:
        for room_id in room_ids:
            await self._ensure_counter(room_id)
        return {room_id: LogEnd(self._last_seq[room_id], self._last_no[room_id]) for room_id in room_ids}

    async def take_batch(self, max_messages: int) -> FlushBatch | None:
        self._requeue_expired_batches()
        if not self._flush_queue or max_messages <= 0:
            return None
        messages = [self._flush_queue.popleft() for _ in range(min(max_messages, len(self._flush_queue)))]
        token = uuid.uuid4().hex
        self._batches[token] = _Batch(messages, time.monotonic() + self._settings.flush_claim_timeout)
        return FlushBatch(token, messages)

    def _requeue_expired_batches(self) -> None:
        """Put the messages of batches whose flusher went silent back at the head of the queue."""
        now = time.monotonic()
        expired: list[str] = []
        for token, batch in self._batches.items():
            if batch.expires_at > now:
                break
            expired.append(token)
        # Newest expired first, each in front of the last: the oldest batch ends up at the very head.
        for token in reversed(expired):
            self._flush_queue.extendleft(reversed(self._batches.pop(token).messages))

    async def batch_pending(self, token: str) -> bool:
        return token in self._batches

    async def confirm_batch(self, token: str) -> None:
        # An unknown token is a batch confirmed already, or one that expired and went to another
        # flusher (whose confirm will count): nothing to do either way.
        batch = self._batches.pop(token, None)
        if batch is None:
            return
        rooms: dict[int, _Room] = {}
        for message in batch.messages:
            room = rooms[message.room_id] = self._rooms[message.room_id]
            room.unflushed.discard(message.seq)
            self._unflushed_by_id.pop(message.msg_id, None)
        for room in rooms.values():
            self._trim_window(room)


# -- cursors ----------------------------------------------------------------------------------------


class MemoryCursors:
    def __init__(self) -> None:
        self._seqs: dict[tuple[int, int], int] = {}  # (user_id, room_id) -> delivered seq
        self._rooms: dict[int, set[int]] = {}  # user_id -> rooms with a cursor
        self._dirty: OrderedDict[tuple[int, int], None] = OrderedDict()  # changed since taken, oldest first

    async def get(self, user_id: int, room_ids: Sequence[int]) -> dict[int, int]:
        return {room_id: self._seqs[(user_id, room_id)] for room_id in room_ids if (user_id, room_id) in self._seqs}

    async def of_users(self, user_ids: Sequence[int], room_id: int) -> dict[int, int]:
        return {user_id: self._seqs[(user_id, room_id)] for user_id in user_ids if (user_id, room_id) in self._seqs}

    async def advance(self, updates: Sequence[tuple[int, int, int]]) -> None:
        for user_id, room_id, seq in updates:
            key = (user_id, room_id)
            current = self._seqs.get(key)
            if current is None or seq > current:
                self._seqs[key] = seq
                self._dirty[key] = None
                self._rooms.setdefault(user_id, set()).add(room_id)

    async def rooms(self, user_id: int) -> list[int]:
        return sorted(self._rooms.get(user_id, ()))

    async def take_dirty(self, max_items: int) -> list[tuple[int, int, int]]:
        taken: list[tuple[int, int, int]] = []
        while self._dirty and len(taken) < max_items:
            (user_id, room_id), _ = self._dirty.popitem(last=False)
            taken.append((user_id, room_id, self._seqs[(user_id, room_id)]))
        return taken

    async def forget(self, owner_ids: Sequence[int]) -> None:
        for owner in owner_ids:
            for room_id in self._rooms.pop(owner, ()):
                self._seqs.pop((owner, room_id), None)
                self._dirty.pop((owner, room_id), None)


# -- rosters ----------------------------------------------------------------------------------------


class MemoryRosters:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._rosters: dict[int, Roster] = {}
        self._expires: dict[int, float] = {}  # room -> time.monotonic() deadline; absent while dirty
        self._dirty: OrderedDict[int, None] = OrderedDict()  # oldest change first

    def _cached(self, room_id: int) -> Roster | None:
        deadline = self._expires.get(room_id)
        if deadline is not None and deadline <= time.monotonic():
            self._rosters.pop(room_id, None)
            del self._expires[room_id]
        return self._rosters.get(room_id)

    def _expire_in(self, room_id: int, seconds: int) -> None:
        self._expires[room_id] = time.monotonic() + seconds

    async def get(self, room_id: int) -> Roster | None:
        roster = self._cached(room_id)
        if roster is not None and room_id not in self._dirty:
            self._expire_in(room_id, self.settings.roster_ttl)
        return roster

    async def load(self, room_id: int, roster: Roster) -> Roster:
        cached = self._cached(room_id)
        if cached is not None:
            return cached
        self._rosters[room_id] = Roster(dict(roster.members), roster.version)
        self._expire_in(room_id, self.settings.roster_ttl)
        return self._rosters[room_id]

    async def change(self, room_id: int, version: int, put: dict[int, RosterEntry],
                     remove: Sequence[int] = ()) -> Roster:
        current = self._cached(room_id)
        if current is None or current.version != version:
            raise RosterConflict(room_id)
        members = dict(current.members)
        members.update(put)
        for user_id in remove:
            members.pop(user_id, None)
        changed = Roster(members, version + 1)
        self._rosters[room_id] = changed
        self._expires.pop(room_id, None)  # dirty: kept until flushed
        self._dirty.setdefault(room_id, None)
        return changed

    async def dirty(self, max_rooms: int) -> list[int]:
        return list(islice(self._dirty, max(max_rooms, 0)))

    async def flushed(self, room_id: int, version: int) -> bool:
        current = self._rosters.get(room_id)
        if current is not None and current.version != version:
            return False
        self._dirty.pop(room_id, None)
        if current is not None:
            self._expire_in(room_id, self.settings.roster_flushed_ttl)
        return True


# -- registry ---------------------------------------------------------------------------------------



def _same(value: _V) -> _V:
    return value


class _ExpiringMap(Generic[_K, _V]):
    """Keys with an optional TTL, like Redis SET with or without EX; expired keys vanish when looked at.

    Values are copied in and out (`copies`): a caller changing a gateway record it got must not change
    the stored one (in Redis it is a serialized copy too). Routes are never changed in place
    (engine/base.py UserRoute) and are not copied: the fan-out reads one per member per message.
    """

    def __init__(self, *, copies: bool = True) -> None:
        self._items: dict[_K, tuple[_V, float | None]] = {}  # value, expiry (time.monotonic()) or None
        self._copy = copy.copy if copies else _same

    def put(self, key: _K, value: _V, ttl: float | None) -> None:
        self._items[key] = (self._copy(value), None if ttl is None else time.monotonic() + ttl)

    def get(self, key: _K) -> _V | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at is not None and expires_at <= time.monotonic():
            del self._items[key]
            return None
        return self._copy(value)

    def delete(self, key: _K) -> bool:
        """True if the key was there and had not expired."""
        was_live = self.get(key) is not None
        self._items.pop(key, None)
        return was_live

    def values(self) -> Iterator[_V]:
        for key in list(self._items):
            value = self.get(key)
            if value is not None:
                yield value


class MemoryRegistry:
    def __init__(self) -> None:
        self._gateways: _ExpiringMap[str, GatewayInfo] = _ExpiringMap()
        self._sends: _ExpiringMap[str, SendInfo] = _ExpiringMap()
        self._routes: _ExpiringMap[int, UserRoute] = _ExpiringMap(copies=False)  # never changed in place
        self._seen: _ExpiringMap[int, float] = _ExpiringMap(copies=False)

    async def put_gateway(self, info: GatewayInfo, ttl: int) -> None:
        self._gateways.put(info.gateway_id, info, ttl)

    async def get_gateway(self, gateway_id: str) -> GatewayInfo | None:
        return self._gateways.get(gateway_id)

    async def list_gateways(self) -> list[GatewayInfo]:
        return list(self._gateways.values())

    async def remove_gateway(self, gateway_id: str) -> None:
        self._gateways.delete(gateway_id)

    async def put_send(self, info: SendInfo, ttl: int) -> None:
        self._sends.put(info.instance_id, info, ttl)

    async def get_send(self, instance_id: str) -> SendInfo | None:
        return self._sends.get(instance_id)

    async def list_send(self) -> list[SendInfo]:
        return list(self._sends.values())

    async def remove_send(self, instance_id: str) -> None:
        self._sends.delete(instance_id)

    async def set_route(self, route: UserRoute, ttl: int | None, *,
                        only_if: Callable[[UserRoute | None], bool] | None = None) -> UserRoute | None:
        now = time.time()
        current = self._routes.get(route.user_id)
        if only_if is not None and not only_if(current.device(route.device_id) if current is not None else None):
            return current
        record = with_device(current, replace(route, expires_at=expiry(ttl, now), others=()), now)
        self._routes.put(route.user_id, record, record_ttl(record, now))
        return record

    async def get_routes(self, user_ids: Sequence[int]) -> dict[int, UserRoute]:
        now = time.time()
        found = {user_id: self._routes.get(user_id) for user_id in user_ids}
        # A device's lease ends before the record does when another device outlives it.
        return {user_id: record for user_id, route in found.items()
                if route is not None and (record := compose(route.devices(), now) if route.others else route) is not None}

    async def set_last_seen(self, user_id: int, seen_at: float, ttl: int) -> None:
        self._seen.put(user_id, seen_at, ttl)

    async def last_seen(self, user_ids: Sequence[int]) -> dict[int, float]:
        found = {user_id: self._seen.get(user_id) for user_id in user_ids}
        return {user_id: seen for user_id, seen in found.items() if seen is not None}

    async def delete_route_if(self, user_id: int, gateway_id: str) -> bool:
        route = self._routes.get(user_id)
        if route is None or route.gateway_id != gateway_id:
            return False
        return self._routes.delete(user_id)


# -- bus --------------------------------------------------------------------------------------------


class MemoryBus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[BusHandler]] = {}
        self._tasks = HandlerTasks()

    async def publish(self, channel: str, data: bytes) -> None:
        self._tasks.run(self._handlers.get(channel, ()), channel, data)

    async def subscribe(self, channel: str, handler: BusHandler) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    async def close(self) -> None:
        await self._tasks.close()


# -- the engine -------------------------------------------------------------------------------------


class MemoryEngine:
    # Typed as the interfaces, so that the type checker holds each class to its protocol.
    inbox: Inbox
    messages: MessageLog
    cursors: Cursors
    read_marks: Cursors
    device_cursors: Cursors
    rosters: Rosters
    registry: Registry
    bus: Bus

    def __init__(self, settings: EngineSettings, seq_seed: SeqSeed) -> None:
        self.settings = settings
        self.inbox = MemoryInbox(settings)
        self.messages = MemoryMessageLog(settings, seq_seed)
        self.cursors = MemoryCursors()
        self.read_marks = MemoryCursors()
        self.device_cursors = MemoryCursors()
        self.rosters = MemoryRosters(settings)
        self.registry = MemoryRegistry()
        self._bus = MemoryBus()  # kept as itself: close() is not part of the Bus interface
        self.bus = self._bus
        self._closed = False

    async def append_and_route(self, message: NewMessage,
                               user_ids: Sequence[int]) -> tuple[Appended, dict[int, UserRoute]]:
        appended = await self.messages.append(message)
        return appended, await self.registry.get_routes(user_ids)

    async def hand_on(self, entries: Sequence[tuple[str, bytes]], *, then: Sequence[tuple[str, bytes]] = (),
                      read_marks: Sequence[tuple[int, int, int]] = ()) -> None:
        await hand_on_in_turn(self.inbox, self.read_marks, entries, then, read_marks)

    async def ping(self) -> None:
        if self._closed:
            raise ConnectionError("the memory engine is closed")

    async def close(self) -> None:
        self._closed = True
        await self._bus.close()
