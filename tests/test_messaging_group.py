"""A group of 50 connected members: every member gets every message exactly once, in seq order; the
history route returns them all, dense, and pages back with before_seq."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.ws import Api, Client, history, make_room, open_api, send_http

MEMBERS = 50
SENDERS = 3
PER_SENDER = 20
TOTAL = SENDERS * PER_SENDER


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


async def send_over_ws(client: Client, room_id: int, bodies: list[str]) -> list[dict]:
    """Send each body as a `send` frame and wait for its `send_ok` answer (matched by `ref`)."""
    answers = []
    for body in bodies:
        ref = f"{client.user.id}-{uuid.uuid4().hex[:8]}"
        await client.send_chat(room_id, body, client_msg_id=f"ws-{ref}", ref=ref)
        answer = await client.recv_until(lambda f, ref=ref: f["type"] in ("send_ok", "error")
                                         and isinstance(f["payload"], dict) and f["payload"].get("ref") == ref)
        assert answer["type"] == "send_ok", answer
        answers.append(answer["payload"])
    return answers


async def test_fifty_members_get_every_message_once_in_order(api: Api) -> None:
    users = await api.users(MEMBERS, "grp")
    owner = users[0]
    room_id = await make_room(api.meta, owner, users[1:])
    members = await api.meta.get("/api/chat/group/members", params={"room_id": room_id}, token=owner.token)
    assert len(members.data["members"]) == MEMBERS
    clients = list(await asyncio.gather(*(api.connect(u) for u in users)))
    assert all(u.id in api.gateway_service.users for u in users)

    # three senders at once: one over HTTP, one over WebSocket `send` frames, one alternating
    senders = clients[:SENDERS]
    bodies = {c.user.id: [f"from {c.user.id} #{i}" for i in range(PER_SENDER)] for c in senders}

    async def http_sender(client: Client) -> list[dict]:
        return [await send_http(api.send, client.user, room_id, b) for b in bodies[client.user.id]]

    async def mixed_sender(client: Client) -> list[dict]:
        out = []
        for i, body in enumerate(bodies[client.user.id]):
            out += (await send_over_ws(client, room_id, [body]) if i % 2
                    else [await send_http(api.send, client.user, room_id, body)])
        return out

    # a sender's receive loop is driven by its own `send_over_ws`; the others only receive
    results = await asyncio.gather(http_sender(senders[0]), send_over_ws(senders[1], room_id, bodies[senders[1].user.id]),
                                   mixed_sender(senders[2]))
    sent_ids = {r["msgID"] for rs in results for r in rs}
    assert len(sent_ids) == TOTAL
    assert sorted(r["seq"] for rs in results for r in rs) == list(range(1, TOTAL + 1))
    # each sender's own messages got increasing seqs in the order it sent them
    for rs in results:
        assert [r["seq"] for r in rs] == sorted(r["seq"] for r in rs)

    await asyncio.gather(*(c.collect(TOTAL, room_id=room_id, timeout=15) for c in clients))
    for client in clients:
        raw = [c for c in client.chats if c["room_id"] == room_id]
        assert len(raw) == TOTAL, (client.user.id, len(raw))  # exactly once: no duplicate at all
        assert [c["seq"] for c in raw] == list(range(1, TOTAL + 1))
        assert {c["id"] for c in raw} == sent_ids
        # the sender of each message is who sent it, the text is what was sent
        for chat in raw:
            assert chat["payload"]["text"] in bodies[chat["sender_id"]]

    # history: everything, ascending, dense
    whole = await history(api.send, users[7], room_id, after_seq=0, limit=200)
    assert [m["seq"] for m in whole["messages"]] == list(range(1, TOTAL + 1))
    assert {m["id"] for m in whole["messages"]} == sent_ids
    assert whole["last_seq"] == TOTAL and whole["has_more"] is False
    delivered = {c["id"]: c["payload"] for c in clients[9].chats}
    assert all(m["payload"] == delivered[m["id"]] for m in whole["messages"])

    # after_seq paging forward in pages of 25
    forward: list[int] = []
    after, more = 0, True
    while more:
        page = await history(api.send, users[3], room_id, after_seq=after, limit=25)
        forward += [m["seq"] for m in page["messages"]]
        after, more = forward[-1], page["has_more"]
    assert forward == list(range(1, TOTAL + 1))

    # before_seq paging back: newest first pages, each ascending
    backward: list[list[int]] = []
    before = None
    while True:
        params = {"limit": 25} if before is None else {"limit": 25, "before_seq": before}
        page = await history(api.send, users[5], room_id, **params)
        seqs = [m["seq"] for m in page["messages"]]
        if not seqs:
            break
        assert seqs == sorted(seqs)
        backward.append(seqs)
        before = seqs[0]
        if not page["has_more"]:
            break
    assert backward[0] == list(range(TOTAL - 24, TOTAL + 1))
    assert [s for page in reversed(backward) for s in page] == list(range(1, TOTAL + 1))
    middle = await history(api.send, users[5], room_id, before_seq=31, limit=10)
    assert [m["seq"] for m in middle["messages"]] == list(range(21, 31))

    # a non-member cannot read the history
    (stranger,) = await api.users(1, "nm")
    assert (await api.send.get("/api/chat/history", params={"room_id": room_id, "after_seq": 0},
                               token=stranger.token)).status == 403
    await asyncio.gather(*(c.close() for c in clients))
