"""The engine as a whole: readiness, and the send path's append with the members' routes."""

from __future__ import annotations

from pystacker.engine.base import Engine, LogEnd, UserRoute
from tests.engine.support import OpenEngine, new_message, unique_int


async def test_ping_answers_while_open(engine: Engine) -> None:
    await engine.ping()


# -- the send path's append with the members' routes ------------------------------------------------


async def test_append_and_route_appends_once_and_reads_the_routes(engine: Engine) -> None:
    room_id, alice, bob, nobody = unique_int(), unique_int(), unique_int(), unique_int()
    alice_route = UserRoute(user_id=alice, gateway_id="gw-a", address="10.0.0.4:8084", connected_at=1.5)
    bob_route = UserRoute(user_id=bob, gateway_id="gw-b", address="10.0.0.5:8084", connected_at=2.5,
                          status="disconnected")
    await engine.registry.set_route(alice_route, None)
    await engine.registry.set_route(bob_route, 60)
    first, routes = await engine.append_and_route(new_message(room_id, sender_id=alice), [alice, bob, nobody, bob])
    assert first.message.seq == 1 and not first.duplicate
    assert routes == {alice: alice_route, bob: bob_route}
    second, routes = await engine.append_and_route(new_message(room_id), [])
    assert second.message.seq == 2 and routes == {}
    assert [m.msg_id for m in await engine.messages.read(room_id, 0, 10)] == [first.message.msg_id,
                                                                              second.message.msg_id]


async def test_append_and_route_seeds_a_room_without_a_counter_and_keeps_idempotency(open_engine: OpenEngine) -> None:
    room_id, sender = unique_int(), unique_int()

    async def seed(asked_room: int) -> LogEnd:
        return LogEnd(41, 41)

    engine = await open_engine(seq_seed=seed)
    message = new_message(room_id, sender_id=sender, client_msg_id="retry-1")
    appended, _ = await engine.append_and_route(message, [sender])
    again, _ = await engine.append_and_route(new_message(room_id, sender_id=sender, client_msg_id="retry-1"), [sender])
    assert appended.message.seq == 42 and not appended.duplicate
    assert again.duplicate and again.message == appended.message
    assert await engine.messages.last_seqs([room_id]) == {room_id: 42}


# -- the send path's push: inbox entries, the sender's ack after them, his read mark ----------------


async def test_hand_on_writes_the_entries_then_the_rest_and_moves_the_read_marks(engine: Engine) -> None:
    gw_a, gw_b = f"gw-a-{unique_int()}", f"gw-b-{unique_int()}"
    for gateway in (gw_a, gw_b):
        await engine.inbox.ensure_group(gateway)
    room_id, sender, reader = unique_int(), unique_int(), unique_int()
    await engine.hand_on([(gw_a, b"copy-a"), (gw_b, b"copy-b1"), (gw_b, b"copy-b2")],
                         then=[(gw_b, b"copy-b3"), (gw_b, b"ack")],
                         read_marks=[(sender, room_id, 7), (reader, room_id, 3)])
    assert [e.data for e in await engine.inbox.read_new(gw_a, "c", 10, 0)] == [b"copy-a"]
    assert [e.data for e in await engine.inbox.read_new(gw_b, "c", 10, 0)] == [b"copy-b1", b"copy-b2", b"copy-b3", b"ack"]
    assert await engine.read_marks.get(sender, [room_id]) == {room_id: 7}
    assert await engine.read_marks.of_users([sender, reader], room_id) == {sender: 7, reader: 3}
    # A mark only moves forward, through hand_on as through read_marks.advance.
    await engine.hand_on([], read_marks=[(sender, room_id, 5)])
    assert await engine.read_marks.get(sender, [room_id]) == {room_id: 7}
    await engine.hand_on([])  # nothing to write: nothing happens
