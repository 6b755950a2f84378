"""The counters check shared by the embedded system (tests/test_observability.py) and the distributed
deployment (tests/test_distributed_observability.py): N messages to a room of M connected members,
then the counters on /metrics, summed over every process that takes part, must add up exactly.

A system under test says how to make users and a room, where a member connects, how the i-th HTTP send
goes, and which /metrics to read: one per process (the embedded system's services share one registry,
so it names one URL; the distributed one names meta, every send instance and every gateway). Systems
may be shared with other tests, so the check compares deltas; series are summed over their labels
(every gateway, every send instance) unless a test names a label.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.client import User
from tests.ws import Client, poll

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

MEMBERS = 4
HTTP_SENDS = 4
WS_SENDS = 2
SENT = HTTP_SENDS + WS_SENDS


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    """Every sample on one /metrics, keyed by (sample name, labels)."""
    async with session.get(url + "/metrics") as response:
        assert response.status == 200, url
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape_all(session: aiohttp.ClientSession, urls: list[str]) -> Samples:
    """The samples of several processes, the same series added up."""
    summed: Samples = {}
    for url in urls:
        for key, sample in (await scrape(session, url)).items():
            summed[key] = summed.get(key, 0.0) + sample
    return summed


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series, with exactly these labels (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Every series of `name` whose labels include these, added up (e.g. over all gateways)."""
    wanted = set(labels.items())
    return sum(sample for (sample_name, sample_labels), sample in samples.items()
               if sample_name == name and wanted <= sample_labels)


class ExchangeSystem(Protocol):
    session: aiohttp.ClientSession
    metrics_urls: list[str]  # one /metrics base URL per process
    redis_engine: bool  # the engine is Redis: its calls are on /metrics too

    async def users(self, count: int, prefix: str) -> list[User]: ...

    async def make_room(self, owner: User, members: list[User]) -> int: ...

    async def connect(self, index: int, user: User) -> tuple[Client, str]:
        """The index-th member's socket and the id of the gateway it is on."""

    async def send_http(self, index: int, user: User, room_id: int, body: str) -> None:
        """The index-th HTTP send (a system with several send instances spreads them)."""


@dataclass
class Deltas:
    before: Samples
    after: Samples

    def __call__(self, name: str, **labels: str) -> float:
        return total(self.after, name, **labels) - total(self.before, name, **labels)


async def send_over_ws(client: Client, room_id: int, body: str) -> None:
    ref = uuid.uuid4().hex[:8]
    await client.send_chat(room_id, body, ref=ref)
    answer = await client.recv_until(lambda f: f["type"] in ("send_ok", "error") and isinstance(f["payload"], dict)
                                     and f["payload"].get("ref") == ref)
    assert answer["type"] == "send_ok", answer


async def check_counters_add_up(system: ExchangeSystem, prefix: str = "obs") -> None:
    """HTTP_SENDS messages over HTTP and WS_SENDS over the sender's socket to a room of MEMBERS
    connected members; then two members leave, then the others."""
    async def read() -> Samples:
        return await scrape_all(system.session, system.metrics_urls)

    before = await read()
    users = await system.users(MEMBERS, prefix)  # registered after `before`: their SQL inserts count
    room_id = await system.make_room(users[0], users[1:])
    connected = [await system.connect(i, user) for i, user in enumerate(users)]
    clients = [client for client, _ in connected]
    gateways_with_members = len({gateway for _, gateway in connected})
    sender = clients[0]
    for i in range(HTTP_SENDS):
        await system.send_http(i, sender.user, room_id, f"http #{i}")
    for i in range(WS_SENDS):
        await send_over_ws(sender, room_id, f"ws #{i}")
    for client in clients:
        await client.collect(SENT, room_id=room_id, timeout=15)

    # A frame reaches the client as soon as it is written; the counter moves right after: poll for it.
    async def delivered_all() -> Deltas | None:
        delta = Deltas(before, await read())
        return delta if delta("pystacker_messages_delivered_total") >= SENT * MEMBERS else None

    delta = await poll(delivered_all, "every delivery counted")
    assert delta("pystacker_messages_accepted_total") == SENT
    assert delta("pystacker_messages_duplicate_total") == 0
    assert delta("pystacker_messages_delivered_total") == SENT * MEMBERS
    assert delta("pystacker_ws_frames_out_total", type="chat") == SENT * MEMBERS
    # one message entry per message and gateway holding members, plus the sender's ack entry
    assert delta("pystacker_inbox_entries_written_total", kind="message") == SENT * gateways_with_members
    assert delta("pystacker_inbox_entries_written_total", kind="ack") == SENT
    assert delta("pystacker_ws_frames_in_total", type="send") == WS_SENDS
    assert delta("pystacker_ws_connects_total") == MEMBERS
    assert delta("pystacker_ws_connections") == MEMBERS
    # the request counter names the route's canonical path, with the status
    assert delta("pystacker_http_requests_total", service="send", route="/api/chat/send_message",
                 method="POST", status="200") == HTTP_SENDS
    assert delta("pystacker_http_request_duration_seconds_count", service="send",
                 route="/api/chat/send_message", method="POST") == HTTP_SENDS
    assert delta("pystacker_delivery_latency_seconds_count") == SENT * MEMBERS
    # the send path feeds the monitor too (the collector computes it at scrape time)
    assert total(delta.after, "app_monitor_count", monitor="send") >= SENT
    assert total(delta.after, "app_monitor_count", monitor="sql") > 0
    # the stores: each registration is an SQL insert; nothing failed
    assert delta("pystacker_sql_query_seconds_count", operation="insert") >= MEMBERS
    assert delta("pystacker_sql_errors_total") == 0
    if system.redis_engine:
        # one engine append per accepted message (HTTP in send, WebSocket in the gateway), with the
        # members' routes in the same pipeline; the plain append only where a process's first pipeline
        # found the script not yet loaded on the server (at most once per process)
        assert delta("pystacker_redis_call_seconds_count", operation="append_and_route") == SENT
        assert delta("pystacker_redis_call_seconds_count", operation="messages.append") <= len(system.metrics_urls)
        assert delta("pystacker_redis_errors_total") == 0

    # two members leave: the gauge follows, and their close code is counted
    for client in clients[:2]:
        await client.close()

    async def two_left() -> Deltas | None:
        delta = Deltas(before, await read())
        return delta if delta("pystacker_ws_connections") == MEMBERS - 2 else None

    after_close = await poll(two_left, "the connections gauge after two closes")
    assert after_close("pystacker_ws_disconnects_total", code="1000") == 2
    for client in clients[2:]:
        await client.close()

    async def all_left() -> bool:
        return Deltas(before, await read())("pystacker_ws_connections") == 0

    await poll(all_left, "the connections gauge back where it was")


async def count_of(system: Any, name: str, **labels: str) -> float:
    """One metric summed over the system's processes (for tests that read a single counter)."""
    return total(await scrape_all(system.session, system.metrics_urls), name, **labels)
