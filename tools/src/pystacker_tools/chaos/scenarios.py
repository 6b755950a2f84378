"""The fault scenarios: each runs a steady load, injects one fault, lets the system recover, and
returns its Verdict (traffic.judge) with the figures that fault is about.

| scenario | fault |
|---|---|
| gateway-kill | SIGKILL of the gateway holding the most clients; they reconnect to another one and catch up |
| send-kill | a burst through send-1, SIGKILL of send-1 while it is in the middle of those requests (appends and fan-outs in flight); senders retry with the same client_msg_id |
| flusher-kill | SIGKILL of the flusher in the middle of a batch: its rows committed in SQL, the batch not confirmed to Redis (the SQL proxy withholds the COMMIT's answer) |
| msgflusher-kill | SIGKILL of msgflusher, then a gateway frozen and killed with entries in its inbox while msgflusher is down; msgflusher restarted hands them on |
| redis-restart | SIGKILL of the deployment's own Redis (no persistence), started again empty |
| sql-outage | the database unreachable (every connection cut at the proxy, new ones refused) for 5 s (long: 30 s) |
| reconnect-storm | 200 (long: 1,000) clients away while more than the Redis window was sent to their rooms, then all reconnect at once |
| slow-consumers | 1% of clients stop reading; the gateways' memory, the others' latency |

Each scenario leaves the deployment whole (killed processes started again) for the next one.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from pystacker.testing import FLUSH_CLAIM_TIMEOUT, WINDOW_SIZE, catchup_batch_size, flush_queue
from pystacker_tools.chaos import SCENARIO_NAMES
from pystacker_tools.chaos.deployment import GATEWAY_TTL, ChaosDeployment, PoolUser, describe_exit
from pystacker_tools.chaos.launcher import poll
from pystacker_tools.chaos.load import ChaosReceiver
from pystacker_tools.chaos.traffic import FlushWatch, LoadShape, Traffic, Verdict, judge

BATCH_SIZE = catchup_batch_size()  # messages per catch-up `batch` frame
SLOW_RECEIVE_BUFFER = 4096  # bytes: a slow consumer's socket buffer, so that it backs up within seconds
RSS_GROWTH_LIMIT_MIB = 64  # a gateway's memory may grow this much while consumers are stuck, not more
BURST_PER_SENDER = 10  # send-kill: concurrent messages per sender through the instance about to die


@dataclass(frozen=True)
class Profile:
    name: str
    group: LoadShape  # the steady load of the kill scenarios
    warmup: float  # seconds of load before the fault
    after: float  # seconds of load after it
    sql_outage: float
    storm_users: int
    storm_rooms: int
    storm_messages: int  # per room, sent while everyone is away (more than the Redis window)
    slow: LoadShape
    slow_fraction: float
    slow_period: float  # seconds the slow consumers stay stuck at least
    drain_timeout: float = 60.0

    @property
    def users_needed(self) -> int:
        return max(self.group.rooms * self.group.members, self.storm_users, self.slow.rooms * self.slow.members)


SHORT = Profile(
    name="short",
    group=LoadShape(rooms=4, members=8, senders_per_room=2, rate=40),
    warmup=3.0, after=6.0, sql_outage=5.0,
    storm_users=200, storm_rooms=2, storm_messages=WINDOW_SIZE + 2 * BATCH_SIZE,
    slow=LoadShape(rooms=2, members=50, senders_per_room=2, rate=60, text_bytes=4096),
    slow_fraction=0.01, slow_period=12.0)

LONG = Profile(
    name="long",
    group=LoadShape(rooms=10, members=20, senders_per_room=3, rate=100),
    warmup=10.0, after=30.0, sql_outage=30.0,
    storm_users=1000, storm_rooms=4, storm_messages=WINDOW_SIZE + 4 * BATCH_SIZE,
    slow=LoadShape(rooms=10, members=50, senders_per_room=2, rate=150, text_bytes=4096),
    slow_fraction=0.01, slow_period=45.0, drain_timeout=180.0)


@dataclass
class Harness:
    """What every scenario gets: the deployment, the user pool, the run's id and profile."""

    deployment: ChaosDeployment
    users: list[PoolUser]
    run: str
    profile: Profile
    quiet: bool = False
    steps: int = 0
    notes: list[str] = field(default_factory=list)

    def next_step(self) -> int:
        self.steps += 1
        return self.steps

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"chaos: {text}", file=sys.stderr, flush=True)

    def redis(self) -> Redis:
        return Redis(host=self.deployment.redis.host, port=self.deployment.redis.port, decode_responses=True)

    async def healthy(self) -> None:
        """Every process running and every gateway listed (a scenario starts from a whole deployment)."""
        dead = self.deployment.exited()
        if dead:
            raise RuntimeError(f"the deployment is not whole: {describe_exit(self.deployment)}")
        await poll(self.deployment.gateways_listed_exactly_running, "the registry listing exactly the running gateways",
                   timeout=GATEWAY_TTL + 10)


# -- shared steps -----------------------------------------------------------------------------------------------


async def steady(h: Harness, name: str, shape: LoadShape | None = None,
                 prepare: Callable[[Traffic], None] | None = None) -> Traffic:
    """Rooms, clients connected, the load running for the warm-up. `prepare` sees the traffic before
    its clients connect."""
    await h.healthy()
    traffic = Traffic(h.deployment, h.users, shape or h.profile.group, run=h.run, step=h.next_step(), name=name)
    await traffic.setup()
    if prepare is not None:
        prepare(traffic)
    await traffic.connect_all()
    traffic.start()
    h.say(f"{name}: {len(traffic.receivers)} clients in {len(traffic.room_ids)} rooms, "
          f"{traffic.shape.rate:g} messages/s")
    await traffic.run_for(h.profile.warmup)
    return traffic


async def finish(h: Harness, traffic: Traffic, fault_ns: int, flush: FlushWatch, *,
                 allow_lost_before_ns: int | None = None, flush_timeout: float = 30.0) -> Verdict:
    """Stop the load, wait for the deliveries and the flusher, judge, close the clients."""
    try:
        await traffic.stop_sending()
        await traffic.drain(h.profile.drain_timeout)
        await flush.wait_all_stored(flush_timeout)
        verdict = await judge(traffic, fault_ns=fault_ns, flush=flush, allow_lost_before_ns=allow_lost_before_ns)
        verdict.figures["client closes"] = traffic.close_codes()
        verdict.figures["reconnects"] = sum(r.reconnects for r in traffic.receivers)
        verdict.duration_s = round((time.monotonic_ns() - fault_ns) / 1e9, 1)
        return verdict
    finally:
        await flush.stop()
        await traffic.close()


def watch_flush(h: Harness, traffic: Traffic, since_ns: int) -> FlushWatch:
    assert h.deployment.sql is not None
    flush = FlushWatch(h.deployment.sql, traffic)
    flush.start(since_ns)
    return flush


def seconds_since(ns: int) -> float:
    return round((time.monotonic_ns() - ns) / 1e9, 2)


def _reconnect_summary(receivers: list[ChaosReceiver]) -> dict[str, Any]:
    times = sorted(t for r in receivers for t in r.reconnect_times)
    if not times:
        return {"clients": len(receivers), "reconnected": 0}
    return {"clients": len(receivers), "reconnected": len(times), "p50_s": round(times[len(times) // 2], 2),
            "max_s": round(times[-1], 2)}


async def _moved_off(traffic: Traffic, receivers: list[ChaosReceiver], gateway_id: str, timeout: float) -> None:
    await poll(lambda: all(r.is_open and r.gateway_id != gateway_id for r in receivers),
               "the killed gateway's clients connected elsewhere", timeout=timeout)


# -- the scenarios ---------------------------------------------------------------------------------------------------


async def gateway_kill(h: Harness) -> Verdict:
    traffic = await steady(h, "gateway-kill")
    counts = Counter(r.gateway_id for r in traffic.receivers)
    victim = max(h.deployment.labels("gateway"), key=lambda label: counts[h.deployment.gateway_id(label)])
    victim_id = h.deployment.gateway_id(victim)
    moved = [r for r in traffic.receivers if r.gateway_id == victim_id]
    fault_ns = time.monotonic_ns()
    flush = watch_flush(h, traffic, fault_ns)
    await h.deployment.kill(victim)
    h.say(f"gateway-kill: SIGKILL {victim} ({len(moved)} clients on it)")
    await _moved_off(traffic, moved, victim_id, timeout=GATEWAY_TTL + 30)
    moved_s = seconds_since(fault_ns)
    await traffic.run_for(h.profile.after)
    restart_s = await h.deployment.restart(victim)
    verdict = await finish(h, traffic, fault_ns, flush)
    verdict.figures.update({"killed": victim, "clients moved": len(moved), "all moved after s": moved_s,
                            "reconnect": _reconnect_summary(moved), "restart s": round(restart_s, 2)})
    return verdict


async def send_kill(h: Harness) -> Verdict:
    traffic = await steady(h, "send-kill")
    victim = "send-1"
    url = h.deployment.url(victim)
    # A burst through the victim, several messages from every sender at once: when its first answer
    # comes, the others are being appended and fanned out; then the process dies under them.
    burst = [asyncio.create_task(sender.send(via=url)) for sender in traffic.senders for _ in range(BURST_PER_SENDER)]
    await poll(lambda: any(task.done() for task in burst), "the first answer of the burst", timeout=15)
    in_flight = traffic.instances.in_flight[url]
    fault_ns = time.monotonic_ns()
    flush = watch_flush(h, traffic, fault_ns)
    await h.deployment.kill(victim)
    h.say(f"send-kill: SIGKILL {victim} with {in_flight} requests in flight")
    outcomes = await asyncio.gather(*burst)
    await traffic.run_for(h.profile.after)
    restart_s = await h.deployment.restart(victim)
    verdict = await finish(h, traffic, fault_ns, flush)
    verdict.figures.update({
        "killed": victim, "burst": len(burst), "in flight at the kill": in_flight,
        "burst sends retried elsewhere": sum(1 for o in outcomes if o.attempts > 1),
        "answered as duplicates of the first attempt": "see redelivered_hidden/duplicates_shown",
        "restart s": round(restart_s, 2)})
    if in_flight == 0:
        verdict.figures["note"] = "no request was in flight at the kill (the burst finished first)"
    return verdict


async def flusher_kill(h: Harness) -> Verdict:
    traffic = await steady(h, "flusher-kill")
    proxy = h.deployment.proxy
    caught = False
    if proxy.counts_statements:
        proxy.arm_commit_trap()
        try:
            await asyncio.wait_for(proxy.trap_sprung.wait(), 20)
            caught = True
        except TimeoutError:
            proxy.release_trap()
    fault_ns = time.monotonic_ns()
    flush = watch_flush(h, traffic, fault_ns)
    await h.deployment.kill("flusher")
    proxy.release_trap()
    h.say("flusher-kill: SIGKILL flusher " + ("after its COMMIT reached SQL, before it confirmed the batch"
                                              if caught else "(at a random point of its loop)"))
    await traffic.run_for(h.profile.after)
    await h.deployment.restart("flusher")
    # The dead flusher's batch stays pending in the flush queue until the claim timeout; then the new
    # flusher takes it, inserts it again (SQL skips the rows it has) and confirms it.
    redis = h.redis()
    rehanded_s: float | None = None
    try:
        stuck = await _flush_pending(h, redis)

        async def none_pending() -> bool:
            return await _flush_pending(h, redis) == 0

        try:
            await poll(none_pending, "the dead flusher's batch confirmed", timeout=FLUSH_CLAIM_TIMEOUT + 30)
            rehanded_s = seconds_since(fault_ns)
        except TimeoutError:
            pass
    finally:
        await redis.aclose()
    verdict = await finish(h, traffic, fault_ns, flush)
    verdict.figures.update({"killed mid-batch (rows committed, batch unconfirmed)": caught,
                            "entries of the dead flusher's batch": stuck, "claim timeout s": FLUSH_CLAIM_TIMEOUT,
                            "batch handed out again and confirmed after s": rehanded_s})
    if rehanded_s is None:
        verdict.problems.append(f"the dead flusher's batch was still pending {FLUSH_CLAIM_TIMEOUT + 30:g}s later")
    return verdict


async def _flush_pending(h: Harness, redis: Redis) -> int:
    """Entries of the flush queue taken by a flusher and not yet confirmed, all partitions."""
    streams, group = flush_queue(h.deployment.prefix)
    total = 0
    for stream in streams:
        try:
            total += int((await redis.xpending(stream, group))["pending"])
        except ResponseError:  # no such stream or group yet: nothing was ever queued there
            pass
    return total


async def msgflusher_kill(h: Harness) -> Verdict:
    traffic = await steady(h, "msgflusher-kill")
    fault_ns = time.monotonic_ns()
    flush = watch_flush(h, traffic, fault_ns)
    await h.deployment.kill("msgflusher")
    counts = Counter(r.gateway_id for r in traffic.receivers)
    victim = max(h.deployment.labels("gateway"), key=lambda label: counts[h.deployment.gateway_id(label)])
    victim_id = h.deployment.gateway_id(victim)
    moved = [r for r in traffic.receivers if r.gateway_id == victim_id]
    # Frozen first, so that pushes pile up unread and unacknowledged in its inbox, then killed:
    # only msgflusher can finish those entries, and it is down.
    h.deployment.signal(victim, signal.SIGSTOP)
    await traffic.run_for(1.5)
    await h.deployment.kill(victim)
    h.say(f"msgflusher-kill: SIGKILL msgflusher, then {victim} frozen and killed with its inbox full")
    redis = h.redis()
    try:
        stream = h.deployment.stream_key(victim)
        left = await redis.xlen(stream)
        await _moved_off(traffic, moved, victim_id, timeout=GATEWAY_TTL + 30)
        await traffic.run_for(h.profile.after / 2)
        restarted_ns = time.monotonic_ns()
        await h.deployment.restart("msgflusher")

        async def inbox_gone() -> bool:
            listed = await redis.sismember(f"{h.deployment.prefix}pystacker:inbox:gateways", victim_id)
            return not listed and not await redis.exists(stream)

        await poll(inbox_gone, "the dead gateway's inbox handed on and removed", timeout=GATEWAY_TTL + 30)
        reclaimed_s = seconds_since(restarted_ns)
    finally:
        await redis.aclose()
    await h.deployment.restart(victim)
    await traffic.run_for(h.profile.after / 2)
    verdict = await finish(h, traffic, fault_ns, flush)
    verdict.figures.update({"killed": f"msgflusher, {victim}", "inbox entries left by the gateway": left,
                            "inbox drained after msgflusher restart s": reclaimed_s,
                            "reconnect": _reconnect_summary(moved)})
    return verdict


async def redis_restart(h: Harness) -> Verdict:
    traffic = await steady(h, "redis-restart")
    fault_ns = time.monotonic_ns()
    flush = watch_flush(h, traffic, fault_ns)
    await asyncio.to_thread(h.deployment.redis.kill)
    killed_ns = time.monotonic_ns()
    await asyncio.to_thread(h.deployment.redis.start)  # empty: no persistence
    up_s = seconds_since(fault_ns)
    h.say(f"redis-restart: SIGKILL redis-server, started again empty after {up_s}s")

    def acked_after_restart() -> bool:
        return any(o.acked_ns is not None and o.acked_ns > killed_ns for o in traffic.outcomes())

    await poll(acked_after_restart, "a send acknowledged after the restart", timeout=60)
    sends_back_s = seconds_since(fault_ns)
    await poll(lambda: traffic.all_open(), "every client connected", timeout=60)
    await traffic.run_for(h.profile.after)
    await poll(h.deployment.gateways_listed_exactly_running, "every gateway registered again", timeout=GATEWAY_TTL + 10)
    # What was acknowledged before the crash and never flushed will never be in SQL: no long wait for it.
    verdict = await finish(h, traffic, fault_ns, flush, allow_lost_before_ns=killed_ns, flush_timeout=5.0)
    verdict.figures.update({"redis down s": up_s, "sends acknowledged again after s": sends_back_s,
                            "acked before the crash, not yet in SQL (lost with Redis)": verdict.acked_not_stored_allowed})
    return verdict


OUTAGE_ACK_BOUND_S = 2.0  # a send started while SQL is down must still be answered within this


async def sql_outage(h: Harness) -> Verdict:
    traffic = await steady(h, "sql-outage")
    proxy = h.deployment.proxy
    fault_ns = time.monotonic_ns()
    proxy.take_down()
    h.say(f"sql-outage: database unreachable for {h.profile.sql_outage:g}s")
    try:
        await traffic.run_for(h.profile.sql_outage)
    finally:
        proxy.bring_up()
    restored_ns = time.monotonic_ns()
    flush = watch_flush(h, traffic, restored_ns)  # from the restore: SQL could not catch up before
    await traffic.run_for(h.profile.after)
    verdict = await finish(h, traffic, fault_ns, flush)
    during = [o for o in traffic.outcomes() if fault_ns <= o.started_ns < restored_ns]
    verdict.figures.update({
        "outage s": h.profile.sql_outage, "connections cut": proxy.cut, "connections refused": proxy.refused,
        "sends started during the outage": len(during),
        # Answered within OUTAGE_ACK_BOUND_S of its start: "before the restore" miscounted a send started
        # in the last milliseconds of the outage and answered, as fast as any, just after it.
        "acknowledged promptly": sum(1 for o in during if o.acked_ns is not None
                                     and o.acked_ns - o.started_ns < OUTAGE_ACK_BOUND_S * 1e9),
        "flush caught up after restore s": (round(verdict.flushed_s - h.profile.sql_outage, 2)
                                            if verdict.flushed_s is not None else None)})
    return verdict


async def reconnect_storm(h: Harness) -> Verdict:
    await h.healthy()
    p = h.profile
    shape = LoadShape(rooms=p.storm_rooms, members=p.storm_users // p.storm_rooms, senders_per_room=4, rate=1e6)
    traffic = Traffic(h.deployment, h.users, shape, run=h.run, step=h.next_step(), name="reconnect-storm")
    await traffic.setup()
    h.say(f"reconnect-storm: {len(traffic.receivers)} clients connect, leave, "
          f"miss {p.storm_messages} messages per room")
    await traffic.connect_all()
    await asyncio.gather(*(r.close() for r in traffic.receivers))
    # Everyone is away: more than the Redis window goes into every room, closed loop.
    traffic.start(max_messages=p.storm_messages * p.storm_rooms)
    await traffic.stop_sending_when_done()
    flush = watch_flush(h, traffic, time.monotonic_ns())
    await flush.wait_all_stored(60)  # catch-up beyond the window must come from SQL
    proxy = h.deployment.proxy
    before = Counter(proxy.statements)
    storm_ns = time.monotonic_ns()
    connect_s = await traffic.connect_all(concurrency=len(traffic.receivers))
    await traffic.drain(p.drain_timeout)
    done = [traffic.ledger.complete_ns.get(m) for m in traffic.ledger.watched]
    caught_up_s = round((max(d for d in done if d is not None) - storm_ns) / 1e9, 2) if done and all(done) else None
    statements = proxy.statements_since(before)
    verdict = await finish(h, traffic, storm_ns, flush)
    verdict.recovery_s = caught_up_s
    pages_beyond_window = math.ceil(max(p.storm_messages - WINDOW_SIZE, 0) / BATCH_SIZE)
    reads = statements.get("select chat_messages") if proxy.counts_statements else None
    verdict.figures.update({
        "clients": len(traffic.receivers), "missed per client": p.storm_messages,
        "all connected after s": round(connect_s, 2), "all caught up after s": caught_up_s,
        "SQL reads of messages": reads,
        "SQL reads without coalescing": len(traffic.receivers) * pages_beyond_window,
        "SQL statements during the storm": statements if proxy.counts_statements else "not counted on this database"})
    return verdict


def _small_buffer_socket(addr_info: Any) -> socket.socket:
    """A client socket with a small receive buffer, set before it connects: the window it offers
    stays small, so a client that stops reading backs the server up within seconds (with the
    default buffers the kernels on both sides absorb megabytes first)."""
    family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RECEIVE_BUFFER)
    return sock


async def slow_consumers(h: Harness) -> Verdict:
    p = h.profile
    small_buffers = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, socket_factory=_small_buffer_socket))
    slow: list[ChaosReceiver] = []

    def choose_slow(traffic: Traffic) -> None:
        senders = {s.user_index for s in traffic.senders}
        count = max(1, round(len(traffic.receivers) * p.slow_fraction))
        slow.extend([r for r in traffic.receivers if r.index not in senders][:count])
        for receiver in slow:
            receiver.session = small_buffers

    try:
        traffic = await steady(h, "slow-consumers", p.slow, prepare=choose_slow)
        return await _slow_consumers(h, traffic, slow)
    finally:
        await small_buffers.close()


async def _slow_consumers(h: Harness, traffic: Traffic, slow: list[ChaosReceiver]) -> Verdict:
    p = h.profile
    slow_ids = {r.index for r in slow}
    gateways = h.deployment.labels("gateway")
    baseline_start = time.monotonic_ns() - int(p.warmup * 1e9)
    rss_before = h.deployment.rss_kib(gateways)
    fault_ns = time.monotonic_ns()
    flush = watch_flush(h, traffic, fault_ns)
    for receiver in slow:
        receiver.stop_reading()
    h.say(f"slow-consumers: {len(slow)} of {len(traffic.receivers)} clients stop reading")
    peak = dict(rss_before)
    closes_before = await _slow_consumer_closes(h, gateways)
    closed_after: float | None = None
    deadline = time.monotonic() + p.slow_period * 3
    while time.monotonic() < deadline:
        await traffic.run_for(0.5)  # sample the gateways' memory twice a second while they are stuck
        for label, rss in h.deployment.rss_kib(gateways).items():
            peak[label] = max(peak.get(label, 0), rss)
        if closed_after is None and await _slow_consumer_closes(h, gateways) - closes_before >= len(slow):
            closed_after = seconds_since(fault_ns)
        if closed_after is not None and time.monotonic_ns() - fault_ns >= p.slow_period * 1e9:
            break
    during_end = time.monotonic_ns()
    for receiver in slow:
        receiver.resume_reading()  # they find the 4008 close, reconnect and catch up
    await traffic.run_for(p.after)
    rss_after = h.deployment.rss_kib(gateways)
    others_before = traffic.latencies(start_ns=baseline_start, end_ns=fault_ns, exclude=slow_ids)
    others_during = traffic.latencies(start_ns=fault_ns, end_ns=during_end, exclude=slow_ids)
    verdict = await finish(h, traffic, fault_ns, flush)
    growth = {label: round((peak[label] - rss_before.get(label, peak[label])) / 1024, 1) for label in peak}
    verdict.figures.update({
        "slow clients": len(slow), "clients": len(traffic.receivers), "closed with 4008 after s": closed_after,
        "gateway RSS MiB before": {k: round(v / 1024, 1) for k, v in rss_before.items()},
        "gateway RSS MiB peak while stuck": {k: round(v / 1024, 1) for k, v in peak.items()},
        "gateway RSS MiB after": {k: round(v / 1024, 1) for k, v in rss_after.items()},
        "RSS growth MiB": growth,
        "others' latency ms before": others_before.summary_ms(),
        "others' latency ms while stuck": others_during.summary_ms()})
    if closed_after is None:
        verdict.problems.append(f"the gateways did not close the {len(slow)} stuck clients (4008) "
                                f"within {p.slow_period * 3:g}s")
    if max(growth.values(), default=0) > RSS_GROWTH_LIMIT_MIB:
        verdict.problems.append(f"a gateway grew by {max(growth.values())} MiB while consumers were stuck")
    before_p99 = others_before.percentile(0.99) or 0.0
    during_p99 = others_during.percentile(0.99) or 0.0
    if during_p99 > max(3 * before_p99, 1.0):
        verdict.problems.append(f"the other clients' p99 latency went from {before_p99 * 1000:.0f} ms "
                                f"to {during_p99 * 1000:.0f} ms")
    return verdict


async def _slow_consumer_closes(h: Harness, gateways: list[str]) -> float:
    """pystacker_ws_slow_consumer_disconnects_total summed over the running gateways' /metrics."""
    total = 0.0
    assert h.deployment.session is not None
    for label in gateways:
        if not h.deployment.member(label).running:
            continue
        try:
            async with h.deployment.session.get(h.deployment.url(label) + "/metrics") as response:
                body = await response.text()
        except (TimeoutError, aiohttp.ClientError):
            continue
        for line in body.splitlines():
            if line.startswith("pystacker_ws_slow_consumer_disconnects_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


Scenario = Callable[[Harness], Awaitable[Verdict]]

SCENARIOS: dict[str, Scenario] = {
    "gateway-kill": gateway_kill,
    "send-kill": send_kill,
    "flusher-kill": flusher_kill,
    "msgflusher-kill": msgflusher_kill,
    "redis-restart": redis_restart,
    "sql-outage": sql_outage,
    "reconnect-storm": reconnect_storm,
    "slow-consumers": slow_consumers,
}
assert tuple(SCENARIOS) == SCENARIO_NAMES
