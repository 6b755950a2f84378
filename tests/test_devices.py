"""Every device of a user online at once (issue 13), over real sockets against the embedded system
(memory engine; tests/test_distributed.py runs devices on two gateways over Redis).

Each device has its own socket and its own cursors: a device that goes away catches up alone, from
where it was, while the others stay live; a device never seen before starts from the user's read
state; a message sent from one device reaches the others as `chat` and the sending device gets the
`ack`; the same device again replaces its older socket (4009); one device past
`limits.devices_per_user` closes the one connected longest ago (4011); a device unseen for
`limits.device_ttl` is forgotten. A client that names no device is the device `default`, which keeps
the user's own cursors: GoStacker's clients behave as before (the flow tests run them unchanged).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
from sqlalchemy import update

from pystacker.db.schema import devices
from pystacker.db.sqlutil import utcnow
from pystacker.messaging.frames import CloseCode
from tests.client import User
from tests.conftest import TEST_LIMITS, embedded_system
from tests.ws import Api, Client, make_room, open_api, poll, send_http, ws_url

DEVICE_LIMIT = 3
BACKLOG = 50


@pytest.fixture(scope="module")
async def devices_system(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    async with embedded_system(tmp_path_factory.mktemp("devices"), limits={
            **TEST_LIMITS, "devices_per_user": DEVICE_LIMIT, "device_backlog": BACKLOG}) as system:
        yield system


@pytest.fixture
async def api(devices_system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(devices_system) as api:
        yield api


def seqs(client: Client, room_id: int) -> list[int]:
    """Every chat of the room this socket received, duplicates included, in arrival order."""
    return [c["seq"] for c in client.chats if c["room_id"] == room_id]


async def send_range(api: Api, sender: User, room_id: int, count: int) -> list[dict]:
    return [await send_http(api.send, sender, room_id, f"m{i}") for i in range(count)]


async def test_two_devices_get_everything_once_in_order_and_one_catches_up_alone(api: Api) -> None:
    alice, bob = await api.users(2, "dv")
    room_id = await make_room(api.meta, bob, [alice])
    phone = await api.connect(alice, device="phone")
    laptop = await api.connect(alice, device="Laptop (Firefox)")
    assert phone.frames[0]["device_id"] == "phone" and laptop.frames[0]["device_id"] == "Laptop (Firefox)"

    await send_range(api, bob, room_id, 150)
    await phone.collect(150, room_id=room_id)
    await api.settle(phone)  # its position is confirmed, so the catch-up starts exactly after it
    await phone.close()
    await poll(lambda: api.gateway_service.connection(alice.id, "phone") is None, "the phone gone")

    await send_range(api, bob, room_id, 200)
    await laptop.collect(350, room_id=room_id)
    phone_again = await api.connect(alice, device="phone")
    await phone_again.collect(200, room_id=room_id)
    assert [f["type"] for f in phone_again.frames[1:]][0] == "batch"  # its own catch-up, from its cursor

    await send_range(api, bob, room_id, 150)
    await laptop.collect(500, room_id=room_id)
    await phone_again.collect(350, room_id=room_id)
    assert seqs(laptop, room_id) == list(range(1, 501))  # live all along: exactly once, in order
    assert seqs(phone, room_id) == list(range(1, 151))
    assert seqs(phone_again, room_id) == list(range(151, 501))

    # The user's `default` device (a GoStacker client) has cursors of its own: it was never sent
    # anything, so it gets the whole conversation, and the phone's catch-up did not move it.
    default = await api.connect(alice)
    await default.collect(500, room_id=room_id, timeout=20)
    assert seqs(default, room_id) == list(range(1, 501))
    for client in (laptop, phone_again, default):
        await client.close()


async def test_a_message_from_one_device_reaches_the_others_and_the_sender_gets_its_ack(api: Api) -> None:
    alice, bob = await api.users(2, "dv")
    room_id = await make_room(api.meta, alice, [bob])
    phone = await api.connect(alice, device="phone")
    laptop = await api.connect(alice, device="laptop")
    other = await api.connect(bob)
    await phone.send_chat(room_id, "from the phone", client_msg_id="c-1")
    accepted = await phone.recv_type("send_ok")
    msg_id = accepted["id"]
    ack = await phone.recv_until(lambda f: f["type"] == "ack" and f["id"] == msg_id)
    assert ack["client_msg_id"] == "c-1"
    for client in (laptop, other):
        chat = await client.recv_until(lambda f: f["type"] == "chat" and f["id"] == msg_id)
        assert chat["sender_id"] == alice.id and chat["payload"] == {"text": "from the phone"}
    await phone.collect(1, room_id=room_id)  # the sending device has the message in its room order too

    # Over HTTP, `X-Device-Id` names the sending device: the laptop gets this ack, not the phone.
    answer = await api.send.post("/api/chat/send_message", {"room_id": room_id, "content": {"type": "text", "text": "x"}},
                                 token=alice.token, headers={"X-Device-Id": "laptop"})
    assert answer.status == 200, answer
    second = answer.data["msgID"]
    await laptop.recv_until(lambda f: f["type"] == "ack" and f["id"] == second)
    await phone.collect(2, room_id=room_id)
    await other.collect(2, room_id=room_id)
    await phone.expect_silence(lambda f: f["type"] == "ack" and f["id"] == second, within=0.5)
    for client in (phone, laptop, other):
        await client.close()


async def test_the_same_device_replaces_its_socket_and_the_others_stay(api: Api) -> None:
    alice, bob = await api.users(2, "dv")
    room_id = await make_room(api.meta, bob, [alice])
    first = await api.connect(alice, device="tablet")
    laptop = await api.connect(alice, device="laptop")
    second = await api.connect(alice, device="tablet")
    assert await first.wait_closed() == CloseCode.REPLACED
    await send_http(api.send, bob, room_id, "after the replacement")
    for client in (second, laptop):
        await client.collect(1, room_id=room_id)
    assert sorted(api.gateway_service.users[alice.id]) == ["laptop", "tablet"]
    await second.close()
    await laptop.close()


async def test_one_device_past_the_limit_closes_the_one_connected_longest_ago(api: Api) -> None:
    alice, bob = await api.users(2, "dv")
    room_id = await make_room(api.meta, bob, [alice])
    clients = [await api.connect(alice, device=f"d{i}") for i in range(DEVICE_LIMIT)]
    newest = await api.connect(alice, device="one-more")
    assert await clients[0].wait_closed() == CloseCode.DEVICE_LIMIT
    await send_http(api.send, bob, room_id, "to the devices left")
    for client in [*clients[1:], newest]:
        await client.collect(1, room_id=room_id)
    assert sorted(api.gateway_service.users[alice.id]) == ["d1", "d2", "one-more"]
    for client in [*clients[1:], newest]:
        await client.close()


async def test_a_device_never_seen_starts_from_the_read_state_with_a_bounded_backlog(api: Api) -> None:
    alice, bob = await api.users(2, "dv")
    far_behind = await make_room(api.meta, bob, [alice])
    nearly_read = await make_room(api.meta, bob, [alice])
    await send_range(api, bob, far_behind, 100)
    await send_range(api, bob, nearly_read, 100)
    for room_id, seq in ((far_behind, 30), (nearly_read, 90)):
        answer = await api.send.post("/api/chat/read", {"room_id": room_id, "seq": seq}, token=alice.token)
        assert answer.status == 200, answer

    laptop = await api.connect(alice, device="new-laptop")
    # At most BACKLOG messages after the read seq: 51..100 where 70 are unread, 91..100 where 10 are.
    await laptop.collect(50 + 10, timeout=20)
    assert seqs(laptop, far_behind) == list(range(100 - BACKLOG + 1, 101))
    assert seqs(laptop, nearly_read) == list(range(91, 101))
    await laptop.close()


async def test_a_device_unseen_for_the_ttl_is_forgotten_and_starts_again_as_new(api: Api) -> None:
    alice, bob = await api.users(2, "dv")
    room_id = await make_room(api.meta, bob, [alice])
    await send_range(api, bob, room_id, 5)
    old = await api.connect(alice, device="old-phone")
    await old.collect(5, room_id=room_id)
    await api.settle(old)
    await old.close()
    await poll(lambda: api.gateway_service.connection(alice.id, "old-phone") is None, "the phone gone")
    await send_range(api, bob, room_id, 3)  # seqs 6..8: unread, and past the phone's cursor

    flusher = api.system.flusher
    async with api.system.runtime.sql.begin() as conn:
        await conn.execute(update(devices).where(devices.c.user_id == alice.id).values(
            last_seen_at=utcnow() - timedelta(seconds=api.system.config.limits.device_ttl + 60)))
    assert await flusher.forget_unseen_devices() == 1
    # A gateway keeps device keys for an hour after it last read them from SQL, and marks connected
    # devices seen every hour: a device unseen for the TTL is never in its memory. Here the TTL was
    # faked a moment after the phone connected, so the memory is emptied as the hour would have.
    api.system.runtime.parts.devices._keys.clear()  # noqa: SLF001
    # Alice read up to 2: as a new device again, the phone gets 3..8, not only 6..8 from its old cursor.
    assert (await api.send.post("/api/chat/read", {"room_id": room_id, "seq": 2}, token=alice.token)).status == 200
    again = await api.connect(alice, device="old-phone")
    await again.collect(6, room_id=room_id)
    assert seqs(again, room_id) == [3, 4, 5, 6, 7, 8]
    await again.close()


# A control character or a space at either end cannot travel in a header (the client refuses the
# one, HTTP drops the other): those go in the query only.
BAD_DEVICE_IDS = [(where, device) for where in ("query", "header") for device in ("x" * 65, "a\tb", "é")] + [
    ("query", "a\x7fb"), ("query", " lead"), ("query", "trail ")]


@pytest.mark.parametrize(("where", "device"), BAD_DEVICE_IDS)
async def test_a_bad_device_id_is_refused_before_the_upgrade(api: Api, where: str, device: str) -> None:
    (alice,) = await api.users(1, "dv")
    headers = {"Authorization": f"Bearer {alice.token}"}
    params = {}
    if where == "query":
        params["device_id"] = device
    else:
        headers["X-Device-Id"] = device
    try:
        await api.session.ws_connect(ws_url(api.gateway_url), headers=headers, params=params)
    except aiohttp.WSServerHandshakeError as refused:
        assert refused.status == 400
    else:
        raise AssertionError("the socket opened")
