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

import orjson
import pytest

from pystacker.client import (
    Backoff,
    ChatMessage,
    Delivered,
    EditEvent,
    InOrderInbox,
    Offer,
    PresenceEvent,
    PyStackerClient,
    PyStackerError,
    Quote,
    Reaction,
    ReactionEvent,
    ReadEvent,
    RecallEvent,
    Session,
    SessionClosed,
    SessionFailed,
    TypingEvent,
    user_id_from_token,
)
from pystacker.client.models import room_entry_from_frame
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
    erin = await make_client("erin")
    await alice.add_member(room, erin.user_id)
    assert room in await erin.joined_rooms()
    with pytest.raises(PyStackerError) as not_allowed:  # only the owner and admins add members
        await erin.add_member(room, (await make_client("frank")).user_id)
    assert not_allowed.value.status == 403


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


# -- the message lifecycle: reply, edit, recall, hide, reactions ----------------------------------------

THUMBS = "\U0001f44d"
ROOM_ENTRY_TYPES = (ChatMessage, EditEvent, RecallEvent, ReactionEvent)


async def next_entries(session: Session, count: int, timeout: float = TIMEOUT) -> list[Any]:
    """Exactly the next `count` room entries (messages and room events), other items skipped."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            item = await session.receive(timeout=max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            raise AssertionError(f"only {len(got)} of {count} room entries: {got}") from None
        if isinstance(item, ROOM_ENTRY_TYPES):
            got.append(item)
    return got


async def assert_no_entry_pending(session: Session, room_id: int, sender: PyStackerClient) -> None:
    """Nothing else (message or room event) is pending: a marker sent now is the very next entry."""
    marker = unique("marker-")
    await sender.send(room_id, marker)
    (item,) = await next_entries(session, 1)
    assert isinstance(item, ChatMessage) and item.text == marker, f"expected the marker, got {item}"


def every_event(**options: Any) -> dict[str, Any]:
    return {"edits": True, "recalls": True, "reactions": True, **options}


async def test_http_reply_edit_react_recall_hide_and_history(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    hello = await alice.send(room, "hello")
    answer = await bob.send(room, "hi alice", reply_to=hello.msg_id)
    assert (hello.seq, answer.seq) == (1, 2)

    edited = await alice.edit(hello.msg_id, "hello, edited", client_msg_id="edit-1")
    assert (edited.message_id, edited.room_id, edited.seq, edited.duplicate) == (hello.msg_id, room, 3, False)
    assert edited.edited_at > 0 and edited.client_msg_id == "edit-1"
    again = await alice.edit(hello.msg_id, "hello, edited", client_msg_id="edit-1")  # a retry: not applied twice
    assert (again.seq, again.duplicate) == (3, True)

    by_bob = await bob.react(hello.msg_id, THUMBS)
    assert (by_bob.emoji, by_bob.on, by_bob.count, by_bob.seq, by_bob.duplicate) == (THUMBS, True, 1, 4, False)
    by_alice = await alice.react(hello.msg_id, THUMBS)
    assert (by_alice.count, by_alice.seq) == (2, 5)
    heart = await bob.react(hello.msg_id, "\u2764")
    taken_back = await bob.react(hello.msg_id, "\u2764", on=False)
    assert (heart.count, heart.seq, taken_back.count, taken_back.on, taken_back.seq) == (1, 6, 0, False, 7)
    retry = await bob.react(hello.msg_id, "\u2764", on=False, client_msg_id=taken_back.client_msg_id)
    assert (retry.seq, retry.count, retry.duplicate) == (7, 0, True)  # the first answer

    recalled = await bob.recall(answer.msg_id, client_msg_id="recall-1")
    assert (recalled.message_id, recalled.seq, recalled.duplicate) == (answer.msg_id, 8, False)
    retried = await bob.recall(answer.msg_id, client_msg_id="recall-1")
    assert (retried.seq, retried.duplicate) == (8, True)

    other_room = await room_of(alice)
    refusals: list[tuple[Callable[[], Any], int]] = [
        (lambda: bob.edit(hello.msg_id, "not mine"), 403),  # only the sender edits
        (lambda: bob.edit(answer.msg_id, "too late"), 409),  # a recalled message is not edited
        (lambda: bob.recall(answer.msg_id), 409),  # already recalled (another client_msg_id)
        (lambda: bob.recall(hello.msg_id), 403),  # another's message, and bob is no admin
        (lambda: alice.react(hello.msg_id, "x" * 33), 400),  # more than 32 bytes
        (lambda: alice.edit(hello.msg_id, " "), 400),  # content as for a send: no blank text
        (lambda: alice.send(other_room, "re", reply_to=hello.msg_id), 400),  # not a message of that room
    ]
    for call, status in refusals:
        with pytest.raises(PyStackerError) as refused:
            await call()
        assert refused.value.status == status, (refused.value, status)

    page = await bob.history(room)
    assert [m.seq for m in page.messages] == [1, 2]  # events are not listed
    first, second = page.messages
    assert (first.text, first.edited_at, first.recalled) == ("hello, edited", edited.edited_at, False)
    assert first.reactions == (Reaction(THUMBS, 2, True),)
    assert (second.recalled, second.recalled_by, second.text, second.payload) == (True, bob.user_id, None, {})
    assert second.recalled_at is not None and second.recalled_at > 0
    assert second.reply_to is not None
    assert (second.reply_to.message_id, second.reply_to.sender_id) == (hello.msg_id, alice.user_id)
    assert [r.me for r in (await alice.history(room)).messages[0].reactions] == [True]

    log = await bob.history(room, events=True)  # every entry by seq, for incremental sync
    assert [(type(e).__name__, e.seq) for e in log.events] == [
        ("ChatMessage", 1), ("ChatMessage", 2), ("EditEvent", 3), ("ReactionEvent", 4), ("ReactionEvent", 5),
        ("ReactionEvent", 6), ("ReactionEvent", 7), ("RecallEvent", 8)]
    assert [m.seq for m in log.messages] == [1, 2]
    edit_event, recall_event = log.events[2], log.events[7]
    assert isinstance(edit_event, EditEvent) and isinstance(recall_event, RecallEvent)
    assert (edit_event.message_id, edit_event.sender_id, edit_event.text) == (hello.msg_id, alice.user_id,
                                                                               "hello, edited")
    assert (recall_event.message_id, recall_event.by) == (answer.msg_id, bob.user_id)
    reactions = [e for e in log.events if isinstance(e, ReactionEvent)]
    assert [(e.user_id, e.emoji, e.on, e.count) for e in reactions] == [
        (bob.user_id, THUMBS, True, 1), (alice.user_id, THUMBS, True, 2), (bob.user_id, "\u2764", True, 1),
        (bob.user_id, "\u2764", False, 0)]

    assert await bob.hide(hello.msg_id) == room  # gone from bob's history only, on every device
    assert [m.seq for m in (await bob.history(room)).messages] == [2]
    assert [m.seq for m in (await alice.history(room)).messages] == [1, 2]


async def test_a_reaction_that_changes_nothing_is_no_event(make_client: Any) -> None:
    """The contract: `seq` is null when nothing changed (the emoji was there already, or there was
    none to take back), and then the room gets no event. The SDK sends a client_msg_id with every
    reaction (generated when none is given), so that a retry gets the first answer."""
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    hello = await alice.send(room, "hello")
    first = await bob.react(hello.msg_id, THUMBS)
    assert (first.count, first.seq) == (1, 2)
    again = await bob.react(hello.msg_id, THUMBS)  # another request (another client_msg_id): already so
    assert (again.count, again.seq, again.duplicate) == (1, None, False)
    none_to_take_back = await alice.react(hello.msg_id, "\u2764", on=False)
    assert (none_to_take_back.count, none_to_take_back.seq) == (0, None)
    assert [e.seq for e in (await alice.history(room, events=True)).events] == [1, 2]


async def test_room_owner_recalls_a_members_message(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)  # alice created it: its owner
    sent = await bob.send(room, "something to take back")
    result = await alice.recall(sent.msg_id)
    assert (result.message_id, result.seq, result.duplicate) == (sent.msg_id, 2, False)
    (message,) = (await bob.history(room)).messages
    assert (message.recalled, message.recalled_by) == (True, alice.user_id)


async def test_session_yields_room_events_in_seq_order_with_the_messages(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    a = await alice.connect()
    b = await bob.connect(**every_event())
    hello = await a.send(room, "hello")
    edited = await a.edit(hello.msg_id, "hello!", client_msg_id="ws-edit-1")
    assert (edited.message_id, edited.room_id, edited.seq, edited.duplicate) == (hello.msg_id, room, 2, False)
    repeat = await a.edit(hello.msg_id, "hello!", client_msg_id="ws-edit-1")
    assert (repeat.seq, repeat.duplicate) == (2, True)
    reacted = await b.react(hello.msg_id, THUMBS)
    assert (reacted.message_id, reacted.count, reacted.seq, reacted.on) == (hello.msg_id, 1, 3, True)
    reply = await b.send(room, "nice", reply_to=hello.msg_id)
    unreacted = await b.react(hello.msg_id, THUMBS, on=False)
    assert (unreacted.count, unreacted.seq) == (0, 5)
    recalled = await a.recall(hello.msg_id)
    assert (recalled.seq, recalled.duplicate) == (6, False)

    got = await next_entries(b, 6)
    assert [(type(e).__name__, e.seq) for e in got] == [
        ("ChatMessage", 1), ("EditEvent", 2), ("ReactionEvent", 3), ("ChatMessage", 4), ("ReactionEvent", 5),
        ("RecallEvent", 6)]
    first, edit, reaction, answer, unreaction, recall = got
    assert edit == EditEvent(edit.id, room, 2, alice.user_id, hello.msg_id, "text", {}, edited.edited_at)
    assert edit.text == "hello!"
    assert reaction == ReactionEvent(reaction.id, room, 3, bob.user_id, hello.msg_id, bob.user_id, THUMBS, True, 1)
    assert answer.id == reply.msg_id and answer.reply_to == Quote(hello.msg_id, alice.user_id, "hello!", False)
    assert (recall.message_id, recall.by, recall.sender_id) == (hello.msg_id, alice.user_id, alice.user_id)
    assert recall.recalled_at > 0
    assert (unreaction.on, unreaction.count) == (False, 0)
    assert b.positions() == {room: 6}  # the events' seqs are read like the messages'
    await assert_no_entry_pending(b, room, alice)

    page = await b.sync(room, after_seq=1)  # a sync answer mixes messages and events too
    assert [e.seq for e in page.events] == [2, 3, 4, 5, 6, 7] and [m.seq for m in page.messages] == [4, 7]
    assert page.last_seq == 7


async def test_room_events_not_asked_for_are_read_past_without_a_hole(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    b = await bob.connect(reactions=True)  # no edits, no recalls
    one = await alice.send(room, "one")
    await alice.edit(one.msg_id, "one, edited")
    await bob.react(one.msg_id, THUMBS)
    await alice.recall(one.msg_id)
    two = await alice.send(room, "two")
    assert two.seq == 5
    got = await next_entries(b, 3)
    assert [(type(e).__name__, e.seq) for e in got] == [("ChatMessage", 1), ("ReactionEvent", 3), ("ChatMessage", 5)]
    assert b.positions() == {room: 5} and b.inbox.skipped == 0  # nothing was given up on
    await assert_no_entry_pending(b, room, alice)


@pytest.mark.parametrize("catch_up", ["server", "sync"])
async def test_catch_up_brings_room_events_in_seq_order(make_client: Any, catch_up: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    dropped = asyncio.Event()
    # The reconnect waits at least 0.5 s: the sends below are done by then (checked), so they come
    # by the catch-up (the server's batches, or the session's syncs), not live.
    b = await bob.connect(**every_event(catch_up=catch_up, backoff=fast_backoff(initial=1.0, max_delay=1.0),
                                        on_state=lambda state, _: dropped.set() if state == "disconnected" else None))
    handle = b._handle  # noqa: SLF001 - the seam between the socket and the session
    batched: list[tuple[str, int]] = []  # the entries of every batch frame (catch-up batches, sync answers)

    def recording(text: str) -> None:
        frame = orjson.loads(text)
        if frame.get("type") == "batch":
            batched.extend((entry.get("type"), entry.get("seq")) for entry in frame["payload"])
        handle(text)

    monkeypatch.setattr(b, "_handle", recording)
    one = await alice.send(room, "one")
    assert [e.seq for e in await next_entries(b, 1)] == [1]
    await b.reconnect()
    await asyncio.wait_for(dropped.wait(), TIMEOUT)
    two = await alice.send(room, "two", reply_to=one.msg_id)  # while bob is away
    await alice.edit(one.msg_id, "one, edited")
    await alice.react(two.msg_id, THUMBS)
    await alice.recall(one.msg_id)
    await alice.send(room, "three")
    assert b.connects == 1, "reconnected before the sends were done: the test did not test the catch-up"
    got = await next_entries(b, 5)
    assert [(type(e).__name__, e.seq) for e in got] == [
        ("ChatMessage", 2), ("EditEvent", 3), ("ReactionEvent", 4), ("RecallEvent", 5), ("ChatMessage", 6)]
    assert got[0].reply_to is not None and got[0].reply_to.message_id == one.msg_id
    assert [e.message_id for e in got[1:4]] == [one.msg_id, two.msg_id, one.msg_id]
    assert b.connects == 2
    # They came in batches that mix messages and events, in seq order (seq 1 may come again: read,
    # but its ack may not have reached the server before the drop; the session drops the duplicate).
    assert [entry for entry in batched if entry[1] > 1] == [
        ("chat", 2), ("edit", 3), ("reaction", 4), ("recall", 5), ("chat", 6)]
    await assert_no_entry_pending(b, room, alice)


async def test_session_fetches_a_room_event_it_missed(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live `edit` frame never arrives: the session sees the gap at the next seq and fetches the
    edit with `sync` before it yields what follows."""
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    b = await bob.connect(**every_event())
    handle = b._handle  # noqa: SLF001 - the seam between the socket and the session
    lost: list[str] = []

    def lossy(text: str) -> None:
        if '"type":"edit"' in text and not lost:
            lost.append(text)
            return
        handle(text)

    monkeypatch.setattr(b, "_handle", lossy)
    one = await alice.send(room, "one")
    await alice.edit(one.msg_id, "one, edited")
    await alice.send(room, "two")
    got = await next_entries(b, 3)
    assert [(type(e).__name__, e.seq) for e in got] == [("ChatMessage", 1), ("EditEvent", 2), ("ChatMessage", 3)]
    assert lost, "the test did not drop the edit"
    assert got[1].text == "one, edited"


async def test_lifecycle_requests_survive_a_drop_and_are_applied_once(make_client: Any) -> None:
    """An edit, a reaction and a recall started while the socket is down go out on the next
    connection, each with its client_msg_id: each is applied once."""
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    a = await alice.connect(backoff=fast_backoff(initial=0.2, max_delay=0.3))
    sent = await a.send(room, "before the drop")
    await a.reconnect()
    edited = await a.edit(sent.msg_id, "edited across a reconnect")
    reacted = await a.react(sent.msg_id, THUMBS)
    recalled = await a.recall(sent.msg_id)
    assert [r.seq for r in (edited, reacted, recalled)] == [2, 3, 4] and a.connects == 2
    assert not any(r.duplicate for r in (edited, reacted, recalled))
    log = await alice.history(room, events=True)
    assert [type(e).__name__ for e in log.events] == ["ChatMessage", "EditEvent", "ReactionEvent", "RecallEvent"]


async def test_lifecycle_refusals_over_the_socket_are_raised(make_client: Any) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    room = await room_of(alice, bob)
    b = await bob.connect()
    sent = await alice.send(room, "alice's")
    with pytest.raises(PyStackerError) as not_mine:
        await b.edit(sent.msg_id, "bob's now")
    assert not_mine.value.status == 403
    with pytest.raises(PyStackerError) as too_long:
        await b.react(sent.msg_id, "x" * 33)
    assert too_long.value.status == 400
    with pytest.raises(PyStackerError) as not_allowed:
        await b.recall(sent.msg_id)
    assert not_allowed.value.status == 403
    assert await b.ping() < TIMEOUT  # the socket is still fine


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


def test_inbox_orders_room_events_with_the_messages() -> None:
    """Edits, recalls and reactions hold seqs of the room's sequence: ordered, deduplicated and
    gap-checked exactly like chat messages."""
    inbox = InOrderInbox()
    inbox.set_position(1, 0)
    edit = EditEvent(id=501, room_id=1, seq=3, sender_id=1, message_id=1001, content_type="text",
                     payload={"text": "1/1 again"}, edited_at=5)
    react = ReactionEvent(id=502, room_id=1, seq=4, sender_id=2, message_id=1002, user_id=2, emoji="+1", on=True,
                          count=1)
    recall = RecallEvent(id=503, room_id=1, seq=6, sender_id=1, message_id=1001, by=1, recalled_at=7)
    for entry in (recall, chat(1, 5), react, chat(1, 2), edit, react, chat(1, 1), recall):
        inbox.offer(entry)
    got = []
    while (item := inbox.pop()) is not None:
        got.append(item)
    assert got == [chat(1, 1), chat(1, 2), edit, react, chat(1, 5), recall]
    assert inbox.positions() == {1: 6} and inbox.behind() == {}
    assert inbox.offer(ReactionEvent(504, 1, 8, 2, 1002, 2, "+1", False, 0)) is Offer.HELD
    assert inbox.behind() == {1: 6}  # seq 7 (whatever it is) must be fetched first


def test_room_event_frames_parse_as_the_contract_writes_them() -> None:
    big = 2**62 + 12345  # beyond JavaScript's 2^53: the string twins are read first
    edit = room_entry_from_frame({
        "type": "edit", "id": 77, "id_str": "77", "room_id": 3, "sender_id": 9, "message_id": big,
        "message_id_str": str(big), "seq": 12, "content": {"type": "text", "text": "fixed"}, "edited_at": 1700,
        "payload": None})
    assert edit == EditEvent(77, 3, 12, 9, big, "text", {"text": "fixed"}, 1700) and edit.text == "fixed"
    assert edit.content == {"type": "text", "text": "fixed"}
    recall = room_entry_from_frame({
        "type": "recall", "id": 78, "id_str": "78", "room_id": 3, "sender_id": 4, "message_id": 5,
        "message_id_str": "5", "seq": 13, "by": 4, "recalled_at": 1800, "payload": None})
    assert recall == RecallEvent(78, 3, 13, 4, 5, 4, 1800)
    reaction = room_entry_from_frame({
        "type": "reaction", "id": 79, "id_str": "79", "room_id": 3, "sender_id": 6, "message_id": 5,
        "message_id_str": "5", "seq": 14, "user_id": 6, "emoji": "\U0001f44d", "on": False, "count": 0,
        "payload": None})
    assert reaction == ReactionEvent(79, 3, 14, 6, 5, 6, "\U0001f44d", False, 0)
    message = room_entry_from_frame({
        "type": "chat", "id": 80, "id_str": "80", "room_id": 3, "sender_id": 6, "seq": 15, "ts": 1,
        "content_type": "text", "payload": {"text": "yes"}, "edited_at": 1900,
        "reply_to": {"message_id": big, "message_id_str": str(big), "sender_id": 9, "preview": "fixed",
                     "recalled": False},
        "reactions": [{"emoji": "+1", "count": 2, "me": True}]})
    assert isinstance(message, ChatMessage) and message.text == "yes" and message.edited_at == 1900
    assert message.reply_to == Quote(big, 9, "fixed", False) and message.reactions == (Reaction("+1", 2, True),)
    assert not message.recalled
    tombstone = ChatMessage.from_frame({"type": "chat", "id": 81, "room_id": 3, "sender_id": 6, "seq": 16,
                                        "payload": {}, "recalled": True, "recalled_by": 1, "recalled_at": 2})
    assert (tombstone.recalled, tombstone.recalled_by, tombstone.recalled_at, tombstone.text) == (True, 1, 2, None)
    blanked = room_entry_from_frame({  # an edit of a message recalled since: its content is gone
        "type": "edit", "id": 82, "room_id": 3, "sender_id": 9, "message_id": 5, "seq": 17, "content": None,
        "edited_at": 1700, "payload": None})
    assert isinstance(blanked, EditEvent) and blanked.blanked and blanked.text is None
    assert not edit.blanked
    assert room_entry_from_frame({"type": "typing", "room_id": 3}) is None


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
