"""One bench run: target, setup, client processes, measured steps, results.

The order is always the same: check the targets (loopback unless --allow-remote), start the embedded
server if asked, create the users and rooms, start the client processes, let the workload drive its
phases, collect the integrity counts, then write the JSON and the plot and print the table. Every
phase has a deadline, and the server and client processes started here are stopped on the way out,
whatever happened.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from pystacker.testing import run_event_loop
from pystacker_tools.bench import procfs, rawlimit
from pystacker_tools.bench.checker import StepCounts
from pystacker_tools.bench.fleet import Fleet, Progress
from pystacker_tools.bench.histogram import Histogram
from pystacker_tools.bench.rawlimit import RawLimitOptions
from pystacker_tools.bench.safety import BenchError, raise_fd_limit
from pystacker_tools.bench.server import EmbeddedServer
from pystacker_tools.bench.setup import Population, create_population
from pystacker_tools.bench.targets import Targets
from pystacker_tools.bench.worker import SenderPlan, WorkerPlan

DRAIN_POLL = 0.05  # seconds between looks at the counters while deliveries drain
START_DELAY = 0.3  # seconds between the send command and the common start, so all processes start together


@dataclass
class BenchOptions:
    targets: Targets
    embedded: bool = False
    server_env: dict[str, str] = field(default_factory=dict)
    allow_remote: bool = False
    server_pids: list[int] = field(default_factory=list)
    client_procs: int = 1
    duration: float = 20.0
    max_messages: int = 200_000
    grace: float = 10.0
    results_dir: Path = Path("bench-results")
    output: Path | None = None
    plot: bool = True
    progress: bool = True
    via: str = "http"
    text_bytes: int = 64
    setup_concurrency: int = 16
    setup_timeout: float = 600.0
    connect_concurrency: int = 200
    connect_timeout: float = 30.0
    send_timeout: float = 10.0
    max_in_flight: int = 1000
    user_prefix: str = "bench"
    users_file: Path | None = None
    server_data: Path | None = None
    rawlimit: RawLimitOptions | None = None  # None: the raw limit is not measured (--no-rawlimit)

    def public(self) -> dict[str, Any]:
        values = asdict(self)
        values["targets"] = asdict(self.targets)
        values["results_dir"] = str(self.results_dir)
        values["output"] = str(self.output) if self.output else None
        values["users_file"] = str(self.users_file) if self.users_file else None
        values["server_data"] = str(self.server_data) if self.server_data else None
        return values


class Run:
    """What a workload uses: options, the parent's HTTP session, server sampling, setup, fleet, steps."""

    def __init__(self, options: BenchOptions, http: aiohttp.ClientSession, run_id: str) -> None:
        self.options = options
        self.http = http
        self.run_id = run_id
        self.notes: list[str] = []
        self.fleet: Fleet | None = None
        self.progress: Progress | None = None
        self.accepted: dict[int, tuple[int, int]] = {}  # every accepted send: msgID -> (room, step)
        self.started = time.monotonic()

    # -- servers ---------------------------------------------------------------------------------

    def sample(self) -> dict[int, procfs.ProcSample]:
        return procfs.sample_all(self.options.server_pids)

    # -- setup and processes ---------------------------------------------------------------------

    async def populate(self, users: int, groups: list[list[int]], pairs: list[tuple[int, int]]) -> Population:
        o = self.options
        return await create_population(o.targets, self.http, run=self.run_id, prefix=o.user_prefix, users=users, groups=groups,
                                       pairs=pairs, concurrency=o.setup_concurrency, timeout=o.setup_timeout,
                                       progress=o.progress, started=self.started, users_file=o.users_file)

    async def start_fleet(self, population: Population, owner: Callable[[int], int],
                          senders: list[SenderPlan], *, devices: int = 1, typing_share: float = 0.0,
                          watch: int = 0) -> Fleet:
        """One client process per --client-procs; `owner(user index)` says which one holds a user
        (with all his `devices` sockets)."""
        o = self.options
        count = max(1, min(o.client_procs, len(population.users) or 1))
        rooms = {room.room_id: room.members for room in population.rooms}
        plans = [WorkerPlan(run=self.run_id, targets=o.targets, allow_remote=o.allow_remote, users=[], rooms=rooms,
                            via=o.via, text_bytes=o.text_bytes, connect_concurrency=max(1, o.connect_concurrency // count),
                            connect_timeout=o.connect_timeout, max_in_flight=max(1, o.max_in_flight // count),
                            devices=devices, typing_share=typing_share, watch=watch)
                 for _ in range(count)]
        for user in population.users:
            plans[owner(user.index) % count].users.append((user.index, user.user_id, user.token))
        for sender in senders:
            plans[owner(sender.user) % count].senders.append(sender)
        self.fleet = Fleet(plans)
        await self.fleet.start()
        self.progress = Progress(self.fleet, o.progress, self.started)
        self.progress.start()
        return self.fleet

    def phase(self, text: str) -> None:
        if self.progress is not None:
            self.progress.phase = text
        if self.options.progress:
            print(f"bench: {text}", file=sys.stderr, flush=True)

    async def connect_all(self, latency_origin_ns: int | None = None) -> dict[str, Any]:
        assert self.fleet is not None
        answers = await self.fleet.call("connect", {"latency_origin_ns": latency_origin_ns},
                                        timeout=self.options.connect_timeout * 4 + 60)
        times = Histogram()
        errors: dict[str, int] = {}
        for answer in answers:
            times.merge(Histogram.from_json(answer["connect_times"]))
            for key, n in answer["errors"].items():
                errors[key] = errors.get(key, 0) + n
        return {"connected": sum(a["connected"] for a in answers), "failed": sum(a["failed"] for a in answers),
                "errors": errors, "connect_ms": times.summary_ms(), "elapsed_s": max(a["elapsed_s"] for a in answers),
                "connect_histogram": times.to_json()}

    # -- a measured step of sending --------------------------------------------------------------

    async def send_step(self, step: int, mode: str, *, rate: float | None, total_senders: int,
                        label: str) -> dict[str, Any]:
        """Run one step on every process, then wait (at most --grace) until every delivery arrived."""
        fleet, o = self.fleet, self.options
        assert fleet is not None
        budgets = _split(o.max_messages, [len(plan.senders) for plan in fleet.plans])
        start_ns = time.monotonic_ns() + int(START_DELAY * 1e9)
        specs = [{"step": step, "mode": mode, "rate": rate, "total_senders": total_senders, "start_ns": start_ns,
                  "duration": o.duration, "send_timeout": o.send_timeout, "wait_timeout": o.grace,
                  "max_messages": budget} for budget in budgets]
        self.phase(label)
        servers_before, clients_before = self.sample(), procfs.sample_all(fleet.pids)
        answers = await fleet.call("send", specs, timeout=o.duration + o.send_timeout + o.grace + 60)
        sent_until = max(a["ended_ns"] for a in answers)
        self.phase(f"{label}: draining")
        drain_deadline = time.monotonic() + o.grace
        while time.monotonic() < drain_deadline:
            totals = fleet.totals()
            if totals.delivered >= totals.expected:
                break
            await asyncio.sleep(DRAIN_POLL)  # poll the shared counters until drained or out of grace
        servers_after, clients_after = self.sample(), procfs.sample_all(fleet.pids)
        accept_times = Histogram()
        errors: dict[str, int] = {}
        accepted = 0
        for answer in answers:
            for msg_id, room_id, step_of in answer["accepted"]:
                self.accepted[msg_id] = (room_id, step_of)
            accepted += len(answer["accepted"])
            accept_times.merge(Histogram.from_json(answer["accept_times"]))
            for key, n in answer["errors"].items():
                errors[key] = errors.get(key, 0) + n
        failed = sum(a["failed"] for a in answers)
        window = max((sent_until - start_ns) / 1e9, 1e-9)
        return {"step": step, "label": label, "mode": mode, "offered_rate": rate, "start_ns": start_ns,
                "send_window_s": round(window, 3),
                "sends": {"attempted": accepted + failed, "accepted": accepted, "failed": failed, "errors": errors,
                          "late": sum(a["late"] for a in answers), "stalls": sum(a["stalls"] for a in answers)},
                "sends_per_s": round(accepted / window, 1),
                "accept_latency_ms": accept_times.summary_ms(),
                "server_cpu_s": procfs.cpu_delta(servers_before, servers_after),
                "client_cpu_s": round(sum(procfs.cpu_delta(clients_before, clients_after).values()), 3),
                "wall_s": round((time.monotonic_ns() - start_ns) / 1e9, 3)}

    # -- integrity ---------------------------------------------------------------------------------

    async def collect(self, steps: list[dict[str, Any]]) -> dict[str, Any]:
        """Ask every process for its integrity counts against all accepted sends; fill in the steps."""
        assert self.fleet is not None
        self.phase("checking integrity")
        answers = await self.fleet.call("report", {"accepted": self.accepted}, timeout=300)
        merged: dict[int, StepCounts] = {}
        status: dict[str, Any] = {"open": 0, "receivers": 0, "server_closes": {}, "reconnects": 0, "bad_frames": 0,
                                  "acks": 0, "signals": {}}
        for answer in answers:
            for step, data in answer["steps"].items():
                merged.setdefault(int(step), StepCounts()).merge(StepCounts.from_json(data))
            for key in ("open", "receivers", "reconnects", "bad_frames", "acks"):
                status[key] += answer["status"][key]
            for code, n in answer["status"]["server_closes"].items():
                status["server_closes"][code] = status["server_closes"].get(code, 0) + n
            for kind, n in answer["status"].get("signals", {}).items():  # typing and presence frames
                status["signals"][kind] = status["signals"].get(kind, 0) + n
        for record in steps:
            fill_integrity(record, merged.get(record["step"], StepCounts()))
        status["foreign_messages"] = sum(a["foreign"] for a in answers)
        status["client_cpu_s_total"] = round(sum(a["cpu_s"] for a in answers), 3)
        return status


def _split(total: int, weights: list[int]) -> list[int]:
    """Share `total` in proportion to `weights`, exactly (largest remainders get the leftovers)."""
    weight = sum(weights)
    if weight == 0:
        return [0 for _ in weights]
    shares = [total * w // weight for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (total * weights[i]) % weight, reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def fill_integrity(record: dict[str, Any], counts: StepCounts) -> None:
    """Put a step's integrity counts, delivery rate and latency into its record."""
    record["deliveries_expected"] = counts.expected
    record["deliveries"] = counts.delivered
    record["lost"] = counts.lost
    record["duplicates"] = counts.duplicates
    record["order_violations"] = counts.order_violations
    record["order_checked"] = counts.seq_checked > 0
    # With several sends in flight per sender (open loop) a sender's messages may legitimately be
    # accepted in another order than started: the figure only means something in closed loops.
    open_loop = record.get("mode") == "rate"
    record["sender_order_violations"] = None if open_loop else counts.sender_order_violations
    record["unexpected"] = counts.unexpected
    start = record.get("start_ns")
    if start is not None and counts.last_arrival_ns is not None:
        span = max((counts.last_arrival_ns - start) / 1e9, 1e-9)
        record["deliveries_per_s"] = round(counts.arrived / span, 1)
        record["last_arrival_s"] = round(span, 3)
    else:
        record.setdefault("deliveries_per_s", None)
    record["latency_ms"] = counts.latency.summary_ms()
    record["latency_histogram"] = counts.latency.to_json()


def _totals(steps: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("lost", "duplicates", "order_violations", "unexpected", "deliveries", "deliveries_expected")
    totals: dict[str, Any] = {key: sum(s.get(key) or 0 for s in steps) for key in keys}
    totals["sender_order_violations"] = sum(s.get("sender_order_violations") or 0 for s in steps)
    totals["sends_accepted"] = sum(s.get("sends", {}).get("accepted", 0) for s in steps)
    totals["sends_failed"] = sum(s.get("sends", {}).get("failed", 0) for s in steps)
    return totals


Workload = Callable[[Run, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _run_async(workload_name: str, workload: Workload, options: BenchOptions, params: dict[str, Any],
                     run_id: str) -> dict[str, Any]:
    # SIGTERM ends the run like Ctrl-C (the event loop runner cancels the main task on SIGINT):
    # the finally blocks stop the client processes and the embedded server.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    connector = aiohttp.TCPConnector(limit=max(options.setup_concurrency, 8))
    async with aiohttp.ClientSession(connector=connector) as session:
        run = Run(options, session, run_id)
        completed = False
        try:
            result = await workload(run, params)
            completed = True
        finally:
            if run.fleet is not None:
                if run.progress is not None:
                    run.progress.stop()
                await run.fleet.stop(graceful=completed)
    if not options.server_pids:
        run.notes.append("no --server-pid (or --embedded): server CPU and memory were not measured")
    result["notes"] = run.notes + result.get("notes", [])
    return result


def run_bench(workload_name: str, workload: Workload, options: BenchOptions, params: dict[str, Any]) -> dict[str, Any]:
    """Run one workload and return its report (not yet written)."""
    started = datetime.now(UTC)
    run_id = secrets.token_hex(3)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    json_path = options.output or options.results_dir / f"{stamp}-{workload_name}.json"
    if not options.embedded:
        options.targets.check(options.allow_remote)
    for pid in options.server_pids:
        procfs.sample(pid)  # fail now, not after minutes of setup, if a --server-pid is wrong
    # Connections are file descriptors; the embedded server inherits the raised limit.
    raise_fd_limit(int(params.get("users", 0)) * 2 + int(params.get("connections", 0)) * 2 + 4096)
    machine_before = procfs.machine()
    # The raw limit first, before any server or client process of this run exists (a few seconds).
    if options.rawlimit is None:
        raw = rawlimit.not_measured("skipped with --no-rawlimit")
    else:
        try:
            raw = rawlimit.measure(options.rawlimit, options.progress)
        except BenchError as exc:
            raw = rawlimit.not_measured(f"could not run: {exc}")
    server: EmbeddedServer | None = None
    server_info: dict[str, Any] = {"embedded": options.embedded}
    try:
        if options.embedded:
            server = EmbeddedServer(json_path.with_suffix(".server.log"), options.server_env, options.server_data)
            asyncio.run(server.start())
            options.targets = server.targets
            options.server_pids = [server.pid, *options.server_pids]
            if options.progress:
                print(f"bench: embedded server pid {server.pid}: {server.targets.meta} (meta), log {server.log_path}",
                      file=sys.stderr, flush=True)
        server_info["pids"] = {str(pid): procfs.process_name(pid) for pid in options.server_pids}
        started_mono = time.monotonic()
        result = _run_loop(_run_async(workload_name, workload, options, params, run_id))
        elapsed = time.monotonic() - started_mono
    finally:
        if server is not None:
            server_info["exit_code"] = server.stop()
            server_info["log"] = str(server.log_path)
            server_info["log_problems"] = server.log_problems()
    steps = result.pop("steps")
    rawlimit.add_ratios(raw, steps)
    totals = _totals(steps)
    problems = result.pop("problems", []) + list(raw.get("problems") or [])
    for name, label in (("lost", "lost deliveries"), ("duplicates", "duplicate deliveries"),
                        ("order_violations", "per-room order violations")):
        if totals[name]:
            problems.append(f"{totals[name]} {label}")
    if server is not None and server_info.get("exit_code") not in (0, None):
        problems.append(f"the embedded server exited with {server_info['exit_code']}")
    return {
        "schema": 1,
        "workload": workload_name,
        "run_id": run_id,
        "started_at": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "parameters": {**params, **options.public()},
        "targets": asdict(options.targets),
        "machine": {**machine_before, "load_average_end": procfs.machine()["load_average"]},
        "git": procfs.git_commit(),
        "server": server_info,
        **result,
        "rawlimit": raw,
        "steps": steps,
        "totals": totals,
        "problems": problems,
        "integrity_ok": not (totals["lost"] or totals["duplicates"] or totals["order_violations"]),
        "json_path": str(json_path),
    }


def _run_loop(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    return run_event_loop(coro)
