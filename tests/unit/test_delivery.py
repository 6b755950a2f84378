"""The delivery core's state machine (gateway/delivery.py), without a socket: what it writes and in
what order, what it asks the store for, the written/probed/confirmed cursor, the queue bound, the
heartbeat and every close decision. The writer is driven by hand here, step by step, as the
connection's driver does it over a real socket (tests/test_gateway_delivery.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pystacker.gateway.delivery import (
    BATCH_SIZE,
    BURST_BYTES,
    HEARTBEAT_PING,
    Beat,
    CatchUp,
    DeliveryCore,
    LoadLasts,
    LoadPage,
    LoadRooms,
    LoadStart,
    Offer,
    RawFrame,
    RoomPush,
    State,
    Step,
    Write,
)
from pystacker.gateway.wsframes import OPCODE_PING, OPCODE_PONG, OPCODE_TEXT
from pystacker.messaging.acks import EntryTracker
from pystacker.messaging.frames import CloseCode, chat_frame, encode
from pystacker.messaging.model import StoredMessage
from pystacker.observability.metrics import GatewayMetrics

ROOM = 11


def frames_of(data: bytes) -> list[tuple[int, bytes]]:
    """Split server frames (unmasked, unfragmented) into (opcode, payload)."""
    out = []
    while data:
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        out.append((opcode, data[start:start + length]))
        data = data[start + length:]
    return out


def texts(data: bytes) -> list[dict[str, Any]]:
    frames = frames_of(data)
    assert all(opcode == OPCODE_TEXT for opcode, _ in frames)
    return [orjson.loads(payload) for _, payload in frames]


def message(seq: int, room_id: int = ROOM, text: str = "") -> StoredMessage:
    return StoredMessage(msg_id=1000 + seq, room_id=room_id, seq=seq, sender_id=5, type="text",
                         content={"text": text or f"m{seq}"}, created_at_ms=1_700_000_000_000 + seq)


def push(seq: int, room_id: int = ROOM, entry_id: str | None = None, text: str = "") -> RoomPush:
    body = encode(chat_frame(message(seq, room_id, text)))
    return RoomPush(room_id, seq, body, entry_id, msg_id=1000 + seq)


class Socket:
    """Whether the socket could take a frame at once (the fast path asks)."""

    def __init__(self) -> None:
        self.idle = True

    def ready(self) -> bool:
        return self.idle


def core_for(*, queue_size: int = 100, events: bool = True, client_acks: bool = False,
             socket: Socket | None = None, tracker: EntryTracker | None = None) -> DeliveryCore:
    return DeliveryCore(7, queue_size=queue_size, tracker=tracker or EntryTracker(), metrics=GatewayMetrics("unit-delivery"),
                        socket_ready=(socket or Socket()).ready, events=events, client_acks=client_acks)


def live(core: DeliveryCore, positions: dict[int, int] | None = None) -> DeliveryCore:
    """Started, with the device's position in each room known."""
    for room_id, seq in (positions or {ROOM: 0}).items():
        core.sequencer.start(room_id, seq)
    assert core.start() is False  # nothing queued: no writer
    assert core.state is State.LIVE
    return core


def run(core: DeliveryCore, answers: dict[type, Any] | None = None, first: Any = None) -> list[Step]:
    """Drive the writer to its end; answer each load from `answers` (a value, or a function of the
    step), and with `first` the step taken before the call. Returns every step it took."""
    steps: list[Step] = []
    answer: Any = first
    while (step := core.next_step(answer)) is not None:
        steps.append(step)
        found = (answers or {}).get(type(step))
        answer = found(step) if callable(found) else found
    return steps


def written(steps: list[Step]) -> list[dict[str, Any]]:
    return [frame for step in steps if isinstance(step, Write) for frame in texts(step.data)]


# -- the fast path ----------------------------------------------------------------------------------


def test_the_next_message_of_an_idle_connection_goes_straight_into_the_burst() -> None:
    tracker = EntryTracker()
    tracker.open("1-0", 1)
    core = live(core_for(tracker=tracker))
    assert core.offer(push(1, entry_id="1-0")) is Offer.BURST
    assert core.offer(push(2)) is Offer.BURST  # same burst: one write for both
    assert tracker.take_completed() == ["1-0"]  # in the burst counts as written
    data = core.take_burst()
    assert data is not None and [f["seq"] for f in texts(data)] == [1, 2]
    assert core.take_burst() is None  # written once
    assert core.sequencer.last(ROOM) == 2 and core.cursor.written == {ROOM: 2}


@pytest.mark.parametrize("why", ["socket busy", "not next", "starting", "writer running", "event", "traced"])
def test_anything_that_could_be_overtaken_is_queued_instead(why: str) -> None:
    socket = Socket()
    core = core_for(socket=socket)
    item = push(1)
    if why != "starting":
        live(core)
    if why == "socket busy":
        socket.idle = False
    elif why == "not next":
        item = push(3)
    elif why == "writer running":
        assert core.offer(RawFrame('{"type":"info"}')) is Offer.QUEUED
        assert core.start_writer()
    elif why == "event":
        item.event = message(1)
    elif why == "traced":
        item.trace = object()
    assert core.offer(item) is Offer.QUEUED
    assert core.take_burst() is None


def test_a_full_burst_is_written_at_once() -> None:
    core = live(core_for())
    big = "x" * (BURST_BYTES // 2)
    assert core.offer(push(1, text=big)) is Offer.BURST
    assert core.offer(push(2, text=big)) is Offer.BURST_FULL


# -- the writer -------------------------------------------------------------------------------------


def test_a_hole_is_filled_from_the_log_before_the_message_and_a_duplicate_is_dropped() -> None:
    tracker = EntryTracker()
    for entry in ("3-0", "2-0"):
        tracker.open(entry, 1)
    core = core_for(tracker=tracker)
    core.start()
    assert core.offer(push(3, entry_id="3-0")) is Offer.QUEUED  # the room is new to the connection
    assert core.offer(push(2, entry_id="2-0")) is Offer.QUEUED  # a duplicate once 3 is out
    assert core.start_writer()
    steps = run(core, {LoadStart: {ROOM: 0}, LoadPage: lambda step: ([message(1), message(2)], {})})
    assert steps[0] == LoadStart([ROOM])
    assert steps[1] == LoadPage(ROOM, 0, 2)  # the hole: 1 and 2
    assert [f["seq"] for f in written(steps)] == [1, 2, 3]
    assert sorted(tracker.take_completed()) == ["2-0", "3-0"]
    assert core.queue == () and core.next_step() is None  # done: no writer, no queue
    assert core.offer(push(4)) is Offer.BURST  # the fast path is open again


def test_raw_frames_go_in_order_with_room_messages() -> None:
    core = core_for()
    core.greet(RawFrame('{"type":"system"}'))
    core.sequencer.start(ROOM, 0)
    assert core.offer(push(1)) is Offer.QUEUED  # before start: behind the welcome
    assert core.offer(RawFrame('{"type":"read"}', events_only=True)) is Offer.QUEUED
    assert core.start()
    assert [f["type"] for f in written(run(core))] == ["system", "chat", "read"]


def test_a_gostacker_client_gets_no_pystacker_frames() -> None:
    tracker = EntryTracker()
    tracker.open("r-0", 1)
    core = live(core_for(events=False, tracker=tracker))
    assert core.offer(RawFrame('{"type":"typing"}', "r-0", events_only=True)) is Offer.DROPPED
    assert tracker.take_completed() == ["r-0"]
    reaction = StoredMessage(msg_id=2001, room_id=ROOM, seq=1, sender_id=5, type="reaction",
                             content={"message_id": 1000, "emoji": "+1", "on": True}, created_at_ms=1)
    assert core.offer(RoomPush(ROOM, 1, "{}", event=reaction)) is Offer.QUEUED
    assert core.start_writer()
    assert written(run(core)) == []  # nothing it can show, yet passed in order
    assert core.sequencer.last(ROOM) == 1


def test_the_catch_up_comes_in_batches_and_live_messages_wait_behind_it() -> None:
    core = core_for()
    core.greet(RawFrame('{"type":"system"}'))
    core.offer(CatchUp(until={ROOM: BATCH_SIZE + 2, 12: 0}))
    assert core.start()
    first = core.next_step()
    assert isinstance(first, Write) and [f["type"] for f in texts(first.data)] == ["system"]  # before any read
    assert core.next_step() == LoadStart([ROOM, 12])
    assert core.state is State.CATCHING_UP
    assert core.offer(push(BATCH_SIZE + 3)) is Offer.QUEUED  # live, meanwhile: waits its turn
    assert core.next_step({ROOM: 0, 12: 0}) == LoadPage(ROOM, 0, BATCH_SIZE)
    step = core.next_step(([message(s) for s in range(1, BATCH_SIZE + 1)], {}))
    assert isinstance(step, Write)
    [batch] = texts(step.data)
    assert batch["type"] == "batch" and [c["seq"] for c in batch["payload"]] == list(range(1, BATCH_SIZE + 1))
    assert core.next_step() == LoadPage(ROOM, BATCH_SIZE, BATCH_SIZE)
    rest = run(core, first=([message(BATCH_SIZE + 1), message(BATCH_SIZE + 2)], {}))
    assert core.state is State.LIVE
    frames = written(rest)
    assert [c["seq"] for c in frames[0]["payload"]] == [BATCH_SIZE + 1, BATCH_SIZE + 2]
    assert frames[1]["type"] == "chat" and frames[1]["seq"] == BATCH_SIZE + 3  # then the live one


def test_the_catch_up_reads_the_rooms_when_not_given() -> None:
    core = core_for()
    core.offer(CatchUp())
    assert core.start()
    assert core.next_step() == LoadRooms()
    assert core.next_step([ROOM]) == LoadStart([ROOM])
    assert core.next_step({ROOM: 4}) == LoadLasts([ROOM])
    assert core.next_step({ROOM: 5}) == LoadPage(ROOM, 4, BATCH_SIZE)


def test_a_full_queue_during_the_catch_up_leaves_room_messages_to_the_log() -> None:
    tracker = EntryTracker()
    tracker.open("9-0", 1)
    core = core_for(queue_size=2, tracker=tracker)
    core.offer(CatchUp(until={ROOM: 1}))
    core.start()
    assert core.next_step() == LoadStart([ROOM])
    assert core.offer(push(2)) is Offer.QUEUED
    assert core.offer(push(3)) is Offer.QUEUED
    assert core.offer(push(4, entry_id="9-0")) is Offer.DROPPED  # full: the room is behind
    assert tracker.take_completed() == ["9-0"]
    assert core.state is State.CATCHING_UP  # not a slow consumer
    pages: list[LoadPage] = []

    def page(step: LoadPage) -> tuple[list[StoredMessage], dict[int, Any]]:
        # The catch-up's read saw only seq 1; 2-4 came live meanwhile, and the log has them since.
        pages.append(step)
        last = 1 if len(pages) == 1 else 4
        return [message(s) for s in range(step.after_seq + 1, min(step.after_seq + step.limit, last) + 1)], {}

    steps = run(core, {LoadLasts: {ROOM: 4}, LoadPage: page}, first={ROOM: 0})
    assert LoadLasts([ROOM]) in steps  # after the catch-up and the queue, the room is filled up to its end
    frames = written(steps)
    seqs = [c["seq"] for f in frames for c in (f["payload"] if f["type"] == "batch" else [f])]
    assert seqs == [1, 2, 3, 4]


# -- the cursor -------------------------------------------------------------------------------------


def test_a_probe_confirms_what_was_written_before_it_and_only_its_pong_counts() -> None:
    core = live(core_for())
    assert not core.wants_probe()
    core.offer(push(1))
    assert core.wants_probe()
    assert core.probe() is None and core.wants_probe()  # the frame is still in the burst
    core.take_burst()
    ping = core.probe()
    assert ping is not None
    [(opcode, token)] = frames_of(ping)
    assert opcode == OPCODE_PING
    assert not core.wants_probe()  # one in flight at a time
    core.offer(push(2))
    core.take_burst()
    assert not core.pong(b"") and not core.pong(b"stale")  # a heartbeat's pong, a stale one
    assert core.take_confirmed() == {} and not core.confirmed
    assert core.pong(token)
    assert core.take_confirmed() == {ROOM: 1}  # 2 went out after the ping
    assert core.wants_probe()
    token = frames_of(core.probe() or b"")[0][1]
    assert core.pong(token) and core.take_confirmed() == {ROOM: 2} and core.confirmed


def test_a_client_that_acks_moves_its_own_cursor_and_gets_no_probes() -> None:
    core = live(core_for(client_acks=True))
    core.offer(push(1))
    core.offer(push(2))
    core.take_burst()
    assert not core.wants_probe() and core.confirmed
    core.client_acked(ROOM, 5)  # beyond what was written: ignored
    core.client_acked(ROOM, 1)
    assert core.take_confirmed() == {ROOM: 1}


# -- bounds, liveness and closing -------------------------------------------------------------------


def test_a_full_queue_while_live_is_a_slow_consumer() -> None:
    core = core_for(queue_size=2)
    core.offer(push(1))
    core.offer(push(2))
    assert core.offer(push(3)) is Offer.SLOW_CONSUMER
    assert (core.state, core.close_code) == (State.CLOSING, CloseCode.SLOW_CONSUMER)
    assert core.offer(RawFrame("{}")) is Offer.REFUSED
    assert not core.close(CloseCode.SHUTDOWN)  # the first decision stands
    assert core.close_code == CloseCode.SLOW_CONSUMER
    assert [item.seq for item in core.stop()] == [1, 2]  # type: ignore[union-attr]  # RoomPushes, for the hand-on
    assert core.state is State.CLOSED


def test_nothing_is_written_once_a_close_is_decided() -> None:
    core = live(core_for())
    core.offer(push(1))
    assert core.close(CloseCode.REPLACED)
    assert core.take_burst() is None  # the close frame may be out before the flush
    assert core.probe() is None and not core.wants_probe()
    assert core.answer_ping(b"x") is None
    assert core.offer(push(2)) is Offer.REFUSED


def test_a_writer_ends_at_a_close_and_leaves_the_queue_for_the_hand_on() -> None:
    tracker = EntryTracker()
    tracker.open("1-0", 1)
    core = core_for(tracker=tracker)
    core.offer(push(1, entry_id="1-0"))
    core.offer(push(2))
    core.start()
    assert core.next_step() == LoadStart([ROOM])  # push 1's room is unknown
    core.close(CloseCode.SHUTDOWN)
    assert core.next_step({ROOM: 0}) is None
    assert tracker.take_completed() == ["1-0"]  # the item in hand is settled
    assert [item.seq for item in core.stop()] == [2]  # type: ignore[union-attr]  # RoomPushes


def test_stopping_mid_write_settles_the_item_in_hand() -> None:
    tracker = EntryTracker()
    tracker.open("c-0", 1)
    core = core_for(tracker=tracker)
    core.offer(CatchUp("c-0", until={ROOM: 3}))
    core.start()
    assert isinstance(core.next_step(), LoadStart)
    assert core.stop() == []
    assert tracker.take_completed() == ["c-0"]
    assert core.state is State.CLOSED and core.next_step() is None


def test_a_failed_writer_closes_with_internal_error_unless_the_socket_is_gone() -> None:
    for socket_open, closes in ((True, True), (False, False)):
        tracker = EntryTracker()
        tracker.open("1-0", 1)
        core = core_for(tracker=tracker)
        core.offer(push(1, entry_id="1-0"))
        core.start()
        assert isinstance(core.next_step(), LoadStart)
        assert core.writer_failed(socket_open) is closes  # e.g. the store read raised
        assert tracker.take_completed() == ["1-0"]
        assert core.state is (State.CLOSING if closes else State.LIVE)
        assert core.close_code == (CloseCode.INTERNAL_ERROR if closes else None)


def test_the_heartbeat_pings_a_silent_client_and_drops_it_at_the_deadline() -> None:
    core = DeliveryCore(7, queue_size=10, tracker=EntryTracker(), metrics=GatewayMetrics("unit-delivery"),
                        ping_interval=54, pong_deadline=60, now=0.0)
    assert core.heartbeat(54.0) == (Beat.PING, 60.0)
    core.heard(58.0)  # its pong (or any frame)
    assert core.heartbeat(60.0) == (Beat.WAIT, 112.0)
    assert core.heartbeat(112.0) == (Beat.PING, 118.0)
    assert core.heartbeat(118.0) == (Beat.ABORT, 118.0)
    assert (core.state, core.close_code) == (State.CLOSING, None)  # dropped without a close frame
    assert core.heartbeat(172.0)[0] is Beat.STOP


def test_frames_the_driver_writes_itself() -> None:
    core = live(core_for())
    assert frames_of(HEARTBEAT_PING) == [(OPCODE_PING, b"")]
    assert frames_of(core.answer_ping(b"are you there") or b"") == [(OPCODE_PONG, b"are you there")]
