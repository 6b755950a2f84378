"""Read state over real HTTP and WebSocket against the embedded system: read marks that only move
forward and are clamped to the room's end, unread counts in joined_rooms and the welcome that are
exact after a thousand messages from five senders and the reader's reconnects, `read` frames to the
reader and read receipts to the others (every one in a private room, paced in a group)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.client import Http, User
from tests.conftest import TEST_LIMITS, embedded_system
from tests.ws import Api, Client, make_room, open_api, poll, send_http, text

RECEIPT_INTERVAL_MS = 1500


@pytest.fixture(scope="module")
async def paced_system(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The embedded system with a known receipt interval, long enough that a burst of reads fits in it."""
    async with embedded_system(tmp_path_factory.mktemp("read-state"),
                               limits={**TEST_LIMITS, "read_receipt_interval_ms": RECEIPT_INTERVAL_MS}) as system:
        yield system


@pytest.fixture
async def api(paced_system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(paced_system) as api:
        yield api


async def read(api: Api, user: User, room_id: int, seq: int) -> Any:
    return await api.send.post("/api/chat/read", {"room_id": room_id, "seq": seq}, token=user.token)


async def joined(meta: Http, user: User) -> dict[int, dict[str, Any]]:
    answer = await meta.get("/api/joined_rooms", token=user.token)
    assert answer.status == 200, answer
    assert sorted(answer.data["room_ids"]) == sorted(r["room_id"] for r in answer.data["rooms"])
    return {r["room_id"]: r for r in answer.data["rooms"]}


async def read_seqs(api: Api, user: User, room_id: int) -> dict[int, int]:
    answer = await api.send.get("/api/chat/read_state", params={"room_id": room_id}, token=user.token)
    assert answer.status == 200, answer
    return {m["user_id"]: m["read_seq"] for m in answer.data["members"]}


def reads_of(client: Client, room_id: int, user_id: int) -> list[int]:
    return [f["seq"] for f in client.frames if f["type"] == "read" and f["room_id"] == room_id
            and f["user_id"] == user_id]


async def test_a_mark_moves_forward_only_is_clamped_and_is_for_members(api: Api) -> None:
    alice, bob, carol = await api.users(3, "rs")
    room_id = await make_room(api.meta, alice, [bob])
    sent = [await send_http(api.send, bob, room_id, f"b{i}") for i in range(3)]
    rooms = await joined(api.meta, alice)
    assert (rooms[room_id]["last_seq"], rooms[room_id]["read_seq"], rooms[room_id]["unread"]) == (3, 0, 3)
    last = rooms[room_id]["last_message"]
    assert (last["id"], last["seq"], last["sender_id"], last["preview"]) == (sent[-1]["msgID"], 3, bob.id, "b2")

    answer = await read(api, alice, room_id, 2)
    assert answer.status == 200 and answer.data == {"room_id": room_id, "user_id": alice.id, "seq": 2}, answer
    assert (await read(api, alice, room_id, 1)).data["seq"] == 2  # never backwards
    assert (await joined(api.meta, alice))[room_id]["unread"] == 1
    assert (await read(api, alice, room_id, 2**62)).data["seq"] == 3  # past the end: the end
    assert (await joined(api.meta, alice))[room_id]["unread"] == 0

    for bad, status in (({"room_id": room_id}, 400), ({"room_id": room_id, "seq": -1}, 400),
                        ({"room_id": room_id, "seq": 2**63}, 400), ({"room_id": 987654321, "seq": 1}, 404)):
        answer = await api.send.post("/api/chat/read", bad, token=alice.token)
        assert answer.status == status and answer.body["code"] == status, (bad, answer)
    refused = await read(api, carol, room_id, 1)
    assert refused.status == 403 and refused.body["msg"] == "not a member of this room", refused
    assert (await api.send.get("/api/chat/read_state", params={"room_id": room_id}, token=carol.token)).status == 403

    # bob's own messages moved his mark (as part of the fan-out, right after the send)
    await poll(lambda: _equal(read_seqs(api, bob, room_id), {alice.id: 3, bob.id: 3}), "bob's mark at his last message")


async def _equal(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_a_new_member_has_nothing_unread_from_before_he_joined(api: Api) -> None:
    alice, bob, dave = await api.users(3, "rj")
    room_id = await make_room(api.meta, alice, [bob])
    for i in range(4):
        await send_http(api.send, alice, room_id, f"before {i}")
    added = await api.meta.post("/api/chat/group/add_member", {"room_id": room_id, "member_id": dave.id},
                                token=alice.token)
    assert added.status == 200, added
    assert (await joined(api.meta, dave))[room_id]["unread"] == 0
    await send_http(api.send, bob, room_id, "after")
    assert (await joined(api.meta, dave))[room_id]["unread"] == 1


async def test_reading_over_the_socket_tells_the_reader_and_every_read_in_a_private_room(api: Api) -> None:
    alice, bob = await api.users(2, "rp")
    room_id = await make_room(api.meta, alice, [bob], is_group=False)
    for i in range(5):
        await send_http(api.send, bob, room_id, f"to alice {i}")
    a = await api.connect(alice, catchup=False)
    assert a.frames[0]["unread"] == 5  # the welcome counts every room's unread messages
    b = await api.connect(bob, catchup=False)
    try:
        for seq in range(1, 6):
            await a.send_frame({"type": "read", "room_id": room_id, "seq": seq})
        await a.recv_until(lambda f: f["type"] == "read" and f["seq"] == 5)
        await b.recv_until(lambda f: f["type"] == "read" and f["seq"] == 5)
        assert reads_of(a, room_id, alice.id) == [1, 2, 3, 4, 5]  # the reader's sockets: each one
        assert reads_of(b, room_id, alice.id) == [1, 2, 3, 4, 5]  # a private room's receipts: each one
        receipt = [f for f in b.frames if f["type"] == "read"][-1]
        assert receipt == {"id": -1, "type": "read", "room_id": room_id, "sender_id": alice.id, "payload": None,
                           "user_id": alice.id, "seq": 5}
        # a bad frame is an error frame; the socket stays open
        await a.send_frame({"type": "read", "room_id": room_id, "seq": "five"})
        assert (await a.recv_type("error"))["payload"]["code"] == 400
    finally:
        await a.close()
        await b.close()
    again = await api.connect(alice, catchup=False)
    assert again.frames[0]["unread"] == 0
    await again.close()


async def test_group_receipts_are_paced_per_reader_while_the_reader_gets_every_mark(api: Api) -> None:
    members = await api.users(100, "rg")
    reader, watcher, sender = members[0], members[1], members[2]
    room_id = await make_room(api.meta, sender, [m for m in members if m is not sender])
    for i in range(20):
        await send_http(api.send, sender, room_id, f"g{i}")
    r = await api.connect(reader, catchup=False)
    w = await api.connect(watcher, catchup=False)
    try:
        for seq in range(1, 21):  # one burst, well inside one interval
            await r.send_frame({"type": "read", "room_id": room_id, "seq": seq})
        await r.recv_until(lambda f: f["type"] == "read" and f["seq"] == 20)
        # the first receipt at once, the newest at the interval's end, nothing between
        await w.recv_until(lambda f: f["type"] == "read" and f["seq"] == 20, timeout=RECEIPT_INTERVAL_MS / 1000 + 10)
        assert reads_of(r, room_id, reader.id) == list(range(1, 21))
        assert reads_of(w, room_id, reader.id) == [1, 20]
        await w.expect_silence(lambda f: f["type"] == "read", within=RECEIPT_INTERVAL_MS / 1000 + 0.5)
    finally:
        await r.close()
        await w.close()


async def test_unread_counts_are_exact_after_a_thousand_messages_and_reconnects(api: Api) -> None:
    """Five senders (the reader among them) send 200 messages each; meanwhile the reader reconnects
    again and again and marks what he has seen as read. Whatever the interleaving, his unread count
    is the number of messages after max(his last read, his last own message)."""
    reader, *others = await api.users(5, "rx")
    room_id = await make_room(api.meta, reader, others)
    own_seqs: list[int] = []
    marks: list[int] = []
    rng = random.Random(13)

    async def sender(user: User) -> None:
        for i in range(200):
            answer = await send_http(api.send, user, room_id, f"{user.id}-{i}")
            if user is reader:
                own_seqs.append(answer["seq"])

    async def reconnecting_reader() -> None:
        for _ in range(8):
            client = await api.connect(reader, catchup=False)
            try:
                frame = await client.recv_until(lambda f: f["type"] == "chat")
                seen = frame["seq"] - rng.randint(0, 20)
                await client.send_frame({"type": "read", "room_id": room_id, "seq": max(seen, 0)})
                marks.append(max(seen, 0))
                await client.recv_until(lambda f: f["type"] == "read" and f["user_id"] == reader.id)
            finally:
                await client.close()

    await asyncio.gather(*(sender(u) for u in [reader, *others]), reconnecting_reader())
    expected_mark = max(marks + own_seqs)
    await poll(lambda: _mark_is(api, reader, room_id, expected_mark), "the reader's mark after the fan-out")
    expected_unread = 1000 - expected_mark
    assert (await joined(api.meta, reader))[room_id] == {**(await joined(api.meta, reader))[room_id],
                                                         "last_seq": 1000, "read_seq": expected_mark,
                                                         "unread": expected_unread}
    welcome = await api.connect(reader, catchup=False)
    assert welcome.frames[0]["unread"] == expected_unread
    await welcome.close()
    # his own last message: nothing before it is unread
    await send_http(api.send, reader, room_id, text("mine"))
    await poll(lambda: _unread_is(api.meta, reader, room_id, 0), "no unread after his own message")


async def _mark_is(api: Api, user: User, room_id: int, seq: int) -> bool:
    return (await read_seqs(api, user, room_id))[user.id] == seq


async def _unread_is(meta: Http, user: User, room_id: int, count: int) -> bool:
    return (await joined(meta, user))[room_id]["unread"] == count
