"""Rate limits and the internal token, over real HTTP and WebSocket against an embedded system with
tiny limits and an internal token of the test's own (`pystacker up` making its own is in
tests/test_up_internal_token.py).

The refill rates are so low (one token per 1000 s) that nothing refills during a test: each
expectation is a count, not a timing. Login tests come from distinct loopback source addresses
(127.0.0.x) so that each has its own per-address bucket whatever the order the tests run in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import embedded_system
from tests.internal_routes import assert_internal_routes_need
from tests.ws import Api, make_room, open_api, send_http, text

SLOW = 0.001  # tokens per second: no refill within a test
SEND_BURST = 3
LOGIN_BURST = 2
LOGIN_ADDRESS_BURST = 5
REGISTER_ADDRESS_BURST = 4
ROOM_CHANGE_BURST = 4
INTERNAL_TOKEN = "security-test-internal-token-0123456789"


@pytest.fixture(scope="module")
async def limited_system(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    async with embedded_system(
            tmp_path_factory.mktemp("limited"), internal={"token": INTERNAL_TOKEN},
            limits={"send_rate": SLOW, "send_burst": SEND_BURST, "login_rate": SLOW, "login_burst": LOGIN_BURST,
                    "login_address_rate": SLOW, "login_address_burst": LOGIN_ADDRESS_BURST,
                    # Every user of these tests is registered from 127.0.0.1: the registration limit has
                    # a system of its own (registration_limited_system).
                    "register_address_rate": 0,
                    "room_change_rate": SLOW, "room_change_burst": ROOM_CHANGE_BURST}) as system:
        yield system


@pytest.fixture(scope="module")
async def registration_limited_system(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    async with embedded_system(tmp_path_factory.mktemp("register-limited"),
                               limits={"register_address_rate": SLOW,
                                       "register_address_burst": REGISTER_ADDRESS_BURST}) as system:
        yield system


@pytest.fixture
async def api(limited_system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(limited_system) as api:
        yield api


async def post_from(system: Any, source: str, path: str, body: Any) -> tuple[int, Any, str | None]:
    """POST to meta from a given loopback source address: (status, body, Retry-After)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(system.urls["meta"] + path, json=body) as response:
            return response.status, await response.json(content_type=None), response.headers.get("Retry-After")


async def login_from(system: Any, source: str, username: str, password: str) -> tuple[int, Any, str | None]:
    return await post_from(system, source, "/login", {"username": username, "password": password})


# -- sends ----------------------------------------------------------------------------------------


async def test_http_and_websocket_sends_share_the_users_bucket(api: Api) -> None:
    alice, bob = await api.users(2, "rl")
    room_id = await make_room(api.meta, alice, [bob])
    ws = await api.connect(alice)
    try:
        for _ in range(SEND_BURST - 1):
            await send_http(api.send, alice, room_id, text())
        await ws.send_chat(room_id, text(), ref="last-allowed")
        ok = await ws.recv_type("send_ok")
        assert ok["payload"]["ref"] == "last-allowed"
        # the bucket is empty: HTTP refused with Retry-After...
        refused = await api.send.post("/api/chat/send_message",
                                      {"room_id": room_id, "content": {"type": "text", "text": "x"}}, token=alice.token)
        assert refused.status == 429 and refused.body["code"] == 429 and refused.body["msg"], refused
        # ...and the WebSocket `send` gets an error frame with retry_after, the socket staying open
        await ws.send_chat(room_id, text(), ref="over")
        error = await ws.recv_type("error")
        assert error["payload"]["code"] == 429 and error["payload"]["ref"] == "over"
        assert error["payload"]["retry_after"] >= 1
        await ws.send_frame({"type": "ping", "ref": "still-open"})
        assert (await ws.recv_type("pong"))["payload"] == "still-open"
        # another user has his own bucket
        assert (await send_http(api.send, bob, room_id, text()))["msgID"] > 0
    finally:
        await ws.close()


async def test_http_send_429_carries_retry_after(api: Api) -> None:
    (carol,) = await api.users(1, "rl")
    room_id = await make_room(api.meta, carol, [])
    body = {"room_id": room_id, "content": {"type": "text", "text": "x"}}
    statuses = []
    async with api.session.post(api.send.base_url + "/api/chat/send_message", json=body,
                                headers={"Authorization": f"Bearer {carol.token}"}) as response:
        statuses.append(response.status)
    for _ in range(SEND_BURST):
        async with api.session.post(api.send.base_url + "/api/chat/send_message", json=body,
                                    headers={"Authorization": f"Bearer {carol.token}"}) as response:
            statuses.append(response.status)
            retry_after = response.headers.get("Retry-After")
    assert statuses == [200] * SEND_BURST + [429]
    # one token per 1000 s: about 1000 s to wait, in whole seconds
    assert retry_after is not None and 900 <= int(retry_after) <= 1000


async def test_a_malformed_send_costs_no_token(api: Api) -> None:
    (dave,) = await api.users(1, "rl")
    room_id = await make_room(api.meta, dave, [])
    for _ in range(SEND_BURST + 2):
        bad = await api.send.post("/api/chat/send_message", {"room_id": room_id}, token=dave.token)
        assert bad.status == 400
    for _ in range(SEND_BURST):
        await send_http(api.send, dave, room_id, text())


# -- logins ---------------------------------------------------------------------------------------


async def test_logins_are_limited_per_username(api: Api, limited_system) -> None:  # type: ignore[no-untyped-def]
    (erin,) = await api.users(1, "rl")
    for _ in range(LOGIN_BURST):
        status, body, _ = await login_from(limited_system, "127.0.0.2", erin.username, erin.password)
        assert status == 200 and body["data"]["token"], body
    # even with the right password, from another address
    status, body, retry_after = await login_from(limited_system, "127.0.0.3", erin.username, erin.password)
    assert status == 429 and body["code"] == 429 and "user" in body["msg"], body
    assert retry_after is not None and int(retry_after) >= 1
    # wrong passwords count too, and an unknown name is limited like a known one (no existence leak)
    ghost = "rl-ghost-" + text()
    answers = [await login_from(limited_system, "127.0.0.4", ghost, "wrong-password") for _ in range(LOGIN_BURST + 1)]
    assert [a[0] for a in answers] == [401] * LOGIN_BURST + [429]


async def test_logins_are_limited_per_address(api: Api, limited_system) -> None:  # type: ignore[no-untyped-def]
    (frank,) = await api.users(1, "rl")
    source = "127.0.0.5"
    statuses = []
    for _ in range(LOGIN_ADDRESS_BURST):  # distinct names: only the address bucket is shared
        status, _, _ = await login_from(limited_system, source, "rl-nobody-" + text(), "wrong-password")
        statuses.append(status)
    assert statuses == [401] * LOGIN_ADDRESS_BURST
    status, body, retry_after = await login_from(limited_system, source, frank.username, frank.password)
    assert status == 429 and "address" in body["msg"] and retry_after is not None, body
    # another address is not affected
    status, body, _ = await login_from(limited_system, "127.0.0.6", frank.username, frank.password)
    assert status == 200, body


# -- the internal token ---------------------------------------------------------------------------


async def test_internal_routes_need_the_token(api: Api) -> None:
    (grace,) = await api.users(1, "rl")
    await assert_internal_routes_need(INTERNAL_TOKEN, api.send, api.registry, api.gateway, grace.id)


# -- registrations and room changes ---------------------------------------------------------------------


async def test_a_registration_flood_from_one_address_gets_429(registration_limited_system) -> None:  # type: ignore[no-untyped-def]
    source = "127.0.0.7"

    async def register(source: str) -> tuple[int, Any, str | None]:
        return await post_from(registration_limited_system, source, "/register",
                               {"username": "rl-reg-" + text(), "password": "password-1"})

    answers = [await register(source) for _ in range(REGISTER_ADDRESS_BURST + 2)]
    assert [a[0] for a in answers] == [200] * REGISTER_ADDRESS_BURST + [429, 429], answers
    status, body, retry_after = answers[-1]
    assert body["code"] == 429 and "registrations from this address" in body["msg"], body
    assert retry_after is not None and int(retry_after) >= 1
    # a malformed registration is a 400 and costs nothing; another address has its own bucket
    assert (await post_from(registration_limited_system, "127.0.0.8", "/register", {"username": ""}))[0] == 400
    assert [(await register("127.0.0.8"))[0] for _ in range(REGISTER_ADDRESS_BURST)] == [200] * REGISTER_ADDRESS_BURST


async def test_room_and_membership_changes_share_the_users_bucket(api: Api) -> None:
    owner, joiner, other = await api.users(3, "rl")
    room_id = await make_room(api.meta, owner, [])  # 1 of the owner's bucket
    assert (await api.meta.post("/api/chat/group/add_member", {"room_id": room_id, "member_id": joiner.id},
                                token=owner.token)).status == 200
    assert (await api.meta.post("/api/chat/group/change_nickname", {"room_id": room_id, "nickname": "boss"},
                                token=owner.token)).status == 200
    # a malformed request costs nothing
    assert (await api.meta.post("/api/chat/group/create", {"name": 5}, token=owner.token)).status == 400
    created = await api.meta.post("/api/chat/group/create", {"name": "last", "is_group": True, "member_ids": []},
                                  token=owner.token)
    assert created.status == 200, created
    for path, body in (("/api/chat/group/create", {"name": "over", "is_group": True, "member_ids": []}),
                       ("/api/chat/group/remove_member", {"room_id": room_id, "target_user_id": joiner.id}),
                       ("/api/chat/group/join/request", {"room_id": room_id, "message": "hi"})):
        refused = await api.meta.post(path, body, token=owner.token)
        assert refused.status == 429 and "room and membership changes" in refused.msg, (path, refused)
    # the joiner, and anyone else, has his own bucket
    assert (await api.meta.post("/api/chat/group/leave", {"room_id": room_id}, token=joiner.token)).status == 200
    assert (await api.meta.post("/api/chat/group/join", {"room_id": room_id}, token=other.token)).status == 200
