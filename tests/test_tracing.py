"""OpenTelemetry tracing, end to end: an embedded system with tracing on exports one trace per message
over OTLP/HTTP to a receiver of the test's own (tests/otlp.py): send, fanout, the gateway's dispatch of
the inbox entry and one socket write per member, linked parent to child. With tracing off nothing is
exported, even with an endpoint configured, and the inbox entries carry no trace context.

The distributed version (the trace crossing Redis and processes) is in test_distributed_observability.py.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from pystacker.config import ConfigError, load_config
from pystacker.embedded import EmbeddedSystem
from pystacker.messaging.model import PushEntry, decode_entry
from pystacker.observability import tracing
from pystacker.observability.tracing import traces_url
from tests.conftest import TEST_JWT_SECRET, TEST_LIMITS
from tests.otlp import OtlpReceiver, message_trace
from tests.ws import Api, make_room, open_api, poll, send_http

MEMBERS = 3
# GoStacker's PushMessage keys and PyStacker's additions before tracing: they must not change.
ENTRY_KEYS = {"ID", "Type", "RoomID", "SenderID", "TargetIDs", "Payload", "Seq", "ClientMsgID", "TS", "ContentType"}


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    receiver = await OtlpReceiver().start()
    yield receiver
    await receiver.stop()


@dataclass
class EntryRecorder:
    """Keeps the data of every inbox entry the system writes (wrapping its engine's inbox.add)."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def install(self, system: EmbeddedSystem) -> None:
        inbox = system.runtime.engine.inbox
        add = inbox.add

        async def recording_add(entries: Any) -> list[str]:
            self.entries += [orjson.loads(data) for _, data in entries]
            return await add(entries)

        inbox.add = recording_add  # type: ignore[method-assign]

    def of_message(self, msg_id: int) -> list[dict[str, Any]]:
        return [entry for entry in self.entries if entry["ID"] == msg_id]


async def start_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracing_config: dict[str, Any]) -> EmbeddedSystem:
    # Export every 50 ms instead of OpenTelemetry's 5 s, so the receiver is polled briefly (the
    # standard variable of the BatchSpanProcessor; it reads it when tracing starts).
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    config = load_config(None, overrides={
        "engine": "memory", "data_dir": str(tmp_path), "host": "127.0.0.1", "name": "traced",
        "jwt": {"secret": TEST_JWT_SECRET}, "ports": {"send": 0, "meta": 0, "registry": 0, "gateway": 0},
        "limits": TEST_LIMITS, "tracing": tracing_config})
    system = EmbeddedSystem(config)
    await system.start()
    return system


async def one_message_to_a_room(api: Api) -> tuple[int, list[int]]:
    """One message over HTTP to a room of MEMBERS connected members (the sender too); returns its id
    and the members once each has it."""
    users = await api.users(MEMBERS, "trace")
    room_id = await make_room(api.meta, users[0], users[1:])
    clients = [await api.connect(user) for user in users]
    msg_id = (await send_http(api.send, users[0], room_id, "follow me"))["msgID"]
    for client in clients:
        await client.collect(1, room_id=room_id)
        await client.close()
    return msg_id, [user.id for user in users]


async def test_one_message_is_one_trace_from_send_to_every_socket_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> None:
    system = await start_system(tmp_path, monkeypatch, {"enabled": True, "otlp_endpoint": receiver.url})
    recorder = EntryRecorder()
    try:
        assert tracing.enabled
        recorder.install(system)
        async with open_api(system) as api:
            msg_id, members = await one_message_to_a_room(api)
        spans = await poll(lambda: message_trace(receiver.of_message(msg_id), members=MEMBERS),
                           f"the spans of message {msg_id} at the receiver")
    finally:
        await system.stop()
    assert not tracing.enabled  # the runtime that turned it on turned it off

    [send], [fanout], [dispatch] = spans["send"], spans["fanout"], spans["gateway.dispatch"]
    writes = spans["socket.write"]
    assert len({span.trace_id for span in [send, fanout, dispatch, *writes]}) == 1, "one trace per message"
    assert send.parent_span_id == ""  # the trace starts at the send
    assert fanout.parent_span_id == send.span_id
    assert dispatch.parent_span_id == fanout.span_id
    assert {write.parent_span_id for write in writes} == {dispatch.span_id}
    assert sorted(write.attributes["user_id"] for write in writes) == sorted(members)
    assert (send.attributes["msg_id"], send.attributes["seq"]) == (msg_id, 1)
    assert send.attributes["room_id"] == fanout.attributes["room_id"] == dispatch.attributes["room_id"]
    assert (fanout.kind, dispatch.kind) == ("producer", "consumer")
    assert {span.service for span in [send, fanout, dispatch, *writes]} == {"traced"}  # the `name` key

    # The trace crossed the engine in the entries: the fan-out span's context, GoStacker's keys unchanged.
    entries = recorder.of_message(msg_id)
    assert [entry["Type"] for entry in entries] == ["chat", "ack"]
    for entry in entries:
        assert set(entry) == ENTRY_KEYS | {"TraceParent"}
        version, trace_id, parent_id, flags = entry["TraceParent"].split("-")
        assert (version, trace_id, parent_id) == ("00", send.trace_id, fanout.span_id)
        assert int(flags, 16) & 1, "sampled: the gateways follow the decision made at the send"


async def test_with_tracing_off_nothing_is_traced_even_with_an_endpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> None:
    system = await start_system(tmp_path, monkeypatch, {"enabled": False, "otlp_endpoint": receiver.url})
    recorder = EntryRecorder()
    try:
        assert not tracing.enabled
        recorder.install(system)
        async with open_api(system) as api:
            msg_id, _ = await one_message_to_a_room(api)
    finally:
        await system.stop()  # had there been a tracer, its last export would happen here
    entries = recorder.of_message(msg_id)
    assert [entry["Type"] for entry in entries] == ["chat", "ack"]
    assert all(set(entry) == ENTRY_KEYS for entry in entries), entries  # no trace context injected
    assert (receiver.requests, receiver.spans) == (0, [])


async def test_tracing_on_without_opentelemetry_stops_the_start_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the `tracing` extra were not installed: its import fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    from pystacker.runtime import Runtime, StartupError

    config = load_config(None, overrides={"engine": "memory", "data_dir": str(tmp_path), "host": "127.0.0.1",
                                          "jwt": {"secret": TEST_JWT_SECRET}, "tracing": {"enabled": True}})
    with pytest.raises(StartupError) as raised:
        Runtime(config, embedded=True)
    assert "\n" not in str(raised.value)
    assert "tracing.enabled" in str(raised.value) and "pystacker[tracing]" in str(raised.value)
    assert not tracing.enabled


def test_tracing_config_keys() -> None:
    config = load_config(None)
    assert (config.tracing.enabled, config.tracing.otlp_endpoint, config.tracing.sample_ratio) == (False, "", 1.0)
    for bad in ({"sample_ratio": 1.5}, {"otlp_endpoint": "localhost:4318"}, {"unknown": 1}):
        with pytest.raises(ConfigError, match="tracing"):
            load_config(None, overrides={"tracing": bad})
    assert traces_url("http://jaeger:4318") == traces_url("http://jaeger:4318/") == "http://jaeger:4318/v1/traces"
    assert traces_url("https://otel.example/v1/traces") == "https://otel.example/v1/traces"


def test_entries_without_trace_context_keep_their_bytes_and_a_bad_one_is_ignored() -> None:
    plain = PushEntry(type="chat", msg_id=1, room_id=2, sender_id=3, target_ids=[3, 4], payload={"text": "x"}, seq=5, ts=6)
    assert set(orjson.loads(plain.encode())) == ENTRY_KEYS
    assert decode_entry(plain.encode()).trace_parent is None
    odd = orjson.loads(plain.encode()) | {"TraceParent": 12}
    assert decode_entry(orjson.dumps(odd)) == plain  # delivered, outside any trace
    snake = {"id": 1, "type": "chat", "room_id": 2, "sender_id": 3, "target_ids": [3], "trace_parent": "00-x"}
    assert decode_entry(orjson.dumps(snake)).trace_parent == "00-x"
