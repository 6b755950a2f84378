"""The gateway: its connections, its inbox consumer, cursor saving, and its registry entry.

Inbox entries are read (own pending entries first after a restart, then new ones), decoded once,
encoded into one frame string, and offered to each local target's connection. An entry is
acknowledged by its stream id once every local target has it written, found it a duplicate, or was
handed on (compatibility.md #12: GoStacker acknowledged the wrong id and nothing was ever acked). A target
that is not here is handed to the gateway that holds him now, if any; otherwise his cursor and the
message log serve him when he connects.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from pystacker.engine.base import Engine, InboxEntry, UserRoute
from pystacker.gateway.connection import CatchUp, Connection, Item, RawFrame, RoomPush
from pystacker.gateway.presence_watch import PresenceWatch
from pystacker.gateway.wsframes import text_frame
from pystacker.messaging.acks import EntryTracker
from pystacker.messaging.cursors import CursorBook
from pystacker.messaging.devices import DeviceCursors, Devices
from pystacker.messaging.events import is_event
from pystacker.messaging.fanout import route_is_live
from pystacker.messaging.frames import CloseCode, ack_frame, chat_frame, encode, event_frame, read_frame, typing_frame
from pystacker.messaging.handoff import Handoff
from pystacker.messaging.model import DEFAULT_DEVICE, EntryType, PushEntry, decode_entry
from pystacker.messaging.readstate import ReadState
from pystacker.messaging.user_presence import Presence
from pystacker.observability import metrics, tracing
from pystacker.registry.device_routes import connected_devices
from pystacker.registry.presence import GatewayPresence
from pystacker.registry.service import ROUTE_RENEW_SECONDS, RegistryService

log = logging.getLogger("pystacker.gateway")

READ_COUNT = 100
READ_BLOCK_MS = 1000
ACK_INTERVAL = 0.05
CURSOR_SAVE_INTERVAL = 1.0
# Entry types for one device of each target (the one that sent, the one to close), not all.
PER_DEVICE = frozenset({EntryType.ACK, EntryType.CLOSE_DEVICE})
DEVICE_LIMIT_REASON = "too many devices online: this one connected longest ago"


@dataclass
class GatewaySettings:
    gateway_id: str
    consumer: str
    max_connections: int
    queue_size: int
    threshold_pending: int


class GatewayService:
    def __init__(self, engine: Engine, settings: GatewaySettings, cursors: CursorBook, handoff: Handoff,
                 registry: RegistryService, presence: GatewayPresence, reading: ReadState, devices: Devices, *,
                 device_limit: int, user_presence: Presence, watch: PresenceWatch) -> None:
        self.engine = engine
        self.settings = settings
        self.gateway_id = settings.gateway_id
        self.cursors = cursors
        self.reading = reading
        self.handoff = handoff
        self.registry = registry
        self.presence = presence
        self.tracker = EntryTracker()
        self.metrics = metrics.GatewayMetrics(self.gateway_id)
        self.device_limit = device_limit
        self.devices = devices
        self.user_presence = user_presence  # online while any device is connected (messaging/user_presence.py)
        self.watch = watch
        # user -> device -> socket: every device of a user on this gateway gets his messages.
        self.users: dict[int, dict[str, Connection]] = {}
        self.connection_count = 0
        self.accepting = False
        self._tasks: list[asyncio.Task[None]] = []
        self._capacity_free = asyncio.Event()
        self._capacity_free.set()
        # Connections whose delivery positions belong to a store that is gone: never saved.
        self._voided: set[Connection] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.engine.inbox.ensure_group(self.gateway_id)
        await self.presence.start()
        await self.watch.listen(self.engine.bus)
        self.watch.start()
        self.accepting = True
        self._tasks = [asyncio.create_task(coro, name=name) for name, coro in (
            ("inbox-consumer", self._consume()), ("inbox-acker", self._ack_loop()),
            ("cursor-saver", self._save_cursors_loop()), ("route-renewer", self._renew_routes_loop()),
            ("inbox-gauges", metrics.refresh_inbox_gauges(self.engine, self.gateway_id)))]

    async def stop(self) -> None:
        """Drain: refuse new sockets, close the open ones (clients reconnect elsewhere and catch up),
        save cursors, acknowledge what was finished, leave the registry."""
        await self.close_connections()
        await self.watch.stop()
        await self.presence.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._ack_completed()

    async def close_connections(self) -> None:
        """Refuse new sockets and close the open ones with 1001 (going away). Runs at the server's
        shutdown, before it waits for its handlers: a WebSocket handler only ends when its socket does."""
        self.accepting = False
        # Leave the registry before the first close: a client that asks for a gateway as soon as it
        # gets 1001 was otherwise sent back here by its own reconnect lease (this gateway was still
        # listed until stop()), and found the port closed.
        try:
            await self.presence.stop()
        except Exception:  # the store is down: the entry expires by its TTL; close the sockets anyway
            log.exception("leaving the registry failed")
        for conn in self.all_connections():
            conn.close_soon(CloseCode.SHUTDOWN, "gateway shutting down")
            await self.detach(conn)

    def has_capacity(self) -> bool:
        return self.connection_count < self.settings.max_connections

    def connection(self, user_id: int, device_id: str = DEFAULT_DEVICE) -> Connection | None:
        devices = self.users.get(user_id)
        return devices.get(device_id) if devices is not None else None

    def all_connections(self) -> list[Connection]:
        return [conn for devices in self.users.values() for conn in devices.values()]

    # -- connections -----------------------------------------------------------------------------

    async def attach(self, conn: Connection, *, catch_up: bool, welcome: dict[str, Any]) -> None:
        """Register the socket and start its writer: the welcome (with the user's total unread
        count) first, then the catch-up if asked. The socket is registered before anything else is
        awaited: a client may send as soon as its socket is open, and its `ack` and live messages
        need the route (they wait in the queue until the writer starts)."""
        devices = self.users.setdefault(conn.user_id, {})
        old = devices.get(conn.device_id)
        devices[conn.device_id] = conn
        if not self.accepting:
            # The drain began while this socket was being upgraded: close_connections' sweep did not
            # see it, and left open it would hold the server's shutdown until its timeout.
            conn.close_soon(CloseCode.SHUTDOWN, "gateway shutting down")
        if old is None:
            self.connection_count += 1
        else:
            # Same device again on this gateway: the new socket replaces the old one. The old writer
            # stops first and saves its cursor, so the new catch-up starts where the old one ended.
            old.close_soon(CloseCode.REPLACED, "replaced by a newer connection of this device")
            leftovers = await old.stop()
            await self._save(old)
            await self._hand_on(old, leftovers)
        record = await self.registry.connect_user(conn.user_id, self.presence.info, conn.device_id)
        written = record.device(conn.device_id)
        conn.route_since = written.connected_at if written is not None else None
        await self._enforce_device_limit(conn, record)
        await self.user_presence.connected(conn.user_id, conn.device_id, record)
        rooms = await self.cursors.rooms_of(conn.user_id)
        await conn.cursors.ensure_positions(conn.user_id, rooms)
        unread = sum(room.unread for room in (await self.reading.rooms(conn.user_id, rooms)).values())
        conn.greet(RawFrame(encode({**welcome, "unread": unread})))
        if catch_up:
            # Where each room ends now, after the route is set (later messages are pushed here live)
            # and before the writer starts (so before the client sees the welcome).
            conn.offer(CatchUp(until=await self.cursors.last_seqs(rooms)))
        conn.start()

    async def _enforce_device_limit(self, conn: Connection, record: UserRoute) -> None:
        """More than `device_limit` devices of the user online (on any gateway): his devices that
        connected longest ago are closed with CloseCode.DEVICE_LIMIT, here or through their gateway's inbox."""
        if self.device_limit <= 0 or not record.others:
            return
        live = await self.handoff.live.get()
        online = [r for r in connected_devices(record) if route_is_live(r, live)]
        for route in [r for r in online if r.device_id != conn.device_id][:max(len(online) - self.device_limit, 0)]:
            self.metrics.device_limit_closes.inc()
            if route.gateway_id == self.gateway_id:
                self.close_device(conn.user_id, route.device_id)
            else:
                entry = PushEntry(type=EntryType.CLOSE_DEVICE, target_ids=[conn.user_id], device_id=route.device_id)
                await self.engine.inbox.add([(route.gateway_id, entry.encode())])

    def close_device(self, user_id: int, device_id: str) -> None:
        conn = self.connection(user_id, device_id)
        if conn is not None:
            conn.close_soon(CloseCode.DEVICE_LIMIT, DEVICE_LIMIT_REASON)

    async def detach(self, conn: Connection) -> None:
        """The socket ended. Only the registered connection is removed (a replaced one is already
        gone: compatibility.md #16); what it still had queued is handed on, never dropped."""
        devices = self.users.get(conn.user_id)
        current = devices is not None and devices.get(conn.device_id) is conn
        if devices is not None and current:
            del devices[conn.device_id]
            self.connection_count -= 1
            if not devices:
                del self.users[conn.user_id]
        self.watch.forget(conn)
        leftovers = await conn.stop()
        await self._save(conn)
        if current:
            # The lease replaces this connection's own route only (a compare-and-set on when it was
            # written): a socket of the device that connected meanwhile keeps its route.
            record = await self.registry.disconnect_user(conn.user_id, self.gateway_id, conn.device_id,
                                                         connected_at=conn.route_since)
            await self.user_presence.left(conn.user_id, record)
        await self._hand_on(conn, leftovers)

    async def _hand_on(self, closed: Connection, items: list[Item]) -> None:
        """Queued items of a closed connection: to the device's newer socket here, else room messages
        to the user's gateways elsewhere (a device without one catches up from its cursor on connect;
        the user's other devices drop what they already have)."""
        user_id = closed.user_id
        replacement = self.connection(user_id, closed.device_id)
        for item in items:
            if item.entry_id is not None:
                self.tracker.settle(item.entry_id)
            if isinstance(item, CatchUp):
                continue
            if replacement is not None:
                replacement.offer(RoomPush(item.room_id, item.seq, item.text, msg_id=item.msg_id, frame=item.frame,
                                           event=item.event, source=item.source)
                                  if isinstance(item, RoomPush)
                                  else RawFrame(item.text, events_only=item.events_only))
            elif isinstance(item, RoomPush) and item.source is not None:
                try:
                    reached = await self.handoff.to_users([user_id], item.source, not_to=self.gateway_id)
                    metrics.HANDED_ON.labels("gateway").inc(len(reached))
                except Exception:
                    log.exception("hand-on failed; the user gets it by catch-up", extra={"user_id": user_id})

    async def _save(self, conn: Connection) -> None:
        unsaved = conn.take_unsaved()
        if conn in self._voided:
            self._voided.discard(conn)
            return
        if unsaved:
            owner = conn.cursors.owner(conn.user_id)
            await conn.cursors.watermarks.advance([(owner, room, seq) for room, seq in unsaved.items()])

    # -- inbox -----------------------------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self.settings.consumer
        # First what this consumer read before a restart and never acknowledged.
        after_id = "0-0"
        while pending := await self.engine.inbox.read_pending(self.gateway_id, consumer, READ_COUNT, after_id):
            await self._dispatch_entries(pending)
            after_id = pending[-1].entry_id
        while True:
            if self.tracker.in_flight > self.settings.threshold_pending:
                await asyncio.sleep(0.01)  # back-pressure: let writers catch up before reading more
                continue
            try:
                entries = await self.engine.inbox.read_new(self.gateway_id, consumer, READ_COUNT, READ_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbox read failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if entries:
                await self._dispatch_entries(entries)

    async def _dispatch_entries(self, entries: list[InboxEntry]) -> None:
        for entry in entries:
            try:
                push = decode_entry(entry.data)
            except ValueError as exc:
                # It can never be delivered; keeping it pending forever would only block trimming.
                log.error("undecodable inbox entry acknowledged and dropped: %s", exc, extra={"entry_id": entry.entry_id})
                self.tracker.open(entry.entry_id, 0)
                continue
            await self.dispatch(push, entry.entry_id)

    async def dispatch(self, push: PushEntry, entry_id: str | None) -> None:
        """Offer one entry to its local targets; hand on the others."""
        local: list[Connection] = []
        away: list[int] = []
        users = self.users
        if push.type in PER_DEVICE:  # one device of each target: the one that sent, the one to close
            device_id = push.device_id or DEFAULT_DEVICE
            for user_id in push.target_ids:
                conn = self.connection(user_id, device_id)
                if conn is not None:
                    local.append(conn)
        else:
            for user_id in push.target_ids:
                devices = users.get(user_id)
                if devices is None:
                    away.append(user_id)
                else:
                    local.extend(devices.values())
        if push.type == EntryType.CLOSE_DEVICE:
            for conn in local:
                conn.close_soon(CloseCode.DEVICE_LIMIT, DEVICE_LIMIT_REASON)
            if entry_id is not None:
                self.tracker.open(entry_id, 0)
            return
        if entry_id is not None:
            self.tracker.open(entry_id, len(local))
        if log.isEnabledFor(logging.DEBUG):  # a line per inbox entry: skipped entirely when off
            log.debug("inbox entry", extra={"msg_id": push.msg_id, "type": push.type, "room_id": push.room_id,
                                            "entry_id": entry_id, "local": len(local), "away": len(away)})
        span = None
        if tracing.enabled and push.trace_parent is not None:  # continues the trace of the send
            span = tracing.start_span("gateway.dispatch", parent=push.trace_parent, kind="consumer", attributes={
                "msg_id": push.msg_id, "room_id": push.room_id, "seq": push.seq, "type": push.type,
                "entry_id": entry_id or "", "gateway_id": self.gateway_id, "local": len(local), "away": len(away)})
        try:
            item = _entry_item(push, entry_id, span)
            for conn in local:
                if not conn.offer(item) and entry_id is not None:
                    self.tracker.settle(entry_id)  # closing: its cursor stays behind, catch-up serves it
            if away and push.type in (EntryType.CHAT, EntryType.CATCH_UP):
                try:
                    reached = await self.handoff.to_users(away, push, not_to=self.gateway_id)
                    metrics.HANDED_ON.labels("gateway").inc(len(reached))
                except Exception:
                    log.exception("hand-on failed; those users get the message by catch-up")
        finally:
            if span is not None:
                tracing.end_span(span)

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            try:
                await self._ack_completed()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbox ack failed; retrying")

    async def _ack_completed(self) -> None:
        done = self.tracker.take_completed()
        if done:
            try:
                await self.engine.inbox.ack(self.gateway_id, done)
            except Exception:
                for entry_id in done:  # keep them for the next round
                    self.tracker.open(entry_id, 0)
                raise

    # -- periodic work ---------------------------------------------------------------------------

    async def _save_cursors_loop(self) -> None:
        while True:
            await asyncio.sleep(CURSOR_SAVE_INTERVAL)
            try:
                if self.accepting and await self.engine.registry.get_gateway(self.gateway_id) is None:
                    # Our registry entry is gone before its TTL: the store lost its state (or we were
                    # starved past the TTL). Beat now: the heartbeat sees the entry missing, calls
                    # registry_entry_vanished, and registers us again. Nothing is saved this round:
                    # these positions must not land in the new store.
                    await self.presence.beat()
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registry check failed; saving cursors anyway")
            # One write per kind of cursor: the users' (default devices) and the named devices'.
            updates: dict[Any, list[tuple[int, int, int]]] = {}
            for conn in self.all_connections():
                if conn not in self._voided and (unsaved := conn.take_unsaved()):
                    owner = conn.cursors.owner(conn.user_id)
                    updates.setdefault(conn.cursors.watermarks, []).extend(
                        (owner, room, seq) for room, seq in unsaved.items())
            try:
                for watermarks, moves in updates.items():
                    await watermarks.advance(moves)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("saving cursors failed; clients may get a few messages twice after reconnecting")

    async def registry_entry_vanished(self) -> None:
        """The heartbeat found this gateway's registry entry gone before its TTL ran out: Redis
        restarted without persistence (or this process was starved past the TTL). Either way the
        store no longer holds what this gateway's sockets rely on: their users' routes (live pushes
        skip them), the inbox group, the cursors, and maybe messages whose seqs the room's counter,
        re-seeded from SQL, hands out again (a connection's in-memory position would then drop the
        new messages as duplicates). Every socket is closed with 1012: the clients reconnect, their
        routes are written again, and the catch-up starts from the cursors the store (or SQL) has.
        The positions these connections confirmed are not saved: they may name seqs that now belong
        to other messages."""
        if not self.accepting:
            return  # draining: the entry was removed on purpose
        log.warning("registry entry vanished: the store lost its state; closing every socket for a catch-up",
                    extra={"gateway_id": self.gateway_id, "connections": self.connection_count})
        for conn in self.all_connections():
            conn.take_unsaved()
            self._voided.add(conn)
            conn.close_soon(CloseCode.STORE_LOST, "store restarted: reconnect and catch up")

    async def _renew_routes_loop(self) -> None:
        while True:
            await asyncio.sleep(ROUTE_RENEW_SECONDS)
            connections = self.all_connections()
            for conn in connections:
                try:
                    await self.registry.connect_user(conn.user_id, self.presence.info, conn.device_id,
                                                     since=conn.route_since)
                except Exception:
                    log.exception("route renewal failed", extra={"user_id": conn.user_id})
            try:  # a device online for longer than limits.device_ttl is not forgotten
                await self.devices.store.touch([conn.cursors.key for conn in connections
                                                if isinstance(conn.cursors, DeviceCursors)])
            except Exception:
                log.exception("marking the devices seen failed")


def _entry_item(push: PushEntry, entry_id: str | None, trace: Any = None) -> Item:
    """The entry's item, encoded once and offered to every target (connections only read items).
    `trace`: the dispatch span, parent of each member's socket write (None: tracing off)."""
    if push.type == EntryType.CHAT and push.seq > 0:
        entry = push.stored_message()
        if is_event(entry):
            text = encode(event_frame(entry))
            return RoomPush(push.room_id, push.seq, text, entry_id, push.ts, push.msg_id, trace, text_frame(text),
                            event=entry, source=push)
        text = encode(chat_frame(entry, push.quote))
        frame = text_frame(text)  # the same bytes for every target's socket
        return RoomPush(push.room_id, push.seq, text, entry_id, push.ts, push.msg_id, trace, frame, source=push)
    if push.type == EntryType.ACK:
        return RawFrame(encode(ack_frame(push.msg_id, push.room_id, push.seq, push.client_msg_id)), entry_id)
    if push.type == EntryType.CATCH_UP:
        return CatchUp(entry_id)
    if push.type == EntryType.READ:  # ephemeral: no seq of the room, never in a catch-up
        return RawFrame(encode(read_frame(push.room_id, push.sender_id, push.seq)), entry_id, events_only=True)
    if push.type == EntryType.TYPING:  # ephemeral, and the first thing shed under load
        return RawFrame(encode(typing_frame(push.room_id, push.sender_id)), entry_id, sheddable=True,
                        events_only=True)
    # A frame from GoStacker components (no seq): deliver as it is.
    return RawFrame(encode({"id": push.msg_id, "type": push.type, "room_id": push.room_id,
                            "sender_id": push.sender_id, "payload": push.payload}), entry_id)
