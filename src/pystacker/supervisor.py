"""Keeping a local deployment alive: `pystacker cluster` restarts a child that dies.

`RestartPolicy` and `Backoff` decide, without a clock or a process of their own, when a dead child
starts again: after `first_delay`, doubling with every further exit that comes soon after a start, up
to `max_delay`; a child that ran for `stable_after` seconds before it died starts over from
`first_delay`. A child that dies soon after start `crash_loop_exits` times in a row is in a crash loop
(a bad config, a port taken, the database gone): restarting it forever would only hide that, so the
cluster stops.

`Supervisor` applies the policy to a `cluster.Deployment`: it watches the members, restarts the dead
ones through `Deployment.spawn` (the one place that starts processes) and says what it does on the
cluster's output.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pystacker.cluster import Deployment, Member

WATCH_INTERVAL = 0.2  # how often the members are looked at; a restart is at most this late


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 60.0  # a run this long before an exit is not part of a crash loop
    crash_loop_exits: int = 5  # quick exits in a row that stop the cluster


@dataclass
class Backoff:
    """One member's restart record under a policy."""

    policy: RestartPolicy
    quick_exits: int = 0  # exits in a row, each less than `stable_after` after its start

    def after_exit(self, ran_for: float) -> float | None:
        """The pause before the next start of a member that exited after running `ran_for` seconds;
        None when it is in a crash loop."""
        if ran_for >= self.policy.stable_after:
            self.quick_exits = 0
        self.quick_exits += 1
        if self.quick_exits > self.policy.crash_loop_exits:
            return None
        return float(min(self.policy.first_delay * 2 ** (self.quick_exits - 1), self.policy.max_delay))


@dataclass
class Supervisor:
    deployment: Deployment
    policy: RestartPolicy = RestartPolicy()
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    started_at: dict[str, float] = field(default_factory=dict)
    backoffs: dict[str, Backoff] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)  # label -> when its restart is due
    readiness: set[asyncio.Task[None]] = field(default_factory=set)

    def started(self) -> None:
        """Every member has just been started."""
        now = self.clock()
        for member in self.deployment.members:
            self.started_at[member.label] = now

    async def watch(self, stopping: asyncio.Event) -> str | None:
        """Restart members until `stopping` is set (None) or a member is in a crash loop (the reason)."""
        try:
            while not stopping.is_set():
                problem = self.check()
                if problem is not None:
                    return problem
                try:
                    await asyncio.wait_for(stopping.wait(), WATCH_INTERVAL)
                except TimeoutError:
                    pass
            return None
        finally:
            for task in self.readiness:
                task.cancel()

    def check(self) -> str | None:
        now = self.clock()
        for member in self.deployment.members:
            if member.label in self.due:
                if now >= self.due[member.label]:
                    self._restart(member, now)
            elif member.process is not None and member.process.poll() is not None:
                problem = self._exited(member, now)
                if problem is not None:
                    return problem
        return None

    def _exited(self, member: Member, now: float) -> str | None:
        assert member.process is not None  # only a started member exits
        code = member.process.returncode
        backoff = self.backoffs.setdefault(member.label, Backoff(self.policy))
        delay = backoff.after_exit(now - self.started_at.get(member.label, now))
        if delay is None:
            return (f"{member.label} exited with code {code}: {backoff.quick_exits} exits in a row, each within "
                    f"{self.policy.stable_after:g}s of its start (see {member.log_path}); stopping the cluster")
        self.say(f"{member.label} exited with code {code}; restarting it in {delay:g}s")
        self.due[member.label] = now + delay
        return None

    def _restart(self, member: Member, now: float) -> None:
        del self.due[member.label]
        self.deployment.spawn(member)
        self.started_at[member.label] = now
        self.say(f"{member.label} restarted, pid {member.pid}")
        if member.port:
            task = asyncio.get_running_loop().create_task(self._report_ready(member))
            self.readiness.add(task)
            task.add_done_callback(self.readiness.discard)

    async def _report_ready(self, member: Member) -> None:
        pid = member.pid
        problems = await self.deployment.wait_ready([member])
        if not problems and member.pid == pid:
            self.say(f"{member.label} is ready again at {member.url}")
