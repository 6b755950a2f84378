"""Presence over real sockets (issue 14): online while any device of a user is connected, offline
with last_seen when the last one leaves; GET /api/presence; `presence_subscribe` and the `presence`
frames of changes, at most one per user per 5 s (the newest state at the end of the window).
Across two gateways and a killed gateway: tests/test_distributed.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from tests.client import User
from tests.ws import Api, Client, open_api, poll


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


async def presence(api: Api, caller: User, users: list[User]) -> dict[int, dict]:
    answer = await api.send.get("/api/presence", params={"user_ids": ",".join(str(u.id) for u in users)},
                                token=caller.token)
    assert answer.status == 200, answer
    return {item["user_id"]: item for item in answer.data["users"]}


def changes(client: Client, user: User) -> list[bool]:
    return [f["online"] for f in client.frames if f["type"] == "presence" and f["user_id"] == user.id]


async def test_online_while_any_device_is_connected_then_last_seen(api: Api) -> None:
    watcher, ann = await api.users(2, "pr")
    assert (await presence(api, watcher, [ann]))[ann.id] == {"user_id": ann.id, "online": False, "last_seen": None}
    phone = await api.connect(ann, device="phone")
    laptop = await api.connect(ann, device="laptop")
    assert (await presence(api, watcher, [ann]))[ann.id]["online"] is True
    await phone.close()
    await poll(lambda: api.gateway_service.connection(ann.id, "phone") is None, "the phone gone")
    assert (await presence(api, watcher, [ann]))[ann.id]["online"] is True  # the laptop is still there
    before = int(time.time() * 1000)
    await laptop.close()

    async def offline() -> dict | None:
        state = (await presence(api, watcher, [ann]))[ann.id]
        return state if not state["online"] else None

    state = await poll(offline, "ann offline", timeout=5)
    assert before - 1000 <= state["last_seen"] <= int(time.time() * 1000) + 1000


async def test_bad_presence_queries_are_refused(api: Api) -> None:
    (caller,) = await api.users(1, "pr")
    for query, status in (({"user_ids": ""}, 400), ({"user_ids": "1,x"}, 400), ({"user_ids": "0"}, 400),
                          ({"user_ids": ",".join(str(i) for i in range(1, 202))}, 400),
                          ({"user_ids": "9" * 19}, 400)):
        answer = await api.send.get("/api/presence", params=query, token=caller.token)
        assert answer.status == status and answer.body["code"] == status, (query, answer)
    assert (await api.send.get("/api/presence", params={"user_ids": "1"})).status == 401


async def test_watchers_get_changes_coalesced_per_user(api: Api) -> None:
    watcher, ann, bob = await api.users(3, "pr")
    watching = await api.connect(watcher)
    await watching.send_frame({"type": "presence_subscribe", "user_ids": [ann.id, bob.id]})
    # The states now, at once (in either order).
    await watching.recv_until(lambda f: {ann.id, bob.id} <= {g["user_id"] for g in watching.frames
                                                             if g["type"] == "presence"})
    assert changes(watching, ann) == [False] and changes(watching, bob) == [False]
    ann_socket = await api.connect(ann)
    frame = await watching.recv_until(lambda f: f["type"] == "presence" and f["user_id"] == ann.id and f["online"])
    assert frame["last_seen"] is None
    # Offline and online again within the window: nothing now; at its end only if the state differs
    # from what was told (online, as told): so nothing at all.
    await ann_socket.close()
    await poll(lambda: ann.id not in api.gateway_service.users, "ann gone")
    again = await api.connect(ann)
    await watching.expect_silence(lambda f: f["type"] == "presence" and f["user_id"] == ann.id, within=1.0)
    await again.close()  # offline, inside the window that began with "online": told at its end
    frame = await watching.recv_until(lambda f: f["type"] == "presence" and f["user_id"] == ann.id, timeout=8)
    assert frame["online"] is False and isinstance(frame["last_seen"], int)
    assert changes(watching, ann) == [False, True, False]
    assert changes(watching, bob) == [False]

    for bad in ({"type": "presence_subscribe", "user_ids": list(range(1, 202))},
                {"type": "presence_subscribe", "user_ids": "x"}):
        await watching.send_frame(bad)
        assert (await watching.recv_type("error"))["payload"]["code"] == 400
    await watching.close()
