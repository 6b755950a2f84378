"""The four workloads of issue 6, as phases driven from the parent process.

- fanout: U users connected, G groups of M members, S senders sending text into their group, either
  closed loop (each sender as fast as the server answers) or paced open loop at one or several total
  rates (one measured step per rate);
- pairs: P private rooms; each sender sends its next message when the previous one reached the peer;
- idle: N idle WebSocket connections held for --duration; server memory per connection;
- catchup: U users disconnect, K messages go to each of their rooms, all reconnect at once; the time
  until every user has every missed message.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from pystacker_tools.bench import procfs
from pystacker_tools.bench.clients import SendRefused, post_send
from pystacker_tools.bench.histogram import Histogram
from pystacker_tools.bench.safety import BenchError
from pystacker_tools.bench.tags import Tag, make_text
from pystacker_tools.bench.targets import SETUP_TIMEOUT
from pystacker_tools.bench.worker import SenderPlan

if TYPE_CHECKING:
    from pystacker_tools.bench.runner import Run

SETTLE = 1.0  # seconds after connecting before reading the server's memory (buffers, GC)


def _groups(users: int, groups: int, members: int) -> list[list[int]]:
    """G groups of M members; member i of group g is user (g*M + i) mod U (disjoint when G*M <= U)."""
    return [[(g * members + i) % users for i in range(members)] for g in range(groups)]


async def _connections(run: Run, users: int, latency_origin_ns: int | None = None) -> dict[str, Any]:
    """Connect every user; the server's memory before and after gives the memory per connection."""
    before = run.sample()
    run.phase(f"connecting {users:,} WebSockets")
    result = await run.connect_all(latency_origin_ns)
    await asyncio.sleep(SETTLE)  # let the server finish its per-connection work before sampling memory
    after = run.sample()
    result.update(_memory(before, after, result["connected"]))
    if result["failed"]:
        run.notes.append(f"{result['failed']} connections failed: {result['errors']}")
    return result


def _memory(before: dict[int, procfs.ProcSample], after: dict[int, procfs.ProcSample], connections: int) -> dict[str, Any]:
    if not before:
        return {"server_rss_kib_before": None, "server_rss_kib_after": None, "memory_per_connection_kib": None}
    delta = procfs.rss_delta_kib(before, after)
    return {"server_rss_kib_before": {str(p): s.rss_kib for p, s in before.items()},
            "server_rss_kib_after": {str(p): s.rss_kib for p, s in after.items()},
            "memory_per_connection_kib": round(delta / connections, 2) if connections else None}


def _connection_problems(connections: dict[str, Any]) -> list[str]:
    return [f"{connections['failed']} of {connections['failed'] + connections['connected']} connections failed"] \
        if connections["failed"] else []


def _send_problems(steps: list[dict[str, Any]]) -> list[str]:
    problems = []
    for step in steps:
        sends = step["sends"]
        if sends["accepted"] == 0:
            problems.append(f"step {step['label']}: no send accepted ({sends['errors'] or 'nothing sent'})")
        elif sends["failed"]:
            problems.append(f"step {step['label']}: {sends['failed']} sends failed: {sends['errors']}")
    return problems


async def fanout(run: Run, p: dict[str, Any]) -> dict[str, Any]:
    users, groups, members, senders = p["users"], p["groups"], p["members"], p["senders"]
    if members > users:
        raise BenchError(f"--members {members} is more than --users {users}")
    if senders > groups * members:
        raise BenchError(f"--senders {senders} is more than the {groups * members} group members")
    layout = _groups(users, groups, members)
    population = await run.populate(users, layout, [])
    rooms = [room.room_id for room in population.rooms]
    # Sender j sends into group j mod G as that group's member j div G: distinct users, groups evenly.
    plans = [SenderPlan(user=layout[j % groups][j // groups], room_id=rooms[j % groups], position=j)
             for j in range(senders)]
    await run.start_fleet(population, lambda u: u, plans, typing_share=p.get("typing_share", 0.0),
                          watch=p.get("watch", 0))
    connections = await _connections(run, users)
    steps = []
    rates = p.get("rates") or [None]
    for step, rate in enumerate(rates):
        mode = "closed" if rate is None else "rate"
        label = "closed loop" if rate is None else f"{rate:g} sends/s"
        steps.append(await run.send_step(step, mode, rate=rate, total_senders=senders,
                                         label=f"fanout {label} ({step + 1}/{len(rates)})"))
        steps[-1]["label"] = label
    status = await run.collect(steps)
    return {"steps": steps, "connections": connections, "clients": status,
            "problems": _connection_problems(connections) + _send_problems(steps)}


async def pairs(run: Run, p: dict[str, Any]) -> dict[str, Any]:
    count = p["pairs"]
    couples = [(2 * i, 2 * i + 1) for i in range(count)]
    population = await run.populate(2 * count, [], couples)
    plans = [SenderPlan(user=a, room_id=population.rooms[i].room_id, position=i, peer=b)
             for i, (a, b) in enumerate(couples)]
    # A pair's two users share a process: the sender hears of the peer's arrival without a hop.
    await run.start_fleet(population, lambda u: u // 2, plans)
    connections = await _connections(run, 2 * count)
    step = await run.send_step(0, "pairs", rate=None, total_senders=count, label=f"pairs x{count}")
    step["label"] = f"{count} pair" + ("s" if count != 1 else "")
    status = await run.collect([step])
    # Each message waited for its arrival: messages/s is the accepted sends over the window.
    step["messages_per_s"] = step["sends_per_s"]
    return {"steps": [step], "connections": connections, "clients": status,
            "problems": _connection_problems(connections) + _send_problems([step])}


async def idle(run: Run, p: dict[str, Any]) -> dict[str, Any]:
    devices = p.get("devices", 1)
    users = -(-p["connections"] // devices)
    count = users * devices  # every user with all his devices
    population = await run.populate(users, [], [])
    fleet = await run.start_fleet(population, lambda u: u, [], devices=devices)
    before = run.sample()
    run.phase(f"connecting {count:,} WebSockets")
    connections = await run.connect_all()
    run.phase(f"holding {connections['connected']:,} idle connections for {run.options.duration:g}s")
    hold_until = time.monotonic() + run.options.duration
    while time.monotonic() < hold_until:
        await asyncio.sleep(min(0.5, max(hold_until - time.monotonic(), 0)))  # the workload is to wait
    after = run.sample()
    status = await fleet.call("status", {}, timeout=60)
    still_open = sum(s["open"] for s in status)
    connections.update(_memory(before, after, connections["connected"]))
    connections["open_after_hold"] = still_open
    times = Histogram.from_json(connections.pop("connect_histogram"))
    label = f"{count:,} idle" + (f" ({users:,} users x {devices} devices)" if devices > 1 else "")
    step = {"step": 0, "label": label, "mode": "idle", "offered_rate": None,
            "sends": {"attempted": 0, "accepted": 0, "failed": 0, "errors": {}, "late": 0, "stalls": 0},
            "sends_per_s": None, "server_cpu_s": procfs.cpu_delta(before, after),
            "connections_per_s": round(connections["connected"] / max(connections["elapsed_s"], 1e-9), 1),
            "memory_per_connection_kib": connections["memory_per_connection_kib"]}
    client_status = await run.collect([step])
    # An idle step has no deliveries: its latency figure is the connect time (welcome frame received).
    step["latency_ms"] = times.summary_ms()
    step["latency_histogram"] = times.to_json()
    step["latency_is"] = "connect time (registry lookup + upgrade + welcome frame)"
    problems = _connection_problems(connections)
    if still_open < connections["connected"]:
        problems.append(f"{connections['connected'] - still_open} idle connections were closed during the hold")
    return {"steps": [step], "connections": connections, "clients": client_status, "problems": problems}


async def catchup(run: Run, p: dict[str, Any]) -> dict[str, Any]:
    users, groups, messages = p["users"], p["groups"], p["messages"]
    members = p.get("members") or max(users // groups, 1)
    if members > users:
        raise BenchError(f"--members {members} is more than --users {users}")
    layout = _groups(users, groups, members)
    population = await run.populate(users, layout, [])
    fleet = await run.start_fleet(population, lambda u: u, [])
    connections = await _connections(run, users)
    run.phase("disconnecting everyone")
    await fleet.call("disconnect", {}, timeout=120)
    missed = await _send_while_away(run, population, layout, messages)
    await fleet.call("expect", {"rooms": missed["rooms"]}, timeout=120)
    servers_before, clients_before = run.sample(), procfs.sample_all(fleet.pids)
    origin = time.monotonic_ns()
    run.phase(f"{users:,} users reconnecting at once")
    reconnect = await run.connect_all(latency_origin_ns=origin)
    run.phase("catching up")
    deadline = time.monotonic() + run.options.duration
    while fleet.totals().completed < users and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # poll the shared counters until everyone caught up or time is up
    servers_after, clients_after = run.sample(), procfs.sample_all(fleet.pids)
    results = await fleet.call("catchup_result", {}, timeout=60)
    completion = Histogram()
    incomplete = sum(r["incomplete_users"] for r in results)
    for r in results:
        for done_ns in r["done_ns"].values():
            completion.add((done_ns - origin) / 1e9)
    catchup_s = completion.max if completion.count and not incomplete else None
    step = {"step": 0, "label": f"{users:,} users x {messages} missed", "mode": "catchup", "offered_rate": None,
            "start_ns": origin, "sends": missed["sends"], "sends_per_s": missed["sends_per_s"],
            "catchup_s": round(catchup_s, 3) if catchup_s is not None else None,
            "users_complete": completion.count, "users_incomplete": incomplete,
            "user_completion_ms": completion.summary_ms(),
            "reconnect": {k: v for k, v in reconnect.items() if k != "connect_histogram"},
            "server_cpu_s": procfs.cpu_delta(servers_before, servers_after),
            "client_cpu_s": round(sum(procfs.cpu_delta(clients_before, clients_after).values()), 3)}
    run.accepted.update(missed["accepted"])
    status = await run.collect([step])
    step["latency_is"] = "from the start of the reconnect to each missed message's arrival"
    if catchup_s:
        step["deliveries_per_s"] = round(step["deliveries"] / catchup_s, 1)
    problems = _connection_problems(connections) + _connection_problems(reconnect) + _send_problems([step])
    if incomplete:
        problems.append(f"{incomplete} users did not get every missed message within --duration "
                        f"{run.options.duration:g}s")
    return {"steps": [step], "connections": connections, "clients": status, "problems": problems}


async def _send_while_away(run: Run, population: Any, layout: list[list[int]], messages: int) -> dict[str, Any]:
    """K messages into every group, from its first member, over HTTP; groups in parallel (bounded)."""
    o = run.options
    limit = asyncio.Semaphore(o.setup_concurrency)
    timeout = aiohttp.ClientTimeout(total=SETUP_TIMEOUT)  # these prepare the measured reconnect: setup's patience
    accepted: dict[int, tuple[int, int]] = {}
    by_room: dict[int, list[int]] = {}
    errors: dict[str, int] = {}
    run.phase(f"sending {messages} messages into each of {len(layout)} rooms while everyone is away")
    started = time.monotonic()

    async def one_room(room_index: int) -> None:
        room = population.rooms[room_index]
        sender = population.users[layout[room_index][0]]
        async with limit:
            for n in range(1, messages + 1):
                tag = Tag(run.run_id, 0, sender.index, n, time.monotonic_ns())
                try:
                    data = await post_send(run.http, o.targets.send_for(room.room_id), sender.token, room.room_id,
                                           {"type": "text", "text": make_text(tag, o.text_bytes)},
                                           f"b{run.run_id}-{sender.index}-{n}", timeout)
                except (TimeoutError, SendRefused, aiohttp.ClientError, OSError) as exc:
                    key = f"status {exc.status}" if isinstance(exc, SendRefused) else type(exc).__name__
                    errors[key] = errors.get(key, 0) + 1
                    continue
                accepted[int(data["msgID"])] = (room.room_id, 0)
                by_room.setdefault(room.room_id, []).append(int(data["msgID"]))

    await asyncio.gather(*(one_room(i) for i in range(len(layout))))
    elapsed = max(time.monotonic() - started, 1e-9)
    failed = sum(errors.values())
    return {"accepted": accepted, "rooms": by_room,
            "sends": {"attempted": len(accepted) + failed, "accepted": len(accepted), "failed": failed,
                      "errors": errors, "late": 0, "stalls": 0},
            "sends_per_s": round(len(accepted) / elapsed, 1)}


WORKLOADS = {"fanout": fanout, "pairs": pairs, "idle": idle, "catchup": catchup}
