"""A fault run: start the deployment, register the users, run the scenarios one after the other,
print and write the report, stop everything it started.

A scenario that fails (an exception, not just a bad count) is reported as failed; the deployment is
then made whole again (dead processes started, the database proxy up, Redis up) so that the next
scenario still means something.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pystacker_tools.bench import procfs
from pystacker_tools.bench.safety import raise_fd_limit
from pystacker_tools.chaos.cli import DEFAULT_DATABASE
from pystacker_tools.chaos.deployment import ChaosDeployment
from pystacker_tools.chaos.report import print_report, write_json
from pystacker_tools.chaos.scenarios import LONG, SCENARIOS, SHORT, Harness, Profile
from pystacker_tools.chaos.traffic import Verdict


@dataclass
class ChaosOptions:
    scenarios: list[str]
    long: bool = False
    json_path: Path | None = None
    database_server: str = DEFAULT_DATABASE
    config_dir: Path = Path("config")
    log_dir: Path | None = None
    quiet: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def profile(self) -> Profile:
        return LONG if self.long else SHORT


class ChaosRun:
    """The deployment and users of a run, for the scenarios to share (the CLI runs them in a row;
    the tests run one per test function on one ChaosRun)."""

    def __init__(self, options: ChaosOptions, log_dir: Path) -> None:
        self.options = options
        self.deployment = ChaosDeployment(config_dir=options.config_dir, log_dir=log_dir,
                                          database_server=options.database_server, extra_env=options.extra_env)
        self.harness: Harness | None = None

    async def start(self) -> None:
        profile = self.options.profile
        # 1,000 clients are 1,000 descriptors here and in the gateways (children inherit the limit).
        raise_fd_limit(profile.users_needed * 4 + 4096)
        started = time.monotonic()
        await self.deployment.start()
        def say(text: str) -> None:
            if not self.options.quiet:
                print(f"chaos: {text}", file=sys.stderr, flush=True)

        say(f"deployment up in {time.monotonic() - started:.1f}s (Redis :{self.deployment.redis.port}, "
            f"SQL proxy :{self.deployment.proxy.port}, logs in {self.deployment.log_dir})")
        try:
            started = time.monotonic()
            users = await self.deployment.register_users(profile.users_needed, "chaos")
            say(f"{len(users)} users registered in {time.monotonic() - started:.1f}s")
        except BaseException:
            await self.deployment.stop()
            raise
        self.harness = Harness(self.deployment, users, secrets.token_hex(3), profile, quiet=self.options.quiet)

    async def run(self, name: str) -> Verdict:
        assert self.harness is not None
        started = time.monotonic()
        try:
            verdict = await SCENARIOS[name](self.harness)
        except Exception as exc:
            verdict = Verdict(name, problems=[f"the scenario failed: {type(exc).__name__}: {exc}"])
            verdict.figures["traceback"] = traceback.format_exc(limit=8)
            await self.heal()
        verdict.figures["scenario wall s"] = round(time.monotonic() - started, 1)
        return verdict

    async def heal(self) -> None:
        """Bring the deployment back to whole after a scenario died half-way."""
        deployment = self.deployment
        deployment.proxy.release_trap()
        deployment.proxy.bring_up()
        if deployment.redis.process is None or deployment.redis.process.poll() is not None:
            await asyncio.to_thread(deployment.redis.start)
        for label in deployment.exited():
            await deployment.restart(label)

    async def stop(self) -> None:
        await self.deployment.stop()


async def run_chaos(options: ChaosOptions) -> list[Verdict]:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    log_dir = options.log_dir or Path("logs") / f"chaos-{stamp}"
    run = ChaosRun(options, log_dir)
    verdicts: list[Verdict] = []
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine = procfs.machine()
    await run.start()
    try:
        for name in options.scenarios:
            verdicts.append(await run.run(name))
            if not options.quiet:
                v = verdicts[-1]
                print(f"chaos: {name}: {'ok' if v.ok else 'FAIL'} (sent {v.sent}, lost {v.lost}, "
                      f"dup shown {v.duplicates_shown}, order {v.order_violations}, recovery {v.recovery_s}s)",
                      file=sys.stderr, flush=True)
    finally:
        await run.stop()
    print_report(verdicts, sys.stdout)
    if options.json_path is not None:
        meta: dict[str, Any] = {"started_at": started_at, "profile": options.profile.name,
                                "database": run.deployment.backend, "machine": machine,
                                "load_average_end": procfs.machine()["load_average"], "git": procfs.git_commit(),
                                "logs": str(log_dir)}
        write_json(options.json_path, verdicts, meta)
    return verdicts
