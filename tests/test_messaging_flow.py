"""GoStacker's client flow end to end over real sockets (spec section 12.3), and resend_message.

register -> login -> create room -> ask the registry for a gateway -> WebSocket with Bearer -> welcome
frame -> HTTP send -> `chat` on every member and `ack` on the sender -> one member away -> messages
meanwhile -> reconnect -> `batch` frames in seq order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.client import new_user
from tests.ws import Api, connect, make_room, open_api, poll, send_http, text, ws_url

GOSTACKER_KEYS = {"id", "type", "room_id", "sender_id", "payload"}


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


def assert_chat(frame: dict, *, msg_id: int, room_id: int, sender_id: int, body: str) -> None:
    assert GOSTACKER_KEYS <= frame.keys(), frame
    assert (frame["id"], frame["type"], frame["room_id"], frame["sender_id"]) == (msg_id, "chat", room_id, sender_id)
    assert frame["payload"] == {"text": body}  # the content without its "type" key, as GoStacker sends it


async def test_gostacker_client_flow(api: Api) -> None:
    # register + login over HTTP, exactly as the CLI client does
    alice = await new_user(api.meta, "alice")
    bob = await new_user(api.meta, "bob")
    room_id = await make_room(api.meta, alice, [bob])

    # the registry: with user_id (the spec's flow) and without it (what GoStacker's GUI sends)
    with_id = await api.registry.get("/registry/gateway/available", params={"user_id": alice.id})
    gui = await api.registry.get("/registry/gateway/available", token=alice.token)
    bare = await api.registry.get("/registry/gateway/available")
    for answer in (with_id, gui, bare):
        assert answer.status == 200, answer
        assert answer.msg == "available"
        assert isinstance(answer.data["address"], str) and isinstance(answer.data["port"], int)
    gateway = f"http://{with_id.data['address']}:{with_id.data['port']}"
    assert gateway == api.gateway_url

    # WebSocket with the Bearer header; connect() checks the welcome, here its exact GoStacker shape
    a = await connect(api.session, gateway, alice, welcome=False)
    b = await connect(api.session, gateway, bob, welcome=False)
    for client in (a, b):
        welcome = await client.recv()
        assert {k: welcome[k] for k in GOSTACKER_KEYS} == {
            "id": -1, "type": "system", "room_id": -1, "sender_id": -1, "payload": "Connected to WebSocket server"}

    body = text("hi bob")
    sent = await api.send.post("/api/chat/send_message", {"room_id": room_id, "content": {"type": "text", "text": body}},
                               token=alice.token)
    assert sent.status == 200 and sent.body["code"] == 0 and sent.msg == "success"
    msg_id = sent.data["msgID"]
    assert isinstance(msg_id, int) and msg_id > 0

    for client in (a, b):
        chat = await client.recv_type("chat")
        assert_chat(chat, msg_id=msg_id, room_id=room_id, sender_id=alice.id, body=body)
    ack = await a.recv_type("ack")
    assert {k: ack[k] for k in GOSTACKER_KEYS} == {"id": msg_id, "type": "ack", "room_id": 0, "sender_id": 0, "payload": None}

    # bob goes away; alice sends three messages; bob comes back and gets them in `batch` frames
    await api.settle(b)
    await b.close()
    away = [text(f"while away {i}") for i in range(3)]
    away_ids = [(await send_http(api.send, alice, room_id, t))["msgID"] for t in away]
    b2 = await connect(api.session, gateway, bob)
    batch = await b2.recv_type("batch")
    assert (batch["id"], batch["room_id"], batch["sender_id"]) == (-1, 0, 0)
    assert isinstance(batch["payload"], list)
    await b2.collect(3, room_id=room_id)
    caught_up = b2.unique(room_id)
    assert all(c["type"] == "chat" for c in caught_up)
    assert [c["id"] for c in caught_up] == away_ids
    assert [c["payload"] for c in caught_up] == [{"text": t} for t in away]
    assert [c["seq"] for c in caught_up] == [2, 3, 4]
    # the catch-up came in batch frames, not as live chat frames
    assert all(c["id"] in {x["id"] for f in b2.frames if f["type"] == "batch" for x in f["payload"]} for c in caught_up)
    await a.close()
    await b2.close()


async def test_query_token_login(api: Api) -> None:
    alice, bob = await api.users(2, "qt")
    room_id = await make_room(api.meta, alice, [bob])
    b = await api.connect(bob, via="query")  # browsers cannot set headers on a WebSocket
    sent = await send_http(api.send, alice, room_id, "via query token")
    chat = await b.recv_type("chat")
    assert chat["id"] == sent["msgID"] and chat["payload"] == {"text": "via query token"}
    await b.close()


UPGRADE_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.parametrize("auth", [
    {}, {"headers": {"Authorization": "Bearer not-a-jwt"}}, {"headers": {"Authorization": "Token abc"}},
    {"params": {"token": "not-a-jwt"}}])
async def test_websocket_auth_refused_before_upgrade(api: Api, auth: dict) -> None:
    headers = {**UPGRADE_HEADERS, **auth.get("headers", {})}
    async with api.session.get(ws_url(api.gateway_url), headers=headers, params=auth.get("params")) as response:
        assert response.status == 401
        body = await response.json(content_type=None)
    assert body["code"] == 401 and isinstance(body["msg"], str) and body["msg"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.session.ws_connect(ws_url(api.gateway_url), headers=auth.get("headers"), params=auth.get("params"))
    assert refused.value.status == 401


async def test_plain_get_with_valid_token_is_400(api: Api) -> None:
    (user,) = await api.users(1, "plain")
    answer = await api.gateway.get("/api/ws", token=user.token)
    assert answer.status == 400
    assert user.id not in api.gateway_service.users


async def test_resend_flushed_message_delivers_nothing_twice(api: Api) -> None:
    alice, bob, carol = await api.users(3, "rs")
    room_id = await make_room(api.meta, alice, [bob])
    a, b = await api.connect(alice), await api.connect(bob)
    sent = await send_http(api.send, alice, room_id, "to be resent")
    msg_id = sent["msgID"]
    await a.collect(1, room_id=room_id)
    await b.collect(1, room_id=room_id)

    # this one is about a flushed message (right after the send is the next test): poll SQL
    store = api.system.runtime.parts.store
    await poll(lambda: store.by_id(msg_id), timeout=5.0)

    assert (await api.send.post("/api/chat/resend_message", {"message_id": msg_id}, token=bob.token)).status == 401
    assert (await api.send.post("/api/chat/resend_message", {"message_id": 1}, token=alice.token)).status == 404
    assert (await api.send.post("/api/chat/resend_message", {"message_id": "x"}, token=alice.token)).status == 400
    resent = await api.send.post("/api/chat/resend_message", {"message_id": msg_id}, token=alice.token)
    assert resent.status == 200 and resent.msg == "success", resent

    # a marker sent after the resend: once it is in, the resent copy would have arrived before it
    marker = await send_http(api.send, alice, room_id, "after the resend")
    for client in (a, b):
        await client.collect(2, room_id=room_id)
        ids = [c["id"] for c in client.chats]
        assert ids == [msg_id, marker["msgID"]], ids  # raw, not deduplicated: the resend was dropped
    # resend still requires membership: carol is not in the room
    assert (await api.send.post("/api/chat/resend_message", {"message_id": msg_id}, token=carol.token)).status == 401

    # a client that reconnects after the resend gets each message once
    await api.settle(b)
    await b.close()
    b2 = await api.connect(bob)
    third = await send_http(api.send, alice, room_id, "third")
    await b2.collect(1, room_id=room_id)  # live, or in the catch-up batch if that ran after the send
    await b2.expect_silence(lambda f: f["type"] in ("chat", "batch"), within=0.3)
    assert [c["id"] for c in b2.chats] == [third["msgID"]]
    await a.close()
    await b2.close()


async def test_resend_right_after_send_pushes_the_message_again(api: Api) -> None:
    """Within the flusher's first pass (0.2 s), the message is only in the engine: resend finds it
    there. Who may resend is decided the same way wherever the message is: the sender only."""
    alice, bob, carol = await api.users(3, "rn")
    room_id = await make_room(api.meta, alice, [bob])
    msg_id = (await send_http(api.send, alice, room_id, "resent at once"))["msgID"]
    for caller in (bob, carol):  # a member who is not the sender, and a stranger
        refused = await api.send.post("/api/chat/resend_message", {"message_id": msg_id}, token=caller.token)
        assert refused.status == 401 and refused.body["code"] == 401, refused
    # bob connects without a catch-up: only a push can bring him the message
    b = await api.connect(bob, catchup=False)
    resent = await api.send.post("/api/chat/resend_message", {"message_id": msg_id}, token=alice.token)
    assert resent.status == 200 and resent.msg == "success", resent
    await b.collect(1, room_id=room_id)
    assert [(c["id"], c["payload"]["text"]) for c in b.chats] == [(msg_id, "resent at once")]
    await b.close()
