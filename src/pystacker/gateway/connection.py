"""One device's WebSocket: a bounded queue, one writer, per-room ordering and the delivery cursor.

Everything bound for the socket goes through the queue and is written by the single writer task, in
order. Live room messages arrive as prebuilt WebSocket frames (built once per inbox entry for all its
targets, gateway/wsframes.py); the writer gathers what its queue holds and writes it to the transport
in one write, instead of one aiohttp send per frame (a large share of a loaded gateway's CPU). Room
messages pass the RoomSequencer: duplicates are dropped and holes are filled from the
message log before the message itself is written, so each room reaches the client once, in seq
order, with no gap. The writer also runs the catch-up (what the user missed while away) before any
live message of the same room, which closes the race between catch-up and live push.

The writer task runs only while there is something to write: an idle connection holds no task (at
10,000 idle sockets per gateway, a parked task and its frames were a good part of the memory).

Fast path: a live room message that is the room's next seq, offered while the queue is empty, no
writer runs and the socket's buffer is empty, goes into the burst by `offer` itself: nothing can be
ahead of it, so order and the cursor rules are those of the writer, without a task, a queue entry
and a loop turn per message (the usual case of a loaded gateway whose clients keep up). The burst is
written by a callback scheduled with call_soon, after the gateway dispatched the whole inbox read: a
connection gets one transport write (one syscall) per read instead of one per message.

Bounds: the queue holds `queue_size` items. When it is full in live mode the client is not reading:
it is closed with CloseCode.SLOW_CONSUMER and catches up after reconnecting; nothing is lost because the
cursor only covers what was written. While the writer is busy catching up, overflowing room messages
are dropped instead and the room is marked behind: the writer fills it from the log afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from pystacker.engine.base import Cursors
from pystacker.gateway.wsframes import ping_frame, text_frame
from pystacker.messaging.acks import EntryTracker
from pystacker.messaging.frames import CloseCode, batch_frame, encode, entry_frame, gostacker_event_frame
from pystacker.messaging.history import History
from pystacker.messaging.model import DEFAULT_DEVICE, PushEntry, StoredMessage
from pystacker.messaging.ordering import RoomSequencer, Verdict
from pystacker.observability import tracing
from pystacker.observability.metrics import GatewayMetrics, frame_type
from pystacker.observability.monitor import MONITORS

log = logging.getLogger("pystacker.gateway.connection")

# How long a close may take (GoStacker's 10 s write deadline). A peer that does not read never takes
# the close frame queued behind the data it did not read; after this the socket is aborted.
CLOSE_TIMEOUT = 10.0
BATCH_SIZE = 50  # messages per `batch` frame in a catch-up (GoStacker meant 50 and sent everything in one)
FILL_PAGE = 200
# Frames gathered before they are written anyway: bounds the copy of b"".join and what a burst holds
# back from the socket while the queue keeps delivering.
BURST_BYTES = 64 * 1024
# A delivery probe (the ping whose pong confirms what was written) goes this long after the first
# unconfirmed write, so one ping confirms everything written meanwhile. Sent after every burst, a
# loaded connection got a ping and answered a pong per message: about a tenth of the gateway's CPU per
# delivery and a fifth of a client's; at 50 ms a connection getting 35 messages/s still answered 20
# pings/s. The cursor moves up to this much later, which the cursor saver (every second) dwarfs; a
# socket that dies in between gets those frames again on reconnect (at-least-once), never fewer.
PROBE_DELAY = 0.25
_PUSH_MONITOR = MONITORS.get("push_ws")  # looked up once: the same object MONITORS.get returns later


@dataclass(slots=True)
class RoomPush:
    """A room message: ordered by seq, deduplicated, gap-filled."""

    room_id: int
    seq: int
    text: str
    entry_id: str | None = None
    created_at_ms: int = 0  # when send accepted it: the delivery latency is measured from here
    msg_id: int = 0  # only for the log line of the write (0: unknown)
    trace: Any = None  # the gateway's dispatch span: the write's span is its child (None: tracing off)
    frame: bytes = b""  # `text` as a complete WebSocket frame, shared by every target (built if empty)
    # A room event (its frame differs for sockets that do not know events). None: a message, whose
    # frame every socket gets.
    event: StoredMessage | None = None
    source: PushEntry | None = None  # the inbox entry it came from: what is handed on if it is not written


@dataclass(slots=True)
class RawFrame:
    """A frame outside any room order (ack, answers to client frames, system, info)."""

    text: str
    entry_id: str | None = None
    sheddable: bool = False  # dropped when the queue is more than half full (a typing signal)
    # A frame type of PyStacker's (read, typing): not sent to sockets that did not ask for them
    # (`?events=1`), since GoStacker's clients know only its own types.
    events_only: bool = False


@dataclass(slots=True)
class CatchUp:
    """Send the user everything he missed in all his rooms (on connect, or notify_online)."""

    entry_id: str | None = None
    # room -> last seq, read on connect before the welcome frame is written: the catch-up stops
    # there, so a message sent after the client saw the welcome arrives live as a `chat` frame
    # instead of being folded into the catch-up batch (None: read the rooms and seqs when run).
    until: dict[int, int] | None = None


Item = RoomPush | RawFrame | CatchUp


def _reset_on_close(transport: asyncio.BaseTransport) -> None:
    """Make closing the socket send a reset. Closing a socket only hands its unsent data to the
    kernel, which goes on sending it, and holding it (up to the send buffer's few MiB), to a peer
    that does not read; with a zero linger time the kernel drops it at once and the peer learns at
    once that it must reconnect."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already gone


class CursorSource(Protocol):
    """Where one device stands: the user's cursors for his `default` device (messaging/cursors.py),
    a named device's own otherwise (messaging/devices.py)."""

    @property
    def watermarks(self) -> Cursors:
        """The engine part its positions are saved in."""

    def owner(self, user_id: int) -> int:
        """Whose positions they are in `watermarks`: the user, or the device's key."""

    async def starting_points(self, user_id: int, room_ids: list[int]) -> dict[int, int]:
        """Where the device stands in each room (delivered seq); every given room gets a value."""

    async def ensure_positions(self, user_id: int, room_ids: list[int]) -> None:
        """Make the starting point of each room fixed from now on (the device is connecting)."""

    async def rooms_of(self, user_id: int) -> list[int]: ...

    async def last_seqs(self, room_ids: list[int]) -> dict[int, int]: ...


# An idle connection's queue and behind-set: shared, empty and immutable; a real deque (760 bytes) and
# set are made when the first item is queued, and dropped again when the writer has emptied the queue.
# With __slots__ this keeps an idle connection's own objects at ~0.6 KB instead of ~1.7 KB.
_NO_ITEMS: tuple[()] = ()
_NO_ROOMS: frozenset[int] = frozenset()


class Connection:
    __slots__ = ("user_id", "device_id", "metrics", "ws", "transport", "history", "cursors", "tracker", "sequencer", "queue",
                 "queue_size", "_started", "client_acks", "events", "route_since", "unsaved", "_written", "_probe", "_probe_ids",
                 "_probe_timer", "close_code", "_catching_up", "_behind", "_writer", "_burst", "_burst_bytes",
                 "_flush_scheduled")

    def __init__(self, user_id: int, ws: web.WebSocketResponse, *, queue_size: int, history: History,
                 cursors: CursorSource, tracker: EntryTracker, device_id: str = DEFAULT_DEVICE,
                 transport: asyncio.Transport | None = None, metrics: GatewayMetrics | None = None) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.metrics = metrics or GatewayMetrics("unknown")
        self.ws = ws
        self.transport = transport  # the TCP connection under ws, to abort a peer that stopped reading
        self.history = history
        self.cursors = cursors
        self.tracker = tracker
        self.sequencer = RoomSequencer()
        self.queue: deque[Item] | tuple[()] = _NO_ITEMS
        self.queue_size = queue_size
        self._started = False  # the writer may run (set by start, cleared by stop)
        self.client_acks = False  # the client acknowledges by seq: its acks, not our writes, move the cursor
        self.events = False  # the client knows PyStacker's frames (`?events=1`), not only GoStacker's
        self.route_since: float | None = None  # when its route was written: its lease replaces only that one
        self.unsaved: dict[int, int] = {}  # room -> delivered seq not yet saved as the cursor
        # A client that never acks (GoStacker's) confirms by answering a ping sent after the frames:
        # a pong means its WebSocket library read everything before it. Written-but-unconfirmed
        # positions are never saved, so frames lost in flight when the socket dies are sent again.
        self._written: dict[int, int] = {}
        self._probe: tuple[bytes, dict[int, int]] | None = None  # the ping in flight and what it confirms
        self._probe_ids = itertools.count(1)
        self._probe_timer: asyncio.TimerHandle | None = None  # the next probe, once something is unconfirmed
        self.close_code: int | None = None
        self._catching_up = False
        self._behind: set[int] | frozenset[int] = _NO_ROOMS  # rooms whose live messages were dropped during a catch-up
        self._writer: asyncio.Task[None] | None = None
        self._burst: list[bytes] = []  # frames gathered for the next transport write
        self._burst_bytes = 0
        self._flush_scheduled = False  # a call_soon will write the fast path's burst

    # -- the producer side ----------------------------------------------------------------------

    def offer(self, item: Item) -> bool:
        """Queue an item; False when it cannot be (connection closing, or a slow consumer just closed)."""
        if self.close_code is not None:
            return False
        if type(item) is RoomPush and self._write_now(item):
            return True
        if type(item) is RawFrame:
            if item.events_only and not self.events:
                self._settle(item)
                return True  # not for this client
            if item.sheddable and len(self.queue) * 2 > self.queue_size:
                self.metrics.typing_shed.inc()
                self._settle(item)
                return True  # dropped on purpose: nothing to hand on
        if len(self.queue) < self.queue_size:
            self._queue().append(item)
            self._wake_writer()
            return True
        if self._catching_up and isinstance(item, RoomPush):
            if self._behind is _NO_ROOMS:
                self._behind = set()
            self._behind.add(item.room_id)  # type: ignore[union-attr]  # the log has it; fill after the catch-up
            self._settle(item)
            return True
        log.warning("slow consumer: queue full, closing", extra={"user_id": self.user_id})
        self.metrics.slow_consumers.inc()
        self.close_soon(CloseCode.SLOW_CONSUMER, "slow consumer: catch up after reconnecting")
        return False

    def greet(self, welcome: RawFrame) -> None:
        """Put the welcome in front of whatever was queued before start() (live pushes that came
        while the gateway was registering the socket): a client reads it first."""
        assert not self._started, "the welcome must be given before start()"
        self._queue().appendleft(welcome)

    def _queue(self) -> deque[Item]:
        """The queue, made when the first item comes (an idle connection shares _NO_ITEMS)."""
        if not isinstance(self.queue, deque):
            self.queue = deque()
        return self.queue

    def start(self) -> None:
        self._started = True
        self._wake_writer()

    def _write_now(self, item: RoomPush) -> bool:
        """The fast path (module doc): True if the message was written, False to queue it."""
        if (self._writer is not None or self.queue or not self._started or self._behind or item.event is not None
                or item.trace is not None or not self.sequencer.is_next(item.room_id, item.seq)):
            return False
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False  # a closing socket, or a client behind in reading: the writer waits for it
        if self._gather(item):
            self._flush_burst()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_burst)
        self._settle(item)
        self._probe_if_needed()
        return True

    def _wake_writer(self) -> None:
        # One writer at a time: a running one sees the new item before it ends (it ends only when it
        # finds the queue empty, and nothing can be queued between that check and its end).
        if self._started and self.queue and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def close_soon(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        # ws.close() waits for the close frame to drain and for the peer's answer. A client that
        # stopped reading (the usual slow consumer) never drains it, so without a deadline the
        # connection, its queue and its socket buffers stayed pinned until the pong deadline.
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:120]), CLOSE_TIMEOUT)
        except Exception as exc:  # TimeoutError, or the socket failed under the close
            log.info("close did not complete (%s); aborting the socket", type(exc).__name__,
                     extra={"user_id": self.user_id, "code": code})
            # transport.close() would wait for the unread buffer to drain: abort drops it now, and the
            # read loop ends at once (then the gateway detaches the connection).
            if self.transport is not None:
                _reset_on_close(self.transport)
                self.transport.abort()

    async def stop(self) -> list[Item]:
        """Stop the writer; return what was still queued (the caller hands it on)."""
        self._started = False
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        left = list(self.queue)
        self.queue = _NO_ITEMS
        return left

    # -- the writer -----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Write until the queue is empty, then end (offer starts a new writer for the next item)."""
        try:
            while self.queue:
                item = self.queue.popleft()
                # Settled however the write ends: a write that failed or was cancelled (the socket
                # died, the connection was replaced) left the cursor before the item, so catch-up
                # serves it; an item left unsettled would keep its inbox entry pending for ever.
                try:
                    if isinstance(item, RoomPush):
                        await self._write_room_push(item)
                    elif isinstance(item, RawFrame):
                        await self._write_burst()
                        await self.ws.send_str(item.text)
                        self.metrics.frame_out(frame_type(item.text))
                    else:
                        await self._write_burst()
                        await self._catch_up(item.until)
                finally:
                    # The item counts as written once its frame is in the burst: the burst is written
                    # before the writer waits for anything, and the cursor moves only by pong or ack,
                    # so a frame lost with a dying socket is served again by the catch-up.
                    self._settle(item)
                if self._behind and not self._catching_up:
                    await self._write_burst()
                    await self._fill_behind()
                if not self.queue:
                    await self._write_burst()
                    self._probe_if_needed()
            self._writer = None  # done: an idle connection keeps no task object either
            self.queue = _NO_ITEMS  # nor an empty deque
        except asyncio.CancelledError:
            raise
        except (ConnectionError, RuntimeError) as exc:  # the socket went away under a write
            log.debug("writer stopped: %s", exc, extra={"user_id": self.user_id})
            self._writer_failed()
        except Exception:
            log.exception("writer failed", extra={"user_id": self.user_id})
            self._writer_failed()

    def _writer_failed(self) -> None:
        if self.close_code is None and not self.ws.closed:
            self.close_soon(CloseCode.INTERNAL_ERROR, "internal error")

    async def _write_room_push(self, item: RoomPush) -> None:
        decision = self.sequencer.decide(item.room_id, item.seq)
        if decision.verdict is Verdict.UNKNOWN_ROOM:
            await self._write_burst()  # nothing gathered waits behind a read of the store
            points = await self.cursors.starting_points(self.user_id, [item.room_id])
            self.sequencer.start(item.room_id, points.get(item.room_id, item.seq - 1))
            decision = self.sequencer.decide(item.room_id, item.seq)
        if decision.verdict is Verdict.GAP:
            await self._write_burst()
            await self._fill(item.room_id, item.seq - 1)
            decision = self.sequencer.decide(item.room_id, item.seq)
        if decision.verdict is Verdict.DELIVER:
            # The span is started and ended by hand, and only for a traced item: it covers handing the
            # frame to the socket's burst (written in this loop turn, before the writer waits).
            span = None if item.trace is None else tracing.start_span("socket.write", parent=item.trace, attributes={
                "msg_id": item.msg_id, "room_id": item.room_id, "seq": item.seq, "user_id": self.user_id,
                "gateway_id": self.metrics.gateway_id})
            full = self._gather(item)
            if span is not None:
                tracing.end_span(span)
            if full:
                await self._write_burst()

    def _gather(self, item: RoomPush) -> bool:
        """Add a live message's frame to the burst and count it delivered (it is written before the
        writer or the event loop waits for anything); True when the burst is full: write it now."""
        if item.event is not None and not self.events:
            legacy = gostacker_event_frame(item.event)
            if legacy is None:  # nothing a GoStacker client can show: it is passed, not written
                self._delivered(item.room_id, item.seq)
                return False
            frame = text_frame(encode(legacy))
        else:
            frame = item.frame or text_frame(item.text)
        self._burst.append(frame)
        self._burst_bytes += len(frame)
        self._delivered(item.room_id, item.seq)
        self.metrics.frame_out("chat")
        self.metrics.delivered_live(item.created_at_ms)
        if log.isEnabledFor(logging.DEBUG):  # a line per message and member: no cost when off
            log.debug("written", extra={"msg_id": item.msg_id, "user_id": self.user_id,
                                        "room_id": item.room_id, "seq": item.seq})
        return self._burst_bytes >= BURST_BYTES

    async def _write_burst(self) -> None:
        """Write the gathered frames in one transport write; wait while the socket's buffer is full."""
        if not self._burst:
            return
        transport = self._put_burst()
        # Flow control as aiohttp's own writes do it: past the transport's high-water mark, wait for
        # the peer to read. Meanwhile the queue fills, and a peer that never reads is a slow consumer.
        if transport.get_write_buffer_size() > 0:
            protocol = transport.get_protocol()
            await StreamWriter(protocol, asyncio.get_running_loop()).drain()

    def _take_burst(self) -> bytes:
        data = b"".join(self._burst) if len(self._burst) > 1 else self._burst[0]
        self._burst.clear()
        self._burst_bytes = 0
        return data

    def _put_burst(self) -> Any:
        """Hand the gathered frames to the transport in one write (ConnectionResetError: it is closing)."""
        data = self._take_burst()
        transport = self.transport
        # Timed by hand rather than with `Monitor.track()`: a generator-based context manager cost
        # about 1.5% of a loaded gateway's CPU. Same samples: failures count as such.
        started = time.perf_counter()
        if transport is None or transport.is_closing():
            _PUSH_MONITOR.record(time.perf_counter() - started, False)
            raise ConnectionResetError("the socket is closing")
        transport.write(data)
        _PUSH_MONITOR.record(time.perf_counter() - started, True)
        return transport

    def _flush_burst(self) -> None:
        """The fast path's write (its call_soon, or a full burst): a writer started since may have
        written the burst already."""
        self._flush_scheduled = False
        if not self._burst:
            return
        if self.close_code is not None:  # our close frame may be out already: nothing goes after it
            self._take_burst()
            return
        try:
            self._put_burst()
        except ConnectionResetError:
            pass  # the socket is going away: unconfirmed positions are served again by the catch-up

    async def _fill(self, room_id: int, up_to_seq: int) -> None:
        """Write the room's messages after the client's position up to up_to_seq, one chat frame each."""
        while self.sequencer.last(room_id) < up_to_seq:
            wanted = min(FILL_PAGE, up_to_seq - self.sequencer.last(room_id))
            messages = await self.history.after(room_id, self.sequencer.last(room_id), wanted)
            if not messages:
                log.warning("gap not fillable yet", extra={"user_id": self.user_id, "room_id": room_id,
                                                           "from_seq": self.sequencer.last(room_id) + 1})
                return
            quotes = await self.history.quotes(messages)
            for message in messages:
                frame = entry_frame(message, events=self.events, quotes=quotes)
                if frame is not None:
                    await self.ws.send_str(encode(frame))
                self._delivered(room_id, message.seq)
                self.metrics.frame_out("chat")
                self.metrics.gap_filled.inc()
                self.metrics.delivered_live(message.created_at_ms)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("written by gap fill", extra={"msg_id": message.msg_id, "user_id": self.user_id,
                                                            "room_id": room_id, "seq": message.seq})

    async def _fill_behind(self) -> None:
        rooms, self._behind = self._behind, _NO_ROOMS
        lasts = await self.cursors.last_seqs(sorted(rooms))
        for room_id in rooms:
            if self.sequencer.knows(room_id):
                await self._fill(room_id, lasts.get(room_id, 0))

    async def _catch_up(self, until: dict[int, int] | None = None) -> None:
        """Everything missed in every room, in `batch` frames of BATCH_SIZE, room by room in seq order."""
        self._catching_up = True
        try:
            rooms = list(until) if until is not None else await self.cursors.rooms_of(self.user_id)
            unknown = [r for r in rooms if not self.sequencer.knows(r)]
            for room_id, seq in (await self.cursors.starting_points(self.user_id, unknown)).items():
                self.sequencer.start(room_id, seq)
            lasts = until if until is not None else await self.cursors.last_seqs(rooms)
            for room_id in rooms:
                while self.sequencer.last(room_id) < lasts.get(room_id, 0):
                    messages = await self.history.after(room_id, self.sequencer.last(room_id), BATCH_SIZE)
                    if not messages:
                        break
                    await self._write_batch(room_id, messages)
        finally:
            self._catching_up = False

    async def _write_batch(self, room_id: int, messages: list[StoredMessage]) -> None:
        quotes = await self.history.quotes(messages)
        frames = [f for m in messages if (f := entry_frame(m, events=self.events, quotes=quotes)) is not None]
        if frames:  # (a GoStacker client is not sent reactions: a page of them alone is passed)
            await self.ws.send_str(encode(batch_frame(frames)))
        self._delivered(room_id, messages[-1].seq)
        self.metrics.frame_out("batch")
        self.metrics.delivered.inc(len(messages))
        self.metrics.caught_up.inc(len(messages))

    # -- bookkeeping ----------------------------------------------------------------------------

    def _delivered(self, room_id: int, seq: int) -> None:
        self.sequencer.delivered(room_id, seq)
        if not self.client_acks:
            self._written[room_id] = seq

    def _probe_if_needed(self) -> None:
        """Something written is unconfirmed: a probe goes PROBE_DELAY from now (one in flight at a time)."""
        if self.client_acks or self._probe is not None or self._probe_timer is not None or not self._written:
            return
        self._probe_timer = asyncio.get_running_loop().call_later(PROBE_DELAY, self._send_probe)

    def _send_probe(self) -> None:
        """The ping confirming every position in `_written`: written straight to the transport, after
        every frame it confirms. Frames still gathered (the fast path's burst waits for its call_soon)
        are not in the transport yet: then the probe waits for the next round."""
        self._probe_timer = None
        transport = self.transport
        if self.close_code is not None or self.ws.closed or transport is None or transport.is_closing():
            return  # the socket is going away: its read loop ends and the connection is detached
        if self._burst:
            self._probe_if_needed()
            return
        token = str(next(self._probe_ids)).encode()
        self._probe, self._written = (token, self._written), {}
        transport.write(ping_frame(token))

    @property
    def confirmed(self) -> bool:
        """Every position written to this socket is confirmed (by ack or pong)."""
        return not self._written and self._probe is None

    def pong_received(self, data: bytes) -> None:
        if self._probe is None or data != self._probe[0]:
            return  # a heartbeat pong, or a stale one
        for room_id, seq in self._probe[1].items():
            if seq > self.unsaved.get(room_id, 0):
                self.unsaved[room_id] = seq
        self._probe = None
        self._probe_if_needed()  # what was written while this probe was out

    def client_acked(self, room_id: int, seq: int) -> None:
        """A cumulative ack from the client: it has the room up to seq."""
        self.client_acks = True
        if seq > self.unsaved.get(room_id, 0) and seq <= self.sequencer.last(room_id):
            self.unsaved[room_id] = seq

    def take_unsaved(self) -> dict[int, int]:
        unsaved, self.unsaved = self.unsaved, {}
        return unsaved

    def _settle(self, item: Item) -> None:
        if item.entry_id is not None:
            self.tracker.settle(item.entry_id)
