"""Offline notifications: a webhook told of the messages that found a member with no device online
(what a mobile push gateway consumes; issue 14). Off unless `notify.webhook_url` is set.

The fan-out offers each new message with the members its plan found offline; `offer` only appends
to a bounded buffer and never waits, so a slow or dead receiver cannot slow delivery. Every
`notify.batch_ms` the buffer is taken and POSTed as one JSON batch: per user, per room, the new
messages (id, seq, sender, a short preview) and the room's unread count for him, at most
`MAX_PER_ROOM` messages each (`more` counts the rest). The body is signed: `X-PyStacker-Signature:
sha256=<hex HMAC-SHA256 of the body with notify.secret>`. A batch that fails (no answer within
`notify.timeout_s`, or not 2xx) is sent again with a jittered exponential backoff until it succeeds
or `notify.retry_for_s` has passed; meanwhile new messages gather in the buffer, which drops the
newest past `notify.queue_size` (counted in pystacker_offline_notifications_total). What is still
buffered when the process stops is lost: a notification is a hint, the messages themselves are safe.

Body:
    {"batch_id": "...", "sent_at": ms, "notifications": [
        {"user_id": U, "rooms": [{"room_id": R, "unread": N, "more": 0,
                                  "messages": [{"id": ..., "id_str": "...", "seq": S, "sender_id": ...,
                                                "preview": "...", "ts": ms}]}]}]}
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from pystacker.client.backoff import Backoff
from pystacker.messaging.content import preview
from pystacker.messaging.model import StoredMessage
from pystacker.messaging.readstate import ReadState
from pystacker.observability import metrics

log = logging.getLogger("pystacker.notify")

SIGNATURE_HEADER = "X-PyStacker-Signature"
MAX_PER_ROOM = 20  # messages of one room per user in one batch; `more` counts the others


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class OfflineNotifier:
    def __init__(self, url: str, secret: bytes, reading: ReadState, *, batch_ms: int, queue_size: int,
                 timeout_s: float, retry_for_s: float) -> None:
        self.url = url
        self.secret = secret
        self.reading = reading
        self.interval = batch_ms / 1000
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.retry_for_s = retry_for_s
        self._buffer: dict[int, dict[int, list[StoredMessage]]] = {}  # user -> room -> messages
        self._buffered = 0
        self._task: asyncio.Task[None] | None = None

    # -- the fan-out's side: never waits ------------------------------------------------------------

    def offer(self, message: StoredMessage, offline: Sequence[int]) -> None:
        for user_id in offline:
            if user_id == message.sender_id:
                continue
            if self._buffered >= self.queue_size:
                metrics.OFFLINE_NOTIFICATIONS.labels("dropped").inc()
                continue
            self._buffer.setdefault(user_id, {}).setdefault(message.room_id, []).append(message)
            self._buffered += 1

    # -- the sender --------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="offline-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http:
            while True:
                await asyncio.sleep(self.interval)
                if not self._buffer:
                    continue
                taken, self._buffer, count = self._buffer, {}, self._buffered
                self._buffered = 0
                try:
                    body = orjson.dumps(await self._batch(taken))
                except Exception:
                    log.exception("offline notification batch not built; dropped")
                    metrics.OFFLINE_NOTIFICATIONS.labels("dropped").inc(count)
                    continue
                outcome = "sent" if await self._deliver(http, body) else "given_up"
                metrics.OFFLINE_NOTIFICATIONS.labels(outcome).inc(count)

    async def _batch(self, taken: dict[int, dict[int, list[StoredMessage]]]) -> dict[str, Any]:
        notifications = []
        for user_id, rooms in taken.items():
            states = await self.reading.rooms(user_id, list(rooms))
            notifications.append({"user_id": user_id, "rooms": [
                {"room_id": room_id, "unread": states[room_id].unread if room_id in states else len(messages),
                 "more": max(len(messages) - MAX_PER_ROOM, 0),
                 "messages": [{"id": m.msg_id, "id_str": str(m.msg_id), "seq": m.seq, "sender_id": m.sender_id,
                               "preview": preview(m), "ts": m.created_at_ms} for m in messages[-MAX_PER_ROOM:]]}
                for room_id, messages in rooms.items()]})
        return {"batch_id": uuid.uuid4().hex, "sent_at": time.time_ns() // 1_000_000, "notifications": notifications}

    async def _deliver(self, http: aiohttp.ClientSession, body: bytes) -> bool:
        """POST until a 2xx answer, or False after retry_for_s."""
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self.secret, body)}
        backoff = Backoff(initial=0.5, max_delay=30.0)
        give_up = time.monotonic() + self.retry_for_s
        while True:
            try:
                async with http.post(self.url, data=body, headers=headers) as answer:
                    if 200 <= answer.status < 300:
                        return True
                    problem = f"status {answer.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            delay = backoff.next_delay() or 30.0
            if time.monotonic() + delay > give_up:
                log.warning("offline notifications given up after %.0fs (%s)", self.retry_for_s, problem)
                return False
            metrics.OFFLINE_NOTIFICATIONS_RETRIES.inc()
            log.info("offline notification webhook failed (%s); again in %.1fs", problem, delay)
            await asyncio.sleep(delay)
