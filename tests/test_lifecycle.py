"""Edits, recalls, replies, reactions and hidden messages over real sockets (issue 14), on the embedded
system: who may, what every device of every member sees live and after a catch-up (in seq order
with the messages), what history and SQL hold afterwards, idempotent retries, and what a GoStacker
client (a socket without `?events=1`) is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from pystacker.db.schema import chat_messages
from tests.conftest import TEST_LIMITS, embedded_system
from tests.ws import Api, Client, history, make_room, open_api, poll, send_http, text

GOSTACKER_TYPES = {"system", "chat", "ack", "batch", "info"}


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


async def post(api: Api, path: str, user: Any, body: dict[str, Any]) -> Any:
    return await api.send.post(path, body, token=user.token)


async def edit(api: Api, user: Any, message_id: int | str, body: str, **extra: Any) -> Any:
    return await post(api, "/api/chat/edit_message", user,
                      {"message_id": message_id, "content": {"type": "text", "text": body}, **extra})


def entries(client: Client, room_id: int) -> list[dict[str, Any]]:
    """Every room entry (messages and events) the client got, live or in batches, by arrival."""
    found: list[dict[str, Any]] = []
    for frame in client.frames:
        for item in frame["payload"] if frame["type"] == "batch" else [frame]:
            if item.get("room_id") == room_id and "seq" in item and item["type"] in ("chat", "edit", "recall",
                                                                                     "reaction"):
                found.append(item)
    return found


async def until_seq(client: Client, room_id: int, seq: int) -> list[dict[str, Any]]:
    await client.recv_until(lambda f: any(e["seq"] >= seq for e in entries_of_frame(f, room_id)))
    return entries(client, room_id)


def entries_of_frame(frame: dict[str, Any], room_id: int) -> list[dict[str, Any]]:
    items = frame["payload"] if frame["type"] == "batch" else [frame]
    return [i for i in items if isinstance(i, dict) and i.get("room_id") == room_id and "seq" in i]


async def test_edit_and_recall_reach_every_device_live_and_after_catch_up_in_seq_order(api: Api) -> None:
    alice, bob, carol = await api.users(3, "lc")
    room_id = await make_room(api.meta, alice, [bob, carol])
    alice_phone = await api.connect(alice, device="phone")
    bob_phone = await api.connect(bob, device="phone")
    bob_laptop = await api.connect(bob, device="laptop")

    first = await send_http(api.send, alice, room_id, "first")
    second = await send_http(api.send, alice, room_id, "second")
    edited = await edit(api, alice, first["id_str"], "first, edited")  # the id as a string, as JavaScript sends it
    assert edited.status == 200, edited
    assert edited.data["message_id"] == first["msgID"] and edited.data["seq"] == 3
    recalled = await post(api, "/api/chat/recall_message", alice, {"message_id": second["msgID"]})
    assert recalled.status == 200 and recalled.data["seq"] == 4, recalled
    third = await send_http(api.send, alice, room_id, "third")

    for client in (alice_phone, bob_phone, bob_laptop):
        got = await until_seq(client, room_id, 5)
        assert [(e["type"], e["seq"]) for e in got] == [("chat", 1), ("chat", 2), ("edit", 3), ("recall", 4),
                                                         ("chat", 5)]
        edit_frame, recall_frame = got[2], got[3]
        assert edit_frame["message_id"] == first["msgID"] and edit_frame["message_id_str"] == first["id_str"]
        assert edit_frame["content"] == {"type": "text", "text": "first, edited"} and edit_frame["edited_at"] > 0
        assert edit_frame["sender_id"] == alice.id
        assert recall_frame["message_id"] == second["msgID"] and recall_frame["by"] == alice.id
        assert got[4]["id"] == third["msgID"]

    # Carol was offline: her catch-up holds the events in order, and the messages in their current state.
    carol_socket = await api.connect(carol)
    got = await until_seq(carol_socket, room_id, 5)
    assert [(e["type"], e["seq"]) for e in got] == [("chat", 1), ("chat", 2), ("edit", 3), ("recall", 4), ("chat", 5)]
    assert got[0]["payload"] == {"text": "first, edited"} and got[0]["edited_at"] == got[2]["edited_at"]
    assert got[1]["payload"] == {} and got[1]["recalled"] is True and got[1]["recalled_by"] == alice.id
    for client in (alice_phone, bob_phone, bob_laptop, carol_socket):
        await client.close()


async def test_only_the_sender_edits_and_the_sender_or_a_moderator_recalls(api: Api) -> None:
    owner, admin, member, outsider = await api.users(4, "perm")
    room_id = await make_room(api.meta, owner, [admin, member])
    promoted = await api.meta.post("/api/chat/group/change_member_role",
                                   {"room_id": room_id, "target_user_id": admin.id, "new_role": 1}, token=owner.token)
    assert promoted.status == 200, promoted
    sent = await send_http(api.send, member, room_id, "mine")

    for who in (owner, admin):
        refused = await edit(api, who, sent["msgID"], "not yours")
        assert refused.status == 403 and refused.body["code"] == 403 and "sender" in refused.msg
    assert (await edit(api, outsider, sent["msgID"], "x")).status == 403
    assert (await edit(api, member, 987654321, "x")).status == 404
    assert (await post(api, "/api/chat/edit_message", member, {"message_id": sent["msgID"],
                                                                "content": {"type": "text", "text": " "}})).status == 400
    assert (await post(api, "/api/chat/edit_message", member, {"message_id": "12x", "content": {}})).status == 400

    other = await send_http(api.send, owner, room_id, "owner's")
    assert (await post(api, "/api/chat/recall_message", member, {"message_id": other["msgID"]})).status == 403
    assert (await post(api, "/api/chat/recall_message", outsider, {"message_id": sent["msgID"]})).status == 403
    by_admin = await post(api, "/api/chat/recall_message", admin, {"message_id": sent["msgID"]})
    assert by_admin.status == 200, by_admin
    again = await post(api, "/api/chat/recall_message", owner, {"message_id": sent["msgID"]})
    assert again.status == 409 and "already" in again.msg
    after = await edit(api, member, sent["msgID"], "too late")
    assert after.status == 409 and "recalled" in after.msg


async def test_edit_and_recall_windows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with embedded_system(tmp_path, limits={**TEST_LIMITS, "edit_window_s": 1, "recall_window_s": 1}) as system:
        async with open_api(system) as api:
            owner, member = await api.users(2, "win")
            room_id = await make_room(api.meta, owner, [member])
            kept = await send_http(api.send, member, room_id, "window")
            also = await send_http(api.send, owner, room_id, "owner's own")

            async def refused() -> bool:
                answer = await edit(api, member, kept["msgID"], "late")
                assert answer.status in (200, 409), answer
                return answer.status == 409 and "edit window (1 s) has passed" in answer.msg

            await poll(refused, timeout=10)
            late = await post(api, "/api/chat/recall_message", member, {"message_id": kept["msgID"]})
            assert late.status == 409 and "recall window (1 s)" in late.msg
            # The owner recalls at any time, his own message and the member's.
            for message in (also, kept):
                answer = await post(api, "/api/chat/recall_message", owner, {"message_id": message["msgID"]})
                assert answer.status == 200, answer


async def test_a_recalled_message_is_gone_from_sql_history_the_window_and_catch_up(api: Api) -> None:
    alice, bob = await api.users(2, "gone")
    room_id = await make_room(api.meta, alice, [bob])
    secret = text("secret")
    sent = await send_http(api.send, alice, room_id, secret, client_msg_id=text("cm"))
    assert (await edit(api, alice, sent["msgID"], secret + " v2")).status == 200
    assert (await post(api, "/api/chat/recall_message", alice, {"message_id": sent["msgID"]})).status == 200

    window = await api.system.runtime.engine.messages.read(room_id, 0, 100)
    assert window and secret not in repr(window)
    page = await history(api.send, bob, room_id)
    assert secret not in repr(page)
    [tombstone] = page["messages"]
    assert tombstone["recalled"] is True and tombstone["payload"] == {} and tombstone["reactions"] == []
    raw = await history(api.send, bob, room_id, events=1)
    assert [e["type"] for e in raw["events"]] == ["chat", "edit", "recall"]
    assert raw["events"][1]["content"] is None and secret not in repr(raw)
    bob_socket = await api.connect(bob)
    got = await until_seq(bob_socket, room_id, 3)
    assert secret not in repr(got)
    # A retry of the first send answers with the tombstone, not the words.
    retry = await api.send.post("/api/chat/send_message", {"room_id": room_id, "client_msg_id": sent["client_msg_id"],
                                                           "content": {"type": "text", "text": secret}},
                                token=alice.token)
    assert retry.status == 200 and retry.data["duplicate"] is True

    async def rows() -> list[Any]:
        async with api.system.runtime.sql.connect() as conn:
            return list(await conn.execute(select(chat_messages.c.type, chat_messages.c.content,
                                                  chat_messages.c.recalled).where(chat_messages.c.room_id == room_id)))

    stored = await poll(lambda: _all_flushed(rows, 3), timeout=10)
    assert secret not in repr(stored)
    assert [(r[0], bool(r[2])) for r in stored] == [("text", True), ("edit", False), ("recall", False)]
    await bob_socket.close()


async def _all_flushed(rows, count: int):  # type: ignore[no-untyped-def]
    found = await rows()
    recalled = [r for r in found if r[0] == "text" and r[2]]
    return found if len(found) == count and recalled else None


async def test_replies_carry_a_quote_live_and_in_history(api: Api) -> None:
    alice, bob = await api.users(2, "re")
    room_id = await make_room(api.meta, alice, [bob])
    other_room = await make_room(api.meta, alice, [bob])
    bob_socket = await api.connect(bob)
    original = await send_http(api.send, alice, room_id, "the question")
    answer = await api.send.post("/api/chat/send_message", {
        "room_id": room_id, "reply_to": original["id_str"], "content": {"type": "text", "text": "the answer"}},
        token=bob.token)
    assert answer.status == 200, answer
    quote = {"message_id": original["msgID"], "message_id_str": original["id_str"], "sender_id": alice.id,
             "preview": "the question", "recalled": False}
    live = await bob_socket.recv_until(lambda f: f["type"] == "chat" and f["id"] == answer.data["msgID"])
    assert live["reply_to"] == quote
    page = await history(api.send, alice, room_id)
    assert page["messages"][1]["reply_to"] == quote
    # A reply to a message of another room, or to nothing, is refused.
    for target in (original["msgID"], 123456789):
        wrong = await api.send.post("/api/chat/send_message", {
            "room_id": other_room, "reply_to": target, "content": {"type": "text", "text": "x"}}, token=bob.token)
        assert wrong.status == 400 and "reply_to" in wrong.msg
    # Once the original is recalled, the quote says so and shows none of it.
    assert (await post(api, "/api/chat/recall_message", alice, {"message_id": original["msgID"]})).status == 200
    page = await history(api.send, alice, room_id)
    assert page["messages"][1]["reply_to"] == {**quote, "preview": "[message recalled]", "recalled": True}
    await bob_socket.close()


async def test_reactions_toggle_count_and_are_limited(api: Api) -> None:
    alice, bob, carol = await api.users(3, "rx")
    room_id = await make_room(api.meta, alice, [bob, carol])
    carol_socket = await api.connect(carol)
    sent = await send_http(api.send, alice, room_id, "react to me")

    async def react(user: Any, emoji: str, on: bool = True, **extra: Any) -> Any:
        return await post(api, "/api/chat/react", user, {"message_id": sent["msgID"], "emoji": emoji, "on": on, **extra})

    first = await react(alice, "👍")
    assert first.status == 200 and first.data["count"] == 1 and first.data["seq"] == 2, first
    assert (await react(bob, "👍")).data["count"] == 2
    same = await react(bob, "👍")  # already on: nothing changes, no event
    assert same.data == {**same.data, "count": 2, "seq": None}
    off = await react(bob, "👍", False)
    assert off.data["count"] == 1 and off.data["seq"] == 4
    frames = [f for f in await until_seq(carol_socket, room_id, 4) if f["type"] == "reaction"]
    assert [(f["user_id"], f["emoji"], f["on"], f["count"]) for f in frames] == [
        (alice.id, "👍", True, 1), (bob.id, "👍", True, 2), (bob.id, "👍", False, 1)]

    page = await history(api.send, alice, room_id)
    assert page["messages"][0]["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]
    assert (await history(api.send, bob, room_id))["messages"][0]["reactions"] == [
        {"emoji": "👍", "count": 1, "me": False}]

    for index in range(19):
        assert (await react(carol, f"e{index}")).status == 200
    too_many = await react(carol, "one more")
    assert too_many.status == 409 and "20" in too_many.msg
    assert (await react(bob, "e3")).data["count"] == 2  # an emoji already there is still fine
    assert (await react(bob, "x" * 33)).status == 400
    assert (await react(bob, "   ")).status == 400
    await carol_socket.close()


async def test_every_lifecycle_request_is_idempotent_with_a_client_msg_id(api: Api) -> None:
    alice, bob = await api.users(2, "idem")
    room_id = await make_room(api.meta, alice, [bob])
    sent = await send_http(api.send, alice, room_id, "once")
    key = text("k")
    edits = [await edit(api, alice, sent["msgID"], "edited once", client_msg_id=key + "e") for _ in range(2)]
    assert [a.data["duplicate"] for a in edits] == [False, True] and edits[0].data["seq"] == edits[1].data["seq"]
    reacts = [await post(api, "/api/chat/react", bob, {"message_id": sent["msgID"], "emoji": "🎉",
                                                        "client_msg_id": key + "r"}) for _ in range(2)]
    assert [a.data["duplicate"] for a in reacts] == [False, True] and reacts[1].data["seq"] == reacts[0].data["seq"]
    recalls = [await post(api, "/api/chat/recall_message", alice, {"message_id": sent["msgID"],
                                                                    "client_msg_id": key + "c"}) for _ in range(2)]
    assert [(a.status, a.data["duplicate"]) for a in recalls] == [(200, False), (200, True)]
    assert recalls[0].data["seq"] == recalls[1].data["seq"]
    raw = await history(api.send, alice, room_id, events=1)
    assert [e["type"] for e in raw["events"]] == ["chat", "edit", "reaction", "recall"]


async def test_a_hidden_message_leaves_only_the_callers_history(api: Api) -> None:
    alice, bob = await api.users(2, "hide")
    room_id = await make_room(api.meta, alice, [bob])
    sent = await send_http(api.send, alice, room_id, "hide me")
    kept = await send_http(api.send, alice, room_id, "keep me")
    hidden = await post(api, "/api/chat/hide_message", bob, {"message_id": sent["id_str"]})
    assert hidden.status == 200 and hidden.data["message_id"] == sent["msgID"], hidden
    assert [m["id"] for m in (await history(api.send, bob, room_id))["messages"]] == [kept["msgID"]]
    assert [m["id"] for m in (await history(api.send, alice, room_id))["messages"]] == [sent["msgID"], kept["msgID"]]
    _, _, outsider = await api.users(3, "hide-out")
    assert (await post(api, "/api/chat/hide_message", outsider, {"message_id": sent["msgID"]})).status == 403


async def test_a_gostacker_client_gets_only_frames_it_understands(api: Api) -> None:
    alice, bob = await api.users(2, "gs")
    room_id = await make_room(api.meta, alice, [bob])
    legacy = await api.connect(bob, events=False)
    modern = await api.connect(alice, device="web")
    sent = await send_http(api.send, alice, room_id, "hello")
    assert (await edit(api, alice, sent["msgID"], "hello, edited")).status == 200
    await post(api, "/api/chat/react", alice, {"message_id": sent["msgID"], "emoji": "👍"})
    await post(api, "/api/chat/read", alice, {"room_id": room_id, "seq": 3})
    await modern.send_frame({"type": "typing", "room_id": room_id})
    assert (await post(api, "/api/chat/recall_message", alice, {"message_id": sent["msgID"]})).status == 200
    done = await send_http(api.send, alice, room_id, "last")

    await legacy.recv_until(lambda f: f["type"] == "chat" and f["id"] == done["msgID"])
    assert {f["type"] for f in legacy.frames} <= GOSTACKER_TYPES, legacy.frames
    chats = [f for f in legacy.frames if f["type"] == "chat"]
    assert [c["payload"] for c in chats] == [
        {"text": "hello"}, {"text": "hello, edited", "edit_of": sent["msgID"]},
        {"text": "[message recalled]", "recall_of": sent["msgID"]}, {"text": "last"}]
    assert all(set(c) >= {"id", "type", "room_id", "sender_id", "payload"} for c in chats)
    # Its catch-up too: a new device of his (it starts from his read state) gets the same shapes.
    await legacy.close()
    again = await api.connect(bob, events=False, device="second")
    batch = await again.recv_type("batch")
    # (The message is a tombstone by now, and so is the edit: the words are gone everywhere.)
    assert [c["payload"].get("text") for c in batch["payload"]] == ["[message recalled]"] * 3 + ["last"]
    assert {c["type"] for c in batch["payload"]} == {"chat"}
    await again.close()
    await modern.close()


async def test_lifecycle_frames_over_the_socket(api: Api) -> None:
    alice, bob = await api.users(2, "wsf")
    room_id = await make_room(api.meta, alice, [bob])
    socket = await api.connect(alice, device="ws")
    sent = await send_http(api.send, alice, room_id, "via frames")
    await socket.send_frame({"type": "edit", "message_id": sent["id_str"], "content": {"type": "text", "text": "e"},
                             "ref": "r1"})
    answer = await socket.recv_type("edit_ok")
    assert answer["payload"]["ref"] == "r1" and answer["payload"]["seq"] == 2
    await socket.send_frame({"type": "react", "message_id": sent["msgID"], "emoji": "❤", "ref": 2})
    assert (await socket.recv_type("react_ok"))["payload"]["count"] == 1
    await socket.send_frame({"type": "send", "room_id": room_id, "reply_to": sent["msgID"],
                             "content": {"type": "text", "text": "reply"}})
    reply = await socket.recv_until(lambda f: f["type"] == "chat" and f["payload"] == {"text": "reply"})
    assert reply["reply_to"]["message_id"] == sent["msgID"] and reply["reply_to"]["preview"] == "e"
    bob_socket = await api.connect(bob)
    await bob_socket.send_frame({"type": "recall", "message_id": sent["msgID"], "ref": "x"})
    refused = await bob_socket.recv_type("error")
    assert refused["payload"]["code"] == 403 and refused["payload"]["ref"] == "x"
    await socket.send_frame({"type": "recall", "message_id": sent["msgID"]})
    assert (await socket.recv_type("recall_ok"))["payload"]["seq"] == 5
    await socket.close()
    await bob_socket.close()


async def test_room_events_are_never_unread_and_the_room_list_shows_the_last_message(api: Api) -> None:
    alice, bob = await api.users(2, "unr")
    room_id = await make_room(api.meta, alice, [bob])
    first = await send_http(api.send, alice, room_id, "one")
    await send_http(api.send, alice, room_id, "two")

    async def bob_room() -> dict[str, Any]:
        answer = await api.meta.get("/api/joined_rooms", token=bob.token)
        return next(r for r in answer.data["rooms"] if r["room_id"] == room_id)

    assert (await bob_room())["unread"] == 2
    assert (await post(api, "/api/chat/read", bob, {"room_id": room_id, "seq": 1})).status == 200
    assert (await bob_room())["unread"] == 1
    # Edits and reactions after his mark, by either of them, add nothing to his badge.
    assert (await edit(api, alice, first["msgID"], "one, edited")).status == 200
    for user in (alice, bob):
        assert (await post(api, "/api/chat/react", user, {"message_id": first["msgID"], "emoji": "👀"})).status == 200
    room = await bob_room()
    assert (room["unread"], room["last_seq"]) == (1, 5)
    assert room["last_message"]["preview"] == "two"  # the last message, not the last event
    third = await send_http(api.send, alice, room_id, "three")
    assert (await bob_room())["unread"] == 2
    bob_socket = await api.connect(bob, device="badge")
    welcome = next(f for f in bob_socket.frames if f["type"] == "system")
    assert welcome["unread"] >= 2
    assert (await post(api, "/api/chat/read", bob, {"room_id": room_id, "seq": third["seq"]})).status == 200
    assert (await bob_room())["unread"] == 0
    await bob_socket.close()
