"""The gateway's two ways to a socket, the writer task (catch-up, gap fill, a busy socket) and the
fast path (the next message of a room, written from `offer`), hand over without reordering or
repeating: whatever order the inbox entries come in, the client reads each message once, in seq order.
And the connection's own heartbeat keeps GoStacker's ping and pong deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from pystacker.messaging.model import PushEntry
from tests.conftest import embedded_system
from tests.ws import Api, make_room, open_api, poll, send_http


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


async def test_the_heartbeat_keeps_a_client_that_answers_and_drops_one_that_does_not(tmp_path: Path) -> None:
    """GoStacker's contract, kept by the connection itself: a ping after `ping_interval` of silence,
    and a client not heard from for `pong_deadline` dropped without a close frame (1006)."""
    async with embedded_system(tmp_path, websocket={"ping_interval": 0.2, "pong_deadline": 0.6}) as system, \
            open_api(system) as api:
        hearing, deaf = await api.users(2, "beat")
        answering = await api.connect(hearing, autoping=False)
        # It answers every ping, for seven ping intervals; anything else (a close) fails the test.
        listening = asyncio.create_task(answer_pings(answering.ws, time.monotonic() + 1.4))
        silent = await api.connect(deaf, autoping=False)  # reads, and never answers
        ping = await silent.ws.receive(timeout=5)
        assert ping.type is aiohttp.WSMsgType.PING and ping.data == b""
        assert await silent.wait_closed(timeout=5) == 1006
        await poll(lambda: deaf.id not in api.gateway_service.users)
        assert await listening >= 2
        assert hearing.id in api.gateway_service.users and not answering.ws.closed
        await answering.close()


async def answer_pings(ws: aiohttp.ClientWebSocketResponse, deadline: float) -> int:
    """Answer the server's pings until `deadline`; returns how many came. Anything else is an error."""
    pings = 0
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await ws.receive(timeout=left)
        except TimeoutError:
            break
        assert message.type is aiohttp.WSMsgType.PING, message
        await ws.pong(message.data)
        pings += 1
    return pings
