"""One client process: receivers and senders for its share of the users.

The parent (fleet.py) starts one per --client-procs and drives them with commands over a pipe:
connect, disconnect, send (one measured step), expect/catchup_result (catch-up tracking), status,
report (integrity counts and histograms), quit. Live counters go to a shared array the parent reads
for its progress line. A worker ignores Ctrl-C (the parent stops it) and exits by itself when the
parent goes away (the pipe ends).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson

from pystacker.client import PyStackerError
from pystacker.testing import run_event_loop
from pystacker_tools.bench.checker import IntegrityChecker
from pystacker_tools.bench.clients import HttpSender, Receiver, SendResult, WsSender
from pystacker_tools.bench.histogram import Histogram
from pystacker_tools.bench.safety import raise_fd_limit
from pystacker_tools.bench.tags import Tag, make_text
from pystacker_tools.bench.targets import Targets

# Live counters, one row per worker in a shared array of int64 (only the worker writes its row).
COUNTERS = ("connected", "sends_started", "sends_ok", "sends_failed", "delivered", "expected", "completed")
CONNECTED, STARTED, SENT_OK, SENT_FAILED, DELIVERED, EXPECTED, COMPLETED = range(len(COUNTERS))
FLUSH_INTERVAL = 0.1  # seconds between counter updates (the progress line is once a second)
LATE_NS = 10_000_000  # an open-loop send starting 10 ms after its slot counts as late
FAILURE_PAUSE = 0.01  # after a failed send, so a refusing server is not hammered in a tight loop


@dataclass
class SenderPlan:
    user: int  # user index
    room_id: int
    position: int  # 0 ... senders-1 across all processes (spreads open-loop send times)
    peer: int | None = None  # pairs: who must receive a message before the next is sent


@dataclass
class WorkerPlan:
    run: str
    targets: Targets
    allow_remote: bool
    users: list[tuple[int, int, str]]  # (index, user id, token) of this process's users
    rooms: dict[int, tuple[int, ...]]  # every room of the run -> member indexes
    senders: list[SenderPlan] = field(default_factory=list)  # this process's senders
    via: str = "http"
    text_bytes: int = 0
    connect_concurrency: int = 100
    connect_timeout: float = 30.0
    max_in_flight: int = 1000
    devices: int = 1  # sockets per user, each its own named device when more than one
    typing_share: float = 0.0  # share of the senders that send `typing` before each message
    watch: int = 0  # users whose presence each client watches


async def recv_message(conn: Connection, timeout: float | None) -> Any:
    """Await the next object on a multiprocessing pipe without blocking the event loop."""
    loop = asyncio.get_running_loop()
    if not conn.poll():
        ready = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, _settle, ready)
        try:
            await asyncio.wait_for(ready, timeout)
        finally:
            loop.remove_reader(fd)
            # uvloop (libuv) makes a watched descriptor non-blocking, and Connection.recv/send
            # expect a blocking one: a message larger than what has arrived so far would fail
            # with BlockingIOError halfway through.
            os.set_blocking(fd, True)
    return conn.recv()  # raises EOFError when the other side is gone



def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)

def _describe(exc: BaseException) -> str:
    """A connect failure, as a key of the report's error counts."""
    if isinstance(exc, PyStackerError):  # the registry lookup
        return f"registry: status {exc.status}" if exc.status else "registry: no answer"
    return type(exc).__name__


class Worker:
    def __init__(self, conn: Connection, counters: Any, index: int, plan: WorkerPlan) -> None:
        self.conn = conn
        self.counters = counters
        self.base = index * len(COUNTERS)
        self.plan = plan
        self.local = [0] * len(COUNTERS)
        self.checker = IntegrityChecker(plan.run)
        self.users = {index: (user_id, token) for index, user_id, token in plan.users}
        self.receivers: dict[int, Receiver] = {}
        self.recipients = {room: len(members) for room, members in plan.rooms.items()}
        self.next_n: dict[int, int] = {}
        self.pair_waiters: dict[tuple[int, int, int], asyncio.Future[int]] = {}  # (peer, sender, n)
        self.catchup_remaining: dict[int, set[int]] | None = None
        self.catchup_done: dict[int, int] = {}
        self.closed_stats: Counter[str] = Counter()  # of receivers already dropped (disconnect)
        self.reconnects = self.bad_frames = self.acks = 0

    # -- process plumbing ------------------------------------------------------------------------

    def _flush(self) -> None:
        for i, value in enumerate(self.local):
            self.counters[self.base + i] = value

    async def _flush_forever(self) -> None:
        while True:
            self._flush()
            await asyncio.sleep(FLUSH_INTERVAL)

    async def serve(self) -> None:
        connector = aiohttp.TCPConnector(limit=max(self.plan.max_in_flight, 64), limit_per_host=0)
        # WebSockets hold their connection for good: a pool limit would block the next connects.
        ws_connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http, \
                aiohttp.ClientSession(connector=ws_connector) as ws_session:
            self.http = http
            self.ws_session = ws_session
            flusher = asyncio.create_task(self._flush_forever())
            self.conn.send(("ok", {"pid": os.getpid()}))
            try:
                while True:
                    try:
                        command, args = await recv_message(self.conn, None)
                    except (EOFError, OSError):
                        return  # the parent is gone: nothing left to do
                    try:
                        result = await getattr(self, f"cmd_{command}")(args)
                        self._flush()  # the parent reads the counters right after the answer
                        self.conn.send(("ok", result))
                    except Exception as exc:
                        self.conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
                    if command == "quit":
                        return
            finally:
                flusher.cancel()
                await self._close_all()

    # -- arrivals --------------------------------------------------------------------------------

    def on_new(self, client: int, msg_id: int, tag: Tag, now: int) -> None:
        self.local[DELIVERED] += 1
        if self.pair_waiters:
            waiter = self.pair_waiters.pop((client, tag.sender, tag.n), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)
        if self.catchup_remaining is not None:
            remaining = self.catchup_remaining.get(client)
            if remaining and msg_id in remaining:
                remaining.discard(msg_id)
                if not remaining:
                    self.catchup_done[client] = now
                    self.local[COMPLETED] += 1

    # -- connections -----------------------------------------------------------------------------

    async def cmd_connect(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("latency_origin_ns") is not None:
            self.checker.latency_origin_ns = args["latency_origin_ns"]
        limit = asyncio.Semaphore(self.plan.connect_concurrency)
        times = Histogram()
        errors: Counter[str] = Counter()
        started = time.monotonic()

        devices = self.plan.devices

        async def one(index: int, user_id: int, token: str) -> None:
            async with limit:
                # One user, several devices: receiver keys index*devices + d (the user's index itself
                # when he has one device, as every workload but idle has).
                client = self.plan.targets.client(self.http, token=token, user_id=user_id,
                                                  device_id=None if devices == 1 else f"bench-{index % devices}",
                                                  timeout=self.plan.connect_timeout)
                receiver = Receiver(index, client, self.ws_session, self.checker, self.on_new,
                                    connect_timeout=self.plan.connect_timeout, allow_remote=self.plan.allow_remote)
                try:
                    times.add(await asyncio.wait_for(receiver.connect(), self.plan.connect_timeout))
                except Exception as exc:
                    errors[_describe(exc)] += 1
                    return
                self.receivers[index] = receiver
                self.local[CONNECTED] += 1

        slots = [(i * devices + d, uid, tok) for i, (uid, tok) in self.users.items() for d in range(devices)]
        await asyncio.gather(*(one(key, uid, tok) for key, uid, tok in slots if key not in self.receivers))
        if self.plan.watch:
            await self._watch_presence()
        return {"connected": len(self.receivers), "failed": sum(errors.values()), "errors": dict(errors),
                "connect_times": times.to_json(), "elapsed_s": time.monotonic() - started}

    async def _watch_presence(self) -> None:
        """Each client watches the next `watch` users of this process (wrapping around)."""
        ids = [user_id for user_id, _ in self.users.values()]
        for k, receiver in enumerate(self.receivers.values()):
            watched = [ids[(k + 1 + j) % len(ids)] for j in range(min(self.plan.watch, len(ids) - 1))]
            if receiver.ws is not None and not receiver.ws.closed:
                await receiver.ws.send_str(orjson.dumps({"type": "presence_subscribe", "user_ids": watched}).decode())

    def _types(self, plan: SenderPlan) -> bool:
        """This sender sends `typing` before each message (the first typing_share of positions)."""
        share = self.plan.typing_share
        return share > 0 and (plan.position * share) % 1 + share >= 1 - 1e-9

    async def cmd_disconnect(self, _: dict[str, Any]) -> dict[str, Any]:
        closed = await self._close_all()
        return {"closed": closed}

    async def _close_all(self) -> int:
        limit = asyncio.Semaphore(self.plan.connect_concurrency)

        async def one(receiver: Receiver) -> None:
            async with limit:
                await receiver.close()

        receivers, self.receivers = list(self.receivers.values()), {}
        await asyncio.gather(*(one(r) for r in receivers), return_exceptions=True)
        for r in receivers:
            self.closed_stats.update(r.close_codes)
            self.reconnects += r.reconnects
            self.bad_frames += r.bad_frames
            self.acks += r.acks
        self.local[CONNECTED] = 0
        return len(receivers)

    async def cmd_status(self, _: dict[str, Any]) -> dict[str, Any]:
        codes = Counter(self.closed_stats)
        for r in self.receivers.values():
            codes.update(r.close_codes)
        return {"open": sum(1 for r in self.receivers.values() if r.is_open), "receivers": len(self.receivers),
                "server_closes": dict(codes),
                "reconnects": self.reconnects + sum(r.reconnects for r in self.receivers.values()),
                "bad_frames": self.bad_frames + sum(r.bad_frames for r in self.receivers.values()),
                "acks": self.acks + sum(r.acks for r in self.receivers.values()),
                "signals": dict(sum((r.signals for r in self.receivers.values()), Counter()))}

    # -- sending ---------------------------------------------------------------------------------

    async def cmd_send(self, spec: dict[str, Any]) -> dict[str, Any]:
        """One measured step: every sender of this process sends until the step's deadline."""
        state = _StepState(spec, Histogram())
        senders: dict[int, HttpSender | WsSender]
        if self.plan.via == "ws":
            senders = {s.user: WsSender(self.receivers[s.user], spec["send_timeout"]) for s in self.plan.senders
                       if s.user in self.receivers}
        else:
            senders = {s.user: HttpSender(self.http, self.plan.targets, self.users[s.user][1], spec["send_timeout"])
                       for s in self.plan.senders}
        in_flight = asyncio.Semaphore(self.plan.max_in_flight)
        await asyncio.sleep(max(spec["start_ns"] - time.monotonic_ns(), 0) / 1e9)  # start with the others
        mode = spec["mode"]
        loops = []
        for plan in self.plan.senders:
            sender = senders.get(plan.user)
            if sender is None:
                state.errors["sender not connected"] += 1
                continue
            if mode == "closed":
                loops.append(self._closed_loop(sender, plan, state))
            elif mode == "rate":
                loops.append(self._paced_loop(sender, plan, state, in_flight))
            elif mode == "pairs":
                loops.append(self._pair_loop(sender, plan, state))
            else:
                raise ValueError(f"unknown send mode {mode!r}")
        await asyncio.gather(*loops)
        return state.result(time.monotonic_ns())

    def _next(self, user: int) -> int:
        n = self.next_n[user] = self.next_n.get(user, 0) + 1
        return n

    async def _send_one(self, sender: HttpSender | WsSender, plan: SenderPlan, state: _StepState, n: int) -> SendResult:
        sent_ns = time.monotonic_ns()
        tag = Tag(self.plan.run, state.step, plan.user, n, sent_ns)
        content = {"type": "text", "text": make_text(tag, self.plan.text_bytes)}
        self.local[STARTED] += 1
        if self._types(plan):
            receiver = self.receivers.get(plan.user)
            if receiver is not None and receiver.ws is not None and not receiver.ws.closed:
                await receiver.ws.send_str(orjson.dumps({"type": "typing", "room_id": plan.room_id}).decode())
        result = await sender.send(plan.room_id, content, f"b{self.plan.run}-{plan.user}-{n}")
        if result.ok:
            self.local[SENT_OK] += 1
            self.local[EXPECTED] += self.recipients[plan.room_id]
            state.accepted.append((result.msg_id, plan.room_id, state.step))
            state.accept_times.add((time.monotonic_ns() - sent_ns) / 1e9)
        else:
            self.local[SENT_FAILED] += 1
            state.errors[result.error] += 1
        return result

    async def _closed_loop(self, sender: HttpSender | WsSender, plan: SenderPlan, state: _StepState) -> None:
        """As fast as the server answers: the next send starts when the previous one is answered."""
        while time.monotonic_ns() < state.deadline_ns and state.take():
            if not (await self._send_one(sender, plan, state, self._next(plan.user))).ok:
                await asyncio.sleep(FAILURE_PAUSE)

    async def _paced_loop(self, sender: HttpSender | WsSender, plan: SenderPlan, state: _StepState,
                          in_flight: asyncio.Semaphore) -> None:
        """Open loop: sends start on a fixed schedule whatever the answers, up to max_in_flight."""
        assert state.rate is not None  # a paced step has a rate
        interval_ns = state.total_senders * 1e9 / state.rate
        first_ns = state.start_ns + interval_ns * plan.position / state.total_senders  # spread the senders
        tasks: set[asyncio.Task[None]] = set()

        async def send(n: int) -> None:
            try:
                await self._send_one(sender, plan, state, n)
            finally:
                in_flight.release()

        k = 0
        while True:
            slot_ns = first_ns + k * interval_ns
            k += 1
            if slot_ns >= state.deadline_ns or not state.take():
                break
            delay = (slot_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()  # waiting here means sends are piling up: counted as late
            if time.monotonic_ns() - slot_ns > LATE_NS:
                state.late += 1
            task = asyncio.create_task(send(self._next(plan.user)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _pair_loop(self, sender: HttpSender | WsSender, plan: SenderPlan, state: _StepState) -> None:
        """The next message is sent when the previous one has reached the peer."""
        assert plan.peer is not None
        loop = asyncio.get_running_loop()
        while time.monotonic_ns() < state.deadline_ns and state.take():
            n = self._next(plan.user)
            key = (plan.peer, plan.user, n)
            arrived = self.pair_waiters[key] = loop.create_future()  # before sending: it may arrive first
            if not (await self._send_one(sender, plan, state, n)).ok:
                self.pair_waiters.pop(key, None)
                await asyncio.sleep(FAILURE_PAUSE)
                continue
            try:
                await asyncio.wait_for(arrived, state.wait_timeout)
            except TimeoutError:
                state.stalls += 1  # the checker reports it as lost unless it arrives before the end
                self.pair_waiters.pop(key, None)

    # -- catch-up --------------------------------------------------------------------------------

    async def cmd_expect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Track when each user has every message of `rooms` (room id -> msgIDs)."""
        rooms: dict[int, list[int]] = args["rooms"]
        self.catchup_remaining = {}
        for index in self.users:
            wanted = {m for room, members in self.plan.rooms.items() if index in members for m in rooms.get(room, ())}
            if wanted:
                self.catchup_remaining[index] = wanted
            else:
                self.catchup_done[index] = time.monotonic_ns()
                self.local[COMPLETED] += 1
        return {"tracked": len(self.catchup_remaining)}

    async def cmd_catchup_result(self, _: dict[str, Any]) -> dict[str, Any]:
        remaining = self.catchup_remaining or {}
        return {"done_ns": dict(self.catchup_done), "incomplete_users": sum(1 for r in remaining.values() if r),
                "missing": sum(len(r) for r in remaining.values())}

    # -- results ---------------------------------------------------------------------------------

    async def cmd_report(self, args: dict[str, Any]) -> dict[str, Any]:
        accepted: dict[int, tuple[int, int]] = args["accepted"]
        mine = {room: [m for m in members if m in self.users] for room, members in self.plan.rooms.items()}
        steps = self.checker.finish(accepted, mine)
        status = await self.cmd_status({})
        times = os.times()
        return {"steps": {step: counts.to_json() for step, counts in steps.items()},
                "foreign": self.checker.foreign, "status": status,
                "cpu_s": times.user + times.system}

    async def cmd_quit(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"closed": await self._close_all()}


class _StepState:
    """What one step's senders in this process share: deadline, budget, and what they recorded."""

    def __init__(self, spec: dict[str, Any], accept_times: Histogram) -> None:
        self.step: int = spec["step"]
        self.start_ns: int = spec["start_ns"]
        self.deadline_ns: int = spec["start_ns"] + int(spec["duration"] * 1e9)
        self.budget: int = spec["max_messages"]
        self.rate: float | None = spec.get("rate")
        self.total_senders: int = spec["total_senders"]
        self.wait_timeout: float = spec.get("wait_timeout", 10.0)
        self.accepted: list[tuple[int, int, int]] = []
        self.accept_times = accept_times
        self.errors: Counter[str] = Counter()
        self.late = 0
        self.stalls = 0

    def take(self) -> bool:
        """One send from the step's budget (--max-messages, shared by this process's senders)."""
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True

    def result(self, ended_ns: int) -> dict[str, Any]:
        return {"accepted": self.accepted, "failed": sum(self.errors.values()), "errors": dict(self.errors),
                "accept_times": self.accept_times.to_json(), "late": self.late, "stalls": self.stalls,
                "ended_ns": ended_ns}


def main(conn: Connection, counters: Any, index: int, plan: WorkerPlan) -> None:
    """The process entry point (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    raise_fd_limit(len(plan.users) + 1024)
    run_event_loop(Worker(conn, counters, index, plan).serve())
