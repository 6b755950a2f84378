"""The client SDK (pystacker.client) against the embedded system over real sockets, and its pure parts.

Nothing sleeps to synchronise: waits are on the session's own items or events, or polls with a deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pystacker.client import (Backoff, ChatMessage, Delivered, InOrderInbox, Offer, PyStackerClient, PyStackerError,
                              PresenceEvent, ReadEvent, Session, SessionClosed, SessionFailed, TypingEvent,
                              user_id_from_token)
from pystacker.gateway.app import GATEWAY_SERVICE
from pystacker.messaging.frames import CloseCode
from tests.ws import poll

TIMEOUT = 5.0
PASSWORD = "password-1"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def fast_backoff(**kwargs: Any) -> Backoff:
    return Backoff(initial=kwargs.pop("initial", 0.05), max_delay=kwargs.pop("max_delay", 0.3), **kwargs)


async def eventually(condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    await poll(condition, what, timeout=timeout)


async def drain(session: Session, count: int, timeout: float = TIMEOUT) -> list[ChatMessage]:
    """Exactly the next `count` chat messages (Delivered events skipped)."""
    got: list[ChatMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        item = await session.receive(timeout=max(deadline - time.monotonic(), 0.001))
        if isinstance(item, ChatMessage):
            got.append(item)
    return got


async def assert_quiet(session: Session, room_id: int, sender: PyStackerClient) -> None:
    """Nothing else is pending for `room_id`: a marker sent now is the very next message."""
    marker = unique("marker-")
    await sender.send(room_id, marker)
    (item,) = await drain(session, 1)
    assert item.text == marker, f"expected the marker, got {item}"


def gateway(system: Any) -> Any:
    return system.apps["gateway"][GATEWAY_SERVICE]


@pytest.fixture
async def make_client(system: Any) -> AsyncIterator[Callable[..., Any]]:
    """Factory: a registered, logged-in client (closed after the test, with its sessions)."""
    clients: list[PyStackerClient] = []
    sessions: list[Session] = []
    urls = system.urls

    async def make(prefix: str = "u") -> PyStackerClient:
        client = PyStackerClient(urls["meta"], urls["send"], urls["registry"], timeout=TIMEOUT)
        clients.append(client)
        name = unique(prefix)
        user_id = await client.register(name, PASSWORD, nickname=prefix)
        await client.login(name, PASSWORD)
        assert client.user_id == user_id
        original = client.connect

        async def connect(**options: Any) -> Session:
            options.setdefault("backoff", fast_backoff())
            session = await original(**options)
            sessions.append(session)
            return session

        client.connect = connect  # type: ignore[method-assign]
        return client

    yield make
    for session in sessions:
        await session.close()
    for client in clients:
        await client.close()


async def room_of(owner: PyStackerClient, *others: PyStackerClient) -> int:
    return await owner.create_room(unique("room-"), [o.user_id for o in others])  # type: ignore[misc]


# -- HTTP --------------------------------------------------------------------------------------------


async def test_register_login_and_rooms(make_client: Any, system: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    assert alice.user_id and bob.user_id and alice.user_id != bob.user_id
    assert user_id_from_token(alice.token) == alice.user_id

    room = await alice.create_room("lounge", [bob.user_id])
    assert room in await alice.joined_rooms() and room in await bob.joined_rooms()
    members = {m.user_id: m for m in await bob.members(room)}
    assert set(members) == {alice.user_id, bob.user_id}
    assert members[alice.user_id].username.startswith("alice")
    info = await bob.room_info(room)
    assert (info.name, info.is_group, info.member_count) == ("lounge", True, 2)

    carol = await make_client("carol")
    await carol.join(room)
    assert room in await carol.joined_rooms()
    dave = await make_client("dave")
    await alice.add_members(room, [dave.user_id])
    assert dave.user_id in {m.user_id for m in await alice.members(room)}


async def test_errors_carry_status_and_server_text(make_client: Any, system: Any) -> None:
    alice = await make_client("alice")
    urls = system.urls
    async with PyStackerClient(urls["meta"], urls["send"], urls["registry"]) as anonymous:
        with pytest.raises(PyStackerError) as wrong:
            await anonymous.login(unique("nobody"), "wrong-password")
        assert (wrong.value.status, wrong.value.msg) == (401, "Invalid username or password")
        name = unique("dup")
        await anonymous.register(name, PASSWORD)
        with pytest.raises(PyStackerError) as duplicate:
            await anonymous.register(name, PASSWORD)
        assert duplicate.value.status == 409
        with pytest.raises(PyStackerError) as no_token:
            await anonymous.joined_rooms()
        assert no_token.value.status == 401
    outsider = await make_client("eve")
    room = await room_of(alice)
    with pytest.raises(PyStackerError) as not_member:
        await outsider.send(room, "let me in")
    assert not_member.value.status == 403
    async with PyStackerClient("http://127.0.0.1:1", urls["send"], urls["registry"], timeout=1) as unreachable:
        with pytest.raises(PyStackerError) as down:
            await unreachable.login("someone", PASSWORD)
        assert down.value.status == 0


async def test_http_send_idempotency_and_history(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    first = await alice.send(room, "one")
    assert (first.room_id, first.seq, first.duplicate) == (room, 1, False)
    again = await alice.send(room, "two", client_msg_id="retry-1")
    repeat = await alice.send(room, "two (retried)", client_msg_id="retry-1")
    assert (repeat.msg_id, repeat.seq, repeat.duplicate) == (again.msg_id, 2, True)
    image = await bob.send(room, {"type": "image", "url": "http://x/y.png", "width": 3, "height": 4})
    assert image.seq == 3

    page = await bob.history(room)
    assert [m.seq for m in page.messages] == [1, 2, 3]
    assert (page.last_seq, page.has_more) == (3, False)
    assert [m.text for m in page.messages[:2]] == ["one", "two"]
    assert page.messages[2].content == {"type": "image", "url": "http://x/y.png", "width": 3, "height": 4}
    assert page.messages[1].client_msg_id == "retry-1"
    after = await bob.history(room, after_seq=1, limit=1)
    assert [m.seq for m in after.messages] == [2] and after.has_more
    before = await bob.history(room, before_seq=3, limit=5)
    assert [m.seq for m in before.messages] == [1, 2]


# -- WebSocket -----------------------------------------------------------------------------------------


async def test_two_clients_exchange_over_http_and_ws(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    a = await alice.connect(deliveries=True)
    b = await bob.connect()
    sent_http = await alice.send(room, "hello over http")
    sent_ws = await b.send(room, "hello over ws")
    assert (sent_http.seq, sent_ws.seq) == (1, 2)

    # Alice asked for delivery events: her own message's `ack` frame arrives as one.
    items: list[Any] = []
    while sum(isinstance(i, ChatMessage) for i in items) < 2 or not any(isinstance(i, Delivered) for i in items):
        items.append(await a.receive(timeout=TIMEOUT))
    (delivered,) = [i for i in items if isinstance(i, Delivered)]
    assert (delivered.msg_id, delivered.room_id, delivered.seq) == (sent_http.msg_id, room, 1)
    for got in ([i for i in items if isinstance(i, ChatMessage)], await drain(b, 2)):
        assert [(m.seq, m.text) for m in got] == [(1, "hello over http"), (2, "hello over ws")]
        assert [m.sender_id for m in got] == [alice.user_id, bob.user_id]
        assert got[1].id == sent_ws.msg_id and got[1].client_msg_id == sent_ws.client_msg_id

    page = await b.sync(room, after_seq=0, limit=1)
    assert [m.seq for m in page.messages] == [1] and page.has_more


async def test_read_state_unread_counts_and_read_events(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    for i in range(3):
        await bob.send(room, f"unread {i}")
    (state,) = [r for r in await alice.rooms() if r.room_id == room]
    assert (state.last_seq, state.read_seq, state.unread) == (3, 0, 3)
    assert state.last_message is not None and state.last_message["preview"] == "unread 2"

    a = await alice.connect(reads=True)
    b = await bob.connect(reads=True)
    assert a.unread == 3  # the welcome's total
    await a.read(room, 2)
    events: list[ReadEvent] = []
    for session in (a, b):  # alice's own connection, and bob's receipt (the room is a group: paced)
        item = await session.receive(timeout=TIMEOUT)
        while not isinstance(item, ReadEvent):
            item = await session.receive(timeout=TIMEOUT)
        events.append(item)
    assert events == [ReadEvent(room, alice.user_id, 2)] * 2
    assert await alice.read(room, 1) == 2  # forward only
    assert await alice.read(room, 99) == 3  # clamped to the room's end
    assert [r.unread for r in await alice.rooms() if r.room_id == room] == [0]
    assert (await bob.read_state(room))[alice.user_id] == 3


async def test_typing_signals_reach_the_other_member(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    a = await alice.connect()
    b = await bob.connect(typing=True)
    await a.typing(room)
    item = await b.receive(timeout=TIMEOUT)
    assert item == TypingEvent(room, alice.user_id)


async def test_presence_of_users_and_their_changes(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    assert (await alice.presence([bob.user_id]))[bob.user_id] == PresenceEvent(bob.user_id, False, None)
    a = await alice.connect(presence=True)
    await a.watch_presence([bob.user_id])
    assert await a.receive(timeout=TIMEOUT) == PresenceEvent(bob.user_id, False, None)  # the state now
    b = await bob.connect()
    assert await a.receive(timeout=TIMEOUT) == PresenceEvent(bob.user_id, True, None)
    assert (await alice.presence([bob.user_id]))[bob.user_id].online
    await b.close()
    gone = await a.receive(timeout=TIMEOUT + 5)  # inside the 5 s window of the last change: at its end
    assert isinstance(gone, PresenceEvent) and not gone.online and gone.last_seen is not None


async def test_ws_send_twice_with_client_msg_id_is_one_message(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    a = await alice.connect()
    b = await bob.connect()
    first = await a.send(room, "only once", client_msg_id="cm-1")
    second = await a.send(room, "only once", client_msg_id="cm-1")
    assert first.duplicate is False and second.duplicate is True
    assert (second.msg_id, second.seq) == (first.msg_id, first.seq)
    (got,) = await drain(b, 1)
    assert got.id == first.msg_id
    await assert_quiet(b, room, alice)
    assert [m.seq for m in (await bob.history(room)).messages] == [1, 2]


async def test_ws_send_error_is_raised(make_client: Any) -> None:
    alice, eve = await make_client("alice"), await make_client("eve")
    room = await room_of(alice)
    e = await eve.connect()
    with pytest.raises(PyStackerError) as refused:
        await e.send(room, "not my room")
    assert refused.value.status == 403
    with pytest.raises(PyStackerError) as bad:
        await e.send(room, {"type": "hologram"})
    assert bad.value.status == 400
    assert await e.ping() < TIMEOUT  # the socket is still fine


async def test_session_dedups_and_fills_a_gap(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every frame arrives twice and the chat with seq 3 never arrives live: the session yields
    1..6 once each, in order, fetching seq 3 with `sync` before it yields 4."""
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    b = await bob.connect()
    handle = b._handle  # noqa: SLF001 - the seam between the socket and the session
    lost: list[str] = []

    def lossy_twice(text: str) -> None:
        if '"type":"chat"' in text and '"seq":3,' in text and not lost:
            lost.append(text)
            return
        handle(text)
        handle(text)

    monkeypatch.setattr(b, "_handle", lossy_twice)
    for i in range(1, 7):
        await alice.send(room, f"m{i}")
    got = await drain(b, 6)
    assert [(m.seq, m.text) for m in got] == [(i, f"m{i}") for i in range(1, 7)]
    assert lost, "the test did not drop seq 3"
    await assert_quiet(b, room, alice)


async def test_bounded_queue_drops_and_fetches_again(make_client: Any) -> None:
    """A reader far behind: the session keeps at most max_queue messages, drops the rest, and
    fetches them again as the application reads, without a duplicate or a hole."""
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    b = await bob.connect(max_queue=3, max_held=2)
    for i in range(1, 31):
        await alice.send(room, f"m{i}")
    await eventually(lambda: b.inbox.rooms.get(room) is not None and b.inbox.rooms[room].highest == 30,
                     what="all 30 messages seen by the session")
    state = b.inbox.rooms[room]
    assert len(b.inbox) == 3 and sorted(state.held) == [4, 5]  # 6..30 were dropped: no space
    got = await drain(b, 30)
    assert [m.seq for m in got] == list(range(1, 31))
    await assert_quiet(b, room, alice)


@pytest.mark.parametrize("how", ["server closes 4008", "server closes 1001", "client transport dies"])
@pytest.mark.parametrize("catch_up", ["server", "sync"])
async def test_reconnect_catches_up_exactly_once(make_client: Any, system: Any, how: str, catch_up: str) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    states: list[str] = []
    dropped = asyncio.Event()

    def on_state(state: str, detail: str) -> None:
        states.append(state)
        if state == "disconnected":
            dropped.set()

    b = await bob.connect(catch_up=catch_up, on_state=on_state, backoff=fast_backoff(initial=0.2, max_delay=0.5))
    for i in range(1, 4):
        await alice.send(room, f"m{i}")
    assert [m.seq for m in await drain(b, 2)] == [1, 2]  # 3 stays unread in the session

    if how == "client transport dies":
        await b.reconnect()
    else:
        code = CloseCode.SLOW_CONSUMER if "4008" in how else CloseCode.SHUTDOWN
        gateway(system).connection(bob.user_id).close_soon(code, "test")
    await asyncio.wait_for(dropped.wait(), TIMEOUT)
    for i in range(4, 14):  # while bob is away
        await alice.send(room, f"m{i}")
    # What he missed comes by the catch-up alone (the server's batches, or the session's syncs).
    got = await drain(b, 11)
    assert [(m.seq, m.text) for m in got] == [(i, f"m{i}") for i in range(3, 14)]
    assert b.connects == 2
    for i in range(14, 17):  # and live again
        await alice.send(room, f"m{i}")
    got = await drain(b, 3)
    assert [(m.seq, m.text) for m in got] == [(i, f"m{i}") for i in range(14, 17)]
    assert states[:3] == ["connected", "disconnected", "reconnecting"] and states[-1] == "connected"
    await assert_quiet(b, room, alice)


async def test_reconnects_while_messages_stream(make_client: Any, system: Any) -> None:
    """Drops in the middle of a stream of sends, from both ends: still every message once, in order."""
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    b = await bob.connect()
    total = 60
    for i in range(1, total + 1):
        await alice.send(room, f"m{i}")
        if i == 20:
            await b.reconnect()
        elif i == 40:
            await eventually(lambda: bob.user_id in gateway(system).users, what="bob back")
            gateway(system).connection(bob.user_id).close_soon(CloseCode.SLOW_CONSUMER, "test")
    got = await drain(b, total, timeout=3 * TIMEOUT)
    assert [m.seq for m in got] == list(range(1, total + 1))
    assert b.connects >= 2
    await assert_quiet(b, room, alice)


async def test_ws_send_survives_a_drop(make_client: Any) -> None:
    """A send started while the socket is down goes out on the next connection, once."""
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    a = await alice.connect(backoff=fast_backoff(initial=0.2, max_delay=0.3))
    await a.reconnect()
    result = await a.send(room, "sent across a reconnect", client_msg_id="across-1")
    assert result.seq == 1 and not result.duplicate
    assert a.connects == 2
    assert [m.text for m in (await alice.history(room)).messages] == ["sent across a reconnect"]


async def test_acks_move_the_server_cursor(make_client: Any, system: Any) -> None:
    """What the application read is acknowledged: a new session of the same user starts after it."""
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    b = await bob.connect(ack_delay=0.01)
    # The SDK connects with ?acks=1: only its acks move the cursor (GoStacker's clients never ack,
    # so for them the gateway counts what it writes as delivered).
    await eventually(lambda: gateway(system).connection(bob.user_id).client_acks, what="acks mode")
    for i in range(1, 6):
        await alice.send(room, f"m{i}")
    await drain(b, 3)  # read 1..3; 4 and 5 arrived but were not read
    assert b.positions() == {room: 3}
    await b.close()
    cursors = system.runtime.engine.cursors
    deadline = time.monotonic() + TIMEOUT
    # The gateway saves the cursor once the closed socket is detached; connect after that.
    while (saved := await cursors.get(bob.user_id, [room])).get(room) != 3:
        assert time.monotonic() < deadline, f"cursor is {saved}"
        await asyncio.sleep(0.01)
    b2 = await bob.connect()
    got = await drain(b2, 2)
    assert [m.seq for m in got] == [4, 5]
    await assert_quiet(b2, room, alice)


async def test_resume_from_positions_in_sync_mode(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    for i in range(1, 8):
        await alice.send(room, f"m{i}")
    b = await bob.connect(catch_up="sync", positions={room: 4})
    got = await drain(b, 3)
    assert [m.seq for m in got] == [5, 6, 7]
    await assert_quiet(b, room, alice)


async def test_replaced_session_fails_instead_of_fighting(make_client: Any) -> None:
    bob = await make_client("bob")
    first = await bob.connect()
    second = await bob.connect()
    with pytest.raises(SessionFailed) as failed:
        await first.receive(timeout=TIMEOUT)
    assert failed.value.status == 4009
    assert first.state == "failed" and second.state == "connected"
    with pytest.raises(SessionFailed):
        await first.send(1, "too late")
    assert await second.ping() < TIMEOUT


async def test_devices_of_one_user_each_get_every_message_and_their_own_acks(make_client: Any, system: Any) -> None:
    """`device_id`: a phone and a laptop of one user are connected at once; each gets every message
    (the other device's included) and the `ack` (a Delivered event) of its own sends only."""
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    urls = system.urls
    phone = PyStackerClient(urls["meta"], urls["send"], urls["registry"], token=alice.token, device_id="phone")
    laptop = PyStackerClient(urls["meta"], urls["send"], urls["registry"], token=alice.token, device_id="laptop")
    sessions: list[Session] = []
    try:
        on_phone = await phone.connect(deliveries=True, backoff=fast_backoff())
        sessions.append(on_phone)
        on_laptop = await laptop.connect(deliveries=True, backoff=fast_backoff())
        sessions.append(on_laptop)
        assert sorted(gateway(system).users[alice.user_id]) == ["laptop", "phone"]
        from_phone = await on_phone.send(room, "sent on the phone")
        from_laptop = await laptop.send(room, "sent on the laptop over http")
        await bob.send(room, "from bob")
        for session, mine in ((on_phone, from_phone.msg_id), (on_laptop, from_laptop.msg_id)):
            items: list[Any] = []
            while sum(isinstance(i, ChatMessage) for i in items) < 3 or not any(isinstance(i, Delivered) for i in items):
                try:
                    items.append(await session.receive(timeout=TIMEOUT))
                except TimeoutError:
                    raise AssertionError(f"{session.client.device_id}: {items}") from None
            assert [m.text for m in items if isinstance(m, ChatMessage)] == [
                "sent on the phone", "sent on the laptop over http", "from bob"]
            assert [d.msg_id for d in items if isinstance(d, Delivered)] == [mine]
    finally:
        for session in sessions:
            await session.close()
        await phone.close()
        await laptop.close()


async def test_gives_up_after_max_attempts(make_client: Any) -> None:
    bob = await make_client("bob")
    b = await bob.connect(backoff=fast_backoff(initial=0.01, max_delay=0.02, max_attempts=3))
    bob.registry_url = "http://127.0.0.1:1"  # nothing listens there: every reconnect fails
    await b.reconnect()
    with pytest.raises(SessionFailed) as failed:
        await b.receive(timeout=TIMEOUT)
    assert "3 attempts" in failed.value.msg
    assert b.backoff.attempts == 3


async def test_expired_token_is_renewed_on_reconnect(make_client: Any) -> None:
    bob = await make_client("bob")
    b = await bob.connect()
    good = bob.token
    bob.token = good[:-4] + "AAAA"  # a token the gateway refuses: the session logs in again
    await b.reconnect()
    await eventually(lambda: b.connects == 2, what="the reconnect")
    assert bob.token != good[:-4] + "AAAA"
    assert await b.ping() < TIMEOUT


async def test_close_ends_iteration_and_is_idempotent(make_client: Any) -> None:
    bob = await make_client("bob")
    b = await bob.connect()
    results: list[Any] = []

    async def consume() -> None:
        async for item in b:
            results.append(item)

    task = asyncio.create_task(consume())
    await b.close()
    await asyncio.wait_for(task, TIMEOUT)
    await b.close()
    assert results == [] and b.state == "closed"
    with pytest.raises(SessionClosed):
        await b.receive(timeout=0.1)
    other = await bob.connect()
    with pytest.raises(TimeoutError):
        await other.receive(timeout=0.05)  # nothing to read: the wait is bounded


# -- pure parts ----------------------------------------------------------------------------------------


def chat(room: int, seq: int) -> ChatMessage:
    return ChatMessage(id=room * 1000 + seq, room_id=room, seq=seq, sender_id=1, content_type="text",
                       payload={"text": f"{room}/{seq}"})


def pop_all(inbox: InOrderInbox) -> list[tuple[int, int]]:
    out = []
    while (item := inbox.pop()) is not None:
        assert isinstance(item, ChatMessage)
        out.append((item.room_id, item.seq))
    return out


def test_inbox_orders_and_dedups_shuffled_duplicated_input() -> None:
    rng = random.Random(7)
    inbox = InOrderInbox()
    inbox.set_position(1, 0)
    inbox.set_position(2, 10)
    frames = [chat(1, s) for s in range(1, 41)] + [chat(2, s) for s in range(5, 31)]
    frames = frames + rng.sample(frames, 30)
    rng.shuffle(frames)
    for frame in frames:
        inbox.offer(frame)
    got = pop_all(inbox)
    assert [s for r, s in got if r == 1] == list(range(1, 41))
    assert [s for r, s in got if r == 2] == list(range(11, 31))
    assert inbox.behind() == {} and inbox.positions() == {1: 40, 2: 30}


def test_inbox_reports_a_gap_and_releases_when_filled() -> None:
    inbox = InOrderInbox()
    assert inbox.offer(chat(1, 5)) is Offer.READY  # first sight: the room starts here
    assert inbox.offer(chat(1, 8)) is Offer.HELD
    assert inbox.behind() == {1: 5}
    assert pop_all(inbox) == [(1, 5)]
    assert inbox.offer(chat(1, 6)) is Offer.READY
    assert inbox.offer(chat(1, 6)) is Offer.DUPLICATE
    assert inbox.offer(chat(1, 7)) is Offer.READY  # releases the held 8 too
    assert pop_all(inbox) == [(1, 6), (1, 7), (1, 8)]
    assert inbox.received(1) == 8 and inbox.behind() == {}


def test_inbox_bounds_drop_and_mark_behind() -> None:
    inbox = InOrderInbox(max_ready=2, max_held=1)
    outcomes = [inbox.offer(chat(1, s)) for s in range(1, 6)]
    assert outcomes == [Offer.READY, Offer.READY, Offer.HELD, Offer.DROPPED, Offer.DROPPED]
    assert len(inbox) == 2 and inbox.behind() == {}  # 3 is held: it only waits for space
    assert pop_all(inbox) == [(1, 1), (1, 2), (1, 3)]
    assert inbox.behind() == {1: 3}  # 4 and 5 must be fetched
    for s in (4, 5):
        inbox.offer(chat(1, s))
    assert pop_all(inbox) == [(1, 4), (1, 5)]


def test_inbox_skip_and_unordered_frames() -> None:
    inbox = InOrderInbox()
    inbox.set_position(1, 2)
    inbox.offer(chat(1, 6))
    assert inbox.skip_to(1, 6) == 3 and inbox.skipped == 3
    assert inbox.pop() == chat(1, 6) and inbox.pop() is None
    legacy = ChatMessage(id=99, room_id=4, seq=0, sender_id=1, content_type="text", payload={"text": "old"})
    assert inbox.offer(legacy) is Offer.READY
    assert inbox.offer(legacy) is Offer.DUPLICATE
    assert inbox.offer_event(Delivered(5, 1, 6, None))
    assert inbox.pop() == legacy and inbox.pop() == Delivered(5, 1, 6, None) and inbox.pop() is None


def test_backoff_is_jittered_exponential_capped_and_bounded() -> None:
    backoff = Backoff(initial=1.0, max_delay=8.0, factor=2.0, max_attempts=6, rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.next_delay() is None
    backoff.reset()
    assert backoff.next_delay() == 1.0
    low = Backoff(initial=1.0, max_delay=8.0, rand=lambda: 0.0)
    assert [low.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    spread = Backoff(initial=4.0, max_delay=4.0)
    assert all(2.0 <= spread.next_delay() <= 4.0 for _ in range(100))  # type: ignore[operator]
    with pytest.raises(ValueError):
        Backoff(initial=0)


def test_user_id_from_token() -> None:
    import base64

    body = base64.urlsafe_b64encode(b'{"user_id": 42, "username": "x"}').decode().rstrip("=")
    assert user_id_from_token(f"h.{body}.s") == 42
    assert user_id_from_token("garbage") is None


async def test_gateway_restart_closes_with_1001_and_session_catches_up(tmp_path: Any) -> None:
    """A whole system stops (clients must see 1001 at once, not 1006 after aiohttp's shutdown timeout)
    and comes back on the same ports: the session reconnects by itself and yields what was sent."""
    from pystacker.config import load_config
    from pystacker.embedded import EmbeddedSystem
    from tests.conftest import TEST_JWT_SECRET

    def config(ports: dict[str, int]) -> Any:
        return load_config(None, overrides={"engine": "memory", "data_dir": str(tmp_path), "host": "127.0.0.1",
                                            "jwt": {"secret": TEST_JWT_SECRET}, "ports": ports})

    first = EmbeddedSystem(config({"send": 0, "meta": 0, "registry": 0, "gateway": 0}))
    await first.start()
    ports = dict(first.servers.bound)
    urls = first.urls
    alice = PyStackerClient(urls["meta"], urls["send"], urls["registry"])
    bob = PyStackerClient(urls["meta"], urls["send"], urls["registry"])
    second = None
    try:
        for client, name in ((alice, unique("alice")), (bob, unique("bob"))):
            await client.register(name, PASSWORD)
            await client.login(name, PASSWORD)
        room = await room_of(alice, bob)
        closes: list[str] = []
        b = await bob.connect(backoff=fast_backoff(initial=0.1, max_delay=0.3, max_attempts=50),
                              on_state=lambda state, detail: closes.append(detail) if state == "disconnected" else None)
        await alice.send(room, "m1")
        assert [m.seq for m in await drain(b, 1)] == [1]

        await first.stop()
        assert closes == ["close code 1001"]
        second = EmbeddedSystem(config(ports))
        await second.start()
        await alice.send(room, "m2")
        got = await drain(b, 1, timeout=3 * TIMEOUT)
        assert [(m.seq, m.text) for m in got] == [(2, "m2")]
        assert b.connects >= 2
        await b.close()
    finally:
        await alice.close()
        await bob.close()
        if second is not None:
            await second.stop()
