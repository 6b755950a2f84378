"""Inbox: one stream per gateway with a consumer group, pending list, acknowledgement and reclaim."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from itertools import pairwise

from pystacker.engine.base import Engine, EngineSettings, Inbox, InboxEntry, InboxStats
from tests.engine.support import OpenEngine, unique_name, until

# Redis trims with MAXLEN ~, which drops whole stream nodes (stream-node-max-entries, 100 by default):
# a stream may keep up to this many entries more than inbox_max_len.
TRIM_SLACK = 100


def _order(entry_id: str) -> tuple[int, int]:
    ms, n = entry_id.split("-")
    return int(ms), int(n)


async def _gateway(inbox: Inbox) -> str:
    gateway_id = unique_name("gw")
    await inbox.ensure_group(gateway_id)
    return gateway_id


async def _add(inbox: Inbox, gateway_id: str, count: int, start: int = 0) -> list[str]:
    return await inbox.add([(gateway_id, str(i).encode()) for i in range(start, start + count)])


def _data(entries: Sequence[InboxEntry]) -> list[bytes]:
    return [entry.data for entry in entries]


def _numbers(first: int, last: int) -> list[bytes]:
    return [str(i).encode() for i in range(first, last + 1)]


# -- adding and reading -----------------------------------------------------------------------------


async def test_add_returns_one_strictly_increasing_id_per_entry(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 300)
    ids += await _add(engine.inbox, gateway_id, 1, start=300)
    assert len(ids) == 301
    orders = [_order(entry_id) for entry_id in ids]
    assert all(earlier < later for earlier, later in pairwise(orders))


async def test_entries_reach_their_own_gateway_in_order(engine: Engine) -> None:
    gw_a, gw_b = await _gateway(engine.inbox), await _gateway(engine.inbox)
    ids = await engine.inbox.add([(gw_a, b"a1"), (gw_b, b"b1"), (gw_a, b"a2")])
    got_a = await engine.inbox.read_new(gw_a, "c", 10, 0)
    got_b = await engine.inbox.read_new(gw_b, "c", 10, 0)
    assert [(e.entry_id, e.data, e.delivery_count) for e in got_a] == [(ids[0], b"a1", 1), (ids[2], b"a2", 1)]
    assert [(e.entry_id, e.data) for e in got_b] == [(ids[1], b"b1")]


async def test_read_new_hands_every_entry_out_once(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    await _add(engine.inbox, gateway_id, 10)
    first = await engine.inbox.read_new(gateway_id, "a", 4, 0)
    second = await engine.inbox.read_new(gateway_id, "b", 100, 0)
    assert _data(first) == _numbers(0, 3)
    assert _data(second) == _numbers(4, 9)
    assert await engine.inbox.read_new(gateway_id, "a", 100, 0) == []
    assert await engine.inbox.read_new(gateway_id, "b", 100, 0) == []


async def test_read_new_returns_nothing_when_the_block_ends_empty(engine: Engine) -> None:
    gateway_id, other = await _gateway(engine.inbox), await _gateway(engine.inbox)
    assert await engine.inbox.read_new(gateway_id, "c", 10, 0) == []
    reader = asyncio.create_task(engine.inbox.read_new(gateway_id, "c", 10, 300))
    await engine.inbox.add([(other, b"for the other gateway")])
    assert await asyncio.wait_for(reader, 5) == []


async def test_read_new_wakes_up_when_an_entry_arrives(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    reader = asyncio.create_task(engine.inbox.read_new(gateway_id, "c", 10, 30_000))
    # Not synchronisation: the reader must return the entry whether or not it already waits; the
    # pause makes it wait, so that the test checks the wake-up and not only the unread entry.
    await asyncio.sleep(0.05)
    assert not reader.done()
    ids = await engine.inbox.add([(gateway_id, b"wake")])
    entries = await asyncio.wait_for(reader, 5)  # far shorter than the block: only a wake-up returns in time
    assert [(e.entry_id, e.data) for e in entries] == [(ids[0], b"wake")]


# -- pending list, acknowledgement, reclaim -------------------------------------------------------------


async def test_ack_counts_only_entries_that_were_pending(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 4)
    await engine.inbox.read_new(gateway_id, "c", 3, 0)
    assert await engine.inbox.ack(gateway_id, ids[:2]) == 2
    # ids[0] again: already acknowledged; ids[3]: never handed out; "1-0": unknown.
    assert await engine.inbox.ack(gateway_id, [ids[0], ids[2], ids[3], "1-0"]) == 1
    assert (await engine.inbox.stats(gateway_id)).pending == 0
    # Acknowledging an unread entry did not consume it.
    assert [e.entry_id for e in await engine.inbox.read_new(gateway_id, "c", 10, 0)] == [ids[3]]
    assert await engine.inbox.ack(unique_name("gw-unknown"), ids) == 0


async def test_read_pending_returns_own_entries_oldest_first_and_counts_deliveries(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 5)
    await engine.inbox.read_new(gateway_id, "a", 3, 0)
    await engine.inbox.read_new(gateway_id, "b", 2, 0)

    again = await engine.inbox.read_pending(gateway_id, "a", 10)
    assert [(e.entry_id, e.data, e.delivery_count) for e in again] == [
        (ids[0], b"0", 2), (ids[1], b"1", 2), (ids[2], b"2", 2)]
    limited = await engine.inbox.read_pending(gateway_id, "a", 2)
    assert [(e.entry_id, e.delivery_count) for e in limited] == [(ids[0], 3), (ids[1], 3)]
    assert [e.entry_id for e in await engine.inbox.read_pending(gateway_id, "b", 10)] == ids[3:]

    await engine.inbox.ack(gateway_id, [ids[1]])
    assert [e.entry_id for e in await engine.inbox.read_pending(gateway_id, "a", 10)] == [ids[0], ids[2]]
    assert await engine.inbox.read_pending(gateway_id, "nobody", 10) == []


async def test_claim_idle_moves_idle_entries_to_the_claimer(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 3)
    await engine.inbox.read_new(gateway_id, "gateway", 3, 0)
    assert await engine.inbox.claim_idle(gateway_id, "flusher", 60_000, 10) == []

    claimed = await until(lambda: engine.inbox.claim_idle(gateway_id, "flusher", 300, 10))
    assert [(e.entry_id, e.data, e.delivery_count) for e in claimed] == [
        (ids[0], b"0", 2), (ids[1], b"1", 2), (ids[2], b"2", 2)]
    # A claim restarts the idle time: nobody can take them again before it passed once more.
    assert await engine.inbox.claim_idle(gateway_id, "other", 300, 10) == []
    assert await engine.inbox.read_pending(gateway_id, "gateway", 10) == []
    assert [e.entry_id for e in await engine.inbox.read_pending(gateway_id, "flusher", 10)] == ids
    assert await engine.inbox.ack(gateway_id, ids) == 3


async def test_claim_idle_takes_at_most_count_oldest_first(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 3)
    await engine.inbox.read_new(gateway_id, "gateway", 3, 0)
    first = await until(lambda: engine.inbox.claim_idle(gateway_id, "flusher", 200, 2))
    assert [e.entry_id for e in first] == ids[:2]
    rest = await engine.inbox.claim_idle(gateway_id, "flusher", 200, 10)
    assert [e.entry_id for e in rest] == ids[2:]


async def test_claim_idle_on_an_unknown_gateway_finds_nothing(engine: Engine) -> None:
    assert await engine.inbox.claim_idle(unique_name("gw-unknown"), "flusher", 0, 10) == []


async def test_stats_count_entries_and_pending_and_age_the_oldest(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 4)
    assert await engine.inbox.stats(gateway_id) == InboxStats(length=4, pending=0, oldest_pending_ms=0)
    await engine.inbox.read_new(gateway_id, "c", 2, 0)
    aged = await until(lambda: engine.inbox.stats(gateway_id), lambda s: s.oldest_pending_ms >= 100)
    assert (aged.length, aged.pending) == (4, 2)
    await engine.inbox.ack(gateway_id, ids[:2])
    assert await engine.inbox.stats(gateway_id) == InboxStats(length=4, pending=0, oldest_pending_ms=0)
    assert await engine.inbox.stats(unique_name("gw-unknown")) == InboxStats(0, 0, 0)


# -- groups -------------------------------------------------------------------------------------------


async def test_a_group_created_on_an_existing_stream_does_not_replay_it(engine: Engine) -> None:
    gateway_id = unique_name("gw")
    await _add(engine.inbox, gateway_id, 3)  # the stream exists before its gateway made the group
    await engine.inbox.ensure_group(gateway_id)
    assert await engine.inbox.read_new(gateway_id, "c", 10, 0) == []
    ids = await _add(engine.inbox, gateway_id, 1, start=3)
    assert [(e.entry_id, e.data) for e in await engine.inbox.read_new(gateway_id, "c", 10, 0)] == [(ids[0], b"3")]


async def test_ensure_group_again_keeps_the_group_where_it_was(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 3)
    await engine.inbox.read_new(gateway_id, "c", 1, 0)
    await engine.inbox.ensure_group(gateway_id)  # a gateway restart: neither replays nor skips
    assert [e.entry_id for e in await engine.inbox.read_new(gateway_id, "c", 10, 0)] == ids[1:]
    assert [e.entry_id for e in await engine.inbox.read_pending(gateway_id, "c", 10)] == ids


async def test_a_read_recreates_a_removed_stream_with_its_group(engine: Engine) -> None:
    # A stream removed under a live gateway (a msgflusher that thought it gone) must not silence it.
    gateway_id = await _gateway(engine.inbox)
    assert await engine.inbox.remove_if_drained(gateway_id)
    assert await engine.inbox.read_new(gateway_id, "c", 10, 0) == []
    assert gateway_id in await engine.inbox.gateways()
    ids = await _add(engine.inbox, gateway_id, 1)
    assert [e.entry_id for e in await engine.inbox.read_new(gateway_id, "c", 10, 0)] == ids


# -- trimming -------------------------------------------------------------------------------------------


async def test_trimming_never_drops_unread_or_pending_entries(open_engine: OpenEngine) -> None:
    engine = await open_engine(EngineSettings(inbox_max_len=10))
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 30)
    delivered = await engine.inbox.read_new(gateway_id, "c", 15, 0)
    await engine.inbox.ack(gateway_id, [e.entry_id for e in delivered[:5]])
    await _add(engine.inbox, gateway_id, 1, start=30)  # trims: only the 5 acknowledged entries may go

    assert (await engine.inbox.stats(gateway_id)).length >= 26
    pending = await engine.inbox.read_pending(gateway_id, "c", 100)
    assert [(e.entry_id, e.data) for e in pending] == list(zip(ids[5:15], _numbers(5, 14), strict=True))
    assert _data(await engine.inbox.read_new(gateway_id, "c", 100, 0)) == _numbers(15, 30)


async def test_trimming_stops_at_the_oldest_pending_entry(open_engine: OpenEngine) -> None:
    engine = await open_engine(EngineSettings(inbox_max_len=5))
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 20)
    await engine.inbox.read_new(gateway_id, "gateway", 20, 0)
    await engine.inbox.ack(gateway_id, ids[1:])  # the oldest one stays pending
    await _add(engine.inbox, gateway_id, 20, start=20)

    claimed = await until(lambda: engine.inbox.claim_idle(gateway_id, "flusher", 100, 10))
    assert [(e.entry_id, e.data) for e in claimed] == [(ids[0], b"0")]


async def test_trimming_bounds_a_stream_whose_entries_are_done(open_engine: OpenEngine) -> None:
    engine = await open_engine(EngineSettings(inbox_max_len=10))
    gateway_id = await _gateway(engine.inbox)
    for start in range(0, 300, 50):
        await _add(engine.inbox, gateway_id, 50, start=start)
        delivered = await engine.inbox.read_new(gateway_id, "c", 100, 0)
        assert await engine.inbox.ack(gateway_id, [e.entry_id for e in delivered]) == 50
    await _add(engine.inbox, gateway_id, 1, start=300)
    assert 1 <= (await engine.inbox.stats(gateway_id)).length <= 10 + TRIM_SLACK
    assert _data(await engine.inbox.read_new(gateway_id, "c", 100, 0)) == [b"300"]


# -- the set of streams ---------------------------------------------------------------------------------


async def test_gateways_lists_streams_made_by_ensure_group_or_add(engine: Engine) -> None:
    ensured = await _gateway(engine.inbox)
    added_to = unique_name("gw")
    await _add(engine.inbox, added_to, 1)
    listed = await engine.inbox.gateways()
    assert {ensured, added_to} <= set(listed)


async def test_remove_if_drained_waits_for_unread_and_pending_entries(engine: Engine) -> None:
    gateway_id = await _gateway(engine.inbox)
    ids = await _add(engine.inbox, gateway_id, 2)
    assert not await engine.inbox.remove_if_drained(gateway_id)  # unread
    await engine.inbox.read_new(gateway_id, "c", 10, 0)
    assert not await engine.inbox.remove_if_drained(gateway_id)  # both pending
    await engine.inbox.ack(gateway_id, ids[:1])
    assert not await engine.inbox.remove_if_drained(gateway_id)  # one pending
    await engine.inbox.ack(gateway_id, ids[1:])

    assert await engine.inbox.remove_if_drained(gateway_id)
    assert gateway_id not in await engine.inbox.gateways()
    assert await engine.inbox.stats(gateway_id) == InboxStats(0, 0, 0)
    assert not await engine.inbox.remove_if_drained(gateway_id)


async def test_remove_if_drained_keeps_a_stream_nobody_read(engine: Engine) -> None:
    gateway_id = unique_name("gw")  # entries added, but its gateway never made the group
    await _add(engine.inbox, gateway_id, 1)
    assert not await engine.inbox.remove_if_drained(gateway_id)
    assert gateway_id in await engine.inbox.gateways()
