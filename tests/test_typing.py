"""Typing signals over real sockets (issue 14): forwarded to the room's other members on every
device, never to the typist, at most one per user and room per 3 s, refused for a non-member, and
shed first by a connection whose queue is more than half full."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pystacker.gateway.connection import RawFrame, RoomPush
from pystacker.messaging.acks import EntryTracker
from pystacker.messaging.model import DEFAULT_DEVICE
from pystacker.messaging.typing_signals import TYPING_INTERVAL, TypingPacer
from pystacker.observability.metrics import GatewayMetrics
from tests.ws import Api, make_room, open_api


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


def typing_of(frame: dict, room_id: int, user_id: int) -> bool:
    return frame["type"] == "typing" and frame["room_id"] == room_id and frame["user_id"] == user_id


async def test_typing_reaches_the_other_members_devices_once_per_interval(api: Api) -> None:
    alice, bob, carol, outsider = await api.users(4, "ty")
    room_id = await make_room(api.meta, alice, [bob, carol])
    typist = await api.connect(alice, device="phone")
    typist_laptop = await api.connect(alice, device="laptop")
    bob_phone = await api.connect(bob, device="phone")
    bob_laptop = await api.connect(bob, device="laptop")
    carol_socket = await api.connect(carol)

    await typist.send_frame({"type": "typing", "room_id": room_id})
    for client in (bob_phone, bob_laptop, carol_socket):
        frame = await client.recv_until(lambda f: f["type"] == "typing")
        assert frame == {"id": -1, "type": "typing", "room_id": room_id, "sender_id": alice.id, "payload": None,
                         "user_id": alice.id}

    # Again at once, from either of her devices: within the interval, dropped.
    await typist.send_frame({"type": "typing", "room_id": room_id})
    await typist_laptop.send_frame({"type": "typing", "room_id": room_id})
    await typist.send_frame({"type": "ping", "ref": "after"})
    await typist.recv_until(lambda f: f["type"] == "pong")  # the frames before it were handled
    await bob_phone.expect_silence(lambda f: typing_of(f, room_id, alice.id), within=0.5)
    # The typist's own devices never get her signal.
    await typist_laptop.expect_silence(lambda f: f["type"] == "typing", within=0.2)

    await outsider_typing_is_refused(api, outsider, room_id)
    for client in (typist, typist_laptop, bob_phone, bob_laptop, carol_socket):
        await client.close()


async def outsider_typing_is_refused(api: Api, outsider, room_id: int) -> None:  # type: ignore[no-untyped-def]
    client = await api.connect(outsider)
    await client.send_frame({"type": "typing", "room_id": room_id})
    error = await client.recv_type("error")
    assert error["payload"]["code"] == 403, error
    await client.send_frame({"type": "typing", "room_id": "x"})
    assert (await client.recv_type("error"))["payload"]["code"] == 400
    await client.close()


def test_the_pacer_lets_one_signal_per_user_and_room_per_interval() -> None:
    now = [100.0]
    pacer = TypingPacer(clock=lambda: now[0], max_keys=2)
    assert pacer.allow(1, 10) and pacer.allow(2, 10) and not pacer.allow(1, 10)
    now[0] += TYPING_INTERVAL - 0.01
    assert not pacer.allow(1, 10)
    now[0] += 0.02
    assert pacer.allow(1, 10)
    assert pacer.allow(3, 10) and len(pacer._last) == 2  # noqa: SLF001 - the bound


def test_a_connection_more_than_half_full_sheds_typing_first() -> None:
    """The queue rule itself, on a connection whose writer has not started (so nothing leaves the
    queue): typing goes in while the queue is at most half full, is dropped past that, and messages
    still go in up to the bound."""
    from pystacker.gateway.connection import Connection

    conn = Connection(7, None, queue_size=10, history=None, cursors=None, tracker=EntryTracker(),  # type: ignore[arg-type]
                      device_id=DEFAULT_DEVICE, metrics=GatewayMetrics("test-typing"))
    typing = RawFrame('{"type":"typing"}', sheddable=True)
    assert conn.offer(typing) and len(conn.queue) == 1
    for seq in range(1, 5):
        assert conn.offer(RoomPush(1, seq, "{}"))
    assert conn.offer(typing) and len(conn.queue) == 6  # 5 of 10: not more than half
    assert conn.offer(RoomPush(1, 5, "{}"))
    assert conn.offer(typing) and len(conn.queue) == 7  # 6 of 10: shed
    assert conn.offer(RawFrame('{"type":"ack"}')) and len(conn.queue) == 8  # the others still go in
