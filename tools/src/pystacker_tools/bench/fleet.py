"""The client processes seen from the parent: start, command, watch, stop.

Each worker gets its share of the users (workloads choose who goes where: a pair's two users, or a
WebSocket sender and his own socket, stay in one process). Commands go to every worker at once and
the answers are awaited with a deadline; a worker that dies or answers with an error ends the run.
The parent prints one progress line a second from the shared counters.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
from dataclasses import dataclass
from typing import Any

from pystacker_tools.bench import worker
from pystacker_tools.bench.safety import BenchError
from pystacker_tools.bench.worker import COUNTERS, WorkerPlan, recv_message

START_TIMEOUT = 60.0  # a spawned interpreter imports aiohttp, orjson, ...: seconds on a busy machine
STOP_TIMEOUT = 30.0


@dataclass
class Totals:
    connected: int = 0
    sends_started: int = 0
    sends_ok: int = 0
    sends_failed: int = 0
    delivered: int = 0
    expected: int = 0
    completed: int = 0


class Fleet:
    def __init__(self, plans: list[WorkerPlan]) -> None:
        self.plans = plans
        self.context = multiprocessing.get_context("spawn")  # no fork of the parent's event loop
        self.counters = self.context.RawArray("q", len(plans) * len(COUNTERS))
        self.processes: list[Any] = []
        self.pipes: list[Any] = []
        self.pids: list[int] = []

    async def start(self) -> None:
        for index, plan in enumerate(self.plans):
            parent_end, child_end = self.context.Pipe()
            process = self.context.Process(target=worker.main, args=(child_end, self.counters, index, plan),
                                           name=f"pystacker-bench-client-{index}", daemon=True)
            process.start()
            child_end.close()
            self.processes.append(process)
            self.pipes.append(parent_end)
        hellos = await asyncio.gather(*(self._answer(i, START_TIMEOUT) for i in range(len(self.pipes))))
        self.pids = [hello["pid"] for hello in hellos]

    async def _answer(self, index: int, timeout: float) -> Any:
        try:
            status, value = await recv_message(self.pipes[index], timeout)
        except TimeoutError:
            raise BenchError(f"client process {index} did not answer within {timeout:.0f}s") from None
        except (EOFError, OSError) as exc:
            raise BenchError(f"client process {index} died (exit code {self.processes[index].exitcode}, "
                             f"{type(exc).__name__}: {exc})") from None
        if status != "ok":
            raise BenchError(f"client process {index} failed: {value}")
        return value

    async def call(self, command: str, args: dict[str, Any] | list[dict[str, Any]], timeout: float) -> list[Any]:
        """Send a command to every worker (the same args, or one per worker) and await all answers."""
        for index, pipe in enumerate(self.pipes):
            pipe.send((command, args[index] if isinstance(args, list) else args))
        return list(await asyncio.gather(*(self._answer(i, timeout) for i in range(len(self.pipes)))))

    def totals(self) -> Totals:
        values = list(self.counters)
        width = len(COUNTERS)
        sums = [sum(values[row * width + col] for row in range(len(self.plans))) for col in range(width)]
        return Totals(*sums)

    async def stop(self, graceful: bool = True) -> None:
        """Ask each worker to quit (graceful) or terminate them at once (an interrupted run: a worker
        busy with a step would read `quit` only when the step ends). Only our own processes."""
        if graceful:
            for pipe in self.pipes:
                try:
                    pipe.send(("quit", {}))
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + (STOP_TIMEOUT if graceful else 0)
        for process in self.processes:
            while process.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # poll the exit with a deadline; join() would block the loop
            if process.is_alive():
                process.terminate()
                process.join(5)
        for pipe in self.pipes:
            pipe.close()


class Progress:
    """Prints one line a second: elapsed time, phase, sends, deliveries and what is in flight."""

    def __init__(self, fleet: Fleet, enabled: bool, started: float) -> None:
        self.fleet = fleet
        self.enabled = enabled
        self.phase = "starting"
        self.started = started  # the run's start, so the setup's lines and these share one clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        previous = self.fleet.totals()
        while True:
            await asyncio.sleep(1.0)
            now = self.fleet.totals()
            in_flight = now.sends_started - now.sends_ok - now.sends_failed
            print(f"[{time.monotonic() - self.started:6.1f}s] {self.phase}: "
                  f"sent {now.sends_ok:,} (+{now.sends_ok - previous.sends_ok:,}/s, {now.sends_failed:,} failed)  "
                  f"delivered {now.delivered:,} (+{now.delivered - previous.delivered:,}/s)  "
                  f"in flight {in_flight:,} sends, {max(now.expected - now.delivered, 0):,} deliveries  "
                  f"connected {now.connected:,}", file=sys.stderr, flush=True)
            previous = now
