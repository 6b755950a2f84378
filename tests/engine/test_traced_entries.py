"""Inbox entries that carry a trace context (`TraceParent`, tracing on) go through every engine byte for
byte, on a new read as after a reclaim, and decode with GoStacker's fields as they were."""

from __future__ import annotations

from pystacker.engine.base import Engine
from pystacker.messaging.model import PushEntry, StoredMessage, decode_entry
from tests.engine.support import unique_name

TRACE_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MESSAGE = StoredMessage(msg_id=1790000000000000001, room_id=42, seq=7, sender_id=3, type="text",
                        content={"text": "traced"}, created_at_ms=1_700_000_000_000, client_msg_id="c-1")


async def test_a_traced_entry_comes_back_unchanged(engine: Engine) -> None:
    gateway_id = unique_name("gw")
    await engine.inbox.ensure_group(gateway_id)
    data = PushEntry.for_message(MESSAGE, [3, 4, 5], TRACE_PARENT).encode()
    await engine.inbox.add([(gateway_id, data)])

    [read] = await engine.inbox.read_new(gateway_id, "c1", 10, block_ms=1000)
    assert read.data == data
    # a gateway that died with it pending: whoever reclaims it gets the trace context too
    [claimed] = await engine.inbox.claim_idle(gateway_id, "msgflusher", 0, 10)
    assert claimed.data == data

    entry = decode_entry(claimed.data)
    assert entry.trace_parent == TRACE_PARENT
    assert entry == PushEntry.for_message(MESSAGE, [3, 4, 5], TRACE_PARENT)
