"""The gateway's two ways to a socket, the writer task (catch-up, gap fill, a busy socket) and the
fast path (the next message of a room, written from `offer`), hand over without reordering or
repeating: whatever order the inbox entries come in, the client reads each message once, in seq order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pystacker.messaging.model import PushEntry
from tests.ws import Api, make_room, open_api, send_http


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


async def test_entries_out_of_order_and_repeated_reach_the_socket_once_in_seq_order(api: Api) -> None:
    alice, bob = await api.users(2, "paths")
    room_id = await make_room(api.meta, alice, [bob])
    for i in range(1, 6):  # bob has no socket yet: nothing is pushed to him
        await send_http(api.send, alice, room_id, f"m{i}")
    bob_ws = await api.connect(bob, catchup=False)
    conn = api.gateway_service.connection(bob.id)
    stored = await conn.history.after(room_id, 0, 10)
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5]
    # 3 first: the room is new to the connection and 1-2 are missing, so the writer fills the gap;
    # 4 is offered while it works; 2 and 4 again are duplicates; 5 may take the fast path.
    for seq in (3, 4, 2, 4, 5):
        await api.gateway_service.dispatch(PushEntry.for_message(stored[seq - 1], [bob.id]), None)
    marker = await send_http(api.send, alice, room_id, "marker")  # seq 6, pushed live
    seqs: list[int] = []
    while not seqs or seqs[-1] != 6:
        frame = await bob_ws.recv_until(lambda f: f["type"] == "chat" and f["room_id"] == room_id)
        seqs.append(frame["seq"])
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert frame["id"] == marker["msgID"]
    await bob_ws.close()
