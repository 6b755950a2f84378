"""MessageLog: dense per-room seqs, idempotent appends, the recent window and the flush queue."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from pystacker.engine.base import Engine, EngineSettings, FlushBatch, LogEnd, MessageLog, TargetChange
from pystacker.messaging.model import NewMessage, StoredMessage
from tests.engine.support import OpenEngine, drain_flush_queue, new_message, unique_int, until


def _seqs(messages: list[StoredMessage]) -> list[int]:
    return [message.seq for message in messages]


def _present(batch: FlushBatch | None) -> FlushBatch:
    assert batch is not None
    return batch


def _ids(batch: FlushBatch | None) -> list[int]:
    return [message.msg_id for message in _present(batch).messages]


async def _append(log: MessageLog, room_id: int, count: int) -> list[StoredMessage]:
    return [(await log.append(new_message(room_id))).message for _ in range(count)]


# -- seqs -------------------------------------------------------------------------------------------


async def test_a_new_room_counts_from_1_and_keeps_the_message(engine: Engine) -> None:
    room_id, unused_room = unique_int(), unique_int()
    sent = new_message(room_id, sender_id=42, client_msg_id="c-1", text="hello")
    appended = await engine.messages.append(sent)
    assert not appended.duplicate
    assert appended.message == StoredMessage(
        msg_id=sent.msg_id, room_id=room_id, seq=1, sender_id=42, type="text", content={"text": "hello"},
        created_at_ms=sent.created_at_ms, client_msg_id="c-1", msg_no=1)
    assert _seqs(await _append(engine.messages, room_id, 2)) == [2, 3]
    assert await engine.messages.last_seqs([room_id, unused_room]) == {room_id: 3, unused_room: 0}


async def test_seqs_continue_from_the_seed(open_engine: OpenEngine) -> None:
    room_id = unique_int()

    async def seed(asked_room: int) -> LogEnd:
        assert asked_room == room_id
        return LogEnd(41, 41)

    engine = await open_engine(seq_seed=seed)
    assert _seqs(await _append(engine.messages, room_id, 2)) == [42, 43]
    assert await engine.messages.last_seqs([room_id]) == {room_id: 43}


async def test_concurrent_first_appends_seed_the_room_once(open_engine: OpenEngine) -> None:
    room_id = unique_int()
    seeded: list[int] = []

    async def slow_seed(asked_room: int) -> LogEnd:
        seeded.append(asked_room)
        for _ in range(5):  # an SQL round trip: other appends run meanwhile
            await asyncio.sleep(0)
        return LogEnd(41, 41)

    engine = await open_engine(seq_seed=slow_seed)
    appended = await asyncio.gather(*(engine.messages.append(new_message(room_id)) for _ in range(20)))
    assert seeded == [room_id]
    assert sorted(a.message.seq for a in appended) == list(range(42, 62))


async def test_concurrent_appends_get_dense_distinct_seqs(engine: Engine) -> None:
    room_id = unique_int()
    sent = [new_message(room_id) for _ in range(200)]
    appended = await asyncio.gather(*(engine.messages.append(message) for message in sent))
    assert sorted(a.message.seq for a in appended) == list(range(1, 201))
    assert [a.message.msg_id for a in appended] == [message.msg_id for message in sent]
    seq_of = {a.message.msg_id: a.message.seq for a in appended}
    stored = await engine.messages.read(room_id, 0, 500)
    assert _seqs(stored) == list(range(1, 201))
    assert all(seq_of[message.msg_id] == message.seq for message in stored)
    assert await engine.messages.last_seqs([room_id]) == {room_id: 200}


async def test_rooms_count_independently(engine: Engine) -> None:
    room_a, room_b = unique_int(), unique_int()
    await _append(engine.messages, room_a, 3)
    assert _seqs(await _append(engine.messages, room_b, 1)) == [1]
    assert await engine.messages.last_seqs([room_a, room_b]) == {room_a: 3, room_b: 1}


# -- idempotency ----------------------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_returns_the_first_message(engine: Engine) -> None:
    room_id = unique_int()
    first = await engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="k", text="one"))
    retry = await engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="k", text="two"))
    assert retry.duplicate
    assert retry.message == first.message
    assert await engine.messages.last_seqs([room_id]) == {room_id: 1}
    assert await engine.messages.read(room_id, 0, 10) == [first.message]


async def test_the_key_belongs_to_its_sender(engine: Engine) -> None:
    room_id = unique_int()
    first = await engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="k"))
    other_sender = await engine.messages.append(new_message(room_id, sender_id=2, client_msg_id="k"))
    other_key = await engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="k2"))
    no_key = [await engine.messages.append(new_message(room_id, sender_id=1)) for _ in range(2)]
    assert not any(a.duplicate for a in [first, other_sender, other_key, *no_key])
    assert [a.message.seq for a in [first, other_sender, other_key, *no_key]] == [1, 2, 3, 4, 5]


async def test_the_key_belongs_to_its_room(engine: Engine) -> None:
    """The scope is (room, sender, key) on every engine, as SQL's unique key: the same key in two
    rooms is two messages (on a Redis Cluster a key must live in its room's slot)."""
    room_id, other_room = unique_int(), unique_int()
    first = await engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="same"))
    other = await engine.messages.append(new_message(other_room, sender_id=1, client_msg_id="same"))
    again = await engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="same"))
    assert not first.duplicate and not other.duplicate and other.message.room_id == other_room
    assert again.duplicate and again.message == first.message


async def test_concurrent_retries_store_one_message(engine: Engine) -> None:
    room_id = unique_int()
    appended = await asyncio.gather(
        *(engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="k")) for _ in range(10)))
    assert sum(not a.duplicate for a in appended) == 1
    assert {(a.message.msg_id, a.message.seq) for a in appended} == {(appended[0].message.msg_id, 1)}
    assert await engine.messages.last_seqs([room_id]) == {room_id: 1}


async def test_a_key_is_forgotten_after_the_idempotency_ttl(open_engine: OpenEngine) -> None:
    engine = await open_engine(EngineSettings(idempotency_ttl=1))
    room_id = unique_int()
    first = await engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="k"))
    assert (await engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="k"))).duplicate
    # Retries keep answering "duplicate" (allocating nothing) until the key expired.
    later = await until(lambda: engine.messages.append(new_message(room_id, sender_id=1, client_msg_id="k")),
                        lambda appended: not appended.duplicate)
    assert later.message.msg_id != first.message.msg_id
    assert later.message.seq == 2


# -- reading the window ---------------------------------------------------------------------------------


async def test_read_returns_messages_after_a_seq_in_order(engine: Engine) -> None:
    room_id = unique_int()
    await _append(engine.messages, room_id, 10)
    assert _seqs(await engine.messages.read(room_id, 3, 4)) == [4, 5, 6, 7]
    assert _seqs(await engine.messages.read(room_id, 0, 100)) == list(range(1, 11))
    assert _seqs(await engine.messages.read(room_id, 8, 100)) == [9, 10]
    assert await engine.messages.read(room_id, 10, 100) == []
    assert await engine.messages.read(unique_int(), 0, 100) == []


async def test_window_start_of_rooms_without_messages(open_engine: OpenEngine) -> None:
    async def seed(room_id: int) -> LogEnd:
        return LogEnd(41, 41)

    engine = await open_engine(seq_seed=seed)
    room_id = unique_int()
    # The window holds nothing, and everything up to the seed is in SQL.
    assert await engine.messages.window_start(room_id) == 42
    assert _seqs(await _append(engine.messages, room_id, 1)) == [42]
    assert await engine.messages.window_start(room_id) == 42


async def test_the_window_keeps_every_unflushed_message(open_engine: OpenEngine) -> None:
    engine = await open_engine(EngineSettings(window_size=5))
    room_id = unique_int()
    await _append(engine.messages, room_id, 12)
    assert await engine.messages.window_start(room_id) == 1
    assert _seqs(await engine.messages.read(room_id, 0, 100)) == list(range(1, 13))


async def test_flushed_messages_leave_the_window_beyond_its_size(open_engine: OpenEngine) -> None:
    engine = await open_engine(EngineSettings(window_size=5))
    await drain_flush_queue(engine.messages)
    room_id = unique_int()
    await _append(engine.messages, room_id, 12)
    await drain_flush_queue(engine.messages)
    await _append(engine.messages, room_id, 1)
    assert await engine.messages.window_start(room_id) == 9
    assert _seqs(await engine.messages.read(room_id, 0, 100)) == [9, 10, 11, 12, 13]
    assert _seqs(await engine.messages.read(room_id, 10, 100)) == [11, 12, 13]


async def test_the_window_is_trimmed_only_up_to_the_oldest_unflushed_message(open_engine: OpenEngine) -> None:
    engine = await open_engine(EngineSettings(window_size=3))
    await drain_flush_queue(engine.messages)
    room_id = unique_int()
    await _append(engine.messages, room_id, 6)
    batch = _present(await engine.messages.take_batch(2))
    assert _seqs(batch.messages) == [1, 2]
    await engine.messages.confirm_batch(batch.token)
    await _append(engine.messages, room_id, 1)
    assert await engine.messages.window_start(room_id) == 3
    assert _seqs(await engine.messages.read(room_id, 0, 100)) == [3, 4, 5, 6, 7]
    await drain_flush_queue(engine.messages)


# -- the flush queue ------------------------------------------------------------------------------------


async def test_batches_come_oldest_first_and_stay_readable_once_confirmed(engine: Engine) -> None:
    await drain_flush_queue(engine.messages)
    assert await engine.messages.take_batch(10) is None
    room_a, room_b = unique_int(), unique_int()
    sent = [await _append(engine.messages, room, 1) for room in (room_a, room_b, room_a, room_a, room_b)]
    order = [messages[0].msg_id for messages in sent]

    first = _present(await engine.messages.take_batch(3))
    second = _present(await engine.messages.take_batch(10))
    assert _ids(first) == order[:3]
    assert _ids(second) == order[3:]
    assert first.token != second.token
    assert await engine.messages.take_batch(10) is None
    await engine.messages.confirm_batch(first.token)
    await engine.messages.confirm_batch(second.token)
    assert await engine.messages.take_batch(10) is None
    assert _seqs(await engine.messages.read(room_a, 0, 10)) == [1, 2, 3]
    assert _seqs(await engine.messages.read(room_b, 0, 10)) == [1, 2]


async def test_an_unconfirmed_batch_is_handed_out_again(open_engine: OpenEngine) -> None:
    engine = await open_engine(EngineSettings(flush_claim_timeout=0.3))
    await drain_flush_queue(engine.messages)
    room_id = unique_int()
    order = [message.msg_id for message in await _append(engine.messages, room_id, 4)]
    confirmed = _present(await engine.messages.take_batch(2))
    abandoned = _present(await engine.messages.take_batch(2))
    await engine.messages.confirm_batch(confirmed.token)
    assert await engine.messages.take_batch(10) is None

    # The confirmed batch expired first: had it not been forgotten, it would come back here too.
    again = _present(await until(lambda: engine.messages.take_batch(10)))
    assert _ids(again) == order[2:]
    await engine.messages.confirm_batch(again.token)
    await engine.messages.confirm_batch(abandoned.token)  # its flusher woke up late: harmless
    assert await engine.messages.take_batch(10) is None


async def test_expired_batches_come_back_oldest_first(open_engine: OpenEngine) -> None:
    engine = await open_engine(EngineSettings(flush_claim_timeout=0.3))
    await drain_flush_queue(engine.messages)
    room_id = unique_int()
    order = [message.msg_id for message in await _append(engine.messages, room_id, 4)]
    assert _ids(await engine.messages.take_batch(2)) == order[:2]
    assert _ids(await engine.messages.take_batch(2)) == order[2:]

    for expected in (order[:2], order[2:]):
        again = _present(await until(lambda: engine.messages.take_batch(2)))
        assert _ids(again) == expected
        await engine.messages.confirm_batch(again.token)
    assert await engine.messages.take_batch(10) is None


async def test_a_batch_is_pending_from_its_take_until_its_confirm(engine: Engine) -> None:
    """The flusher asks before it commits a batch to SQL: a batch the engine no longer holds (a Redis
    restarted without persistence lost it) must not be written (see flusher/messages.py)."""
    await drain_flush_queue(engine.messages)
    await _append(engine.messages, unique_int(), 3)
    batch = _present(await engine.messages.take_batch(10))
    assert await engine.messages.batch_pending(batch.token)
    await engine.messages.confirm_batch(batch.token)
    assert not await engine.messages.batch_pending(batch.token)


async def test_a_message_is_found_by_id_until_its_batch_is_confirmed(engine: Engine) -> None:
    """Resend finds a message by id alone: in the engine until SQL has it, then in SQL."""
    await drain_flush_queue(engine.messages)
    room_a, room_b = unique_int(), unique_int()
    first, second = (await _append(engine.messages, room_a, 1))[0], (await _append(engine.messages, room_b, 1))[0]
    retry = await engine.messages.append(new_message(room_a, client_msg_id="k"))
    again = await engine.messages.append(new_message(room_a, client_msg_id="k"))
    assert again.duplicate and again.message == retry.message
    for message in (first, second, retry.message):
        assert await engine.messages.unflushed_by_id(message.msg_id) == message
    assert await engine.messages.unflushed_by_id(unique_int()) is None
    batch = _present(await engine.messages.take_batch(10))
    assert await engine.messages.unflushed_by_id(first.msg_id) == first  # taken is not yet in SQL
    await engine.messages.confirm_batch(batch.token)
    for message in (first, second, retry.message):
        assert await engine.messages.unflushed_by_id(message.msg_id) is None


# -- room events that change a message ---------------------------------------------------------------


def _event(room_id: int, target: StoredMessage, *, sender_id: int = 7, client_msg_id: str | None = None) -> NewMessage:
    return NewMessage(msg_id=unique_int(), room_id=room_id, sender_id=sender_id, type="edit",
                      content={"message_id": target.msg_id, "target_seq": target.seq,
                               "content": {"type": "text", "text": "edited"}},
                      created_at_ms=1_700_000_000_500, client_msg_id=client_msg_id)


async def test_an_event_is_appended_with_its_seq_and_patches_its_message_in_the_window(engine: Engine) -> None:
    room_id = unique_int()
    target = (await engine.messages.append(new_message(room_id, client_msg_id=f"k-{room_id}"))).message
    assert await engine.messages.revision(room_id, target.msg_id) is None
    edited = replace(target, content={"text": "edited"}, edited_at_ms=1_700_000_000_500, reply_to=None)
    appended = await engine.messages.append_event(_event(room_id, target), TargetChange(
        target.msg_id, None, "E:$seq", patches=(edited,)))
    assert appended is not None and not appended.duplicate and appended.message.seq == 2
    # The record names the event's own seq; the window, the id index and the key's copy hold the edit.
    assert await engine.messages.revision(room_id, target.msg_id) == "E:2"
    assert [m.content for m in await engine.messages.read(room_id, 0, 10)] == [
        {"text": "edited"}, appended.message.content]
    assert (await engine.messages.read(room_id, 0, 1))[0].edited_at_ms == 1_700_000_000_500
    assert await engine.messages.unflushed_by_id(target.msg_id) == edited
    again = await engine.messages.append(new_message(room_id, client_msg_id=f"k-{room_id}"))
    assert again.duplicate and again.message == edited


async def test_an_event_is_refused_when_the_record_changed_since_it_was_read(engine: Engine) -> None:
    room_id = unique_int()
    target = (await engine.messages.append(new_message(room_id))).message
    first = await engine.messages.append_event(_event(room_id, target), TargetChange(target.msg_id, None, "E:$seq"))
    assert first is not None
    # A second change that read the record before the first one: nothing appended, nothing patched.
    stale = await engine.messages.append_event(_event(room_id, target), TargetChange(
        target.msg_id, None, "R:$seq", patches=(replace(target, content={}),)))
    assert stale is None
    assert await engine.messages.last_seqs([room_id]) == {room_id: 2}
    assert (await engine.messages.read(room_id, 0, 1))[0].content == {"text": "hi"}
    current = await engine.messages.revision(room_id, target.msg_id)
    assert current == "E:2"
    fresh = await engine.messages.append_event(_event(room_id, target), TargetChange(target.msg_id, current, "R:2"))
    assert fresh is not None and fresh.message.seq == 3
    assert await engine.messages.revision(room_id, target.msg_id) == "R:2"


async def test_a_retried_event_gets_its_first_answer_whatever_the_record(engine: Engine) -> None:
    room_id = unique_int()
    target = (await engine.messages.append(new_message(room_id))).message
    key = f"ev-{room_id}"
    first = await engine.messages.append_event(_event(room_id, target, client_msg_id=key),
                                               TargetChange(target.msg_id, None, "E:$seq"))
    retry = await engine.messages.append_event(_event(room_id, target, client_msg_id=key),
                                               TargetChange(target.msg_id, "-", "-"))
    assert first is not None and retry is not None
    assert retry.duplicate and retry.message == first.message
    assert await engine.messages.last_seqs([room_id]) == {room_id: 2}


async def test_a_patch_of_an_entry_the_window_no_longer_holds_changes_nothing(open_engine: OpenEngine) -> None:
    engine = await open_engine(settings=EngineSettings(window_size=2))
    room_id = unique_int()
    target = (await engine.messages.append(new_message(room_id))).message
    await _append(engine.messages, room_id, 3)
    await drain_flush_queue(engine.messages)
    assert [m.seq for m in await engine.messages.read(room_id, 0, 10)] == [3, 4]
    appended = await engine.messages.append_event(_event(room_id, target), TargetChange(
        target.msg_id, None, "E:$seq", patches=(replace(target, content={"text": "edited"}),)))
    assert appended is not None
    assert [m.seq for m in await engine.messages.read(room_id, 0, 10)] == [4, 5]


async def test_a_message_counts_in_msg_no_and_an_event_does_not(open_engine: OpenEngine) -> None:
    async def seed(room_id: int) -> LogEnd:
        return LogEnd(10, 7)  # SQL's copy ends at seq 10, its 7th message

    engine = await open_engine(seq_seed=seed)
    room_id = unique_int()
    message = (await engine.messages.append(new_message(room_id))).message
    assert (message.seq, message.msg_no) == (11, 8)
    event = await engine.messages.append_event(_event(room_id, message), TargetChange(message.msg_id, None, "E:$seq"))
    assert event is not None and (event.message.seq, event.message.msg_no) == (12, 8)
    assert (await engine.messages.append(new_message(room_id))).message.msg_no == 9
    assert await engine.messages.ends([room_id]) == {room_id: LogEnd(13, 9)}
    assert [m.msg_no for m in await engine.messages.read(room_id, 0, 10)] == [8, 8, 9]
