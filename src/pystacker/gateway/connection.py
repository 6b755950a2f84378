"""One device's WebSocket: the driver around its delivery core, and the one writer of its socket.

What is written, in what order, and when the socket closes is decided by the pure DeliveryCore
(gateway/delivery.py). This driver carries the decisions out, and is the only code that touches the
socket (a Transport, gateway/transport.py): it writes the bursts, the probes, the heartbeat pings
and the pongs; it runs the writer task while the core has queued work (reading the store for the
catch-up and the gap fill); it keeps the timers (the fast path's flush, the probe, the heartbeat);
and it closes or aborts the socket when the core says so.

The writer task runs only while there is something to write: an idle connection holds no task (at
10,000 idle sockets per gateway, a parked task and its frames were a good part of the memory).

The fast path's burst is written by a callback scheduled with call_soon, after the gateway has
dispatched the whole inbox read: a connection gets one transport write (one syscall) per read
instead of one per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from pystacker.engine.base import Cursors
from pystacker.gateway.delivery import (
    BATCH_SIZE,
    HEARTBEAT_PING,
    Beat,
    CatchUp,
    DeliveryCore,
    Item,
    LoadLasts,
    LoadPage,
    LoadRooms,
    LoadStart,
    Offer,
    RawFrame,
    RoomPush,
    State,
    Write,
)
from pystacker.gateway.transport import Transport
from pystacker.messaging.acks import EntryTracker
from pystacker.messaging.frames import CloseCode
from pystacker.messaging.history import History
from pystacker.messaging.model import DEFAULT_DEVICE
from pystacker.messaging.ordering import RoomSequencer
from pystacker.observability import tracing
from pystacker.observability.metrics import GatewayMetrics
from pystacker.observability.monitor import MONITORS

__all__ = ["BATCH_SIZE", "CatchUp", "Connection", "CursorSource", "Item", "RawFrame", "RoomPush", "State"]

log = logging.getLogger("pystacker.gateway.connection")

# How long a close may take (GoStacker's 10 s write deadline). A peer that does not read never takes
# the close frame queued behind the data it did not read; after this the socket is aborted.
CLOSE_TIMEOUT = 10.0
# A delivery probe (the ping whose pong confirms what was written) goes this long after the first
# unconfirmed write, so one ping confirms everything written meanwhile. Sent after every burst, a
# loaded connection got a ping and answered a pong per message: about a tenth of the gateway's CPU per
# delivery and a fifth of a client's; at 50 ms a connection getting 35 messages/s still answered 20
# pings/s. The cursor moves up to this much later, which the cursor saver (every second) dwarfs; a
# socket that dies in between gets those frames again on reconnect (at-least-once), never fewer.
PROBE_DELAY = 0.25
_PUSH_MONITOR = MONITORS.get("push_ws")  # looked up once: the same object MONITORS.get returns later


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


class Connection:
    __slots__ = ("user_id", "device_id", "metrics", "transport", "history", "cursors", "core", "route_since",
                 "_loop", "_writer", "_flush_scheduled", "_probe_timer", "_heartbeat_timer", "_closer")

    def __init__(self, user_id: int, transport: Transport, *, queue_size: int, history: History,
                 cursors: CursorSource, tracker: EntryTracker, device_id: str = DEFAULT_DEVICE,
                 metrics: GatewayMetrics | None = None, client_acks: bool = False, events: bool = False,
                 ping_interval: float = 54.0, pong_deadline: float = 60.0) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.metrics = metrics or GatewayMetrics("unknown")
        self.transport = transport
        self.history = history
        self.cursors = cursors
        self._loop = asyncio.get_running_loop()
        self.core = DeliveryCore(user_id, queue_size=queue_size, tracker=tracker, metrics=self.metrics,
                                 socket_ready=transport.ready, client_acks=client_acks, events=events,
                                 ping_interval=ping_interval, pong_deadline=pong_deadline, now=self._loop.time())
        self.route_since: float | None = None  # when its route was written: its lease replaces only that one
        self._writer: asyncio.Task[None] | None = None
        self._flush_scheduled = False  # a call_soon will write the fast path's burst
        self._probe_timer: asyncio.TimerHandle | None = None  # the next probe, once something is unconfirmed
        self._closer: asyncio.Task[None] | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = self._loop.call_at(
            self._loop.time() + ping_interval, self._heartbeat)

    # -- what the rest of the gateway reads ------------------------------------------------------

    @property
    def state(self) -> State:
        return self.core.state

    @property
    def close_code(self) -> int | None:
        """The code this side decided to close with (None: none, or dropped without a close frame)."""
        return self.core.close_code

    @property
    def client_acks(self) -> bool:
        return self.core.client_acks

    @property
    def events(self) -> bool:
        return self.core.events

    @property
    def queue(self) -> Any:
        return self.core.queue

    @property
    def queue_size(self) -> int:
        return self.core.queue_size

    @property
    def sequencer(self) -> RoomSequencer:
        return self.core.sequencer

    @property
    def unsaved(self) -> dict[int, int]:
        """Room -> confirmed seq not yet saved as the cursor."""
        return self.core.cursor.confirmed

    @property
    def confirmed(self) -> bool:
        """Every position written to this socket is confirmed (by ack or pong)."""
        return self.core.confirmed

    def take_unsaved(self) -> dict[int, int]:
        return self.core.take_confirmed()

    # -- the producer side ----------------------------------------------------------------------

    def offer(self, item: Item) -> bool:
        """Hand an item to the socket; False when it cannot be (closing, or a slow consumer just closed)."""
        outcome = self.core.offer(item)
        if outcome is Offer.BURST:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
        elif outcome is Offer.QUEUED:
            if self.core.start_writer():
                self._writer = self._loop.create_task(self._write_loop())
            return True
        elif outcome is Offer.DROPPED:
            return True
        elif outcome is Offer.BURST_FULL:
            self._flush()
        elif outcome is Offer.SLOW_CONSUMER:
            log.warning("slow consumer: queue full, closing", extra={"user_id": self.user_id})
            self._start_close(CloseCode.SLOW_CONSUMER, "slow consumer: catch up after reconnecting")
            return False
        else:
            return False  # refused: closing
        self._arm_probe()
        return True

    def greet(self, welcome: RawFrame) -> None:
        """The welcome goes in front of whatever was queued before start(): a client reads it first."""
        self.core.greet(welcome)

    def start(self) -> None:
        if self.core.start():
            self._writer = self._loop.create_task(self._write_loop())

    def close_soon(self, code: int, reason: str) -> None:
        if self.core.close(code):
            self._start_close(code, reason)

    async def stop(self) -> list[Item]:
        """Stop writing; return what was still queued (the caller hands it on)."""
        for timer in (self._probe_timer, self._heartbeat_timer):
            if timer is not None:
                timer.cancel()
        self._probe_timer = self._heartbeat_timer = None
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        return self.core.stop()

    # -- what the client sends ------------------------------------------------------------------

    def heard(self) -> None:
        """A frame came from the client (the transport's reader calls this for every one)."""
        self.core.heard(self._loop.time())

    def pong_received(self, data: bytes) -> None:
        if self.core.pong(data):
            self._arm_probe()  # what was written while this probe was out

    def ping_received(self, data: bytes) -> None:
        pong = self.core.answer_ping(data)
        if pong is not None and not self.transport.is_closing():
            self.transport.write(pong)

    def client_acked(self, room_id: int, seq: int) -> None:
        """A cumulative ack from the client: it has the room up to seq."""
        self.core.client_acked(room_id, seq)

    # -- writing --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Carry out the core's steps until its work is done (an offer starts a new writer for more)."""
        core = self.core
        user_id = self.user_id
        answer: Any = None
        try:
            while (step := core.next_step(answer)) is not None:
                answer = None
                if type(step) is Write:
                    if step.traced is None:
                        self._write(step.data)
                    else:
                        self._write_traced(step)
                    # Flow control as aiohttp's own writes do it: past the high-water mark, wait for
                    # the peer to read. Meanwhile the queue fills, and a peer that never reads is a
                    # slow consumer.
                    if self.transport.buffered():
                        await self.transport.drain()
                    self._arm_probe()
                elif type(step) is LoadPage:
                    messages = await self.history.after(step.room_id, step.after_seq, step.limit)
                    answer = (messages, await self.history.quotes(messages) if messages else {})
                elif type(step) is LoadStart:
                    answer = await self.cursors.starting_points(user_id, step.rooms)
                elif type(step) is LoadLasts:
                    answer = await self.cursors.last_seqs(step.rooms)
                elif type(step) is LoadRooms:
                    answer = await self.cursors.rooms_of(user_id)
            self._writer = None  # done: an idle connection keeps no task object either
            self._arm_probe()
        except asyncio.CancelledError:
            raise
        except (ConnectionError, RuntimeError) as exc:  # the socket went away under a write
            log.debug("writer stopped: %s", exc, extra={"user_id": self.user_id})
            self._writer_failed()
        except Exception:
            log.exception("writer failed", extra={"user_id": self.user_id})
            self._writer_failed()

    def _writer_failed(self) -> None:
        self._writer = None
        if self.core.writer_failed(socket_open=not self.transport.is_closing()):
            self._start_close(CloseCode.INTERNAL_ERROR, "internal error")

    def _write(self, data: bytes) -> None:
        """Hand bytes to the transport (ConnectionResetError: it is closing)."""
        transport = self.transport
        # Timed by hand rather than with `Monitor.track()`: a generator-based context manager cost
        # about 1.5% of a loaded gateway's CPU. Same samples: failures count as such.
        started = time.perf_counter()
        if transport.is_closing():
            _PUSH_MONITOR.record(time.perf_counter() - started, False)
            raise ConnectionResetError("the socket is closing")
        transport.write(data)
        _PUSH_MONITOR.record(time.perf_counter() - started, True)

    def _write_traced(self, step: Write) -> None:
        """A write holding a traced message: its span (the dispatch span's child) covers the write."""
        item = step.traced
        assert item is not None
        span = tracing.start_span("socket.write", parent=item.trace, attributes={
            "msg_id": item.msg_id, "room_id": item.room_id, "seq": item.seq, "user_id": self.user_id,
            "gateway_id": self.metrics.gateway_id})
        try:
            self._write(step.data)
        finally:
            tracing.end_span(span)

    def _flush(self) -> None:
        """The fast path's write (its call_soon, or a full burst)."""
        self._flush_scheduled = False
        data = self.core.take_burst()
        if data is not None:
            try:
                self._write(data)
            except ConnectionResetError:
                pass  # the socket is going away: unconfirmed positions are served again by the catch-up

    # -- timers ---------------------------------------------------------------------------------

    def _arm_probe(self) -> None:
        if self._probe_timer is None and self.core.wants_probe():
            self._probe_timer = self._loop.call_later(PROBE_DELAY, self._send_probe)

    def _send_probe(self) -> None:
        self._probe_timer = None
        if self.transport.is_closing():
            return  # the socket is going away: its read loop ends and the connection is detached
        ping = self.core.probe()
        if ping is not None:
            self.transport.write(ping)
        else:
            self._arm_probe()  # frames still gathered (the fast path's burst waits): the next round

    def _heartbeat(self) -> None:
        self._heartbeat_timer = None
        beat, at = self.core.heartbeat(self._loop.time())
        if beat is Beat.STOP:
            return
        if beat is Beat.ABORT:
            log.info("no pong within the deadline; dropping the socket", extra={"user_id": self.user_id})
            self.transport.abort()
            return
        if beat is Beat.PING and not self.transport.is_closing():
            self.transport.write(HEARTBEAT_PING)
        self._heartbeat_timer = self._loop.call_at(at, self._heartbeat)

    # -- closing --------------------------------------------------------------------------------

    def _start_close(self, code: int, reason: str) -> None:
        self._closer = self._loop.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        # The close handshake waits for the close frame to drain and for the peer's answer. A client
        # that stopped reading (the usual slow consumer) never drains it, so without a deadline the
        # connection, its queue and its socket buffers stayed pinned until the pong deadline.
        try:
            await asyncio.wait_for(self.transport.close(code, reason.encode()[:120]), CLOSE_TIMEOUT)
        except Exception as exc:  # TimeoutError, or the socket failed under the close
            log.info("close did not complete (%s); aborting the socket", type(exc).__name__,
                     extra={"user_id": self.user_id, "code": code})
            # Closing would wait for the unread buffer to drain: abort drops it now, and the read
            # loop ends at once (then the gateway detaches the connection).
            self.transport.abort()
