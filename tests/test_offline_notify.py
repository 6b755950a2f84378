"""The offline notification webhook (issue 14), against a real HTTP receiver run by the test: signed,
coalesced batches for the members with no device online only, sent again after the receiver failed
for a while, and a receiver that never answers does not slow delivery to the members online."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from pystacker.messaging.offline_notify import SIGNATURE_HEADER
from tests.conftest import TEST_LIMITS, embedded_system
from tests.ws import Api, make_room, open_api, poll, send_http

SECRET = "webhook-test-secret"
BATCH_MS = 300


@dataclass
class Receiver:
    """The webhook's receiver: answers `fail_first` requests with 500, hangs while `hang` is set."""

    fail_first: int = 0
    hang: asyncio.Event = field(default_factory=asyncio.Event)
    never: asyncio.Event = field(default_factory=asyncio.Event)  # never set: what a hanging receiver waits for
    requests: list[tuple[bytes, str]] = field(default_factory=list)  # body, signature
    accepted: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((body, request.headers.get(SIGNATURE_HEADER, "")))
        if self.hang.is_set():
            await self.never.wait()  # a receiver that never answers (cancelled at shutdown)
        if len(self.requests) <= self.fail_first:
            return web.Response(status=500)
        self.accepted.append(orjson.loads(body))
        return web.json_response({"ok": True})

    def notified(self) -> dict[int, dict[int, dict[str, Any]]]:
        """user -> room -> what the accepted batches said, merged."""
        merged: dict[int, dict[int, dict[str, Any]]] = {}
        for batch in self.accepted:
            for item in batch["notifications"]:
                for room in item["rooms"]:
                    seen = merged.setdefault(item["user_id"], {}).setdefault(room["room_id"], {"messages": []})
                    seen["messages"] += room["messages"]
                    seen["unread"] = room["unread"]
        return merged


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001 - the bound port
    yield hook, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


@pytest.fixture
async def api(receiver: tuple[Receiver, str], tmp_path: Path) -> AsyncIterator[Api]:
    _, url = receiver
    async with embedded_system(tmp_path, limits=TEST_LIMITS, notify={
            "webhook_url": url, "secret": SECRET, "batch_ms": BATCH_MS, "timeout_s": 1.0}) as system, \
            open_api(system) as api:
        yield api


def assert_signed(body: bytes, header: str) -> None:
    assert header == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


async def test_offline_members_get_one_signed_coalesced_batch(api: Api, receiver: tuple[Receiver, str]) -> None:
    hook, _ = receiver
    alice, bob, carol, dave = await api.users(4, "wh")
    room_id = await make_room(api.meta, alice, [bob, carol, dave])
    online = await api.connect(bob)
    phone_only = await api.connect(dave, device="phone")  # one device online is enough
    sent = [await send_http(api.send, alice, room_id, f"note {i}") for i in range(3)]

    await poll(lambda: sum(len(r["messages"]) for r in hook.notified().get(carol.id, {}).values()) >= 3,
               "carol's notifications", timeout=10)
    notified = hook.notified()
    assert set(notified) == {carol.id}  # not the sender, not bob (online), not dave (a device online)
    room = notified[carol.id][room_id]
    assert [m["id"] for m in room["messages"]] == [m["msgID"] for m in sent]
    assert [m["preview"] for m in room["messages"]] == ["note 0", "note 1", "note 2"]
    assert {m["sender_id"] for m in room["messages"]} == {alice.id} and room["unread"] == 3
    assert len(hook.accepted) <= 2  # three messages in one batch (two if a batch boundary fell between)
    for body, header in hook.requests:
        assert_signed(body, header)
    await online.close()
    await phone_only.close()


async def test_a_failing_receiver_gets_the_batch_again_until_it_answers(api: Api, receiver: tuple[Receiver, str]) -> None:
    hook, _ = receiver
    hook.fail_first = 2
    alice, bob = await api.users(2, "wh")
    room_id = await make_room(api.meta, alice, [bob])
    sent = await send_http(api.send, alice, room_id, "are you there?")
    await poll(lambda: hook.accepted, "the batch accepted after two failures", timeout=15)
    assert len(hook.requests) == 3
    assert hook.requests[0][0] == hook.requests[2][0]  # the same batch, byte for byte
    (item,) = hook.accepted[0]["notifications"]
    assert item["user_id"] == bob.id and item["rooms"][0]["messages"][0]["id"] == sent["msgID"]


async def test_a_receiver_that_never_answers_does_not_slow_delivery(api: Api, receiver: tuple[Receiver, str]) -> None:
    hook, _ = receiver
    hook.hang.set()
    alice, bob, carol = await api.users(3, "wh")
    room_id = await make_room(api.meta, alice, [bob, carol])  # carol is offline: every message is notified
    online = await api.connect(bob)
    started = time.monotonic()
    for i in range(100):
        await send_http(api.send, alice, room_id, f"m{i}")
    await online.collect(100, room_id=room_id, timeout=20)
    elapsed = time.monotonic() - started
    await poll(lambda: hook.requests, "the webhook called (and hanging)", timeout=10)
    # The figure for the notes; the check is only that delivery finished while the webhook hung.
    print(f"100 sends delivered in {elapsed:.2f}s with the webhook hanging")
    await online.close()
