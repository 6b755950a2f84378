"""Observability of the distributed deployment (every service its own process, on Redis and MariaDB):
the counters check of tests/counters.py summed over meta, both send instances and both gateways, and
one message's trace crossing processes and Redis, exported by each process over OTLP/HTTP to a
receiver of the test's own.

The deployment runs with tracing on (every process exports to the receiver), so the counters are also
checked with the tracing code paths active.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests import databases
from tests.client import User
from tests.counters import check_counters_add_up, count_of
from tests.deployment import TestDeployment, start_deployment
from tests.otlp import OtlpReceiver, message_trace
from tests.ws import Client, make_room, poll

pytestmark = pytest.mark.distributed

TRACE_TIMEOUT = 20.0


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[OtlpReceiver]:
    receiver = await OtlpReceiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture(scope="module")
async def dep(receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TestDeployment]:
    url = await databases.create_database("mariadb", tmp_path_factory.mktemp("obs-db"))
    deployment = await start_deployment(tmp_path_factory.mktemp("obs-logs"), url, env={
        "PYSTACKER_TRACING__ENABLED": "true", "PYSTACKER_TRACING__OTLP_ENDPOINT": receiver.url,
        # export every 100 ms instead of OpenTelemetry's 5 s: the test polls the receiver briefly
        "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        yield deployment
    finally:
        await deployment.stop()  # each process exports what it still holds as it stops
        await databases.drop_database("mariadb", url)


@dataclass
class DistributedExchange:
    """The deployment as tests/counters.py's check drives it: members alternate the gateways, HTTP
    sends alternate the send instances, and /metrics is read from every process that takes part."""

    dep: TestDeployment
    redis_engine: bool = True

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.dep.session

    @property
    def metrics_urls(self) -> list[str]:
        labels = ["meta", *self.dep.labels("send"), *self.dep.gateways]
        return [self.dep.url(label) for label in labels]

    async def users(self, count: int, prefix: str) -> list[User]:
        return await self.dep.users(count, prefix)

    async def make_room(self, owner: User, members: list[User]) -> int:
        return await make_room(self.dep.meta, owner, members)

    async def connect(self, index: int, user: User) -> tuple[Client, str]:
        gateways = self.dep.gateways
        label = gateways[index % len(gateways)]
        return await self.dep.connect_to(label, user), self.dep.gateway_id(label)

    async def send_http(self, index: int, user: User, room_id: int, body: str) -> None:
        sends = self.dep.sends
        answer = await sends[index % len(sends)].post(
            "/api/chat/send_message", {"room_id": room_id, "content": {"type": "text", "text": body}},
            token=user.token)
        assert answer.status == 200, answer


async def no_sockets_left(exchange: DistributedExchange) -> None:
    """Until the gateways have seen every socket of the test close (the next test counts from there)."""
    async def closed() -> bool:
        return await count_of(exchange, "pystacker_ws_connections") == 0

    await poll(closed, "the gateways' connections back to 0")


async def test_counters_add_up_over_the_processes(dep: TestDeployment) -> None:
    exchange = DistributedExchange(dep)
    await dep.ensure_gateways(2)
    await no_sockets_left(exchange)
    await check_counters_add_up(exchange, prefix="dobs")


async def test_one_message_is_one_trace_across_send_redis_and_both_gateways(
        dep: TestDeployment, receiver: OtlpReceiver) -> None:
    exchange = DistributedExchange(dep)
    first, second = (await dep.ensure_gateways(2))[:2]
    sender, near, far = await dep.users(3, "trace")
    room_id = await make_room(dep.meta, sender, [near, far])
    clients = [await dep.connect_to(first, sender), await dep.connect_to(first, near),
               await dep.connect_to(second, far)]
    await exchange.send_http(0, sender, room_id, "across processes")
    for client in clients:
        await client.collect(1, room_id=room_id, timeout=15)
    msg_id = clients[0].unique(room_id)[0]["id"]
    for client in clients:
        await client.close()

    spans = await poll(lambda: message_trace(receiver.of_message(msg_id), members=3, gateways=2),
                       f"the spans of message {msg_id} from every process", timeout=TRACE_TIMEOUT)
    [send], [fanout] = spans["send"], spans["fanout"]
    dispatches, writes = spans["gateway.dispatch"], spans["socket.write"]
    everything = [send, fanout, *dispatches, *writes]
    assert len({span.trace_id for span in everything}) == 1, "one trace per message, across processes"
    # send and fan-out in the send instance; one dispatch in each gateway, continuing the fan-out's
    # context that came through the Redis stream
    assert send.service == fanout.service == "gostacker-send" and send.instance == fanout.instance
    assert fanout.parent_span_id == send.span_id
    assert {d.parent_span_id for d in dispatches} == {fanout.span_id}
    assert {d.service for d in dispatches} == {"gostacker-gateway"}
    assert {d.attributes["gateway_id"] for d in dispatches} == {dep.gateway_id(first), dep.gateway_id(second)}
    assert len({d.instance for d in dispatches}) == 2
    # each member's write is a child of the dispatch in its own gateway's process
    dispatch_of = {d.span_id: d for d in dispatches}
    on_gateway = {sender.id: dep.gateway_id(first), near.id: dep.gateway_id(first), far.id: dep.gateway_id(second)}
    assert sorted(w.attributes["user_id"] for w in writes) == sorted(on_gateway)
    for write in writes:
        parent = dispatch_of[write.parent_span_id]
        assert write.instance == parent.instance
        assert write.attributes["gateway_id"] == parent.attributes["gateway_id"] == on_gateway[write.attributes["user_id"]]
    await no_sockets_left(exchange)

