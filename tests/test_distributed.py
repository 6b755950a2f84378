"""The distributed deployment over real processes and sockets (issue 4).

Registry, meta, flusher, msgflusher, two send instances and two gateways run as separate processes
(`tests/deployment.py`, the launcher of `pystacker cluster`) on Redis and MariaDB, then once on a local
3-master Redis Cluster and once on PostgreSQL. Clients are plain aiohttp sockets that do what a client
does: ask the registry for a gateway and connect there. Faults are real signals to real processes
(SIGSTOP, SIGKILL, SIGTERM), sent by PID to processes the test started.

Every wait polls a condition with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from pystacker.db.schema import chat_messages, device_cursors, devices, room_cursors, room_members
from pystacker.engine.redis_keys import RedisKeys
from pystacker.messaging.frames import CloseCode
from pystacker.messaging.model import decode_entry
from pystacker.web.auth import INTERNAL_TOKEN_HEADER
from tests import databases
from tests.client import User
from tests.deployment import GATEWAY_TTL, PRESENCE_TTL, RedisTarget, TestDeployment, start_deployment, with_deadline
from tests.engine.redis_servers import LocalCluster
from tests.ws import Client, Closed, make_room, poll

pytestmark = pytest.mark.distributed

DELIVERY_TIMEOUT = 15.0


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
async def dep(distributed_mariadb: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TestDeployment]:
    deployment = await start_deployment(tmp_path_factory.mktemp("dist-logs"), distributed_mariadb)
    yield deployment
    await deployment.stop()


# -- helpers ----------------------------------------------------------------------------------------------


async def send_through(dep: TestDeployment, index: int, user: User, room_id: int, body: str) -> dict[str, Any]:
    """Send over HTTP through send instance `index` (modulo their number): consecutive sends alternate."""
    sends = dep.sends
    answer = await sends[index % len(sends)].post(
        "/api/chat/send_message", {"room_id": room_id, "content": {"type": "text", "text": body}}, token=user.token)
    assert answer.status == 200, answer
    return answer.data


async def send_many(dep: TestDeployment, user: User, room_id: int, count: int, tag: str = "m") -> list[dict[str, Any]]:
    """`count` messages from `user`, one after the other, alternating the send instances."""
    return [await send_through(dep, i, user, room_id, f"{tag}-{user.id}-{i}") for i in range(count)]


async def acked(sender: Client, sent: list[dict[str, Any]]) -> None:
    """Wait for the sender's `ack` frames of these messages: each says every copy of its message was
    handed to the gateways (and before it, a member who connects could still get a late copy live)."""
    wanted = {m["msgID"] for m in sent}
    await _receive_until(sender, lambda: wanted <= {f["id"] for f in sender.frames if f["type"] == "ack"})


def assert_in_batches(client: Client, room_id: int, seqs: list[int]) -> None:
    """Everything came in the catch-up: `batch` frames only, once each, in order."""
    assert_once_in_order(client, room_id, seqs)
    kinds = [f["type"] for f in client.frames[1:]]
    assert "chat" not in kinds and kinds[0] == "batch", kinds


def room_chats(client: Client, room_id: int) -> list[dict[str, Any]]:
    """Every chat of the room the client received, duplicates included, in arrival order."""
    return [c for c in client.chats if c["room_id"] == room_id]


def assert_once_in_order(client: Client, room_id: int, seqs: list[int]) -> None:
    raw = room_chats(client, room_id)
    assert [c["seq"] for c in raw] == seqs, (client.user.id, [c["seq"] for c in raw])


async def keep_reading(client: Client) -> None:
    """Receive until the socket closes (frames are kept in the client)."""
    try:
        while True:
            await client.recv(timeout=60)
    except (Closed, TimeoutError):
        pass


async def wait_gone(client: Client, timeout: float = DELIVERY_TIMEOUT) -> None:
    """Until the socket has ended, however (the socket of a killed server is reset, and the client
    library may fail writing its answer to the close)."""
    try:
        await client.wait_closed(timeout)
    except (aiohttp.ClientError, ConnectionError):
        pass


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def sql_rows(sql: AsyncEngine, query: Any) -> list[Any]:
    async with sql.connect() as conn:
        return list(await conn.execute(query))


async def live_routes(dep: TestDeployment, users: list[User]) -> dict[str, Any]:
    answer = await dep.registry.post("/registry/user/routes/batch", {"user_ids": [u.id for u in users]},
                                     headers={INTERNAL_TOKEN_HEADER: dep.internal_token})
    assert answer.status == 200, answer
    return answer.data


async def basic_exchange(dep: TestDeployment) -> None:
    """Two members online (through the registry), one offline: a group message reaches both online
    members once and in order through both send instances, the offline one gets it in a `batch` on
    connect, and the flusher puts each message in SQL once."""
    alice, bob, carol = await dep.users(3, "basic")
    room_id = await make_room(dep.meta, alice, [bob, carol])
    (ca, _), (cb, _) = await asyncio.gather(dep.connect(alice), dep.connect(bob))
    sent = await send_many(dep, alice, room_id, 6)
    assert [m["seq"] for m in sent] == list(range(1, 7))
    for client in (ca, cb):
        await client.collect(6, room_id=room_id, timeout=DELIVERY_TIMEOUT)
        assert_once_in_order(client, room_id, list(range(1, 7)))
    await acked(ca, sent)
    cc, _ = await dep.connect(carol)
    await cc.collect(6, room_id=room_id, timeout=DELIVERY_TIMEOUT)
    assert_in_batches(cc, room_id, list(range(1, 7)))
    assert {c["id"] for c in cc.chats} == {m["msgID"] for m in sent}
    rows = await poll(lambda: _rows_if(dep.sql, room_id, 6), "6 messages in SQL", timeout=DELIVERY_TIMEOUT)
    assert sorted((r.seq, r.id) for r in rows) == [(m["seq"], m["msgID"]) for m in sent]
    await close_all([ca, cb, cc])


async def _rows_if(sql: AsyncEngine, room_id: int, count: int) -> list[Any] | None:
    rows = await sql_rows(sql, select(chat_messages.c.id, chat_messages.c.seq).where(chat_messages.c.room_id == room_id))
    return rows if len(rows) >= count else None


# -- two gateways, two send instances, Redis and MariaDB ------------------------------------------------------


class TestTwoGatewaysTwoSends:
    async def test_users_spread_and_a_group_message_reaches_every_member_once_in_order(self, dep: TestDeployment) -> None:
        gateways = await dep.ensure_gateways(2)
        users = await dep.users(20, "spread")
        connected = await asyncio.gather(*(dep.connect(u) for u in users))
        on: dict[str, list[Client]] = {label: [] for label in gateways}
        for client, label in connected:
            on[label].append(client)
        assert all(on[label] for label in gateways), {label: len(cs) for label, cs in on.items()}
        # the registry's routes agree with where each user is
        routes = await live_routes(dep, users)
        for client, label in connected:
            assert routes[str(client.user.id)]["gateway_id"] == dep.gateway_id(label)

        members = [c for label in gateways for c in on[label][:4]]
        offline = await dep.users(3, "offline")
        owner = members[0].user
        room_id = await make_room(dep.meta, owner, [c.user for c in members[1:]] + offline)
        # three senders at once (members on both gateways), each alternating the send instances
        first_on = [on[label][0] for label in gateways]
        senders = first_on + [c for c in members if c not in first_on][:1]
        per_sender = 8
        total = per_sender * len(senders)
        results = await asyncio.gather(*(send_many(dep, s.user, room_id, per_sender) for s in senders))
        sent_ids = {m["msgID"] for rs in results for m in rs}
        assert len(sent_ids) == total
        assert sorted(m["seq"] for rs in results for m in rs) == list(range(1, total + 1))
        for rs in results:  # each sender's messages got increasing seqs in the order it sent them
            assert [m["seq"] for m in rs] == sorted(m["seq"] for m in rs)

        await asyncio.gather(*(c.collect(total, room_id=room_id, timeout=DELIVERY_TIMEOUT) for c in members))
        for client in members:
            assert_once_in_order(client, room_id, list(range(1, total + 1)))
            assert {c["id"] for c in room_chats(client, room_id)} == sent_ids

        # the offline members get everything in `batch` frames when they connect (once every copy is
        # handed on: a copy still on its way would reach them live, which is right but not this test)
        await asyncio.gather(*(acked(sender, rs) for sender, rs in zip(senders, results, strict=True)))
        late = await asyncio.gather(*(dep.connect(u) for u in offline))
        for client, _ in late:
            await client.collect(total, room_id=room_id, timeout=DELIVERY_TIMEOUT)
            assert_in_batches(client, room_id, list(range(1, total + 1)))
        await close_all([c for c, _ in connected] + [c for c, _ in late])

    async def test_the_reconnect_lease_sends_a_user_back_to_his_gateway(self, dep: TestDeployment) -> None:
        gateways = await dep.ensure_gateways(2)
        users = await dep.users(8, "lease")
        # Where each user was is chosen here, not by the registry, so that a registry answering at
        # random would be right for all eight with a chance of 1 in 256.
        was_on = {u.id: gateways[i % 2] for i, u in enumerate(users)}
        clients = await asyncio.gather(*(dep.connect_to(was_on[u.id], u) for u in users))
        await close_all(list(clients))
        # the gateways saw the disconnects: no user has a connected route any more
        await poll(lambda: _no_routes(dep, users), "routes turned into leases")
        for user in users:
            assert await dep.available(user) == was_on[user.id], user.id

    async def test_a_user_moving_to_the_other_gateway_gets_everything(self, dep: TestDeployment) -> None:
        first, second = (await dep.ensure_gateways(2))[:2]
        mover, sender = await dep.users(2, "move")
        room_id = await make_room(dep.meta, sender, [mover])
        on_first = await dep.connect_to(first, mover)
        readers = [asyncio.create_task(keep_reading(on_first))]
        before = await send_many(dep, sender, room_id, 10, "before")
        await poll(lambda: len(on_first.unique(room_id)) >= 10, "the first 10 on the first gateway")

        # messages keep coming while the user opens a socket on the other gateway (the old one stays open)
        during_task = asyncio.create_task(send_many(dep, sender, room_id, 10, "during"))
        on_second = await dep.connect_to(second, mover)
        readers.append(asyncio.create_task(keep_reading(on_second)))
        during = await during_task
        after = await send_many(dep, sender, room_id, 10, "after")
        everything = [m["msgID"] for m in before + during + after]

        def union() -> set[int]:
            return {c["id"] for c in on_first.chats + on_second.chats if c["room_id"] == room_id}

        await poll(lambda: union() >= set(everything), "every message on one socket or the other",
                   timeout=DELIVERY_TIMEOUT)
        assert union() == set(everything)
        # each socket: no duplicate, in seq order, no gap from where it started
        for client in (on_first, on_second):
            seqs = [c["seq"] for c in room_chats(client, room_id)]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (client is on_first, seqs)
        # what was sent after the move reached the new socket
        assert {m["msgID"] for m in after} <= {c["id"] for c in on_second.chats}
        await close_all([on_first, on_second])
        for reader in readers:
            await with_deadline(reader, "readers end", 10)

    async def test_the_flusher_puts_each_message_in_sql_once_with_dense_seqs(self, dep: TestDeployment) -> None:
        await dep.ensure_gateways(2)
        flusher_log_start = dep.log_size("flusher")
        a, b, c = await dep.users(3, "flush")
        rooms = [await make_room(dep.meta, a, [b, c]), await make_room(dep.meta, b, [a, c])]
        reader, _ = await dep.connect(c)
        jobs = [send_many(dep, user, room_id, 12, f"r{room_id}") for room_id in rooms for user in (a, b)]
        results = await asyncio.gather(*jobs)
        sent = {m["msgID"]: m for rs in results for m in rs}
        assert len(sent) == 48

        def in_sql() -> Any:
            return _messages_of(dep.sql, rooms, 48)

        rows = await poll(in_sql, "48 messages in SQL", timeout=DELIVERY_TIMEOUT)
        assert len(rows) == 48 and {r.id for r in rows} == set(sent)  # each exactly once
        for room_id in rooms:
            assert sorted(r.seq for r in rows if r.room_id == room_id) == list(range(1, 25))
        for row in rows:
            assert (row.room_id, row.seq) == (sent[row.id]["room_id"], sent[row.id]["seq"])
            assert row.sender_id in (a.id, b.id)

        # the reader's delivery cursors follow to SQL too
        for room_id in rooms:
            await reader.collect(24, room_id=room_id, timeout=DELIVERY_TIMEOUT)
        # (the reader keeps reading: a gateway may wait for the client's answer to a ping before it
        # counts what it wrote as delivered)
        reading = asyncio.create_task(keep_reading(reader))
        await poll(lambda: _cursors_at(dep.sql, c.id, rooms, 24), "delivery cursors in SQL", timeout=DELIVERY_TIMEOUT)
        await reader.close()
        await with_deadline(reading, "reader ends", 10)
        # Cursors saved again and again for the same rows are the normal case: nothing to warn about
        # (MySQL's INSERT IGNORE made the driver log a warning for each of them).
        noisy = [line for line in dep.log_since("flusher", flusher_log_start)
                 if any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL"))]
        assert noisy == [], noisy[:5]

    async def test_concurrent_membership_changes_through_meta_end_up_in_sql(self, dep: TestDeployment) -> None:
        owner, *others = await dep.users(21, "mem")
        room_id = await make_room(dep.meta, owner, [])

        async def call(user: User, path: str, body: dict[str, Any]) -> None:
            answer = await dep.meta.post(path, {"room_id": room_id, **body}, token=user.token)
            assert answer.status == 200, (path, answer)

        joiners, added = others[:10], others[10:]
        await asyncio.gather(*(call(u, "/api/chat/group/join", {}) for u in joiners),
                             *(call(owner, "/api/chat/group/add_member", {"member_id": u.id}) for u in added))
        admins, nicknamed = others[:6], others[4:14]
        # role and nickname changes race with repeated adds and joins of the same users: the repeats
        # must not reset what the changes set
        await asyncio.gather(
            *(call(owner, "/api/chat/group/change_member_role", {"target_user_id": u.id, "new_role": 1}) for u in admins),
            *(call(u, "/api/chat/group/change_nickname", {"nickname": f"nick {u.id}"}) for u in nicknamed),
            *(call(owner, "/api/chat/group/add_member", {"member_id": u.id}) for u in others[:10]),
            *(call(u, "/api/chat/group/join", {}) for u in others[10:]))
        expected = {owner.id: (0, None)}
        for user in others:
            expected[user.id] = (1 if user in admins else 2, f"nick {user.id}" if user in nicknamed else None)

        async def in_sql() -> dict[int, tuple[int, str | None]]:
            rows = await sql_rows(dep.sql, select(room_members.c.user_id, room_members.c.role,
                                                  room_members.c.nickname).where(room_members.c.room_id == room_id))
            return {int(r.user_id): (int(r.role), r.nickname or None) for r in rows}

        # Memberships are written back by the flusher process (every group_cache.flush_interval_seconds).
        await poll(lambda: _equal(in_sql(), expected), "the flusher to write the room's members", timeout=20)

    async def test_reclaim_of_a_killed_gateways_entries(self, dep: TestDeployment) -> None:
        """Gateway A is frozen (SIGSTOP) so it cannot read or acknowledge, messages go to its inbox,
        part of them are read in A's consumer group under A's consumer name (what A would leave after
        reading them and dying before the ack) and the rest stay unread; then A is killed (SIGKILL).
        msgflusher is frozen meanwhile, so that it runs only once the users are on gateway B with
        `catchup=0`: then only msgflusher's hand-on brings them the messages live, and A's inbox
        must end drained and removed."""
        doomed, survivor = (await dep.ensure_gateways(2))[:2]
        users = await dep.users(3, "reclaim")
        sender = (await dep.users(1, "rsend"))[0]
        room_id = await make_room(dep.meta, sender, users)
        old = await asyncio.gather(*(dep.connect_to(doomed, u) for u in users))
        warmup = await send_many(dep, sender, room_id, 3, "warm")
        await asyncio.gather(*(c.collect(3, room_id=room_id, timeout=DELIVERY_TIMEOUT) for c in old))
        stream, group = dep.stream_key(doomed), f"{dep.gateway_id(doomed)}_group"
        await poll(lambda: _pending_count(dep, stream, group, 0), "A acknowledged the warm-up")

        dep.signal("msgflusher", signal.SIGSTOP)
        try:
            dep.signal(doomed, signal.SIGSTOP)
            # sent while A still counts as live (its heartbeat TTL has not run out): they go to A's inbox
            frozen_at = time.monotonic()
            lost = await send_many(dep, sender, room_id, 10, "lost")
            lost_ids = {m["msgID"] for m in lost}
            await poll(lambda: _entries_for(dep, stream, lost_ids), "the 10 messages in A's inbox", timeout=10)
            # (A's last heartbeat was at most TTL/3 before the freeze: until TTL*2/3 after it, A is live)
            assert time.monotonic() - frozen_at < GATEWAY_TTL * 2 / 3, "too slow: A may have left the live list"
            # A may have one entry pending already: Redis answers a blocked XREADGROUP (it becomes
            # pending) even though the frozen process never reads the answer
            already = int((await dep.redis.xpending(stream, group))["pending"])
            consumer = (await dep.redis.xinfo_consumers(stream, group))[0]["name"]
            await dep.redis.xreadgroup(group, consumer, {stream: ">"}, count=6)
            assert await _pending_count(dep, stream, group, already + 6)
            assert (await dep.redis.xinfo_groups(stream))[0]["lag"] == 10 - already - 6  # still unread

            dep.signal(doomed, signal.SIGKILL)
            killed_at = time.monotonic()
            assert await dep.wait_exit(doomed) == -signal.SIGKILL
            for client in old:  # the kernel closed A's sockets
                await wait_gone(client)
            new = await asyncio.gather(*(dep.connect_to(survivor, u, catchup=False) for u in users))
        finally:
            if dep.member(doomed).running:  # the test failed before the kill: a frozen A cannot stop
                dep.signal(doomed, signal.SIGKILL)
            dep.signal("msgflusher", signal.SIGCONT)

        everything = [m["msgID"] for m in warmup + lost]
        for client in new:  # with catchup=0, only a push brings them anything
            await _receive_until(client, lambda client=client: lost_ids <= _ids(client, room_id))
        for fresh, stale in zip(new, old, strict=True):
            got = {c["id"] for c in room_chats(fresh, room_id) + room_chats(stale, room_id)}
            assert got == set(everything)
            seqs = [c["seq"] for c in room_chats(fresh, room_id)]
            assert seqs == list(range(seqs[0], 14)), seqs  # no duplicate, in order, up to the last
        # the registry forgets the dead gateway within its heartbeat TTL
        await poll(lambda: _not_live(dep, doomed), "A leaving the live list", timeout=GATEWAY_TTL + 3)
        assert time.monotonic() - killed_at < GATEWAY_TTL + 3
        # A's inbox: every entry handed on and acknowledged, then the stream of the departed gateway removed
        await poll(lambda: _stream_gone(dep, stream, dep.gateway_id(doomed)), "A's inbox removed", timeout=20)
        await close_all(list(new) + list(old))

    async def test_sigterm_drains_a_gateway_and_its_clients_catch_up_elsewhere(self, dep: TestDeployment) -> None:
        draining, other = (await dep.ensure_gateways(2))[:2]
        users = await dep.users(4, "drain")
        sender = users[0]
        room_id = await make_room(dep.meta, sender, users[1:])
        clients = list(await asyncio.gather(*(dep.connect_to(draining, u) for u in users[1:])))
        first = await send_many(dep, sender, room_id, 5, "first")
        await asyncio.gather(*(c.collect(5, room_id=room_id, timeout=DELIVERY_TIMEOUT) for c in clients))

        async def closed_then_ask(client: Client) -> tuple[int | None, str]:
            """What a client does on 1001: ask the registry again at once."""
            code = await client.wait_closed(DELIVERY_TIMEOUT)
            return code, await dep.available(client.user)

        dep.signal(draining, signal.SIGTERM)
        answers = await asyncio.gather(*(closed_then_ask(c) for c in clients))
        # closed with "going away", and the registry no longer offers the draining gateway, not even
        # as the reconnect lease of its own users
        assert answers == [(CloseCode.SHUTDOWN, other)] * len(clients)
        # messages sent during and after the drain are not lost
        meanwhile = await send_many(dep, sender, room_id, 5, "meanwhile")
        again = await asyncio.gather(*(dep.connect_to(other, c.user) for c in clients))
        after = await send_many(dep, sender, room_id, 5, "after")
        everything = {m["msgID"] for m in first + meanwhile + after}
        for old, new in zip(clients, again, strict=True):
            await _receive_until(new, lambda old=old, new=new: _union(old, new, room_id) >= everything)
            assert _union(old, new, room_id) == everything
            seqs = [c["seq"] for c in room_chats(new, room_id)]
            assert seqs == list(range(seqs[0], 16)), seqs
        assert await dep.wait_exit(draining, timeout=20) == 0, dep.log_tail(draining)
        assert dep.gateway_id(draining) not in await dep.live_gateway_ids()
        await close_all(list(again))

    async def test_read_state_survives_a_killed_gateway_and_flusher_and_a_lost_store(self, dep: TestDeployment) -> None:
        """A read mark lives in Redis and reaches SQL through the flusher: a gateway killed after the
        reader's `read` frame keeps it, a flusher killed and started again still copies it, and after
        Redis lost it (its keys deleted: what a restart without persistence does) it comes back from
        SQL and does not move backwards."""
        gateway = (await dep.ensure_gateways(2))[0]
        reader, writer = await dep.users(2, "rd")
        room_id = await make_room(dep.meta, writer, [reader], is_group=False)
        await send_many(dep, writer, room_id, 10, "unread")
        client = await dep.connect_to(gateway, reader, catchup=False)
        assert client.frames[0]["unread"] == 10
        await client.send_frame({"type": "read", "room_id": room_id, "seq": 8})
        await client.recv_until(lambda f: f["type"] == "read" and f["seq"] == 8)

        # A flusher killed between taking a mark and saving it loses that copy until the mark moves
        # again (take_dirty is not re-handed, as cursors): the kill comes after the copy is in SQL.
        await poll(lambda: _read_seq_in_sql(dep.sql, reader.id, room_id, 8), "the read mark in SQL",
                   timeout=DELIVERY_TIMEOUT)
        dep.signal("flusher", signal.SIGKILL)
        await dep.wait_exit("flusher")
        dep.signal(gateway, signal.SIGKILL)
        await wait_gone(client)
        assert await _read_seqs(dep, writer, room_id) == {reader.id: 8, writer.id: 10}
        dep.inner.spawn(dep.member("flusher"))

        mark_key = RedisKeys(dep.prefix).read_marks(reader.id)
        assert await dep.redis.delete(mark_key) == 1
        assert await _read_seqs(dep, writer, room_id) == {reader.id: 8, writer.id: 10}  # from SQL
        answer = await dep.sends[0].post("/api/chat/read", {"room_id": room_id, "seq": 3}, token=reader.token)
        assert answer.status == 200 and answer.data["seq"] == 8, answer  # not backwards
        rooms = (await dep.meta.get("/api/joined_rooms", token=reader.token)).data["rooms"]
        assert [(r["room_id"], r["read_seq"], r["unread"]) for r in rooms] == [(room_id, 8, 2)]


    async def test_two_devices_on_two_gateways_get_everything_once_in_order(self, dep: TestDeployment) -> None:
        """Two devices of one user on different gateways both get a 500-message stream once each, in
        seq order; one goes away for 200 messages and catches up alone, on the other gateway, from its
        own cursor, while the other device stays live. The registry's GoStacker routes still give
        one gateway per user: the most recent device's."""
        first, second = (await dep.ensure_gateways(2))[:2]
        alice, bob = await dep.users(2, "md")
        room_id = await make_room(dep.meta, bob, [alice])
        phone = await dep.connect_to(first, alice, device="phone", acks=True)
        laptop = await dep.connect_to(second, alice, device="laptop")
        assert (await live_routes(dep, [alice]))[str(alice.id)]["gateway_id"] == dep.gateway_id(second)

        await send_many(dep, bob, room_id, 150, "a")
        await phone.collect(150, room_id=room_id, timeout=DELIVERY_TIMEOUT)
        await phone.send_frame({"type": "ack", "room_id": room_id, "seq": 150})  # its cursor: exactly here
        await phone.close()
        await send_many(dep, bob, room_id, 200, "b")
        await laptop.collect(350, room_id=room_id, timeout=DELIVERY_TIMEOUT)
        phone_again = await dep.connect_to(second, alice, device="phone")
        await phone_again.collect(200, room_id=room_id, timeout=DELIVERY_TIMEOUT)
        await send_many(dep, bob, room_id, 150, "c")
        await laptop.collect(500, room_id=room_id, timeout=DELIVERY_TIMEOUT)
        await phone_again.collect(350, room_id=room_id, timeout=DELIVERY_TIMEOUT)
        assert_once_in_order(laptop, room_id, list(range(1, 501)))
        assert_once_in_order(phone, room_id, list(range(1, 151)))
        assert_once_in_order(phone_again, room_id, list(range(151, 501)))
        await close_all([laptop, phone_again])

    async def test_typing_crosses_gateways_to_every_device_of_the_others(self, dep: TestDeployment) -> None:
        first, second = (await dep.ensure_gateways(2))[:2]
        alice, bob = await dep.users(2, "tg")
        room_id = await make_room(dep.meta, alice, [bob])
        typist = await dep.connect_to(first, alice)
        phone = await dep.connect_to(first, bob, device="phone")
        laptop = await dep.connect_to(second, bob, device="laptop")
        await typist.send_frame({"type": "typing", "room_id": room_id})
        for client in (phone, laptop):
            frame = await client.recv_until(lambda f: f["type"] == "typing", timeout=DELIVERY_TIMEOUT)
            assert (frame["room_id"], frame["user_id"]) == (room_id, alice.id)
        await close_all([typist, phone, laptop])

    async def test_lifecycle_events_cross_gateways_and_reach_mariadb(self, dep: TestDeployment) -> None:
        """Edit, reaction and recall through both send instances reach every device on both gateways
        in seq order; a device that was away gets them in its catch-up; and once flushed, MariaDB holds
        the tombstone and blanked edit rows, never the recalled words."""
        first, second = (await dep.ensure_gateways(2))[:2]
        alice, bob = await dep.users(2, "lcd")
        room_id = await make_room(dep.meta, alice, [bob])
        phone = await dep.connect_to(first, bob, device="phone")
        laptop = await dep.connect_to(second, bob, device="laptop")
        secret = f"secret-{room_id}"
        sent = await send_through(dep, 0, alice, room_id, secret)
        sends = dep.sends
        changes = [
            ("/api/chat/edit_message", {"message_id": sent["id_str"], "content": {"type": "text", "text": secret + "!"}}),
            ("/api/chat/react", {"message_id": sent["msgID"], "emoji": "👍"}),
            ("/api/chat/recall_message", {"message_id": sent["msgID"]}),
        ]
        for index, (path, body) in enumerate(changes):
            answer = await sends[(index + 1) % len(sends)].post(path, body, token=alice.token)
            assert answer.status == 200 and answer.data["seq"] == index + 2, answer
        for client in (phone, laptop):
            await client.recv_until(lambda f: f["type"] == "recall", timeout=DELIVERY_TIMEOUT)
            kinds = [(f["type"], f["seq"]) for f in client.frames if f.get("room_id") == room_id and "seq" in f]
            assert kinds == [("chat", 1), ("edit", 2), ("reaction", 3), ("recall", 4)]
        away = await dep.connect_to(first, bob, device="tablet")
        batch = await away.recv_until(lambda f: f["type"] == "batch", timeout=DELIVERY_TIMEOUT)
        assert [f["type"] for f in batch["payload"]] == ["chat", "edit", "reaction", "recall"]
        assert secret not in repr(batch)

        async def flushed() -> list[Any] | None:
            async with dep.sql.connect() as conn:
                rows = list(await conn.execute(select(chat_messages.c.type, chat_messages.c.content,
                                                      chat_messages.c.recalled)
                                               .where(chat_messages.c.room_id == room_id)
                                               .order_by(chat_messages.c.seq)))
            return rows if len(rows) == 4 and rows[0][2] else None

        rows = await poll(flushed, "the flusher wrote the events", timeout=DELIVERY_TIMEOUT)
        assert [r[0] for r in rows] == ["text", "edit", "reaction", "recall"]
        assert secret not in repr(rows)
        await close_all([phone, laptop, away])

    async def test_presence_across_gateways_and_a_killed_gateway(self, dep: TestDeployment) -> None:
        """Online while a device is connected on either gateway; offline with last_seen when the last
        leaves; and when a gateway is killed, its users show offline within the presence TTL, to a
        watcher on the other gateway too."""
        first, second = (await dep.ensure_gateways(2))[:2]
        watcher, ann = await dep.users(2, "pg")
        watching = await dep.connect_to(first, watcher)
        await watching.send_frame({"type": "presence_subscribe", "user_ids": [ann.id]})
        await watching.recv_until(lambda f: f["type"] == "presence" and f["online"] is False)
        phone = await dep.connect_to(second, ann, device="phone")
        await watching.recv_until(lambda f: f["type"] == "presence" and f["online"] is True, timeout=DELIVERY_TIMEOUT)
        laptop = await dep.connect_to(first, ann, device="laptop")
        await phone.close()
        state = await _presence(dep, watcher, ann)
        assert state["online"] is True  # the laptop

        dep.signal(first, signal.SIGKILL)  # the laptop's gateway (and the watcher's)
        await wait_gone(laptop)
        started = time.monotonic()

        async def offline() -> dict[str, Any] | None:
            state = await _presence(dep, watcher, ann)
            return state if not state["online"] else None

        state = await poll(offline, "ann offline after her gateway died", timeout=PRESENCE_TTL + 10)
        print(f"offline {time.monotonic() - started:.1f}s after the kill (presence TTL {PRESENCE_TTL}s)")
        watching = await dep.connect_to(second, watcher)
        await watching.send_frame({"type": "presence_subscribe", "user_ids": [ann.id]})
        frame = await watching.recv_until(lambda f: f["type"] == "presence", timeout=DELIVERY_TIMEOUT)
        assert frame["online"] is False
        await watching.close()

    async def test_device_cursors_survive_a_killed_gateway_and_flusher_and_a_lost_store(self, dep: TestDeployment) -> None:
        """A named device's cursor lives in Redis and reaches SQL through the flusher: after its
        gateway and the flusher are killed and Redis lost the cursor (its key deleted: what a restart
        without persistence does), the device catches up on the other gateway from SQL's copy: not
        from zero, not from the read-state rule of a new device, and nothing is missing."""
        gateway, other = (await dep.ensure_gateways(2))[:2]
        reader, writer = await dep.users(2, "mk")
        room_id = await make_room(dep.meta, writer, [reader])
        await send_many(dep, writer, room_id, 10, "seen")
        tablet = await dep.connect_to(gateway, reader, device="tablet", acks=True)
        await tablet.collect(10, room_id=room_id, timeout=DELIVERY_TIMEOUT)
        await tablet.send_frame({"type": "ack", "room_id": room_id, "seq": 10})
        key = await poll(lambda: _device_key(dep.sql, reader.id, "tablet"), "the tablet in SQL")
        await poll(lambda: _device_cursor_in_sql(dep.sql, key, room_id, 10), "the device cursor in SQL",
                   timeout=DELIVERY_TIMEOUT)
        dep.signal("flusher", signal.SIGKILL)
        await dep.wait_exit("flusher")
        dep.signal(gateway, signal.SIGKILL)
        await wait_gone(tablet)
        dep.inner.spawn(dep.member("flusher"))
        assert await dep.redis.delete(RedisKeys(dep.prefix).device_cursors(key)) == 1

        await send_many(dep, writer, room_id, 5, "unseen")
        again = await dep.connect_to(other, reader, device="tablet", acks=True)
        await again.collect(5, room_id=room_id, timeout=DELIVERY_TIMEOUT)
        assert_once_in_order(again, room_id, list(range(11, 16)))
        await again.send_frame({"type": "ack", "room_id": room_id, "seq": 15})
        await poll(lambda: _device_cursor_in_sql(dep.sql, key, room_id, 15), "the cursor moving on in SQL",
                   timeout=DELIVERY_TIMEOUT)
        await again.close()


async def _presence(dep: TestDeployment, caller: User, user: User) -> dict[str, Any]:
    answer = await dep.sends[0].get("/api/presence", params={"user_ids": str(user.id)}, token=caller.token)
    assert answer.status == 200, answer
    return answer.data["users"][0]


async def _device_key(sql: AsyncEngine, user_id: int, device_id: str) -> int | None:
    rows = await sql_rows(sql, select(devices.c.device_key).where(devices.c.user_id == user_id,
                                                                  devices.c.device_id == device_id))
    return int(rows[0].device_key) if rows else None


async def _device_cursor_in_sql(sql: AsyncEngine, key: int, room_id: int, seq: int) -> bool:
    rows = await sql_rows(sql, select(device_cursors.c.delivered_seq).where(device_cursors.c.device_key == key,
                                                                            device_cursors.c.room_id == room_id))
    return [int(r.delivered_seq) for r in rows] == [seq]


async def _read_seqs(dep: TestDeployment, member: User, room_id: int) -> dict[int, int]:
    answer = await dep.sends[0].get("/api/chat/read_state", params={"room_id": room_id}, token=member.token)
    assert answer.status == 200, answer
    return {m["user_id"]: m["read_seq"] for m in answer.data["members"]}


async def _read_seq_in_sql(sql: AsyncEngine, user_id: int, room_id: int, seq: int) -> bool:
    rows = await sql_rows(sql, select(room_cursors.c.read_seq).where(room_cursors.c.user_id == user_id,
                                                                     room_cursors.c.room_id == room_id))
    return [int(r.read_seq) for r in rows] == [seq]


async def _no_routes(dep: TestDeployment, users: list[User]) -> bool:
    return not await live_routes(dep, users)


async def _messages_of(sql: AsyncEngine, rooms: list[int], count: int) -> list[Any] | None:
    rows = await sql_rows(sql, select(chat_messages.c.id, chat_messages.c.room_id, chat_messages.c.seq,
                                      chat_messages.c.sender_id).where(chat_messages.c.room_id.in_(rooms)))
    return rows if len(rows) >= count else None


async def _cursors_at(sql: AsyncEngine, user_id: int, rooms: list[int], seq: int) -> bool:
    rows = await sql_rows(sql, select(room_cursors.c.room_id, room_cursors.c.delivered_seq)
                          .where(room_cursors.c.user_id == user_id, room_cursors.c.room_id.in_(rooms)))
    return {int(r.room_id): int(r.delivered_seq) for r in rows} == {room_id: seq for room_id in rooms}


async def _pending_count(dep: TestDeployment, stream: str, group: str, count: int) -> bool:
    summary = await dep.redis.xpending(stream, group)
    return int(summary["pending"]) == count


async def _entries_for(dep: TestDeployment, stream: str, msg_ids: set[int]) -> bool:
    found: set[int] = set()
    for _, fields in await dep.redis.xrange(stream):
        entry = decode_entry(fields["data"])
        if entry.type == "chat":
            found.add(entry.msg_id)
    return msg_ids <= found


async def _not_live(dep: TestDeployment, label: str) -> bool:
    return dep.gateway_id(label) not in await dep.live_gateway_ids()


async def _stream_gone(dep: TestDeployment, stream: str, gateway_id: str) -> bool:
    listed = await dep.redis.sismember(f"{dep.prefix}pystacker:inbox:gateways", gateway_id)
    return not await dep.redis.exists(stream) and not listed


def _ids(client: Client, room_id: int) -> set[int]:
    return {c["id"] for c in room_chats(client, room_id)}


def _union(old: Client, new: Client, room_id: int) -> set[int]:
    return _ids(old, room_id) | _ids(new, room_id)


async def _receive_until(client: Client, done: Any, timeout: float = DELIVERY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"not within {timeout}s; got seqs {[c['seq'] for c in client.chats]}")
        await client.recv(left)


# -- the same exchange on the other stores ---------------------------------------------------------------------


async def test_basic_exchange_on_a_redis_cluster(redis_cluster: LocalCluster, distributed_mariadb: str,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every service on the local 3-master Redis Cluster (keys sharded by their hash tags)."""
    target = RedisTarget(redis_cluster.host, redis_cluster.port, cluster=True)
    dep = await start_deployment(tmp_path_factory.mktemp("dist-cluster-logs"), distributed_mariadb, redis=target)
    try:
        await basic_exchange(dep)
        # the deployment's keys really are spread over the cluster's masters
        keys = await dep.keys()
        slots = {await dep.redis.cluster_keyslot(k) for k in keys}
        assert len(keys) > 10 and len(slots) > 3, (len(keys), len(slots))
    finally:
        await dep.stop()


async def test_basic_exchange_on_postgresql(tmp_path_factory: pytest.TempPathFactory) -> None:
    url = await databases.create_database("postgres", tmp_path_factory.mktemp("dist-pg"))
    try:
        dep = await start_deployment(tmp_path_factory.mktemp("dist-pg-logs"), url)
        try:
            await basic_exchange(dep)
        finally:
            await dep.stop()
    finally:
        await databases.drop_database("postgres", url)


async def _equal(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected
