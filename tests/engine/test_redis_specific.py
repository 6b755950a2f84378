"""The redis engine beyond the contract: restarts, hash slots, trimming internals, key names, roles.

Each test runs on one Redis server and on the Redis Cluster (open_redis_engine), except the ones about
config blocks and start-up, which need the plain server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from pystacker.config import Config, RedisConfig, SendRedisConfig
from pystacker.engine.base import EngineSettings, GatewayInfo, LogEnd, UserRoute
from pystacker.engine.redis_engine import RedisEngine, make_client
from pystacker.runtime import Runtime, StartupError
from tests.engine.conftest import delete_prefixed_keys
from tests.engine.redis_servers import REDIS_HOST, REDIS_PORT
from tests.engine.support import OpenEngine, new_message, unique_int, unique_name, until, zero_seed


async def _redis_engine(open_redis_engine: OpenEngine, settings: EngineSettings | None = None,
                        seq_seed: Any = zero_seed) -> RedisEngine:
    engine = await open_redis_engine(settings or EngineSettings(), seq_seed)
    assert isinstance(engine, RedisEngine)
    return engine


def _twin(engine: RedisEngine, seq_seed: Any = zero_seed, settings: EngineSettings | None = None) -> RedisEngine:
    """A second engine on the same store and prefix: another process of the same deployment."""
    return RedisEngine(settings or engine.settings, seq_seed, client=engine.client, prefix=engine.keys.prefix,
                       partitions=engine.keys.partitions)


# -- restarts ---------------------------------------------------------------------------------------


async def test_a_lost_seq_counter_continues_from_the_seed(open_redis_engine: OpenEngine) -> None:
    sql_max = {"seq": 0}

    async def seed(room_id: int) -> LogEnd:
        return LogEnd(sql_max["seq"], sql_max["seq"])

    engine = await _redis_engine(open_redis_engine, seq_seed=seed)
    room_id = unique_int()
    assert [(await engine.messages.append(new_message(room_id))).message.seq for _ in range(3)] == [1, 2, 3]
    sql_max["seq"] = 3  # the flusher wrote them to SQL
    await engine.client.delete(engine.keys.seq(room_id))  # ... and Redis lost the counter
    assert (await engine.messages.append(new_message(room_id))).message.seq == 4


async def test_a_restarted_redis_continues_from_sql(open_redis_engine: OpenEngine) -> None:
    sql_max = {"seq": 0}

    async def seed(room_id: int) -> LogEnd:
        return LogEnd(sql_max["seq"], sql_max["seq"])

    engine = await _redis_engine(open_redis_engine, seq_seed=seed)
    room_id, other_room = unique_int(), unique_int()
    for _ in range(4):
        await engine.messages.append(new_message(room_id))
    sql_max["seq"] = 4
    # A restart without persistence: every key is gone, and (on our own cluster) the scripts too.
    await delete_prefixed_keys(engine.client, engine.keys.prefix)
    if isinstance(engine.client, RedisCluster):
        await engine.client.script_flush()
    assert await engine.messages.last_seqs([room_id]) == {room_id: 4}
    await engine.client.delete(engine.keys.seq(room_id))
    assert await engine.messages.window_start(room_id) == 5
    assert (await engine.messages.append(new_message(room_id))).message.seq == 5
    assert (await engine.messages.append(new_message(other_room))).message.seq == 5  # seeded from "SQL" too


async def test_two_processes_seeding_one_room_agree(open_redis_engine: OpenEngine) -> None:
    async def seed(room_id: int) -> LogEnd:
        await asyncio.sleep(0)  # an SQL round trip
        return LogEnd(41, 41)

    first = await _redis_engine(open_redis_engine, seq_seed=seed)
    second = _twin(first, seq_seed=seed)
    room_id = unique_int()
    appended = await asyncio.gather(*(engine.messages.append(new_message(room_id))
                                      for engine in [first, second] * 10))
    assert sorted(a.message.seq for a in appended) == list(range(42, 62))


# -- hash slots -----------------------------------------------------------------------------------------


async def test_the_keys_of_one_append_share_one_slot(open_redis_engine: OpenEngine) -> None:
    engine = await _redis_engine(open_redis_engine)
    room_id = unique_int()
    await engine.messages.append(new_message(room_id, sender_id=5, client_msg_id="c-1"))
    written = [key async for key in engine.client.scan_iter(match=f"{{{engine.keys.prefix}*", count=1000)]
    expected = {*engine.keys.room_keys(room_id), engine.keys.idempotency(room_id, 5, "c-1")}
    assert {key.decode() for key in written} == expected
    slots = {key_slot(key) for key in written}
    assert len(slots) == 1
    if isinstance(engine.client, RedisCluster):  # the server agrees
        assert {await engine.client.cluster_keyslot(key.decode()) for key in written} == slots


async def test_a_cursor_and_its_dirty_mark_share_one_slot(open_redis_engine: OpenEngine) -> None:
    engine = await _redis_engine(open_redis_engine)
    keys = engine.keys
    for user_id in (unique_int() for _ in range(50)):
        assert key_slot(keys.cursors(user_id).encode()) == key_slot(
            keys.dirty_cursors(keys.user_partition(user_id)).encode())


async def test_the_flush_queue_of_a_room_is_in_its_slot(open_redis_engine: OpenEngine) -> None:
    engine = await _redis_engine(open_redis_engine)
    for room_id in (unique_int() for _ in range(50)):
        keys = [*engine.keys.room_keys(room_id), engine.keys.idempotency(room_id, 1, "k")]
        assert len({key_slot(key.encode()) for key in keys}) == 1


# -- inbox internals --------------------------------------------------------------------------------------


async def test_trimming_keeps_every_pending_entry_readable(open_redis_engine: OpenEngine) -> None:
    engine = await _redis_engine(open_redis_engine, EngineSettings(inbox_max_len=5))
    inbox, client = engine.inbox, engine.client
    gateway_id = unique_name("gw")
    stream, group = engine.keys.stream(gateway_id), engine.keys.group(gateway_id)
    await inbox.ensure_group(gateway_id)
    ids = await inbox.add([(gateway_id, b"%d" % i) for i in range(40)])
    await inbox.read_new(gateway_id, "gateway", 40, 0)
    await inbox.ack(gateway_id, ids[10:])  # the 10 oldest stay pending
    for start in (40, 80):  # more traffic, all of it done, each add trying to trim
        more = await inbox.add([(gateway_id, b"%d" % i) for i in range(start, start + 40)])
        await inbox.read_new(gateway_id, "gateway", 40, 0)
        await inbox.ack(gateway_id, more)

    assert (await client.xpending(stream, group))["pending"] == 10
    for index, entry_id in enumerate(ids[:10]):  # none was trimmed away under its pending mark
        assert await client.xrange(stream, entry_id, entry_id) == [(entry_id.encode(), {b"data": b"%d" % index})]
    assert [e.data for e in await inbox.read_pending(gateway_id, "gateway", 100)] == [b"%d" % i for i in range(10)]

    await inbox.ack(gateway_id, ids[:10])
    await inbox.add([(gateway_id, b"last")])
    assert await client.xlen(stream) <= 5 + 100  # trimmed by whole stream nodes (100 entries)


async def test_a_blocked_reader_survives_the_removal_of_its_stream(open_redis_engine: OpenEngine) -> None:
    engine = await _redis_engine(open_redis_engine)
    # The gateway reads through a client with a name of its own, to be found in CLIENT LIST.
    name = unique_name("reader")
    reader_client = await _named_client_like(engine.client, name)
    gateway = RedisEngine(engine.settings, zero_seed, client=reader_client, prefix=engine.keys.prefix,
                          owns_clients=True)
    try:
        gateway_id = unique_name("gw")
        await gateway.inbox.ensure_group(gateway_id)
        reader = asyncio.create_task(gateway.inbox.read_new(gateway_id, "c", 10, 5000))
        await until(lambda: _blocked_reads(engine.client, name))  # it waits inside Redis now
        assert await engine.inbox.remove_if_drained(gateway_id)  # a msgflusher thought the gateway gone
        # Redis >= 7 wakes the reader with UNBLOCKED and it re-creates the group at once; an entry
        # added before that would land in a stream without a group, so the test waits for the group.
        stream = engine.keys.stream(gateway_id)
        await until(lambda: _has_group(engine, stream))
        ids = await engine.inbox.add([(gateway_id, b"after")])
        entries = await asyncio.wait_for(reader, 5)
        assert [e.entry_id for e in entries] == ids
        assert gateway_id in await engine.inbox.gateways()
    finally:
        await gateway.close()


async def _named_client_like(client: Any, name: str) -> Any:
    if isinstance(client, RedisCluster):
        named = RedisCluster(host=client.get_default_node().host, port=client.get_default_node().port,
                             client_name=name)
        await named.initialize()
        return named
    kwargs = client.connection_pool.connection_kwargs
    return Redis(host=kwargs["host"], port=kwargs["port"], client_name=name)


async def _blocked_reads(client: Any, name: str) -> int:
    if isinstance(client, RedisCluster):
        by_node = await client.client_list(target_nodes=RedisCluster.ALL_NODES)
        listed = [entry for entries in by_node.values() for entry in entries]
    else:
        listed = await client.client_list()
    return sum(c.get("name") == name and c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in listed)


async def _has_group(engine: RedisEngine, stream: str) -> bool:
    return bool(await engine.client.exists(stream)) and bool(await engine.client.xinfo_groups(stream))


async def test_malformed_entry_ids_do_not_spoil_an_ack(open_redis_engine: OpenEngine) -> None:
    engine = await _redis_engine(open_redis_engine)
    gateway_id = unique_name("gw")
    await engine.inbox.ensure_group(gateway_id)
    ids = await engine.inbox.add([(gateway_id, b"x")])
    await engine.inbox.read_new(gateway_id, "c", 10, 0)
    # GoStacker acknowledged "-1" for batch frames, which made Redis refuse the whole XACK.
    assert await engine.inbox.ack(gateway_id, ["-1", "not-an-id", "", ids[0]]) == 1


async def test_a_batch_of_a_dead_flusher_goes_to_another_process(open_redis_engine: OpenEngine) -> None:
    settings = EngineSettings(flush_claim_timeout=0.3)
    engine = await _redis_engine(open_redis_engine, settings)
    other = _twin(engine, settings=settings)
    room_id = unique_int()
    sent = [(await engine.messages.append(new_message(room_id))).message.msg_id for _ in range(3)]
    taken = await engine.messages.take_batch(10)  # ... and this flusher dies
    assert taken is not None and [m.msg_id for m in taken.messages] == sent
    assert await other.messages.take_batch(10) is None
    again = await until(lambda: other.messages.take_batch(10))
    assert [m.msg_id for m in again.messages] == sent
    await other.messages.confirm_batch(again.token)
    assert await engine.messages.take_batch(10) is None


# -- GoStacker's keys ---------------------------------------------------------------------------------------


async def test_inbox_and_registry_use_gostackers_key_names(open_redis_engine: OpenEngine) -> None:
    engine = await _redis_engine(open_redis_engine)
    client, prefix = engine.client, engine.keys.prefix
    gateway_id = unique_name("gateway-gostacker")
    await engine.inbox.ensure_group(gateway_id)
    groups = await client.xinfo_groups(f"{prefix}{gateway_id}_stream")
    assert [g["name"] for g in groups] == [f"{gateway_id}_group".encode()]

    info = GatewayInfo(gateway_id=gateway_id, address="10.0.0.4", port=8084, capacity=100)
    await engine.registry.put_gateway(info, 30)
    assert 0 < await client.ttl(f"{prefix}registry:gateway:{gateway_id}") <= 30
    assert orjson.loads(await client.get(f"{prefix}registry:gateway:{gateway_id}"))["gateway_id"] == gateway_id
    assert await client.sismember(f"{prefix}registry:gateway:instances", gateway_id)

    user_id = unique_int()
    route = UserRoute(user_id=user_id, gateway_id=gateway_id, address="10.0.0.4:8084", connected_at=1.0)
    await engine.registry.set_route(route, None)
    assert await client.ttl(f"{prefix}route:user:{user_id}") == -1  # no TTL
    stored = orjson.loads(await client.get(f"{prefix}route:user:{user_id}"))
    assert {"user_id", "gateway_id", "address", "connected_at", "status"} <= set(stored)
    await engine.registry.set_route(route, 120)
    assert 0 < await client.ttl(f"{prefix}route:user:{user_id}") <= 120


async def test_an_index_entry_without_its_record_is_cleaned_up(open_redis_engine: OpenEngine) -> None:
    engine = await _redis_engine(open_redis_engine)
    gone = unique_name("send")
    await engine.client.sadd(engine.keys.send_instances, gone)  # its record expired long ago
    assert gone not in {s.instance_id for s in await engine.registry.list_send()}
    assert not await engine.client.sismember(engine.keys.send_instances, gone)


# -- config: role clients, cluster flag, start-up -------------------------------------------------------------


async def test_each_role_uses_its_own_redis_block() -> None:
    # db 1 for the message log (cache role), db 2 for inboxes (stream role), db 0 for the rest.
    config = Config(engine="redis", redis=RedisConfig(host=REDIS_HOST, port=REDIS_PORT),
                    send_redis=SendRedisConfig(cache=RedisConfig(host=REDIS_HOST, port=REDIS_PORT, db=1),
                                               stream=RedisConfig(host=REDIS_HOST, port=REDIS_PORT, db=2)))
    engine = RedisEngine.from_config(config, EngineSettings(), zero_seed, prefix=f"test-{unique_name('roles')}:")
    databases = {db: make_client(RedisConfig(host=REDIS_HOST, port=REDIS_PORT, db=db)) for db in (0, 1, 2)}
    try:
        await engine.ping()
        room_id, user_id, gateway_id = unique_int(), unique_int(), unique_name("gw")
        await engine.messages.append(new_message(room_id))
        await engine.inbox.add([(gateway_id, b"x")])
        await engine.cursors.advance([(user_id, room_id, 1)])
        keys = [engine.keys.seq(room_id), engine.keys.stream(gateway_id), engine.keys.cursors(user_id)]
        places = {db: tuple([await client.exists(key) for key in keys]) for db, client in databases.items()}
        assert places == {0: (0, 0, 1), 1: (1, 0, 0), 2: (0, 1, 0)}
    finally:
        for client in databases.values():
            await delete_prefixed_keys(client, engine.keys.prefix)
            await client.aclose()
        await engine.close()


async def test_an_unreachable_redis_stops_the_start_with_one_line_naming_it() -> None:
    config = Config(engine="redis", redis=RedisConfig(host="127.0.0.1", port=1), jwt={"secret": "s" * 40})
    runtime = Runtime(config)
    with pytest.raises(StartupError) as failure:
        await runtime.open_engine()
    assert "127.0.0.1:1" in str(failure.value)
    assert "\n" not in str(failure.value)
    assert runtime._engine is None  # noqa: SLF001 - nothing half-open is kept


async def test_a_cluster_has_no_database_but_0() -> None:
    config = Config(engine="redis", redis=RedisConfig(cluster=True, db=3), jwt={"secret": "s" * 40})
    with pytest.raises(StartupError, match="db 3"):
        await Runtime(config).open_engine()


# -- the send path's pipeline ---------------------------------------------------------------------


async def test_append_and_route_appends_once_when_the_server_lost_its_scripts(open_redis_engine: OpenEngine) -> None:
    """The pipeline sends a bare EVALSHA; a server that restarted (or flushed its scripts) answers
    NOSCRIPT, and the message is then appended the plain way, which loads the script: once, not twice."""
    engine = await _redis_engine(open_redis_engine)
    room_id, user = unique_int(), unique_int()
    await engine.registry.set_route(UserRoute(user_id=user, gateway_id="gw-a", address="a:1", connected_at=1.0), None)
    assert (await engine.append_and_route(new_message(room_id), [user]))[0].message.seq == 1
    await engine.client.script_flush()
    appended, routes = await engine.append_and_route(new_message(room_id), [user])
    assert appended.message.seq == 2 and set(routes) == {user}
    assert [m.seq for m in await engine.messages.read(room_id, 0, 10)] == [1, 2]
    assert (await engine.append_and_route(new_message(room_id), [user]))[0].message.seq == 3


async def test_hand_on_writes_everything_once_when_the_server_lost_its_scripts(open_redis_engine: OpenEngine) -> None:
    """The push's pipeline sends bare EVALSHAs; after a script flush each call refused with NOSCRIPT
    is run again the plain way (loading the script), so every entry is written once and in order."""
    engine = await _redis_engine(open_redis_engine)
    gateway, room_id, sender = f"gw-{unique_int()}", unique_int(), unique_int()
    await engine.inbox.ensure_group(gateway)
    await engine.hand_on([(gateway, b"m1")], then=[(gateway, b"ack1")], read_marks=[(sender, room_id, 1)])
    await engine.client.script_flush()
    await engine.hand_on([(gateway, b"m2")], then=[(gateway, b"ack2")], read_marks=[(sender, room_id, 2)])
    assert [e.data for e in await engine.inbox.read_new(gateway, "c", 10, 0)] == [b"m1", b"ack1", b"m2", b"ack2"]
    assert await engine.read_marks.get(sender, [room_id]) == {room_id: 2}
