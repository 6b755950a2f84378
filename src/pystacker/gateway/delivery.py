"""One device's delivery as a pure state machine: what goes to its socket, in what order, and when
the socket must close.

No I/O and no asyncio here. The connection's driver (gateway/connection.py) feeds the core events
(an item offered, a pong, an ack, a page of the log loaded, a close asked for, a heartbeat tick) and
does what the core answers: write these bytes, load that page, close with this code. Everything the
socket gets is decided here and written by the driver alone, so the rules below read in one place
and are tested without a socket (tests/unit/test_delivery.py).

- **Order**: room messages pass the RoomSequencer (messaging/ordering.py): a duplicate is dropped,
  the next seq is written, a seq beyond the next is a hole, filled from the message log first. The
  catch-up (what the device missed while away) runs in the writer, before any live message queued
  behind it, which closes the race between catch-up and live push.
- **The fast path**: a live room message that is its room's next seq, offered while nothing is
  queued, no writer runs and the socket has nothing buffered, goes straight into the burst: nothing
  can be ahead of it. Every other item is queued for the writer.
- **One write per burst**: frames gather in a burst that the driver writes with one transport
  write. A burst is written before the writer waits for anything (a load, or the end of its work),
  so a frame counts as written once it is in the burst.
- **The cursor** (DeliveryCursor): written positions are confirmed by a probe (a ping after them,
  whose pong proves the client's library read them) or by the client's own acks; only confirmed ones
  are saved, so frames lost in flight with a dying socket are sent again on reconnect.
- **Bounds and close decisions** (State): the queue holds `queue_size` items. Full while live, the
  client is not reading: CLOSING with CloseCode.SLOW_CONSUMER (it catches up after reconnecting;
  nothing is lost because the cursor only covers what was confirmed). Full during a catch-up, room
  messages are left to the log and their room is marked behind, filled after the catch-up. A close
  asked for (replaced, drain, device limit, store lost), a failed writer (INTERNAL_ERROR) or a client
  silent past the pong deadline (abort: no close frame) end in CLOSING too; from then on nothing is
  taken or written, and what is still queued goes back to the driver when it stops (CLOSED).

The writer is a generator (`_work`): it yields the steps the driver carries out (Write, LoadStart,
LoadRooms, LoadLasts, LoadPage) and receives each load's answer through `next_step`, as a sans-I/O
protocol core does, so the catch-up and the gap fill read as the loops they are.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pystacker.gateway.wsframes import ping_frame, pong_frame, text_frame
from pystacker.messaging.acks import EntryTracker
from pystacker.messaging.frames import CloseCode, batch_frame, encode, entry_frame, gostacker_event_frame
from pystacker.messaging.model import PushEntry, StoredMessage
from pystacker.messaging.ordering import RoomSequencer, Verdict
from pystacker.observability.metrics import GatewayMetrics, frame_type

log = logging.getLogger("pystacker.gateway.connection")

BATCH_SIZE = 50  # messages per `batch` frame in a catch-up (GoStacker meant 50 and sent everything in one)
FILL_PAGE = 200  # messages per log read while filling a hole
# Frames gathered before they are written anyway: bounds the copy of b"".join and what a burst holds
# back from the socket while the queue keeps delivering.
BURST_BYTES = 64 * 1024
HEARTBEAT_PING = ping_frame(b"")  # its pong confirms nothing: probes carry a token


# -- what is offered ---------------------------------------------------------------------------------


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


# -- what the core answers ---------------------------------------------------------------------------


class State(Enum):
    STARTING = "starting"  # registered, not writing yet: items wait in the queue, the welcome goes first
    LIVE = "live"
    CATCHING_UP = "catching_up"  # the writer runs a catch-up: room messages that overflow are left to the log
    CLOSING = "closing"  # a close is decided: nothing more is taken or written
    CLOSED = "closed"  # the driver stopped; what was queued went back to it


class Offer(Enum):
    """What `offer` did with an item, i.e. the driver's next move."""

    BURST = "burst"  # in the burst (the fast path): write it soon, after the rest of this inbox read
    BURST_FULL = "burst_full"  # in the burst, which is full: write it now
    QUEUED = "queued"  # queued for the writer: start it if none runs (start_writer)
    DROPPED = "dropped"  # settled with nothing to write: shed, not for this client, or left to the log
    REFUSED = "refused"  # closing or closed: not taken (the caller settles its entry)
    SLOW_CONSUMER = "slow_consumer"  # the queue is full: CLOSING with CloseCode.SLOW_CONSUMER


class Beat(Enum):
    """What the heartbeat tick asks for."""

    WAIT = "wait"  # the client was heard lately: look again later
    PING = "ping"  # silent for a ping interval: write HEARTBEAT_PING
    ABORT = "abort"  # silent past the pong deadline: drop the connection, no close frame (1006)
    STOP = "stop"  # closing or closed: the heartbeat ends


@dataclass(slots=True)
class Write:
    """Write these bytes (complete frames) to the socket, then wait while its buffer is full."""

    data: bytes
    traced: RoomPush | None = None  # a traced message is in it: the driver makes the write's span


@dataclass(slots=True)
class LoadStart:
    """Answer with where the device stands in these rooms: {room: delivered seq}."""

    rooms: list[int]


@dataclass(slots=True)
class LoadRooms:
    """Answer with the user's rooms: [room]."""


@dataclass(slots=True)
class LoadLasts:
    """Answer with each room's last seq: {room: seq}."""

    rooms: list[int]


@dataclass(slots=True)
class LoadPage:
    """Answer with (messages, quotes): up to `limit` of the room's messages after `after_seq`, in seq
    order, and the quotes of the replies among them (messaging/history.py; no quotes for no messages)."""

    room_id: int
    after_seq: int
    limit: int


Step = Write | LoadStart | LoadRooms | LoadLasts | LoadPage


# -- the cursor --------------------------------------------------------------------------------------


class DeliveryCursor:
    """Where a device stands per room, in three stages: written to the socket, probed (a ping went out
    after it), confirmed (that ping's pong, or the client's ack, came back). Only confirmed positions
    are saved as the device's cursor.

    A client that never acks (GoStacker's) confirms by answering the ping: its WebSocket library
    answers only after reading every frame before it. One probe is in flight at a time; what is
    written meanwhile waits for the next one."""

    __slots__ = ("written", "confirmed", "_probed", "_token", "_tokens")

    def __init__(self) -> None:
        self.written: dict[int, int] = {}  # room -> seq written since the last probe
        self.confirmed: dict[int, int] = {}  # room -> seq confirmed and not yet saved
        self._probed: dict[int, int] | None = None  # what the probe in flight confirms
        self._token: bytes | None = None  # the probe in flight
        self._tokens = itertools.count(1)

    def wrote(self, room_id: int, seq: int) -> None:
        self.written[room_id] = seq

    @property
    def probing(self) -> bool:
        return self._token is not None

    @property
    def settled(self) -> bool:
        """Nothing written is waiting for confirmation."""
        return not self.written and self._token is None

    def probe(self) -> bytes | None:
        """The token of a probe to send now; it covers everything written so far (None: nothing
        written, or a probe is already out)."""
        if self._token is not None or not self.written:
            return None
        self._token = str(next(self._tokens)).encode()
        self._probed, self.written = self.written, {}
        return self._token

    def pong(self, token: bytes) -> bool:
        """A pong came back; True if it answered the probe in flight (which confirms what it covered)."""
        if self._token is None or token != self._token:
            return False  # a heartbeat's pong, or a stale one
        for room_id, seq in (self._probed or {}).items():
            self.acked(room_id, seq)
        self._token = self._probed = None
        return True

    def acked(self, room_id: int, seq: int) -> None:
        if seq > self.confirmed.get(room_id, 0):
            self.confirmed[room_id] = seq

    def take_confirmed(self) -> dict[int, int]:
        confirmed, self.confirmed = self.confirmed, {}
        return confirmed


# An idle connection's queue and behind-set: shared, empty and immutable; a real deque (760 bytes) and
# set are made when the first item is queued, and dropped again when the writer has emptied the queue.
_NO_ITEMS: tuple[()] = ()
_NO_ROOMS: frozenset[int] = frozenset()
# The states as module names: compared by identity on every offer (an Enum's hash, for a set
# membership test, is a Python-level call).
_LIVE, _CATCHING_UP, _CLOSING, _CLOSED = State.LIVE, State.CATCHING_UP, State.CLOSING, State.CLOSED


def _never_ready() -> bool:
    return False


class DeliveryCore:
    __slots__ = ("user_id", "queue_size", "tracker", "metrics", "socket_ready", "client_acks", "events",
                 "ping_interval", "pong_deadline", "state", "close_code", "sequencer", "cursor", "queue",
                 "_behind", "_burst", "_burst_bytes", "_work", "_heard_at")

    def __init__(self, user_id: int, *, queue_size: int, tracker: EntryTracker, metrics: GatewayMetrics,
                 socket_ready: Callable[[], bool] = _never_ready, client_acks: bool = False, events: bool = False,
                 ping_interval: float = 54.0, pong_deadline: float = 60.0, now: float = 0.0) -> None:
        self.user_id = user_id
        self.queue_size = queue_size
        self.tracker = tracker  # settles inbox entries (messaging/acks.py)
        self.metrics = metrics
        # Whether a frame written now goes out at once (the socket is open and has nothing buffered):
        # asked only when everything else allows the fast path.
        self.socket_ready = socket_ready
        self.client_acks = client_acks  # the client acknowledges by seq: its acks, not our probes, confirm
        self.events = events  # the client knows PyStacker's frames (`?events=1`), not only GoStacker's
        self.ping_interval = ping_interval
        self.pong_deadline = pong_deadline
        self.state = State.STARTING
        self.close_code: int | None = None  # the code decided (None: none yet, or an abort that sends none)
        self.sequencer = RoomSequencer()
        self.cursor = DeliveryCursor()
        self.queue: deque[Item] | tuple[()] = _NO_ITEMS
        self._behind: set[int] | frozenset[int] = _NO_ROOMS  # rooms whose live messages were dropped during a catch-up
        self._burst: list[bytes] = []  # frames gathered for the next transport write
        self._burst_bytes = 0
        self._work: Generator[Step, Any, None] | None = None  # the writer, while it has work
        self._heard_at = now  # when the client was last heard from

    # -- offers -----------------------------------------------------------------------------------

    def offer(self, item: Item) -> Offer:
        state = self.state
        if state is _CLOSING or state is _CLOSED:
            return Offer.REFUSED
        if type(item) is RoomPush:
            if (state is _LIVE and self._work is None and not self.queue and not self._behind
                    and item.event is None and item.trace is None
                    and self.sequencer.is_next(item.room_id, item.seq) and self.socket_ready()):
                full = self._gather(item)
                self._settle(item)
                return Offer.BURST_FULL if full else Offer.BURST
        elif type(item) is RawFrame:
            if item.events_only and not self.events:
                self._settle(item)
                return Offer.DROPPED  # not for this client
            if item.sheddable and len(self.queue) * 2 > self.queue_size:
                self.metrics.typing_shed.inc()
                self._settle(item)
                return Offer.DROPPED  # on purpose: nothing to hand on
        if len(self.queue) < self.queue_size:
            self._queue().append(item)
            return Offer.QUEUED
        if state is _CATCHING_UP and type(item) is RoomPush:
            behind = self._behind if isinstance(self._behind, set) else set()
            behind.add(item.room_id)  # the log has it: filled after the catch-up
            self._behind = behind
            self._settle(item)
            return Offer.DROPPED
        self._decide(CloseCode.SLOW_CONSUMER)
        self.metrics.slow_consumers.inc()
        return Offer.SLOW_CONSUMER

    def greet(self, welcome: RawFrame) -> None:
        """Put the welcome in front of whatever was queued before start (live pushes that came while
        the gateway was registering the socket): a client reads it first."""
        assert self.state is State.STARTING, "the welcome must be given before start()"
        self._queue().appendleft(welcome)

    def start(self) -> bool:
        """The socket is registered: writing may begin. True: start the writer now."""
        if self.state is State.STARTING:
            self.state = State.LIVE
        return self.start_writer()

    def start_writer(self) -> bool:
        """True when the driver must start a writer (there is work and none runs): the core has made
        its work, and until it ends the fast path is closed, so nothing overtakes the queue."""
        if self._work is None and self.queue and self.state is State.LIVE:
            self._work = self._run()
            return True
        return False

    def _open(self) -> bool:
        """Not closing nor closed: items are taken and frames written."""
        return self.state is not _CLOSING and self.state is not _CLOSED

    def _queue(self) -> deque[Item]:
        if not isinstance(self.queue, deque):
            self.queue = deque()
        return self.queue

    # -- the writer -------------------------------------------------------------------------------

    def next_step(self, answer: Any = None) -> Step | None:
        """The writer's next step; `answer` is what the previous Load step asked for. None: the work
        is done (or the connection is closing) and the writer ends."""
        work = self._work
        if work is None:
            return None
        try:
            return work.send(answer)
        except StopIteration:
            self._work = None
            return None

    def writer_failed(self, socket_open: bool) -> bool:
        """The driver's writer raised (the socket failed under a write, or a load failed). The item
        in hand is settled; True when that closes the socket with INTERNAL_ERROR (not when a close is
        already decided or the socket is gone)."""
        self._abandon_work()
        if socket_open and self._open():
            self._decide(CloseCode.INTERNAL_ERROR)
            return True
        return False

    def _run(self) -> Generator[Step, Any, None]:
        """Write until the queue is empty, then end (an offer starts new work for the next item)."""
        queue = self._queue()  # (work starts only with items queued: this is the deque holding them)
        while queue and self.state is _LIVE:
            item = queue.popleft()
            # Settled however the write ends: a write that failed or was cancelled (the socket died,
            # the connection was replaced) left the cursor before the item, so catch-up serves it;
            # an item left unsettled would keep its inbox entry pending for ever.
            try:
                if type(item) is RoomPush:
                    yield from self._room_push(item)
                elif type(item) is RawFrame:
                    if self._raw(item):
                        yield Write(self._take_burst())
                elif type(item) is CatchUp:
                    yield from self._catch_up(item.until)
            finally:
                self._settle(item)
            if self.state is not State.LIVE:
                break
            if self._behind:
                yield from self._fill_behind()
            if not queue and self._burst:
                yield Write(self._take_burst())
        if self.state is State.LIVE and not self.queue:
            self.queue = _NO_ITEMS  # an idle connection keeps no empty deque either
        self._work = None

    def _load(self, step: Step) -> Generator[Step, Any, Any]:
        """Ask the driver for something from the store; what is gathered is written first, so
        nothing waits behind a read (and a frame in the burst is as good as written)."""
        if self._burst:
            yield Write(self._take_burst())
        return (yield step)

    def _room_push(self, item: RoomPush) -> Generator[Step, Any, None]:
        sequencer = self.sequencer
        decision = sequencer.decide(item.room_id, item.seq)
        if decision.verdict is Verdict.UNKNOWN_ROOM:
            points: dict[int, int] = yield from self._load(LoadStart([item.room_id]))
            if self.state is not State.LIVE:
                return
            sequencer.start(item.room_id, points.get(item.room_id, item.seq - 1))
            decision = sequencer.decide(item.room_id, item.seq)
        if decision.verdict is Verdict.GAP:
            yield from self._fill(item.room_id, item.seq - 1)
            if self.state is not State.LIVE:
                return
            decision = sequencer.decide(item.room_id, item.seq)
        if decision.verdict is Verdict.DELIVER and (self._gather(item) or item.trace is not None):
            yield Write(self._take_burst(), item if item.trace is not None else None)

    def _catch_up(self, until: dict[int, int] | None) -> Generator[Step, Any, None]:
        """Everything missed in every room, in `batch` frames of BATCH_SIZE, room by room in seq order."""
        self.state = State.CATCHING_UP
        try:
            if until is not None:
                rooms = list(until)
            else:
                rooms = yield from self._load(LoadRooms())
                if self.state is not State.CATCHING_UP:
                    return
            sequencer = self.sequencer
            unknown = [r for r in rooms if not sequencer.knows(r)]
            if unknown:
                points: dict[int, int] = yield from self._load(LoadStart(unknown))
                if self.state is not State.CATCHING_UP:
                    return
                for room_id, seq in points.items():
                    sequencer.start(room_id, seq)
            if until is not None:
                lasts = until
            else:
                lasts = yield from self._load(LoadLasts(rooms))
                if self.state is not State.CATCHING_UP:
                    return
            for room_id in rooms:
                while sequencer.last(room_id) < lasts.get(room_id, 0):
                    messages, quotes = yield from self._load(LoadPage(room_id, sequencer.last(room_id), BATCH_SIZE))
                    if self.state is not State.CATCHING_UP or not messages:
                        break
                    self._batch(room_id, messages, quotes)
                if self.state is not State.CATCHING_UP:
                    return
        finally:
            if self.state is State.CATCHING_UP:
                self.state = State.LIVE

    def _fill(self, room_id: int, up_to_seq: int) -> Generator[Step, Any, None]:
        """The room's messages after the client's position up to up_to_seq, one chat frame each."""
        sequencer = self.sequencer
        while sequencer.last(room_id) < up_to_seq:
            wanted = min(FILL_PAGE, up_to_seq - sequencer.last(room_id))
            messages, quotes = yield from self._load(LoadPage(room_id, sequencer.last(room_id), wanted))
            if self.state is not State.LIVE:
                return
            if not messages:
                log.warning("gap not fillable yet", extra={"user_id": self.user_id, "room_id": room_id,
                                                           "from_seq": sequencer.last(room_id) + 1})
                return
            for message in messages:
                frame = entry_frame(message, events=self.events, quotes=quotes)
                if frame is not None and self._append(text_frame(encode(frame))):
                    yield Write(self._take_burst())
                self._delivered(room_id, message.seq)
                self.metrics.frame_out("chat")
                self.metrics.gap_filled.inc()
                self.metrics.delivered_live(message.created_at_ms)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("written by gap fill", extra={"msg_id": message.msg_id, "user_id": self.user_id,
                                                            "room_id": room_id, "seq": message.seq})

    def _fill_behind(self) -> Generator[Step, Any, None]:
        rooms, self._behind = self._behind, _NO_ROOMS
        lasts: dict[int, int] = yield from self._load(LoadLasts(sorted(rooms)))
        for room_id in rooms:
            if self.state is not State.LIVE:
                return
            if self.sequencer.knows(room_id):
                yield from self._fill(room_id, lasts.get(room_id, 0))

    def _abandon_work(self) -> None:
        """End the writer's work where it stands (closing the generator settles the item in hand)."""
        work, self._work = self._work, None
        if work is not None:
            work.close()

    # -- frames -----------------------------------------------------------------------------------

    def _gather(self, item: RoomPush) -> bool:
        """Add a live message's frame to the burst and count it written; True when the burst is full."""
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

    def _raw(self, item: RawFrame) -> bool:
        self.metrics.frame_out(frame_type(item.text))
        return self._append(text_frame(item.text))

    def _batch(self, room_id: int, messages: list[StoredMessage], quotes: dict[int, dict[str, Any]]) -> None:
        frames = [f for m in messages if (f := entry_frame(m, events=self.events, quotes=quotes)) is not None]
        if frames:  # (a GoStacker client is not sent reactions: a page of them alone is passed)
            self._append(text_frame(encode(batch_frame(frames))))
        self._delivered(room_id, messages[-1].seq)
        self.metrics.frame_out("batch")
        self.metrics.delivered.inc(len(messages))
        self.metrics.caught_up.inc(len(messages))

    def _append(self, frame: bytes) -> bool:
        self._burst.append(frame)
        self._burst_bytes += len(frame)
        return self._burst_bytes >= BURST_BYTES

    def take_burst(self) -> bytes | None:
        """The gathered frames as one write (the fast path's flush), or None: nothing gathered (a
        writer wrote it already), or closing (our close frame may be out: nothing goes after it)."""
        if not self._burst or not self._open():
            return None
        return self._take_burst()

    def _take_burst(self) -> bytes:
        burst = self._burst
        data = b"".join(burst) if len(burst) > 1 else burst[0]
        burst.clear()
        self._burst_bytes = 0
        return data

    def _delivered(self, room_id: int, seq: int) -> None:
        self.sequencer.delivered(room_id, seq)
        if not self.client_acks:
            self.cursor.wrote(room_id, seq)

    def _settle(self, item: Item) -> None:
        if item.entry_id is not None:
            self.tracker.settle(item.entry_id)

    # -- what the client says ---------------------------------------------------------------------

    def wants_probe(self) -> bool:
        """Something written is unconfirmed and no probe is out: a probe is due (the driver sends it
        after its delay, so one ping confirms everything written meanwhile)."""
        return (not self.client_acks and self._open() and bool(self.cursor.written)
                and not self.cursor.probing)

    def probe(self) -> bytes | None:
        """The probe's ping, to write now behind every frame it confirms; None when closing, when
        nothing is unconfirmed, or while frames are still gathered (not in the socket yet: then
        wants_probe stays true and the next round sends it)."""
        if not self._open() or self._burst:
            return None
        token = self.cursor.probe()
        return None if token is None else ping_frame(token)

    def pong(self, data: bytes) -> bool:
        """A pong came; True when it confirmed the probe in flight."""
        return self.cursor.pong(data)

    def client_acked(self, room_id: int, seq: int) -> None:
        """A cumulative ack from the client: it has the room up to seq (never past what was written)."""
        self.client_acks = True
        if seq <= self.sequencer.last(room_id):
            self.cursor.acked(room_id, seq)

    def answer_ping(self, data: bytes) -> bytes | None:
        """The pong for a client's ping (None: closing, nothing goes after our close frame)."""
        return pong_frame(data) if self._open() else None

    @property
    def confirmed(self) -> bool:
        """Every position written to this socket is confirmed (by ack or pong)."""
        return self.cursor.settled

    def take_confirmed(self) -> dict[int, int]:
        return self.cursor.take_confirmed()

    # -- liveness and closing ---------------------------------------------------------------------

    def heard(self, now: float) -> None:
        """Something came from the client: it is alive."""
        self._heard_at = now

    def heartbeat(self, now: float) -> tuple[Beat, float]:
        """The heartbeat tick at `now`: what to do and when to tick again. GoStacker's contract: a ping
        after `ping_interval` of silence, and the socket dropped `pong_deadline` after the client was
        last heard from (its previous pong, or any frame)."""
        if not self._open():
            return Beat.STOP, now
        silent = now - self._heard_at
        if silent >= self.pong_deadline:
            self._decide(None)
            return Beat.ABORT, now
        if silent >= self.ping_interval:
            return Beat.PING, self._heard_at + self.pong_deadline
        return Beat.WAIT, self._heard_at + self.ping_interval

    def close(self, code: int) -> bool:
        """A close is asked for (replaced, drain, device limit, store lost); True when this decides it
        (the first decision stands), so the driver closes the socket with `code`."""
        if not self._open():
            return False
        self._decide(code)
        return True

    def _decide(self, code: int | None) -> None:
        self.state = State.CLOSING
        self.close_code = code
        # What is gathered is dropped: the close frame may go out before the next flush, and nothing
        # goes after it. Those positions stay unconfirmed, so the catch-up serves them again.
        self._burst.clear()
        self._burst_bytes = 0

    def stop(self) -> list[Item]:
        """The driver stopped (the socket ended, or was replaced): CLOSED. Returns what was still
        queued, for the caller to hand on; the item in hand is settled."""
        self._abandon_work()
        self.state = State.CLOSED
        self._burst.clear()
        self._burst_bytes = 0
        left = list(self.queue)
        self.queue = _NO_ITEMS
        return left
