"""The engine contract: everything GoStacker keeps in Redis, behind small interfaces.

Two implementations pass the same contract tests (tests/engine/): `memory` (one process: real data
structures with the same semantics: TTLs, consumer groups, pending lists, reclaim) and `redis`.

The parts:
- `Inbox`: one stream per gateway with a consumer group. Send adds one entry per gateway per
  message; the gateway reads, delivers, then acknowledges by entry id; entries of a dead gateway are
  claimed by msgflusher after they stayed idle.
- `MessageLog`: the source of truth of a room before SQL has it. `append` allocates the next dense
  per-room seq, records the idempotency key, keeps the message in the room's recent window and queues
  it for the SQL flusher, all in one atomic step. The flusher takes batches and confirms them;
  a batch taken by a flusher that died is handed out again.
- `Cursors`: per user and room, the highest seq delivered to the user. Catch-up on connect starts there.
  The same shape serves the read marks (per user and room) and the named devices' delivery cursors
  (per device key and room; the `default` device of a user uses the user's cursors).
- `Registry`: gateways and send instances with heartbeat TTLs, and user routes with a reconnect lease.
- `Bus`: best-effort broadcast between processes (cache invalidation), never used for delivery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pystacker.messaging.model import DEFAULT_DEVICE, NewMessage, StoredMessage

# -- inbox ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboxEntry:
    entry_id: str  # stream entry id, e.g. "1700000000000-0"; the gateway acknowledges by this id
    data: bytes
    delivery_count: int = 1  # how many times the entry was handed out (>1 after a reclaim)


@dataclass(frozen=True, slots=True)
class InboxStats:
    length: int  # entries kept in the stream
    pending: int  # read but not acknowledged
    oldest_pending_ms: int  # idle time of the oldest pending entry, 0 when none


class Inbox(Protocol):
    async def ensure_group(self, gateway_id: str) -> None:
        """Create the gateway's stream and consumer group if missing. A new group starts at the end of
        the stream: a re-created group never replays history (GoStacker's start id 0 did)."""

    async def add(self, entries: Sequence[tuple[str, bytes]]) -> list[str]:
        """Append (gateway_id, data) pairs, in one round trip; returns the entry ids in order.
        Each stream is trimmed to about `max_len` entries, never past an entry that is still pending."""

    async def read_new(self, gateway_id: str, consumer: str, count: int, block_ms: int) -> list[InboxEntry]:
        """Entries never handed out before (XREADGROUP `>`); waits up to block_ms when there are none."""

    async def read_pending(self, gateway_id: str, consumer: str, count: int, after_id: str = "0-0") -> list[InboxEntry]:
        """This consumer's own pending entries with an id above after_id, oldest first (XREADGROUP
        from that id): a restarted gateway finishes them first, paging with the last id it got."""

    async def ack(self, gateway_id: str, entry_ids: Sequence[str]) -> int:
        """Acknowledge (XACK) entries; returns how many were pending."""

    async def claim_idle(self, gateway_id: str, consumer: str, min_idle_ms: int, count: int) -> list[InboxEntry]:
        """Move up to `count` entries idle for at least min_idle_ms to `consumer` (XAUTOCLAIM) and return them."""

    async def gateways(self) -> list[str]:
        """Every gateway that has a stream, live or not (msgflusher reclaims vanished ones too)."""

    async def stats(self, gateway_id: str) -> InboxStats: ...

    async def remove_if_drained(self, gateway_id: str) -> bool:
        """Delete the stream of a departed gateway once nothing in it is pending; True if removed."""


# -- messages ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Appended:
    message: StoredMessage
    duplicate: bool  # True: the idempotency key was seen before and `message` is the first one


@dataclass(frozen=True, slots=True)
class FlushBatch:
    token: str  # names the batch for confirm(); opaque
    messages: list[StoredMessage]


@dataclass(frozen=True, slots=True)
class TargetChange:
    """What a room event does to the message it is about, in the same atomic step as its append.

    The engine keeps, per changed message, an opaque revision record for `idempotency_ttl` seconds
    (messaging/lifecycle.py writes and reads it). The event is appended only if the record is still
    `expected` (None: there was none), and the record becomes `revision`, where `$seq` stands for
    the event's seq: two changes of one message
    never both act on the same state. `patches` replace the window's copies of those entries (same
    room, seq and id) that the window still holds, and the idempotency key's copy of a message sent
    with a client_msg_id: readers of the window see the new state at once (SQL gets it from the
    flusher, which applies the event)."""

    target_id: int
    expected: str | None
    revision: str
    patches: tuple[StoredMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class LogEnd:
    """Where a room's log ends: its last seq, and how many messages it holds up to there."""

    seq: int
    msg_no: int


# Loads where SQL's copy of a room's log ends; used when the engine has no counters for it (first
# use, or the counters were lost with a Redis restart), so seqs continue instead of restarting at 1.
SeqSeed = Callable[[int], Awaitable[LogEnd]]


class MessageLog(Protocol):
    async def append(self, message: NewMessage) -> Appended:
        """Allocate the room's next seq (and msg_no) and store the message, atomically; idempotent on
        (room_id, sender_id, client_msg_id) for `idempotency_ttl` seconds (SQL's unique key too)."""

    async def append_event(self, event: NewMessage, change: TargetChange) -> Appended | None:
        """Append a room event as `append` does, except that it adds no msg_no (idempotent on its
        client_msg_id too: a duplicate is
        answered whatever the revision), applying `change` atomically with it; None, and nothing
        appended, when the target's revision record is no longer `change.expected`."""

    async def revision(self, room_id: int, msg_id: int) -> str | None:
        """The revision record of a message changed by room events (None: none, or expired)."""

    async def read(self, room_id: int, after_seq: int, limit: int) -> list[StoredMessage]:
        """Messages with seq > after_seq in seq order, from the recent window only. The window holds at
        least every message not yet flushed to SQL; older ones may be gone (read them from SQL)."""

    async def unflushed_by_id(self, msg_id: int) -> StoredMessage | None:
        """The message with this id if SQL may not have it yet (its flush batch is not confirmed);
        None otherwise: then SQL has it, or it never existed."""

    async def window_start(self, room_id: int) -> int:
        """The lowest seq the window still holds for the room (last_seq + 1 when it holds none; the
        counter is seeded first if missing)."""

    async def last_seqs(self, room_ids: Sequence[int]) -> dict[int, int]:
        """The highest allocated seq of each room (0 for a room without messages). A room without a
        counter is seeded first, as in append, so a lost counter never hides SQL's messages."""

    async def ends(self, room_ids: Sequence[int]) -> dict[int, LogEnd]:
        """Where each room's log ends: last seq and msg_no (both 0 for an empty room), seeded as in
        last_seqs."""

    async def take_batch(self, max_messages: int) -> FlushBatch | None:
        """Up to max_messages not yet in SQL, oldest first; they stay owned by this batch until confirmed.
        Batches not confirmed within `flush_claim_timeout` seconds are handed out again."""

    async def confirm_batch(self, token: str) -> None:
        """SQL has the batch: forget it (messages stay readable in the window while it has room)."""

    async def batch_pending(self, token: str) -> bool:
        """The batch is still taken and unconfirmed here. False when the store no longer knows it: a
        Redis restarted without persistence lost it (and may have re-seeded its rooms' seq counters
        from SQL, so these seqs can belong to new messages by now), or it was confirmed meanwhile."""


# -- rosters (the membership write-back cache) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RosterEntry:
    role: int
    nickname: str | None
    joined_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class Roster:
    """A room's members as one versioned value. The version counts changes: SQL stores the version it
    holds (chat_rooms.members_version), so a roster loaded back from SQL goes on counting from there."""

    members: dict[int, RosterEntry]
    version: int


class RosterConflict(Exception):
    """The roster changed since the caller read it (or is no longer cached): read again and retry."""


class Rosters(Protocol):
    """Room memberships between meta and SQL. A roster is cached whole or not at all:
    a change applies only to a cached roster at the version the caller read (load before mutate, and
    no lost update between read and write), marks the room dirty and keeps the roster from expiring
    until the flusher has written that version. A clean roster expires `ttl` seconds after its last
    read; a flushed one after `flushed_ttl` unless read again."""

    async def get(self, room_id: int) -> Roster | None:
        """The cached roster (and its TTL slides), or None: load it from SQL."""

    async def load(self, room_id: int, roster: Roster) -> Roster:
        """Cache the roster read from SQL unless one is cached already; returns the cached one."""

    async def change(self, room_id: int, version: int, put: dict[int, RosterEntry],
                     remove: Sequence[int] = ()) -> Roster:
        """Apply the change to the roster at `version` atomically; RosterConflict if it is not cached or
        not at that version. Returns the new roster (version + 1)."""

    async def dirty(self, max_rooms: int) -> list[int]:
        """Rooms changed since they were last flushed, oldest change first (at most max_rooms)."""

    async def flushed(self, room_id: int, version: int) -> bool:
        """SQL holds `version`: clear the dirty mark unless the roster changed since (then False, and it
        stays dirty for the next flush)."""


# -- cursors ----------------------------------------------------------------------------------------


class Cursors(Protocol):
    """Forward-only watermarks per (owner, room), each change reported once to the SQL flusher. Three
    engine parts have this shape: `cursors` (what was delivered to the user's `default` device),
    `read_marks` (what he has read: his read state) and `device_cursors` (what was delivered to a
    named device; the owner is its device key)."""

    async def get(self, user_id: int, room_ids: Sequence[int]) -> dict[int, int]:
        """The seq of each given room that has a cursor (missing rooms are left out)."""

    async def of_users(self, user_ids: Sequence[int], room_id: int) -> dict[int, int]:
        """The seq of each given user in one room (users without a cursor there are left out)."""

    async def rooms(self, user_id: int) -> list[int]:
        """Every room the user has a cursor in (he joined it, maybe left it since)."""

    async def advance(self, updates: Sequence[tuple[int, int, int]]) -> None:
        """(user_id, room_id, seq) triples; a cursor only moves forward."""

    async def take_dirty(self, max_items: int) -> list[tuple[int, int, int]]:
        """Cursors changed since they were last taken, for the SQL flusher (at-least-once)."""

    async def forget(self, owner_ids: Sequence[int]) -> None:
        """Drop every cursor of these owners (devices that are forgotten), dirty ones included."""


# -- registry ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class GatewayInfo:
    gateway_id: str
    address: str
    port: int
    capacity: int
    load: float = 0.0
    connected_users: int = 0
    last_heartbeat: float = 0.0  # unix seconds
    epoch: str = ""  # changes at every start: routes made before a restart are stale

    def to_json(self) -> dict[str, Any]:
        return {"gateway_id": self.gateway_id, "address": self.address, "port": self.port, "load": self.load,
                "capacity": self.capacity, "connected_users": self.connected_users,
                "last_heartbeat": self.last_heartbeat, "epoch": self.epoch}


@dataclass(slots=True)
class SendInfo:
    instance_id: str
    address: str
    port: int
    last_heartbeat: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "address": self.address, "port": self.port,
                "last_heartbeat": self.last_heartbeat}


@dataclass(slots=True)
class UserRoute:
    """Where one device of a user is connected (or leased, after a disconnect). A user's route is
    his most recent device's, with his other devices in `others` (registry/device_routes.py).
    Treated as immutable: changed with dataclasses.replace, never in place, so the memory engine
    hands out its stored records without copying them. (Not frozen: a frozen dataclass's __init__
    costs about twice as much, and the engines build one per route record they read.)"""

    user_id: int
    gateway_id: str
    address: str  # "host:port" as GoStacker stores it
    connected_at: float
    status: str = "connected"  # or "disconnected": the reconnect lease
    epoch: str = ""  # the gateway's epoch when the route was written
    device_id: str = DEFAULT_DEVICE
    # Unix seconds; 0: never. Set by the registry from the TTL the route was written with, and not
    # part of what a route is (two reads of one route compare equal).
    expires_at: float = field(default=0.0, compare=False)
    others: tuple[UserRoute, ...] = ()  # the user's other devices (each with no `others` of its own)

    def devices(self) -> tuple[UserRoute, ...]:
        return (self, *self.others) if self.others else (self,)

    def device(self, device_id: str) -> UserRoute | None:
        for route in self.devices():
            if route.device_id == device_id:
                return route
        return None

    def to_json(self) -> dict[str, Any]:
        """GoStacker's route record, plus the device fields where they say something (a user with one
        `default` device has exactly GoStacker's record)."""
        record: dict[str, Any] = {"user_id": self.user_id, "gateway_id": self.gateway_id, "address": self.address,
                                  "connected_at": self.connected_at, "status": self.status, "epoch": self.epoch}
        if self.device_id != DEFAULT_DEVICE:
            record["device_id"] = self.device_id
        if self.expires_at:
            record["expires_at"] = self.expires_at
        if self.others:
            record["others"] = [other.to_json() for other in self.others]
        return record


class Registry(Protocol):
    async def put_gateway(self, info: GatewayInfo, ttl: int) -> None: ...
    async def get_gateway(self, gateway_id: str) -> GatewayInfo | None: ...
    async def list_gateways(self) -> list[GatewayInfo]:
        """Live gateways only (their key has not expired)."""
    async def remove_gateway(self, gateway_id: str) -> None: ...

    async def put_send(self, info: SendInfo, ttl: int) -> None: ...
    async def get_send(self, instance_id: str) -> SendInfo | None: ...
    async def list_send(self) -> list[SendInfo]: ...
    async def remove_send(self, instance_id: str) -> None: ...

    async def set_route(self, route: UserRoute, ttl: int | None, *,
                        only_if: Callable[[UserRoute | None], bool] | None = None) -> UserRoute | None:
        """Set the route of `route.device_id` for `ttl` seconds (None: kept until replaced), keeping
        the user's other devices (registry/device_routes.with_device), atomically against concurrent
        writers; returns the user's record as written (every device). `only_if`: write only if it
        holds for the device's current route (None: he has none), checked against the very record the
        write replaces; when it does not, nothing is written and the record is returned as it is
        (None: no route at all)."""
    async def get_routes(self, user_ids: Sequence[int]) -> dict[int, UserRoute]: ...
    async def set_last_seen(self, user_id: int, seen_at: float, ttl: int) -> None:
        """When the user's last device left (unix seconds), kept `ttl` seconds (presence)."""

    async def last_seen(self, user_ids: Sequence[int]) -> dict[int, float]:
        """The users' last_seen times where known."""

    async def delete_route_if(self, user_id: int, gateway_id: str) -> bool:
        """Delete the route only if it still points at that gateway."""


# -- bus --------------------------------------------------------------------------------------------

BusHandler = Callable[[str, bytes], Awaitable[None]]


class Bus(Protocol):
    async def publish(self, channel: str, data: bytes) -> None: ...
    async def subscribe(self, channel: str, handler: BusHandler) -> None: ...


# -- the engine -------------------------------------------------------------------------------------


async def hand_on_in_turn(inbox: Inbox, read_marks: Cursors, entries: Sequence[tuple[str, bytes]],
                          then: Sequence[tuple[str, bytes]], marks: Sequence[tuple[int, int, int]]) -> None:
    """Engine.hand_on as its calls one after the other: for a store that cannot run them in one go."""
    if entries:
        await inbox.add(entries)
    if then:
        await inbox.add(then)
    if marks:
        await read_marks.advance(marks)


@dataclass(frozen=True)
class EngineSettings:
    inbox_max_len: int = 100_000  # approximate stream length cap (MAXLEN ~)
    window_size: int = 1000  # recent messages kept per room beyond those not yet in SQL
    idempotency_ttl: int = 24 * 3600
    flush_claim_timeout: float = 30.0
    roster_ttl: int = 86400  # a clean roster expires this long after its last read (group_cache.cache_ttl_seconds)
    roster_flushed_ttl: int = 5  # ... and this long after a flush, unless read (group_cache.post_flush_ttl_seconds)


class Engine(Protocol):
    inbox: Inbox
    messages: MessageLog
    cursors: Cursors
    read_marks: Cursors
    device_cursors: Cursors  # owners are device keys (messaging/devices.py)
    rosters: Rosters
    registry: Registry
    bus: Bus

    async def ping(self) -> None:
        """Raise if the backing store is unreachable (readiness)."""

    async def append_and_route(self, message: NewMessage,
                               user_ids: Sequence[int]) -> tuple[Appended, dict[int, UserRoute]]:
        """messages.append, then registry.get_routes(user_ids) read after the append took effect: a
        user whose route is not among them connected later, so his catch-up (which reads the rooms'
        last seqs after writing his route) includes the message. One round trip where the store can
        run both in order on one connection."""

    async def hand_on(self, entries: Sequence[tuple[str, bytes]], *, then: Sequence[tuple[str, bytes]] = (),
                      read_marks: Sequence[tuple[int, int, int]] = ()) -> None:
        """A message's push: inbox.add(entries), then inbox.add(then), whose entries are written only
        after all of `entries` (the sender's ack goes there: it means "handed on"), then
        read_marks.advance(read_marks). One round trip where the store can run them in order on one
        connection."""

    async def close(self) -> None: ...
