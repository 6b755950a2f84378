"""Limits and refusals: idempotent retries, membership, content rules, bad frames, oversized frames,
and the slow consumer (bounded queue, close 4008, catch-up after reconnecting)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pystacker.gateway import connection as gateway_connection
from pystacker.gateway.routes import MAX_FRAME_BYTES
from pystacker.messaging.content import MAX_CONTENT_BYTES, MAX_TEXT_CHARS
from pystacker.messaging.frames import CloseCode
from tests.ws import Api, chats_of, make_room, open_api, poll, send_http


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


async def test_idempotent_retry_over_http(api: Api) -> None:
    alice, bob = await api.users(2, "idem")
    room_id = await make_room(api.meta, alice, [bob])
    a, b = await api.connect(alice), await api.connect(bob)
    body = {"room_id": room_id, "content": {"type": "text", "text": "only once"}, "client_msg_id": "retry-1"}
    first = await api.send.post("/api/chat/send_message", body, token=alice.token)
    second = await api.send.post("/api/chat/send_message", body, token=alice.token)
    assert first.status == second.status == 200
    assert first.data["duplicate"] is False and second.data["duplicate"] is True
    assert (second.data["msgID"], second.data["seq"]) == (first.data["msgID"], first.data["seq"])
    # the same client_msg_id from another sender is another message
    other = await api.send.post("/api/chat/send_message", body, token=bob.token)
    assert other.data["duplicate"] is False and other.data["msgID"] != first.data["msgID"]
    marker = await send_http(api.send, alice, room_id, "marker")
    for client in (a, b):
        await client.recv_until(lambda f: f["type"] == "chat" and f["id"] == marker["msgID"])
        assert [c["id"] for c in client.chats] == [first.data["msgID"], other.data["msgID"], marker["msgID"]]
    # a WebSocket `send` retry with the HTTP message's client_msg_id is the same message too
    await a.send_chat(room_id, "only once", client_msg_id="retry-1", ref="r")
    answer = await a.recv_type("send_ok")
    assert answer["payload"]["duplicate"] is True and answer["payload"]["msgID"] == first.data["msgID"]
    await a.close()
    await b.close()


async def test_send_refusals(api: Api) -> None:
    alice, bob, stranger = await api.users(3, "ref")
    room_id = await make_room(api.meta, alice, [bob])
    url = "/api/chat/send_message"

    async def send(body: object, token: str | None = alice.token, **kw: object) -> tuple[int, object]:
        answer = await api.send.post(url, body, token=token, **kw)
        return answer.status, answer.body

    status, body = await send({"room_id": room_id, "content": {"type": "text", "text": "x"}}, stranger.token)
    assert status == 403 and body["code"] == 403 and body["msg"]
    status, body = await send({"room_id": 2**62, "content": {"type": "text", "text": "x"}})
    assert status == 404 and body["code"] == 404
    status, body = await send({"room_id": room_id, "content": {"type": "text", "text": "x"}}, None)
    assert status == 401 and body == {"code": 401, "msg": "Authorization header is required"}
    for content in ({"type": "video", "url": "x"}, None, {"text": "no type"}, {"type": "text", "text": 5},
                    {"type": "text", "text": ""}, {"type": "text", "text": "   "}, "text", [1],
                    {"type": "image", "url": "u", "width": "7"}):
        status, body = await send({"room_id": room_id, "content": content})
        assert status == 400 and body["code"] == 400, (content, body)
    status, body = await send({"room_id": room_id})  # content missing
    assert status == 400 and body["code"] == 400
    for room in (0, -1, "7", None):
        status, body = await send({"room_id": room, "content": {"type": "text", "text": "x"}})
        assert status == 400, room
    status, body = await send({"room_id": room_id, "content": {"type": "text", "text": "x" * (MAX_TEXT_CHARS + 1)}})
    assert status == 413 and body["code"] == 413
    status, body = await send({"room_id": room_id, "content": {"type": "text", "text": "x" * MAX_TEXT_CHARS}})
    assert status == 200  # exactly at the limit is fine
    # 6000 three-byte characters: under the character limit, over the byte limit of the content
    status, body = await send({"room_id": room_id, "content": {"type": "text", "text": "\u4e2d" * 6000}})
    assert 6000 * 3 > MAX_CONTENT_BYTES and status == 413
    for raw in (b"{not json", b"", b"[1,2]", b'{"room_id": 1, "content": '):
        answer = await api.send.request("POST", url, data=raw, token=alice.token,
                                        headers={"Content-Type": "application/json"})
        assert answer.status == 400 and answer.body["code"] == 400, raw
    # nothing refused reached the room: only the one accepted message is in its history
    page = await api.send.get("/api/chat/history", params={"room_id": room_id, "after_seq": 0}, token=bob.token)
    assert [m["seq"] for m in page.data["messages"]] == [1]


async def test_bad_frames_get_error_frames_and_the_socket_stays_usable(api: Api) -> None:
    alice, bob = await api.users(2, "frm")
    room_id = await make_room(api.meta, alice, [bob])
    a = await api.connect(alice)

    async def error_for(send) -> dict:  # type: ignore[no-untyped-def]
        await send()
        frame = await a.recv_type("error")
        assert (frame["id"], frame["room_id"], frame["sender_id"]) == (-1, 0, 0)
        return frame["payload"]

    bad = await error_for(lambda: a.send_frame({"type": "send", "room_id": room_id, "content": {"type": "nope"}, "ref": 1}))
    assert bad["code"] == 400 and bad["ref"] == 1
    bad = await error_for(lambda: a.send_frame({"type": "send", "room_id": room_id, "content": {"type": "text", "text": 3}}))
    assert bad["code"] == 400
    bad = await error_for(lambda: a.send_frame({"type": "send", "room_id": room_id}))
    assert bad["code"] == 400
    big = await error_for(lambda: a.send_chat(room_id, "y" * (MAX_TEXT_CHARS + 1)))
    assert big["code"] == 413
    other_room = await make_room(api.meta, bob, [])
    assert (await error_for(lambda: a.send_chat(other_room, "not mine")))["code"] == 403
    assert (await error_for(lambda: a.send_frame({"type": "teleport"})))["code"] == 400
    assert (await error_for(lambda: a.ws.send_str("{malformed")))["code"] == 400
    assert (await error_for(lambda: a.ws.send_str("[1, 2]")))["code"] == 400
    assert (await error_for(lambda: a.ws.send_bytes(b"\x00\x01binary")))["code"] == 400
    # still usable: a good send is accepted, echoed and acked
    await a.send_chat(room_id, "still here", ref="ok")
    answer = await a.recv_type("send_ok")
    assert answer["payload"]["seq"] == 1 and answer["payload"]["ref"] == "ok"
    chat = await a.recv_type("chat")
    assert chat["payload"] == {"text": "still here"} and chat["id"] == answer["payload"]["msgID"]
    await a.send_frame({"type": "ping", "ref": 9})
    assert (await a.recv_type("pong"))["payload"] == 9
    await a.close()


async def test_oversized_frame_closes_with_1009(api: Api) -> None:
    (alice,) = await api.users(1, "big")
    a = await api.connect(alice)
    await a.ws.send_str("x" * (MAX_FRAME_BYTES + 1))
    assert await a.wait_closed() == CloseCode.FRAME_TOO_BIG
    # the server forgot the connection
    await poll(lambda: alice.id not in api.gateway_service.users)
    # and the user can connect again
    again = await api.connect(alice)
    await again.close()


# -- slow consumer ------------------------------------------------------------------------------------

BIG_TEXT = "z" * MAX_TEXT_CHARS  # ~8 KB per frame: the queue bound is hit after a few MB of socket buffers


async def stream_until(api: Api, sender, room_id: int, done, limit: int = 3000) -> list[dict]:  # type: ignore[no-untyped-def]
    """Send big messages over HTTP until `done()` is true (checked before each send)."""
    sent: list[dict] = []
    while not done():
        assert len(sent) < limit, "the server never closed the slow consumer"
        sent.append(await send_http(api.send, sender, room_id, BIG_TEXT))
    return sent


async def test_slow_consumer_is_closed_and_catches_up(api: Api) -> None:
    alice, slow, steady = await api.users(3, "slow")
    room_id = await make_room(api.meta, alice, [slow, steady])
    gateway = api.gateway_service
    s = await api.connect(slow)
    watcher = await api.connect(steady)
    conn = gateway.connection(slow.id)
    assert 0 < conn.queue_size <= 10_000  # bounded
    peak = 0

    # `steady` reads everything as it comes, concurrently; `slow` reads nothing at all
    steady_reader = asyncio.create_task(watcher.collect(10**9, room_id=room_id, timeout=60))

    def closed_or_peak() -> bool:
        nonlocal peak
        peak = max(peak, len(conn.queue))
        return conn.close_code is not None

    sent = await stream_until(api, alice, room_id, closed_or_peak)
    assert conn.close_code == CloseCode.SLOW_CONSUMER
    assert peak <= conn.queue_size
    tail = await send_http(api.send, alice, room_id, "after the close")  # the server keeps serving
    total = len(sent) + 1

    # the slow client reads again: what was already on the wire, then the end of the socket: the 4008
    # close frame, or 1006 when its send buffer was still full and the gateway aborted the socket
    # (a stuck socket is not kept: zero linger); the gateway's own close code is 4008 either way
    assert await s.wait_closed(timeout=10) in (CloseCode.SLOW_CONSUMER, 1006)
    got_before_close = len(s.unique(room_id))
    assert got_before_close < total
    await poll(lambda: gateway.connection(slow.id) is not conn)

    # the steady member got every message once, in order, while the other one stalled
    await poll(lambda: len(watcher.unique(room_id)) >= total, timeout=15)
    steady_reader.cancel()
    await asyncio.gather(steady_reader, return_exceptions=True)
    assert [c["seq"] for c in watcher.chats] == list(range(1, total + 1))

    # the slow client reconnects and catches up everything, once each, in order
    s2 = await api.connect(slow)
    # Up to the tail (frames the slow client read but never confirmed come again: at least once).
    await s2.recv_until(lambda f: any(c["id"] == tail["msgID"] for c in chats_of(f)), timeout=15)
    merged = [c["seq"] for c in (s.unique(room_id) + s2.unique(room_id))]
    assert sorted(set(merged)) == list(range(1, total + 1))
    assert [c["seq"] for c in s2.unique(room_id)] == sorted(c["seq"] for c in s2.unique(room_id))
    assert s2.unique(room_id)[-1]["id"] == tail["msgID"]
    await watcher.close()
    await s2.close()


async def test_stalled_client_is_dropped_and_memory_released(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that never reads again (a dead phone behind NAT) must not pin its connection, its
    queue and the socket buffers: after the close deadline the gateway aborts the socket and forgets it."""
    monkeypatch.setattr(gateway_connection, "CLOSE_TIMEOUT", 0.5)
    alice, dead = await api.users(2, "stall")
    room_id = await make_room(api.meta, alice, [dead])
    gateway = api.gateway_service
    d = await api.connect(dead)
    # This client acknowledges what it reads (it never will): the frames the dead socket swallowed
    # do not count as delivered, so its reconnect gets them again (spec 13.2 #17).
    await d.send_frame({"type": "ack", "room_id": room_id, "seq": 0})
    conn = gateway.connection(dead.id)
    await poll(lambda: conn.client_acks)
    inbox = api.system.runtime.engine.inbox
    # what other tests' sockets may hold: this test must not leave more behind
    in_flight_before = gateway.tracker.in_flight
    pending_before = (await inbox.stats(gateway.gateway_id)).pending
    sent = await stream_until(api, alice, room_id, lambda: conn.close_code is not None)
    assert conn.close_code == CloseCode.SLOW_CONSUMER
    # the client still never reads: the gateway must let go of it on its own
    await poll(lambda: dead.id not in gateway.users, timeout=5)
    assert not conn.queue  # what was queued was handed on, not kept
    # every inbox entry of the stalled connection was settled and acknowledged
    await poll(lambda: gateway.tracker.in_flight <= in_flight_before, timeout=5)

    async def nothing_left_pending() -> bool:
        return (await inbox.stats(gateway.gateway_id)).pending <= pending_before
    await poll(nothing_left_pending, timeout=5)
    d.abort()
    # the user catches up everything on reconnecting (the new socket is an old-style one)
    d2 = await api.connect(dead)
    await d2.collect(len(sent), room_id=room_id, timeout=15)
    assert d2.seqs(room_id) == list(range(1, len(sent) + 1))
    await d2.close()
