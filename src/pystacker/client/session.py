"""The live side of the client: one WebSocket to a gateway that repairs itself.

A `Session` reads frames, hands chat messages to its `InOrderInbox` (inbox.py: once each, in seq order,
no hole) and gives the application what the inbox releases. Around that it runs three small tasks:
- the runner: reads the socket; when it drops (network, close 4008 slow consumer, 1001 gateway
  shutdown, a missed pong) it waits a jittered exponential backoff, asks the registry again, reconnects
  and catches up. A gateway that went away (1001, or no close frame at all: a crash) or that refuses
  the connection is named to the registry as one to avoid, and the next gateway is tried at once
  instead of backing off onto the dead one; either from the server's catch-up batches (`catch_up="server"`, the default) or by
  `sync` frames from its own position in each known room (`catch_up="sync"`, with `?catchup=0`);
- the filler: fetches with `sync` whatever the inbox misses (a seq gap, or messages dropped while the
  application was not reading), before anything later is released;
- the acker: tells the server, per room and batched, how far the application has read (`ack` frames),
  so that its cursor, and the catch-up of the next connection, start there.

Bounds: the inbox holds at most `max_queue` readable messages and `max_held` out-of-order ones; every
request waits at most `request_timeout`; reconnecting stops after `max_attempts` (if set) consecutive
failures; a gap that cannot be fetched is given up after `gap_timeout` (it should not happen: the
server's log has every seq).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from pystacker.client.backoff import Backoff
from pystacker.client.errors import GatewayUnreachable, PyStackerError, SessionClosed, SessionFailed
from pystacker.client.inbox import ROOM_ENTRIES, InOrderInbox, Item, Offer
from pystacker.client.models import (
    ChatMessage,
    Delivered,
    EditEvent,
    EditResult,
    Gateway,
    HistoryPage,
    PresenceEvent,
    ReactionEvent,
    ReactResult,
    ReadEvent,
    RecallEvent,
    RecallResult,
    SendResult,
    TypingEvent,
    as_content,
    room_entry_from_frame,
)

if TYPE_CHECKING:
    from pystacker.client.api import PyStackerClient

log = logging.getLogger("pystacker.client")

# The gateway's close codes (pystacker/messaging/frames.py); every other code is a plain reconnect.
CLOSE_REPLACED = 4009  # another connection of the same device took over: reconnecting would fight it
CLOSE_DEVICE_LIMIT = 4011  # the user has too many devices online and this one connected longest ago
# The gateway itself went away: 1001 it is shutting down, 1006 the socket ended without a close frame
# (the process died, or the network between us). The next connection should go elsewhere.
GATEWAY_GONE = (1001, 1006, None)
MAX_AVOIDED = 8  # gateways named to the registry as unreachable, newest kept

MAX_SYNC_PAGE = 200  # the gateway's limit for one `sync` frame
MAX_FRAME_BYTES = 4 * 1024 * 1024
GAP_RETRY_PAUSE = 0.25

StateListener = Callable[[str, str], None]


class _Disconnected(Exception):
    """The socket a request was sent on went away before the answer came."""


class Session:
    """A live connection. Read with `async for item in session` or `await session.receive(timeout)`;
    items are `ChatMessage`s, `Delivered` events when `deliveries=True`, and `ReadEvent`s (your own
    read marks from any of your connections, and the other members' read receipts) when `reads=True`,
    `TypingEvent`s (another member is typing) when `typing=True`, `PresenceEvent`s of the users
    `watch_presence()` names when `presence=True`, and the room events `EditEvent` (`edits=True`),
    `RecallEvent` (`recalls=True`) and `ReactionEvent` (`reactions=True`). Room events have their
    own seq in the room's sequence: they come once each, in seq order with the messages, live and in
    catch-up; those not asked for are passed over (and acknowledged) without a hole.
    `unread` is the total unread count the server gave when the current connection opened.

    Options: `catch_up` ("server" or "sync"), `max_queue`, `max_held`, `ack_delay` (seconds to gather
    acks into one frame per room), `request_timeout`, `connect_timeout`, `heartbeat` (client pings, to
    notice a dead network), `backoff` (a `Backoff`; default 0.5 s doubling up to 30 s, no attempt limit),
    `stable_after` (a connection that lived that long resets the backoff), `positions` (room -> last seq
    already read, to resume), `gap_timeout`, `on_state` (called with (state, detail) where state is
    connected, disconnected, reconnecting, failed or closed).
    """

    def __init__(self, client: PyStackerClient, *, catch_up: str = "server", max_queue: int = 1000,
                 max_held: int = 5000, ack_delay: float = 0.1, request_timeout: float = 10.0,
                 connect_timeout: float = 10.0, heartbeat: float | None = 30.0, backoff: Backoff | None = None,
                 stable_after: float = 5.0, deliveries: bool = False, reads: bool = False, typing: bool = False,
                 presence: bool = False, edits: bool = False, recalls: bool = False, reactions: bool = False,
                 positions: dict[int, int] | None = None,
                 gap_timeout: float = 30.0, on_state: StateListener | None = None) -> None:
        if catch_up not in ("server", "sync"):
            raise ValueError('catch_up must be "server" or "sync"')
        self.client = client
        self.catch_up = catch_up
        self.ack_delay = ack_delay
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.backoff = backoff or Backoff()
        self.stable_after = stable_after
        self.deliveries = deliveries
        self.reads = reads
        self.typing_events = typing
        self.presence_events = presence
        # The room events to yield; the others are read past (they hold seqs of the room all the same).
        self._skipped_entries = tuple(kind for kind, wanted in ((EditEvent, edits), (RecallEvent, recalls),
                                                                (ReactionEvent, reactions)) if not wanted)
        self._watched: list[int] = []  # sent again after every reconnect
        self.unread = 0
        self.gap_timeout = gap_timeout
        self.on_state = on_state
        self.inbox = InOrderInbox(max_ready=max_queue, max_held=max_held)
        for room_id, seq in (positions or {}).items():
            self.inbox.set_position(room_id, seq)
        self.state = "new"
        self.gateway: Gateway | None = None
        self.connects = 0  # successful connections so far (1 after start)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = asyncio.Event()  # also set on failure/close, so that waiters wake up
        self._ready = asyncio.Event()
        self._welcomed = asyncio.Event()  # the current connection's welcome frame arrived
        self._fill_wakeup = asyncio.Event()
        self._ack_wakeup = asyncio.Event()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._refs = itertools.count(1)
        self._acked: dict[int, int] = {}  # room -> seq acknowledged on the current connection
        self._acked_once = False  # on the current connection
        self._sync_rooms: set[int] = set()  # rooms to sync after (re)connecting, in sync mode
        self._gap_since: dict[int, float] = {}
        self._fill_needs_space = False
        self._error: PyStackerError | None = None
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.client.user_id is None:
            raise PyStackerError(401, "log in before connecting")
        ws = await self._open()
        self._attach(ws)
        self._tasks = [asyncio.create_task(self._run(ws), name="pystacker-session"),
                       asyncio.create_task(self._fill_loop(), name="pystacker-fill"),
                       asyncio.create_task(self._ack_loop(), name="pystacker-ack")]
        # The welcome is the gateway's first frame, written once the socket is registered: after it,
        # what this session sends finds its route (the sender's ack) and `unread` is known.
        try:
            await asyncio.wait_for(self._welcomed.wait(), self.connect_timeout)
        except TimeoutError:
            log.warning("no welcome frame within %g s", self.connect_timeout)

    async def close(self) -> None:
        """Acknowledge what was read, close the socket, stop. Idempotent."""
        if self._closing:
            return
        ws, connected = self._ws, self._connected.is_set() and self._error is None
        if connected:
            try:
                await asyncio.wait_for(self._send_acks(), 2.0)
            except Exception:  # best effort: the next session just gets a few messages twice
                log.debug("final acks not sent", exc_info=True)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), 2.0)
            except Exception:
                pass
        self._detach(None)
        self._set_state("closed", "")
        self._connected.set()
        self._ready.set()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closing or self._error is not None

    @property
    def error(self) -> PyStackerError | None:
        return self._error

    def positions(self) -> dict[int, int]:
        """The last seq the application read in each room (give it back as `positions=` to resume)."""
        return self.inbox.positions()

    async def reconnect(self) -> None:
        """Drop the current socket as a network failure would; the session reconnects and catches up.
        For a client that knows its network changed (and for tests)."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        sock = ws.get_extra_info("socket")
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            await ws.close(code=4000, message=b"client reconnects")

    # -- reading ---------------------------------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> Item:
        """The next item; TimeoutError after `timeout` seconds (None: wait as long as the session
        lives). Raises SessionClosed after close() and SessionFailed when the session gave up."""
        async with asyncio.timeout(timeout):
            while True:
                item = self.inbox.pop()
                if item is not None:
                    self._after_pop(item)
                    if self._skipped_entries and isinstance(item, self._skipped_entries):
                        continue  # a room event not asked for: read (and acknowledged), not yielded
                    return item
                if self._error is not None:
                    raise self._error
                if self._closing:
                    raise SessionClosed()
                self._ready.clear()
                await self._ready.wait()

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> Item:
        try:
            return await self.receive()
        except SessionClosed:
            raise StopAsyncIteration from None

    def _after_pop(self, item: Item) -> None:
        if isinstance(item, ROOM_ENTRIES) and item.seq > self._acked.get(item.room_id, 0):
            self._ack_wakeup.set()
        if self._fill_needs_space or self.inbox.maybe_behind:
            # Reading made room: what was dropped (or waits behind a hole) can be fetched now.
            self._fill_needs_space = False
            self._fill_wakeup.set()

    # -- requests over the socket ----------------------------------------------------------------

    async def send(self, room_id: int, content: str | dict[str, Any], *, client_msg_id: str | None = None,
                   reply_to: int | None = None, timeout: float | None = None) -> SendResult:
        """Send over the WebSocket and wait for the server's answer (`send_ok`). A client_msg_id is
        generated when none is given; if the socket drops before the answer, the same frame is sent
        again on the next connection: the server answers a repeated client_msg_id with the first
        message (duplicate=True), so nothing is posted twice. `reply_to`: the id of the message of the
        same room this one answers."""
        from pystacker.client.api import new_client_msg_id

        client_msg_id = client_msg_id or new_client_msg_id()
        frame: dict[str, Any] = {"type": "send", "room_id": room_id, "content": as_content(content),
                                 "client_msg_id": client_msg_id}
        if reply_to is not None:
            frame["reply_to"] = reply_to
        answer = await self._request(frame, timeout=timeout, retry=True)
        payload = answer.get("payload") or {}
        return SendResult(int(payload.get("id_str") or payload.get("msgID") or answer.get("id", 0)),
                          int(answer.get("room_id") or room_id), int(payload.get("seq", 0)),
                          payload.get("client_msg_id", client_msg_id), bool(payload.get("duplicate", False)))

    async def edit(self, message_id: int, content: str | dict[str, Any], *, client_msg_id: str | None = None,
                   timeout: float | None = None) -> EditResult:
        """Edit one of your messages over the socket (an `edit` frame, answered by `edit_ok`); the same
        rules and the same answer as `PyStackerClient.edit`. Sent again after a drop with the same
        client_msg_id (generated when none is given), as `send` is: never applied twice."""
        from pystacker.client.api import new_client_msg_id

        client_msg_id = client_msg_id or new_client_msg_id()
        payload = await self._lifecycle_request({"type": "edit", "message_id": message_id,
                                                 "content": as_content(content), "client_msg_id": client_msg_id},
                                                timeout)
        return EditResult.from_answer(payload, client_msg_id)

    async def recall(self, message_id: int, *, client_msg_id: str | None = None,
                     timeout: float | None = None) -> RecallResult:
        """Recall a message over the socket (a `recall` frame, answered by `recall_ok`); as
        `PyStackerClient.recall`, sent again after a drop as `edit` is."""
        from pystacker.client.api import new_client_msg_id

        client_msg_id = client_msg_id or new_client_msg_id()
        payload = await self._lifecycle_request({"type": "recall", "message_id": message_id,
                                                 "client_msg_id": client_msg_id}, timeout)
        return RecallResult.from_answer(payload, client_msg_id)

    async def react(self, message_id: int, emoji: str, on: bool = True, *, client_msg_id: str | None = None,
                    timeout: float | None = None) -> ReactResult:
        """Put (`on`) or take back an emoji on a message over the socket (a `react` frame, answered by
        `react_ok`); as `PyStackerClient.react`, sent again after a drop as `edit` is."""
        from pystacker.client.api import new_client_msg_id

        client_msg_id = client_msg_id or new_client_msg_id()
        payload = await self._lifecycle_request({"type": "react", "message_id": message_id, "emoji": emoji,
                                                 "on": on, "client_msg_id": client_msg_id}, timeout)
        return ReactResult.from_answer(payload, client_msg_id)

    async def _lifecycle_request(self, frame: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        answer = await self._request(frame, timeout=timeout, retry=True)
        payload = answer.get("payload")
        return payload if isinstance(payload, dict) else {}

    async def read(self, room_id: int, seq: int) -> None:
        """Tell the server you have read the room up to `seq` (a `read` frame). Your read mark moves
        forward only; with `reads=True` its new value comes back as a ReadEvent, on every connection
        of yours. Raises PyStackerError when not connected (read marks are not queued: send the
        newest again once connected)."""
        ws = self._ws
        if ws is None or ws.closed:
            raise PyStackerError(0, "not connected")
        await ws.send_str(orjson.dumps({"type": "read", "room_id": room_id, "seq": seq}).decode())

    async def typing(self, room_id: int) -> None:
        """Tell the room's other members you are typing (a `typing` frame; the server forwards one per
        3 s, so call it on every keystroke if you like). Dropped when not connected: a late typing
        signal is worth nothing."""
        await self._send_if_connected({"type": "typing", "room_id": room_id})

    async def watch_presence(self, user_ids: list[int]) -> None:
        """Watch these users' presence (at most 200; replaces the previous list; [] stops): their
        states come at once, then each change (at most one per user per 5 s), as PresenceEvents with
        `presence=True`. Kept across reconnects."""
        self._watched = list(user_ids)
        await self._send_watch()

    async def _send_watch(self) -> None:
        await self._send_if_connected({"type": "presence_subscribe", "user_ids": self._watched})

    async def _send_if_connected(self, frame: dict[str, Any]) -> None:
        """A frame worth nothing late (typing, the watch list a reconnect sends again): dropped offline."""
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.send_str(orjson.dumps(frame).decode())

    async def sync(self, room_id: int, after_seq: int, limit: int = 50, *, timeout: float | None = None) -> HistoryPage:
        """Read the room's messages after `after_seq` over the socket (at most 200). A plain read: what
        the session yields does not change (it syncs by itself when it misses something)."""
        answer = await self._request({"type": "sync", "room_id": room_id, "after_seq": after_seq,
                                      "limit": min(max(limit, 1), MAX_SYNC_PAGE)}, timeout=timeout, retry=True)
        entries = [e for e in (room_entry_from_frame(f) for f in answer.get("payload") or [] if isinstance(f, dict))
                   if e is not None]
        return HistoryPage(room_id, entries[-1].seq if entries else after_seq, bool(answer.get("has_more")),
                           [e for e in entries if isinstance(e, ChatMessage)], entries)

    async def ping(self, timeout: float | None = None) -> float:
        """Round trip of an application-level ping, in seconds."""
        started = time.monotonic()
        await self._request({"type": "ping"}, timeout=timeout, retry=False)
        return time.monotonic() - started

    async def _request(self, frame: dict[str, Any], *, timeout: float | None, retry: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        limit = timeout if timeout is not None else self.request_timeout
        deadline = loop.time() + limit
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PyStackerError(0, f"no answer to {frame['type']!r} within {limit:g} s")
            ws = await self._wait_connected(remaining)
            ref = f"r{next(self._refs)}"
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._pending[ref] = future
            try:
                await ws.send_str(orjson.dumps({**frame, "ref": ref}).decode())
                return await asyncio.wait_for(future, max(deadline - loop.time(), 0.001))
            except (_Disconnected, ConnectionError, aiohttp.ClientError):
                if self._error is not None:
                    raise self._error from None
                if not retry or self._closing:
                    raise PyStackerError(0, "connection lost before the answer") from None
            except TimeoutError:
                raise PyStackerError(0, f"no answer to {frame['type']!r} within {limit:g} s") from None
            finally:
                self._pending.pop(ref, None)

    async def _wait_connected(self, timeout: float) -> aiohttp.ClientWebSocketResponse:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._error is not None:
                        raise self._error
                    if self._closing:
                        raise SessionClosed()
                    if self._ws is not None and self._connected.is_set():
                        return self._ws
                    await self._connected.wait()
                    if self._ws is None and self._error is None and not self._closing:
                        self._connected.clear()
        except TimeoutError:
            raise PyStackerError(0, f"not connected within {timeout:.3g} s") from None

    # -- connecting ------------------------------------------------------------------------------

    async def _open(self, avoid: list[str] | None = None) -> aiohttp.ClientWebSocketResponse:
        """Ask the registry for a gateway and open the socket. Logs in again once if the token expired.
        Raises GatewayUnreachable when the registry answered but its gateway did not."""
        relogged = False
        while True:
            gateway: Gateway | None = None
            try:
                async with asyncio.timeout(self.connect_timeout):
                    gateway = await self.client.available_gateway(avoid or ())
                    # acks=1: from its first frame, the server moves our cursor by our acks only.
                    # events=1: PyStacker's frames (read, typing, presence, edit, recall, reaction).
                    query = "?acks=1&events=1" + ("&catchup=0" if self.catch_up == "sync" else "")
                    ws = await self.client.http.ws_connect(
                        f"ws://{gateway.address}:{gateway.port}/api/ws{query}", headers=self.client.auth_headers(),
                        heartbeat=self.heartbeat, autoping=True, max_msg_size=MAX_FRAME_BYTES,
                        timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 401 and not relogged and await self.client.relogin():
                    relogged = True
                    continue
                raise PyStackerError(exc.status, f"WebSocket refused: {exc.message}") from None
            except TimeoutError:
                if gateway is not None:
                    raise GatewayUnreachable(gateway.gateway_id,
                                             f"gateway {gateway.gateway_id}: no connection within "
                                             f"{self.connect_timeout:g} s") from None
                raise PyStackerError(0, f"no connection within {self.connect_timeout:g} s") from None
            except aiohttp.ClientError as exc:
                if gateway is not None:
                    raise GatewayUnreachable(gateway.gateway_id, f"cannot connect to {gateway.gateway_id}: {exc}") from None
                raise PyStackerError(0, f"cannot connect: {exc}") from None
            self.gateway = gateway
            return ws

    def _attach(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.connects += 1
        self._acked.clear()  # a new connection learns our positions again (first ack below)
        self._acked_once = False
        self._ack_wakeup.set()
        if self.catch_up == "sync":
            self._sync_rooms = {room for room in self.inbox.rooms if self.inbox.received(room) is not None}
        self._fill_wakeup.set()
        self._connected.set()
        self._set_state("connected", f"{self.gateway.gateway_id if self.gateway else ''}")

    def _detach(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        if ws is not None and ws is not self._ws:
            return
        self._ws = None
        self._connected.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(_Disconnected())
                future.exception()  # retrieved: the waiter may already be gone

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                opened = time.monotonic()
                await self._read(ws)
                code = ws.close_code
                self._detach(ws)
                if self._closing:
                    return
                self._set_state("disconnected", f"close code {code}")
                if code == CLOSE_REPLACED:
                    raise SessionFailed(code, "replaced by another connection of the same device")
                if code == CLOSE_DEVICE_LIMIT:
                    raise SessionFailed(code, "too many devices of this user online: this one was closed")
                if time.monotonic() - opened >= self.stable_after:
                    self.backoff.reset()
                gone = self.gateway.gateway_id if self.gateway is not None and code in GATEWAY_GONE else None
                ws = await self._reconnect([gone] if gone else [])
                self._attach(ws)
                if self._watched:
                    await self._send_watch()  # a new gateway knows nothing of what we watched
        except asyncio.CancelledError:
            raise
        except PyStackerError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug here must end the session visibly, not hang the reader
            log.exception("session runner failed")
            self._fail(SessionFailed(0, f"session failed: {exc}"))

    async def _reconnect(self, avoid: list[str]) -> aiohttp.ClientWebSocketResponse:
        """Connect again. The first attempt waits a backoff delay (after a gateway crash every one of
        its clients reconnects: the jitter spreads them); a gateway that then refuses us is added to
        `avoid` and the registry is asked again at once, since it can name another one. Only when
        that brings nothing new does the next attempt back off."""
        at_once = False
        while True:
            if not at_once:
                delay = self.backoff.next_delay()
                if delay is None:
                    raise SessionFailed(0, f"gave up reconnecting after {self.backoff.attempts} attempts")
                self._set_state("reconnecting", f"in {delay:.2f} s (attempt {self.backoff.attempts})")
                await asyncio.sleep(delay)
            at_once = False
            try:
                return await self._open(avoid)
            except GatewayUnreachable as exc:
                log.info("reconnect failed: %s", exc)
                if exc.gateway_id not in avoid:
                    avoid.append(exc.gateway_id)
                    del avoid[:-MAX_AVOIDED]
                    at_once = True
            except PyStackerError as exc:
                if exc.status in (401, 403):
                    raise SessionFailed(exc.status, exc.msg) from None
                log.info("reconnect failed: %s", exc)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self._handle(message.data)
            elif message.type is aiohttp.WSMsgType.ERROR:
                log.debug("socket error: %s", ws.exception())
                break

    def _fail(self, error: PyStackerError) -> None:
        self._error = error
        ws = self._ws
        self._detach(None)
        if ws is not None and not ws.closed:
            asyncio.get_running_loop().create_task(ws.close())
        self._set_state("failed", error.msg)
        self._connected.set()
        self._ready.set()

    def _set_state(self, state: str, detail: str) -> None:
        self.state = state
        log.debug("session %s %s", state, detail)
        if self.on_state is not None:
            try:
                self.on_state(state, detail)
            except Exception:
                log.exception("on_state callback failed")

    # -- frames ----------------------------------------------------------------------------------

    def _handle(self, text: str) -> None:
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            log.warning("non-JSON frame ignored")
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        payload = frame.get("payload")
        if kind == "chat":
            self._offer([frame])
        elif kind == "batch":
            self._offer(payload if isinstance(payload, list) else [])
            self._answer(frame.get("ref"), frame)
        elif kind in ("edit", "recall", "reaction"):  # room events, in the room's seq order like chats
            self._offer([frame])
        elif kind in ("send_ok", "edit_ok", "recall_ok", "react_ok", "error"):
            ref = payload.get("ref") if isinstance(payload, dict) else None
            if kind == "error" and ref is None:
                log.warning("server error frame: %s", payload)
            self._answer(ref, frame)
        elif kind == "pong":
            self._answer(payload, frame)
        elif kind == "ack":
            if self.deliveries and self.inbox.offer_event(Delivered.from_frame(frame)):
                self._ready.set()
        elif kind == "read":
            if self.reads and self.inbox.offer_event(ReadEvent.from_frame(frame)):
                self._ready.set()
        elif kind == "typing":
            if self.typing_events and self.inbox.offer_event(TypingEvent.from_frame(frame)):
                self._ready.set()
        elif kind == "presence":
            if self.presence_events and self.inbox.offer_event(PresenceEvent.from_frame(frame)):
                self._ready.set()
        elif kind == "system":
            if isinstance(frame.get("unread"), int):
                self.unread = frame["unread"]
            self._welcomed.set()
            log.debug("welcome: %s", payload)
        else:
            log.debug("frame of type %r ignored", kind)

    def _offer(self, frames: list[Any]) -> None:
        missing = False
        for frame in frames:
            if not isinstance(frame, dict):
                continue
            if frame.get("type") == "batch" and isinstance(frame.get("payload"), list):
                self._offer(frame["payload"])  # GoStacker could nest a batch in a batch
                continue
            entry = room_entry_from_frame(frame)  # a chat frame or a room event; nothing else has a seq
            if entry is None:
                continue
            outcome = self.inbox.offer(entry)
            missing = missing or outcome in (Offer.HELD, Offer.DROPPED)
        if len(self.inbox):
            self._ready.set()
        if missing:
            self._fill_wakeup.set()

    def _answer(self, ref: Any, frame: dict[str, Any]) -> None:
        if not isinstance(ref, str):
            return
        future = self._pending.get(ref)
        if future is None or future.done():
            return
        if frame.get("type") == "error":
            body = frame.get("payload") or {}
            future.set_exception(PyStackerError(int(body.get("code", 0) or 0), str(body.get("msg", "error"))))
        else:
            future.set_result(frame)

    # -- filling holes ---------------------------------------------------------------------------

    def _fill_work(self) -> list[tuple[int, int]]:
        """(room, sync after this seq): rooms to catch up after a reconnect first, then rooms behind."""
        work = {room: seq for room in self._sync_rooms if (seq := self.inbox.received(room)) is not None}
        for room, seq in self.inbox.behind().items():
            work.setdefault(room, seq)
        return sorted(work.items())

    async def _fill_loop(self) -> None:
        while True:
            await self._fill_wakeup.wait()
            self._fill_wakeup.clear()
            try:
                await self._fill()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("filling a gap failed; retrying")
                await asyncio.sleep(GAP_RETRY_PAUSE)
                self._fill_wakeup.set()

    async def _fill(self) -> None:
        while (work := self._fill_work()) and not self.closed:
            if not self._connected.is_set() or self._ws is None:
                return  # the next connection wakes us
            progressed = False
            for room_id, after_seq in work:
                space = self.inbox.space()
                if space == 0:
                    self._fill_needs_space = True
                    return  # the application reads first; its next read wakes us
                try:
                    answer = await self._request({"type": "sync", "room_id": room_id, "after_seq": after_seq,
                                                  "limit": min(space, MAX_SYNC_PAGE)}, timeout=None, retry=False)
                except PyStackerError as exc:
                    if exc.status == 0:
                        if not self._connected.is_set():
                            return  # disconnected: the next connection wakes us
                        if self.inbox.rooms[room_id].behind():
                            self._note_stuck(room_id)  # no answer in time: retried, within gap_timeout
                        continue
                    self._give_up(room_id, f"sync refused: {exc}")  # not a member (any more), ...
                    progressed = True
                    continue
                self._offer(answer.get("payload") or [])
                advanced = (self.inbox.received(room_id) or 0) > after_seq
                if not answer.get("has_more") or not advanced:
                    self._sync_rooms.discard(room_id)
                if advanced:
                    progressed = True
                    self._gap_since.pop(room_id, None)
                elif self.inbox.rooms[room_id].behind():
                    self._note_stuck(room_id)
            if not progressed:
                await asyncio.sleep(GAP_RETRY_PAUSE)

    def _note_stuck(self, room_id: int) -> None:
        """A sync brought nothing although the room is behind. Retried until gap_timeout, then skipped."""
        now = time.monotonic()
        since = self._gap_since.setdefault(room_id, now)
        if now - since >= self.gap_timeout:
            self._give_up(room_id, f"gap not fillable for {self.gap_timeout:g} s")

    def _give_up(self, room_id: int, why: str) -> None:
        self._sync_rooms.discard(room_id)
        self._gap_since.pop(room_id, None)
        room = self.inbox.rooms.get(room_id)
        if room is None or not room.behind():
            return
        target = min(room.held) if room.held else room.highest + 1
        skipped = self.inbox.skip_to(room_id, target)
        log.warning("room %s: skipped %d message(s): %s", room_id, skipped, why)
        if len(self.inbox):
            self._ready.set()

    # -- acknowledging ---------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wakeup.wait()
            if self._acked_once:  # the first ack of a connection goes at once (see _send_acks)
                await asyncio.sleep(self.ack_delay)  # gather: one frame per room for everything read meanwhile
            self._ack_wakeup.clear()
            try:
                await self._send_acks()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("acks not sent; the next connection sends them", exc_info=True)

    async def _send_acks(self) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        due = {room: seq for room, seq in self.inbox.positions().items() if seq > self._acked.get(room, 0)}
        for room, seq in sorted(due.items()):
            await ws.send_str(orjson.dumps({"type": "ack", "room_id": room, "seq": seq}).decode())
            self._acked[room] = seq
            self._acked_once = True
