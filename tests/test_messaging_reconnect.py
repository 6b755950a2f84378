"""Reconnects: during a stream (graceful and abrupt, server catch-up or client `sync`), and a
same-gateway reconnect while the old socket is still open (spec 13.2 #16)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pystacker.gateway.delivery import State
from pystacker.messaging.frames import CloseCode
from tests.conftest import embedded_system
from tests.ws import Api, Client, Closed, dedup, make_room, open_api, poll, send_http

STREAM = 200
CYCLE = 25  # messages a receiver reads before it drops its socket again
AWAY = 8  # messages sent while it is away, before it reconnects


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


class Stream:
    """A sender posting STREAM messages one after another over HTTP, with a counter to wait on and
    a gate to hold it between two messages."""

    def __init__(self, api: Api, sender, room_id: int) -> None:  # type: ignore[no-untyped-def]
        self.api, self.sender, self.room_id = api, sender, room_id
        self.sent: list[dict] = []
        self.changed = asyncio.Condition()
        self.gate = asyncio.Event()
        self.gate.set()
        self.parked = asyncio.Event()  # set while the sender waits at the closed gate
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for i in range(STREAM):
            if not self.gate.is_set():
                self.parked.set()
                await self.gate.wait()
                self.parked.clear()
            answer = await send_http(self.api.send, self.sender, self.room_id, f"stream {i}")
            async with self.changed:
                self.sent.append(answer)
                self.changed.notify_all()

    async def hold(self) -> None:
        """Stop the sender between two messages (or at its end)."""
        self.gate.clear()
        parked = asyncio.ensure_future(self.parked.wait())
        await asyncio.wait([parked, self.task], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        parked.cancel()
        assert self.parked.is_set() or self.task.done()

    async def wait_sent(self, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.sent) >= min(count, STREAM)), 10)

    @property
    def done(self) -> bool:
        return self.task.done()


async def sync_from(client: Client, room_id: int, after_seq: int) -> None:
    """A new client's catch-up: `sync` frames from its last seq until has_more is false."""
    while True:
        ref = f"sync-{after_seq}"
        await client.send_frame({"type": "sync", "room_id": room_id, "after_seq": after_seq, "limit": 50, "ref": ref})
        answer = await client.recv_until(lambda f, ref=ref: f["type"] == "batch" and f.get("ref") == ref)
        assert answer["sync_room_id"] == room_id
        assert [c["seq"] for c in answer["payload"]] == list(range(after_seq + 1, after_seq + 1 + len(answer["payload"])))
        if not answer["has_more"]:
            return
        after_seq = answer["payload"][-1]["seq"]


@pytest.mark.parametrize("mode", ["catchup", "sync", "acks"])
async def test_receiver_reconnects_during_a_stream(api: Api, mode: str) -> None:
    """The receiver reads CYCLE messages, drops its socket (alternately with a close handshake and by
    cutting TCP), stays away while the sender posts AWAY more, reconnects, and so on.

    - catchup: a GoStacker client; the server's catch-up (`batch` frames from its cursor) fills the gap.
      It has no way to say what it got, so the server counts a frame written to its socket as
      delivered: the stream is held while it drops its socket with nothing unread on the wire (a
      frame in flight then would be lost for such a client: see the acks mode);
    - sync: `?catchup=0` and `sync` frames from the client's own last seq;
    - acks: a client that acknowledges by seq and drops its socket with frames still unread on it
      (the server wrote them, the client never got them): its cursor moves by its acks only, so the
      catch-up sends them again.
    """
    alice, bob = await api.users(2, "strm")
    room_id = await make_room(api.meta, alice, [bob])
    stream = Stream(api, alice, room_id)
    received: list[dict] = []  # every chat of every socket, in arrival order, duplicates included
    cycles = mid_stream = 0
    unread: list[int] = []  # per cycle: frames the server wrote to the socket that the client never read
    abrupt = False

    def unique_count(client: Client) -> int:
        return len({c["id"] for c in received} | {c["id"] for c in client.chats})

    while True:
        last = max((c["seq"] for c in received), default=0)
        client = await api.connect(bob, catchup=(mode != "sync"))
        if mode == "acks":
            await client.send_frame({"type": "ack", "room_id": room_id, "seq": last})
        if mode == "sync":
            await sync_from(client, room_id, last)
        target = min(unique_count(client) + CYCLE, STREAM)
        try:
            while unique_count(client) < target:
                await client.recv(10)
            if mode == "acks":
                await client.send_frame({"type": "ack", "room_id": room_id, "seq": max(c["seq"] for c in client.chats)})
                await client.send_frame({"type": "ping", "ref": "acked"})  # frames are handled in order:
                await client.recv_until(lambda f: f["type"] == "pong")  # the pong follows the ack
        except Closed:
            raise AssertionError(f"the server closed the socket: {client.closed_code}") from None
        except TimeoutError:
            have = sorted({c["seq"] for c in received} | {c["seq"] for c in client.chats})
            missing = sorted(set(range(1, len(stream.sent) + 1)) - set(have))
            raise AssertionError(f"stalled in cycle {cycles}: {len(stream.sent)} sent, missing seqs {missing}, "
                                 f"this socket got {[c['seq'] for c in client.chats]}") from None
        if mode == "catchup":
            await stream.hold()
            while unique_count(client) < len(stream.sent):
                await client.recv(10)
        received += client.chats
        if len({c["id"] for c in received}) >= STREAM:
            await client.close()
            break
        cycles += 1
        mid_stream += not stream.done
        if mode == "acks":  # let frames pile up unread on the socket before dropping it
            conn = api.gateway_service.connection(bob.id)
            await stream.wait_sent(len(stream.sent) + AWAY)
            posted = len(stream.sent)
            await poll(lambda conn=conn, posted=posted: conn.sequencer.last(room_id) >= posted)  # all written
            # The client may read a few of them while it waits for its pong: what counts is that some
            # were written and never read when the socket went.
            unread.append(posted - max(c["seq"] for c in received))
        if abrupt:
            client.abort()
        else:
            await client.close()  # the client library drops frames that arrive before the close answer
        abrupt = not abrupt
        stream.gate.set()
        await stream.wait_sent(len(stream.sent) + AWAY)

    await stream.task
    unique = dedup(received)  # the first arrival of each id, in arrival order
    assert [c["seq"] for c in unique] == list(range(1, STREAM + 1))  # all, once, in seq order
    assert [c["id"] for c in unique] == [s["msgID"] for s in stream.sent]
    assert cycles >= 4 and mid_stream >= 4, (cycles, mid_stream)
    if mode == "acks":
        assert len(unread) == cycles and min(unread) > 0, unread  # every socket died with frames unread, all sent again


async def test_same_gateway_reconnect_keeps_the_new_socket(api: Api) -> None:
    alice, bob = await api.users(2, "swap")
    room_id = await make_room(api.meta, alice, [bob])
    gateway = api.gateway_service
    old = await api.connect(bob)
    first = await send_http(api.send, alice, room_id, "before the switch")
    await old.collect(1, room_id=room_id)
    await api.settle(old)

    old_conn = gateway.connection(bob.id)
    stream = Stream(api, alice, room_id)
    await stream.wait_sent(20)
    new = await api.connect(bob)  # the old socket is still open
    new_conn = gateway.connection(bob.id)
    assert new_conn is not old_conn
    # the old socket is told it was replaced; it reads what was already on its wire first
    assert await old.wait_closed() == CloseCode.REPLACED
    await stream.task
    await new.collect(STREAM - len(old.unique(room_id)) + 1, room_id=room_id, timeout=10)

    # GoStacker tore the new connection down when the old one's read loop ended: ours stays
    await poll(lambda: old_conn.transport.is_closing() and old_conn.state is State.CLOSED)  # the old one is fully gone
    assert gateway.connection(bob.id) is new_conn and not new.ws.closed
    routes = await api.system.runtime.engine.registry.get_routes([bob.id])
    assert routes[bob.id].status == "connected"
    after = await send_http(api.send, alice, room_id, "after the switch")
    chat = await new.recv_until(lambda f: f["type"] == "chat" and f["id"] == after["msgID"])
    assert chat["seq"] == STREAM + 2

    # nothing lost across the switch, nothing twice on the new socket, all in order
    both = old.unique(room_id) + new.unique(room_id)
    assert sorted({c["seq"] for c in both}) == list(range(1, STREAM + 3))
    assert new.seqs(room_id) == sorted(new.seqs(room_id))
    assert len(new.chats) == len(new.unique(room_id))
    assert both[0]["id"] == first["msgID"]
    await new.close()


async def test_reconnect_while_the_old_disconnect_is_still_being_recorded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old socket's disconnect (the reconnect lease in the registry) is slow, as a store round trip
    can be, and lands after the new socket's connect: the new socket must keep a live route (the
    lease is a compare-and-set on the old connection's route, so it writes nothing)."""
    alice, bob = await api.users(2, "lease")
    room_id = await make_room(api.meta, alice, [bob])
    gateway = api.gateway_service
    original = gateway.registry.disconnect_user
    reconnected, recorded = asyncio.Event(), asyncio.Event()

    async def slow_disconnect(user_id: int, gateway_id: str, device_id: str, **kwargs):  # type: ignore[no-untyped-def]
        if user_id != bob.id:
            return await original(user_id, gateway_id, device_id, **kwargs)
        await asyncio.wait_for(reconnected.wait(), 5)
        try:
            return await original(user_id, gateway_id, device_id, **kwargs)
        finally:
            recorded.set()

    monkeypatch.setattr(gateway.registry, "disconnect_user", slow_disconnect)
    old = await api.connect(bob)
    await old.close()
    new = await api.connect(bob)
    reconnected.set()
    await asyncio.wait_for(recorded.wait(), 5)

    async def route_connected() -> bool:
        route = (await api.system.runtime.engine.registry.get_routes([bob.id])).get(bob.id)
        return route is not None and route.status == "connected" and bob.id in gateway.users
    await poll(route_connected)
    sent = await send_http(api.send, alice, room_id, "live after the lease")
    chat = await new.recv_until(lambda f: f["type"] == "chat" and f["id"] == sent["msgID"], timeout=3)
    assert chat["payload"] == {"text": "live after the lease"}
    await new.close()


async def test_frames_a_gostacker_client_never_confirmed_are_sent_again(api: Api) -> None:
    """A client that never acks confirms by answering pings. Here its library never answers: every
    frame it was written is unconfirmed, so its next connection gets them all again (GoStacker's
    "written = delivered" lost frames still in flight when a socket died: spec 13.2 #17)."""
    alice, bob = await api.users(2, "probe")
    room_id = await make_room(api.meta, alice, [bob])
    deaf = await api.connect(bob, autoping=False)
    sent = [await send_http(api.send, alice, room_id, f"unconfirmed {i}") for i in range(5)]
    assert [c["seq"] for c in await deaf.collect(5, room_id=room_id)] == [1, 2, 3, 4, 5]
    await deaf.close()
    await poll(lambda: bob.id not in api.gateway_service.users)
    again = await api.connect(bob)
    got = await again.collect(5, room_id=room_id)
    assert [c["id"] for c in got] == [s["msgID"] for s in sent]


async def test_frames_confirmed_by_a_pong_are_not_sent_again(api: Api) -> None:
    alice, bob = await api.users(2, "probe")
    room_id = await make_room(api.meta, alice, [bob])
    hearing = await api.connect(bob)  # its library answers pings, as GoStacker's clients' do
    for i in range(5):
        await send_http(api.send, alice, room_id, f"confirmed {i}")
    await hearing.collect(5, room_id=room_id)
    cursors = api.system.runtime.engine.cursors
    conn = api.gateway_service.connection(bob.id)

    async def confirmed() -> bool:
        # The client library answers a ping only while it reads, as a real client does all along.
        try:
            await hearing.recv(0.05)
        except TimeoutError:
            pass
        # Confirmed positions reach the engine within a second (the gateway's cursor saver).
        return conn.unsaved.get(room_id) == 5 or await _saved(cursors, bob.id, room_id, 5)

    await poll(confirmed)
    await hearing.close()
    await poll(lambda: bob.id not in api.gateway_service.users)
    again = await api.connect(bob)
    after = await send_http(api.send, alice, room_id, "after the reconnect")
    first = await again.recv_until(lambda f: f["type"] in ("chat", "batch"))
    assert first["type"] == "chat" and first["id"] == after["msgID"], first


async def _saved(cursors, user_id: int, room_id: int, seq: int) -> bool:  # type: ignore[no-untyped-def]
    return (await cursors.get(user_id, [room_id])).get(room_id) == seq


async def test_a_socket_upgraded_while_the_gateway_drains_is_closed_with_1001(tmp_path: Path) -> None:
    """The drain (close_connections) sweeps the registered sockets; one whose upgrade was still
    under way is registered after the sweep and must be closed too, at once: left open, it held the
    server's shutdown until aiohttp's timeout, and its client saw 1006 instead of 1001."""
    async with embedded_system(tmp_path) as system, open_api(system) as api:
        (alice,) = await api.users(1, "dr")
        gateway = api.gateway_service
        entered, release = asyncio.Event(), asyncio.Event()
        original = gateway.devices.cursors_for

        async def held(user_id: int, device_id: str):  # type: ignore[no-untyped-def]
            entered.set()
            await release.wait()
            return await original(user_id, device_id)

        gateway.devices.cursors_for = held
        connecting = asyncio.create_task(api.connect(alice, welcome=False))
        await asyncio.wait_for(entered.wait(), 5)
        await gateway.close_connections()  # the sweep: nothing registered yet
        release.set()
        client = await asyncio.wait_for(connecting, 5)
        assert await client.wait_closed(timeout=5) == CloseCode.SHUTDOWN
