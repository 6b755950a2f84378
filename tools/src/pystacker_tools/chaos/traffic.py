"""One scenario's traffic and its verdict.

`Traffic` makes the scenario's rooms from the user pool (each user in one room of the scenario), one
receiver per member, and senders; it runs the paced load and waits for the deliveries to drain.
`FlushWatch` follows, from the database itself, when SQL holds every acknowledged message.
`judge` compares what the clients showed with what SQL holds at the end:

- the history is what SQL holds for the scenario's rooms once the flusher is done;
- every stored message must have reached every member of its room: otherwise **lost**;
- an acknowledged message SQL does not hold is **acked, not stored**: a loss too, except where the
  scenario's guarantee allows it (a Redis without persistence restarted before the flusher had it),
  and then it is reported in its own column, never hidden;
- **duplicates shown**: the same sender message (client_msg_id) shown under two msgIDs at one client;
- **order violations**: at one client, a stored message shown after a later one of the same room,
  or shown with another seq than SQL's;
- **recovery**: from the fault until the last late delivery (a message that took more than
  `late_after` seconds from its first send attempt to its last member), and until SQL held every
  acknowledged message again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from pystacker.testing import stored_messages
from pystacker_tools.bench.histogram import Histogram
from pystacker_tools.chaos.deployment import ChaosDeployment, PoolUser, sql_ids
from pystacker_tools.chaos.launcher import poll
from pystacker_tools.chaos.load import ChaosReceiver, Ledger, Outcome, Sender, SendInstances, paced

CONNECT_TIMEOUT = 30.0
CONNECT_CONCURRENCY = 100
LATE_AFTER = 2.0  # seconds: a delivery slower than this (on a loaded 2-core machine) was disturbed
FLUSH_WATCH_INTERVAL = 0.25
FLUSH_SETTLE = 1.0  # messages acknowledged within the last second may be in flight to SQL normally
SQL_ID_CHUNK = 500
LOST_SAMPLE = 12


@dataclass
class LoadShape:
    rooms: int
    members: int  # per room
    senders_per_room: int
    rate: float  # messages per second, all senders together
    text_bytes: int = 64
    attempt_timeout: float = 5.0
    give_up_after: float = 90.0  # a sender keeps retrying one message this long


class Traffic:
    def __init__(self, deployment: ChaosDeployment, users: list[PoolUser], shape: LoadShape, *, run: str, step: int,
                 name: str, reconnect_deadline: float = 60.0) -> None:
        needed = shape.rooms * shape.members
        if needed > len(users):
            raise ValueError(f"{name}: needs {needed} users, the pool has {len(users)}")
        self.deployment = deployment
        self.shape = shape
        self.run = run
        self.step = step
        self.name = name
        self.ledger = Ledger(run, step)
        self.users = users[:needed]
        self.layout = [self.users[r * shape.members:(r + 1) * shape.members] for r in range(shape.rooms)]
        self.room_ids: list[int] = []
        self.receivers: list[ChaosReceiver] = []
        self.senders: list[Sender] = []
        self.members_of: dict[int, list[int]] = {}  # room -> receiver indexes (user indexes)
        self.reconnect_deadline = reconnect_deadline
        self._stop = asyncio.Event()
        self._load: asyncio.Task[None] | None = None
        self.instances = SendInstances(deployment.session, deployment.send_urls)  # type: ignore[arg-type]  # a started deployment has its session

    # -- setup ----------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        limit = asyncio.Semaphore(8)

        async def room(members: list[PoolUser], number: int) -> int:
            async with limit:
                return await self.deployment.create_room(members[0], members, f"chaos-{self.run}-{self.name}-{number}")

        self.room_ids = list(await asyncio.gather(*(room(m, i) for i, m in enumerate(self.layout))))
        for room_id, members in zip(self.room_ids, self.layout, strict=True):
            self.members_of[room_id] = [u.index for u in members]
            self.ledger.members[room_id] = len(members)
            for user in members:
                self.receivers.append(ChaosReceiver(
                    user.index, self.deployment.client(user), self.deployment.session, self.ledger, None,
                    connect_timeout=CONNECT_TIMEOUT, reconnect_deadline=self.reconnect_deadline))
            for sender in members[:self.shape.senders_per_room]:
                self.senders.append(Sender(sender.index, sender.token, room_id, self.instances, run=self.run,
                                           step=self.step, text_bytes=self.shape.text_bytes,
                                           attempt_timeout=self.shape.attempt_timeout,
                                           give_up_after=self.shape.give_up_after, on_ack=self._acked))

    def _acked(self, outcome: Outcome) -> None:
        assert outcome.msg_id is not None
        self.ledger.watch(outcome.msg_id, outcome.room_id)

    async def connect_all(self, receivers: Iterable[ChaosReceiver] | None = None,
                          concurrency: int = CONNECT_CONCURRENCY) -> float:
        """Connect (bounded concurrency, a few tries each); returns the seconds it took."""
        chosen = list(self.receivers if receivers is None else receivers)
        limit = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        async def one(receiver: ChaosReceiver) -> None:
            async with limit:
                for attempt in range(5):
                    try:
                        await receiver.connect()
                        return
                    except Exception:  # a gateway busy with everyone else: try again shortly
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.2 * (attempt + 1))  # back off before trying again

        await asyncio.gather(*(one(r) for r in chosen))
        return time.monotonic() - started

    # -- the load ---------------------------------------------------------------------------------------------

    def start(self, max_messages: int = 1_000_000) -> None:
        self._stop.clear()
        self._load = asyncio.create_task(paced(self.senders, self.shape.rate, self._stop, max_messages),
                                         name=f"load-{self.name}")

    async def stop_sending(self) -> None:
        self._stop.set()
        if self._load is not None:
            # A sender in the middle of its retries finishes them (bounded by give_up_after).
            await asyncio.wait_for(self._load, self.shape.give_up_after + 30)
            self._load = None

    async def stop_sending_when_done(self, timeout: float = 600.0) -> None:
        """Wait until the load has sent its whole budget (start(max_messages=...))."""
        if self._load is not None:
            await asyncio.wait_for(self._load, timeout)
            self._load = None

    async def run_for(self, seconds: float) -> None:
        """Let the load run (the scenario's clock; the load paces itself)."""
        await asyncio.sleep(seconds)
        if self._load is not None and self._load.done():
            self._load.result()  # a crashed load must not pass for a quiet one

    def outcomes(self) -> list[Outcome]:
        return [o for s in self.senders for o in s.outcomes]

    def all_open(self, receivers: Iterable[ChaosReceiver] | None = None) -> bool:
        return all(r.is_open for r in (self.receivers if receivers is None else receivers))

    async def drain(self, timeout: float) -> float:
        """Wait until every acknowledged message reached every member (or the timeout); returns the
        seconds waited. Missing deliveries are not an error here: the verdict counts them."""
        started = time.monotonic()
        try:
            await poll(lambda: not self.ledger.incomplete, f"{self.name}: every message delivered", timeout=timeout,
                       interval=0.1)
        except TimeoutError:
            pass
        return time.monotonic() - started

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.receivers), return_exceptions=True)

    def close_codes(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for receiver in self.receivers:
            total.update(receiver.close_codes)
        return dict(total)

    def latencies(self, *, start_ns: int, end_ns: int, exclude: Collection[int] = frozenset()) -> Histogram:
        """Latency (first send attempt -> arrival) of arrivals in [start, end) at clients not in `exclude`,
        excluding each sender's own copy."""
        started = {o.msg_id: o.started_ns for o in self.outcomes() if o.msg_id is not None}
        histogram = Histogram()
        for client, shown in self.ledger.shown.items():
            if client in exclude:
                continue
            for item in shown:
                if start_ns <= item.arrived_ns < end_ns and item.sender != client and item.msg_id in started:
                    histogram.add((item.arrived_ns - started[item.msg_id]) / 1e9)
        return histogram


class FlushWatch:
    """Polls the database (directly, not through the proxy) for the acknowledged messages; records
    when, after `since_ns`, SQL held every message acknowledged more than FLUSH_SETTLE seconds earlier."""

    def __init__(self, sql: AsyncEngine, traffic: Traffic) -> None:
        self.sql = sql
        self.traffic = traffic
        self.stored: set[int] = set()
        self.caught_up_ns: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.since_ns = 0

    def start(self, since_ns: int) -> None:
        self.since_ns = since_ns
        self.caught_up_ns = None
        self._task = asyncio.create_task(self._watch(), name="flush-watch")

    async def _missing(self, cutoff_ns: int) -> list[int]:
        acked = [o.msg_id for o in self.traffic.outcomes()
                 if o.msg_id is not None and o.acked_ns is not None and o.acked_ns < cutoff_ns]
        unknown = [m for m in acked if m not in self.stored]
        messages = stored_messages()
        for start in range(0, len(unknown), SQL_ID_CHUNK):
            chunk = unknown[start:start + SQL_ID_CHUNK]
            async with self.sql.connect() as conn:
                rows = await conn.execute(select(messages.c.id).where(messages.c.id.in_(chunk)))
                self.stored.update(int(r[0]) for r in rows)
        return [m for m in unknown if m not in self.stored]

    async def _watch(self) -> None:
        while True:
            now = time.monotonic_ns()
            if now >= self.since_ns and not await self._missing(now - int(FLUSH_SETTLE * 1e9)):
                self.caught_up_ns = now
                return
            await asyncio.sleep(FLUSH_WATCH_INTERVAL)

    async def wait_all_stored(self, timeout: float) -> bool:
        """After the load stopped: until SQL holds every acknowledged message (or timeout)."""
        try:
            await poll(lambda: self._all_now(), "every acknowledged message in SQL", timeout=timeout, interval=0.25)
            return True
        except TimeoutError:
            return False

    async def _all_now(self) -> bool:
        missing = await self._missing(time.monotonic_ns())
        if not missing and self.caught_up_ns is None:
            self.caught_up_ns = time.monotonic_ns()
        return not missing

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


# -- the verdict --------------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    scenario: str
    sent: int = 0  # messages the senders wanted to send
    acked: int = 0  # acknowledged to their sender
    stored: int = 0  # in SQL at the end
    expected: int = 0  # deliveries due: every stored message to every member of its room
    delivered: int = 0
    lost: int = 0
    duplicates_shown: int = 0
    order_violations: int = 0
    acked_not_stored: int = 0  # acknowledged, then gone with a store that lost them
    acked_not_stored_allowed: int = 0  # ... of which the scenario's guarantee allows (Redis restart)
    redelivered_hidden: int = 0  # copies client dedup dropped (the same msgID again)
    unacked_stored: int = 0  # stored although the sender never got an answer (it gave up or timed out)
    refused: int = 0  # sends answered 4xx
    gave_up: int = 0  # sends never answered within give_up_after
    retried: int = 0  # sends that took more than one attempt
    recovery_s: float | None = 0.0  # fault -> last late delivery (None: some message never arrived)
    flushed_s: float | None = None  # fault -> SQL holding every acknowledged message
    duration_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)  # what this scenario measures besides
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items()}
        data["ok"] = self.ok
        return data


async def judge(traffic: Traffic, *, fault_ns: int, flush: FlushWatch | None, allow_lost_before_ns: int | None = None,
                late_after: float = LATE_AFTER) -> Verdict:
    """Compare what the clients showed with what SQL holds. `allow_lost_before_ns`: acknowledged
    messages SQL does not hold are allowed (and reported apart) if acknowledged before that instant."""
    deployment = traffic.deployment
    assert deployment.sql is not None
    verdict = Verdict(traffic.name)
    outcomes = traffic.outcomes()
    stored = await sql_ids(deployment.sql, traffic.room_ids)
    ledger = traffic.ledger
    verdict.sent = len(outcomes)
    acked = [o for o in outcomes if o.acked]
    verdict.acked = len(acked)
    verdict.stored = len(stored)
    verdict.refused = sum(1 for o in outcomes if o.refused)
    verdict.gave_up = sum(1 for o in outcomes if not o.acked and not o.refused)
    verdict.retried = sum(1 for o in outcomes if o.attempts > 1)
    verdict.redelivered_hidden = ledger.redelivered
    acked_ids = {o.msg_id for o in acked}
    verdict.unacked_stored = sum(1 for msg_id in stored if msg_id not in acked_ids)

    for outcome in acked:
        row = stored.get(outcome.msg_id)  # type: ignore[arg-type]  # an acked send has its id
        if row is None:
            verdict.acked_not_stored += 1
            if allow_lost_before_ns is not None and outcome.acked_ns is not None \
                    and outcome.acked_ns < allow_lost_before_ns:
                verdict.acked_not_stored_allowed += 1
        elif row[1] != outcome.seq or row[3] != outcome.client_msg_id:
            verdict.order_violations += 1  # the sender was told another seq (or message) than SQL keeps
            verdict.problems.append(f"msg {outcome.msg_id}: acknowledged as seq {outcome.seq}, SQL has seq {row[1]}")

    # deliveries of the history (what SQL holds)
    missing: list[tuple[int, int, int, int]] = []
    for msg_id, (room_id, seq, _, _) in stored.items():
        for client in traffic.members_of.get(room_id, []):
            verdict.expected += 1
            if msg_id in ledger.seen.get(client, ()):
                verdict.delivered += 1
            else:
                missing.append((room_id, seq, msg_id, client))
    verdict.lost = verdict.expected - verdict.delivered
    if missing:  # which ones: enough to find them in the logs
        missing.sort()
        acked_at = {o.msg_id: round((o.acked_ns - fault_ns) / 1e9, 3) for o in acked if o.acked_ns is not None}
        verdict.figures["lost sample (room, seq, msgID, client, acked s after the fault)"] = [
            (*item, acked_at.get(item[2])) for item in missing[:LOST_SAMPLE]]
        gone = sorted((o.room_id, o.seq, o.msg_id, acked_at.get(o.msg_id)) for o in acked if o.msg_id not in stored)
        verdict.figures["acked, not stored (room, seq, msgID, acked s after the fault)"] = gone[:LOST_SAMPLE]
        lost_seqs = {(room, seq) for room, seq, _, _ in missing}
        reused = {(o.room_id, o.seq) for o in acked if o.msg_id not in stored}
        verdict.figures["lost at a seq an unflushed lost message had"] = len(lost_seqs & reused)

    for shown in ledger.shown.values():
        by_sender_message: dict[tuple[int, int], int] = {}
        last_seq: dict[int, int] = {}
        for item in shown:
            key = (item.sender, item.n)
            first = by_sender_message.setdefault(key, item.msg_id)
            if first != item.msg_id:
                verdict.duplicates_shown += 1
            row = stored.get(item.msg_id)
            if row is None:
                continue  # not part of the history (gone with the store): judged above
            if item.seq != row[1] or item.seq <= last_seq.get(item.room_id, 0):
                verdict.order_violations += 1
            last_seq[item.room_id] = max(item.seq, last_seq.get(item.room_id, 0))

    # recovery: from the fault to the last late delivery of a stored message
    late_ns = int(late_after * 1e9)
    started_of = {o.msg_id: o.started_ns for o in acked}
    last_late = fault_ns
    never = False
    for msg_id in stored:
        started = started_of.get(msg_id)
        if started is None or started < fault_ns - late_ns:
            continue
        done = ledger.complete_ns.get(msg_id)
        if done is None:
            never = True
        elif done - started > late_ns:
            last_late = max(last_late, done)
    verdict.recovery_s = None if never else round((last_late - fault_ns) / 1e9, 2)
    if flush is not None and flush.caught_up_ns is not None:
        verdict.flushed_s = round(max(flush.caught_up_ns - fault_ns, 0) / 1e9, 2)

    if verdict.lost:
        verdict.problems.append(f"{verdict.lost} deliveries lost")
    if verdict.duplicates_shown:
        verdict.problems.append(f"{verdict.duplicates_shown} duplicates shown")
    if verdict.order_violations:
        verdict.problems.append(f"{verdict.order_violations} order violations")
    unexplained = verdict.acked_not_stored - verdict.acked_not_stored_allowed
    if unexplained:
        verdict.problems.append(f"{unexplained} acknowledged messages not in SQL")
    if verdict.gave_up:
        verdict.problems.append(f"{verdict.gave_up} sends never answered")
    if verdict.refused:
        verdict.problems.append(f"{verdict.refused} sends refused")
    if verdict.acked == 0:
        verdict.problems.append("no message was acknowledged")
    return verdict
