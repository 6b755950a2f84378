"""The steady group-chat load of a fault run: receivers that dedup, senders that retry, and the ledger.

Built on the bench's clients (pystacker_tools.bench.clients): a receiver finds its gateway through the
registry (the SDK asks it), reads `chat` and catch-up `batch` frames and reconnects when the server closes it. Here it
also keeps trying for a while when its gateway is gone (a killed gateway stays listed in the
registry until its heartbeat TTL runs out), and it can stop reading (a slow consumer).

A sender sends one message at a time over HTTP, paced, each with a `client_msg_id`. When an attempt
fails (connection reset, timeout, 5xx) it sends again **with the same client_msg_id** through the
next send instance, until an answer comes or it gives up: so a send instance killed in the middle of
a request costs neither a duplicate nor a loss. A refusal (4xx) is not retried.

The ledger records, per client, the first arrival of every message (dedup by msgID, as a client
does) and what dedup hid. A duplicate *shown* is a message the user would see twice even after that
dedup: two different msgIDs carrying the same sender message (same `client_msg_id`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from pystacker.client import PyStackerError
from pystacker_tools.bench.checker import IntegrityChecker
from pystacker_tools.bench.clients import Receiver, SendRefused, post_send
from pystacker_tools.bench.tags import Tag, make_text

RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 1.0
RETRY_FIRST_DELAY = 0.2
RETRY_MAX_DELAY = 1.0
AVOID_REFUSING_FOR = 3.0  # seconds a send instance that refused a connection is passed over


# -- what the clients saw ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Shown:
    """A message as one client showed it (its first copy)."""

    msg_id: int
    room_id: int
    seq: int
    sender: int
    n: int
    arrived_ns: int


class Ledger(IntegrityChecker):
    """The arrivals of one scenario (its `step` in the message tags); older scenarios' messages that
    a catch-up brings again are someone else's business and counted as foreign."""

    def __init__(self, run: str, step: int) -> None:
        super().__init__(run)
        self.step = step
        self.shown: dict[int, list[Shown]] = {}  # client -> first copies, in arrival order
        self.seen: dict[int, set[int]] = {}  # client -> msgIDs shown
        self.redelivered = 0  # copies dedup hid (the same msgID again)
        # Completion tracking for the drain wait: msgID -> how many members have it, and which
        # accepted messages are still missing somewhere.
        self.members: dict[int, int] = {}  # room -> member count
        self.have: Counter[int] = Counter()
        self.incomplete: set[int] = set()
        self.complete_ns: dict[int, int] = {}  # msgID -> arrival at its last member
        self.watched: set[int] = set()  # msgIDs the drain waits for (accepted by the server)
        self.room_of: dict[int, int] = {}

    def arrive(self, client: int, msg_id: Any, room_id: Any, seq: Any, tag: Tag | None, arrived_ns: int) -> bool:
        if tag is None or tag.run != self.run or tag.step != self.step or not isinstance(msg_id, int):
            self.foreign += 1
            return False
        seen = self.seen.setdefault(client, set())
        if msg_id in seen:
            self.redelivered += 1
            return False
        seen.add(msg_id)
        self.shown.setdefault(client, []).append(
            Shown(msg_id, int(room_id) if isinstance(room_id, int) else 0, int(seq) if isinstance(seq, int) else 0,
                  tag.sender, tag.n, arrived_ns))
        self.have[msg_id] += 1
        self.room_of.setdefault(msg_id, int(room_id) if isinstance(room_id, int) else 0)
        self._maybe_complete(msg_id, arrived_ns)
        return True

    def watch(self, msg_id: int, room_id: int) -> None:
        """The server accepted `msg_id` into `room_id`: the drain waits until every member has it."""
        self.room_of[msg_id] = room_id
        if msg_id in self.watched:
            return
        self.watched.add(msg_id)
        if self.have[msg_id] < self.members.get(room_id, 0):
            self.incomplete.add(msg_id)
        else:
            self.complete_ns.setdefault(msg_id, time.monotonic_ns())

    def _maybe_complete(self, msg_id: int, arrived_ns: int) -> None:
        if self.have[msg_id] >= self.members.get(self.room_of.get(msg_id, 0), 1 << 30):
            self.complete_ns.setdefault(msg_id, arrived_ns)
            self.incomplete.discard(msg_id)


# -- receivers ------------------------------------------------------------------------------------------------


class ChaosReceiver(Receiver):
    """A bench receiver that keeps reconnecting until a deadline and can stop reading."""

    def __init__(self, *args: Any, reconnect_deadline: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reconnect_deadline = reconnect_deadline
        self.reading = asyncio.Event()
        self.reading.set()
        self.lost_connection_ns: int | None = None  # when the current outage of this client began
        self.reconnect_times: list[float] = []  # seconds from losing the socket to the next welcome
        self.gateway_id = ""  # of the latest welcome frame

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                # A slow consumer: not calling receive() lets aiohttp's buffer fill, then it stops
                # reading the socket, and the server's writes back up.
                await self.reading.wait()
                msg = await ws.receive()
                now = time.monotonic_ns()
                if msg.type is WSMsgType.TEXT:
                    self._on_text(msg.data, now)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self.close_codes[f"read error: {type(exc).__name__}"] += 1
        self._fail_pending("connection closed")
        if not self._closing:
            self.close_codes[str(ws.close_code)] += 1
            self.lost_connection_ns = time.monotonic_ns()
            self._reconnecting = asyncio.create_task(self._reconnect(), name=f"reconnect-{self.index}")

    async def _reconnect(self) -> None:
        """Back off and try again until the deadline: the registry may name a killed gateway until it
        has missed two beats and failed a probe (these clients send no `exclude`, as GoStacker's)."""
        deadline = time.monotonic() + self.reconnect_deadline
        delay = RECONNECT_FIRST_DELAY
        while not self._closing and time.monotonic() < deadline:
            await asyncio.sleep(delay)  # back off, as a real client does
            if self._closing:
                return
            try:
                await asyncio.wait_for(self.connect(), self.connect_timeout)
            except (TimeoutError, aiohttp.ClientError, PyStackerError, ConnectionError, OSError, KeyError):
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            self.reconnects += 1
            if self.lost_connection_ns is not None:
                self.reconnect_times.append((time.monotonic_ns() - self.lost_connection_ns) / 1e9)
                self.lost_connection_ns = None
            return
        self.close_codes["gave up reconnecting"] += 1

    def _on_text(self, data: str, now: int) -> object:
        kind = super()._on_text(data, now)
        if kind == "system" and '"gateway_id"' in data:
            # The welcome names the gateway: which clients a gateway kill moves.
            try:
                self.gateway_id = str(orjson.loads(data).get("gateway_id") or "")
            except (orjson.JSONDecodeError, AttributeError):
                pass
        return kind

    def stop_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()


# -- senders --------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One message a sender wanted to send, however many attempts it took."""

    sender: int  # user index
    n: int  # the sender's message number
    room_id: int
    client_msg_id: str
    started_ns: int
    attempts: int = 0
    msg_id: int | None = None  # from the answer (None: never acknowledged)
    seq: int | None = None
    acked_ns: int | None = None
    refused: str | None = None  # a 4xx answer: not retried
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def acked(self) -> bool:
        return self.msg_id is not None


class SendInstances:
    """The send instances a client may use, and which of them are up as far as the harness knows
    (it skips one it just killed only because its clients would learn the same from a refused
    connection; retries work either way)."""

    def __init__(self, session: aiohttp.ClientSession, urls: Iterable[str]) -> None:
        self.session = session
        self.urls = sorted(urls)
        self.in_flight: Counter[str] = Counter()
        self._refused_at: dict[str, float] = {}  # url -> when a connection to it last failed

    def pick(self, attempt: int, offset: int) -> str:
        """Spread senders over the instances; skip one that refused a connection in the last few
        seconds while another is there (a client remembers a dead server for a while)."""
        now = time.monotonic()
        healthy = [u for u in self.urls if now - self._refused_at.get(u, -1e9) > AVOID_REFUSING_FOR] or self.urls
        return healthy[(offset + attempt) % len(healthy)]

    def refused(self, url: str) -> None:
        self._refused_at[url] = time.monotonic()


class Sender:
    def __init__(self, user_index: int, token: str, room_id: int, instances: SendInstances, *, run: str, step: int,
                 text_bytes: int, attempt_timeout: float, give_up_after: float, on_ack: Callable[[Outcome], None]) -> None:
        self.user_index = user_index
        self.token = token
        self.room_id = room_id
        self.instances = instances
        self.run = run
        self.step = step
        self.text_bytes = text_bytes
        self.attempt_timeout = aiohttp.ClientTimeout(total=attempt_timeout)
        self.give_up_after = give_up_after
        self.on_ack = on_ack
        self.outcomes: list[Outcome] = []
        self._next_n = 0

    async def send(self, *, via: str | None = None) -> Outcome:
        """Send the next message; retries (same client_msg_id, next send instance) until answered,
        refused, or `give_up_after` seconds."""
        self._next_n += 1
        n = self._next_n
        started = time.monotonic_ns()
        outcome = Outcome(self.user_index, n, self.room_id, f"x{self.run}-{self.step}-{self.user_index}-{n}", started)
        self.outcomes.append(outcome)
        content = {"type": "text", "text": make_text(Tag(self.run, self.step, self.user_index, n, started),
                                                     self.text_bytes)}
        deadline = time.monotonic() + self.give_up_after
        delay = RETRY_FIRST_DELAY
        while True:
            if via is not None and outcome.attempts == 0:
                url = via
            else:
                url = self.instances.pick(outcome.attempts, self.user_index)
            outcome.attempts += 1
            self.instances.in_flight[url] += 1
            try:
                data = await post_send(self.instances.session, url, self.token, self.room_id, content,
                                       outcome.client_msg_id, self.attempt_timeout)
                outcome.msg_id, outcome.seq = int(data["msgID"]), int(data["seq"])
                outcome.acked_ns = time.monotonic_ns()
                self.on_ack(outcome)
                return outcome
            except SendRefused as exc:
                outcome.errors[f"status {exc.status}"] += 1
                if 400 <= exc.status < 500 and exc.status not in (408, 429):
                    outcome.refused = f"status {exc.status}: {exc.msg}"
                    return outcome
            except (TimeoutError, aiohttp.ClientError, OSError, KeyError, ValueError) as exc:
                outcome.errors[type(exc).__name__] += 1
                if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)):
                    self.instances.refused(url)
            finally:
                self.instances.in_flight[url] -= 1
            if time.monotonic() + delay > deadline:
                return outcome
            await asyncio.sleep(delay)  # back off before the retry, as a client would
            delay = min(delay * 2, RETRY_MAX_DELAY)


async def paced(senders: list[Sender], rate: float, stop: asyncio.Event, max_messages: int) -> None:
    """Every sender sends one message at a time, all together `rate` messages per second, until `stop`
    is set or `max_messages` were started. A sender held up by retries just falls behind its slots."""
    interval = len(senders) / rate
    started = time.monotonic()
    budget = [max_messages]

    async def one(position: int, sender: Sender) -> None:
        slot = started + interval * position / len(senders)
        while not stop.is_set() and budget[0] > 0:
            wait = slot - time.monotonic()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)  # pacing: the load's own clock
                    return
                except TimeoutError:
                    pass
            budget[0] -= 1
            await sender.send()
            slot += interval

    await asyncio.gather(*(one(i, s) for i, s in enumerate(senders)))
