"""Helpers of the browser tests: a real `pystacker up` process and headless Chromium driven by Playwright.

- `UpProcess` runs `python -m pystacker up` on free ports with a data folder of its own, waits until
  every service answers `/ready`, and restarts it as an operator would (SIGINT, wait for the exit,
  start again on the same ports and data folder): a restart here is a real process restart.
- `launch_chromium()` starts Debian's Chromium (`/usr/bin/chromium`, or PYSTACKER_CHROMIUM) with
  Playwright for Python; Playwright's own browser downloads are never used.
- `Screenshots` saves a PNG of every open page when the test using it failed, into
  PYSTACKER_TEST_ARTIFACTS (default logs/browser-artifacts), and says where in the failure report.

Nothing here sleeps to synchronise: waits are Playwright's auto-waiting expectations or polls with a
deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.deployment import free_ports

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("PYSTACKER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("PYSTACKER_TEST_ARTIFACTS", ROOT / "logs" / "browser-artifacts"))
START_DEADLINE = 30.0
STOP_DEADLINE = 20.0
SERVICES = ("send", "meta", "registry", "gateway")


class UpProcess:
    """`pystacker up` as a child process on fixed free ports."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
        self.extra_env = env or {}
        self.log_path = data_dir / "pystacker-up.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def app_url(self) -> str:
        return self.url("meta") + "/"

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **{f"PYSTACKER_PORTS__{name.upper()}": str(port) for name, port in self.ports.items()},
               # Many sign-ups from one address in a few seconds: the limits have their own tests.
               "PYSTACKER_LIMITS__REGISTER_ADDRESS_RATE": "0", "PYSTACKER_LIMITS__LOGIN_ADDRESS_RATE": "0",
               "PYSTACKER_LIMITS__ROOM_CHANGE_RATE": "0", "PYSTACKER_LIMITS__SEND_RATE": "0",
               "PYSTACKER_LOG__LEVEL": "info"}
        env.update(self.extra_env)
        return env

    async def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pystacker", "up", "--data-dir", str(self.data_dir), "--host", "127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, env=self._env(), cwd=self.data_dir)
        self.starts += 1
        await self.wait_ready()

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            pending = set(SERVICES)
            while pending:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"pystacker up exited with {self.process.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready within {START_DEADLINE}s: {sorted(pending)}\n{self.log_tail()}")
                for service in sorted(pending):
                    try:
                        async with http.get(self.url(service) + "/ready") as answer:
                            if answer.status == 200:
                                pending.discard(service)
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                if pending:
                    await asyncio.sleep(0.1)  # poll interval of a readiness wait with a deadline

    async def stop(self) -> int:
        """SIGINT, as Ctrl-C: the process writes every accepted message to SQLite before it exits."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else 0
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_DEADLINE
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(f"pystacker up did not stop within {STOP_DEADLINE}s\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return process.returncode

    async def restart(self) -> None:
        code = await self.stop()
        assert code == 0, f"pystacker up exited with {code}\n{self.log_tail()}"
        await self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@asynccontextmanager
async def running_up(data_dir: Path, **kwargs: Any) -> AsyncIterator[UpProcess]:
    up = UpProcess(data_dir, **kwargs)
    await up.start()
    try:
        yield up
    finally:
        await up.stop()


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


class Screenshots:
    """Pages to photograph if the test fails. `pytest_runtest_makereport` is a conftest hook; instead the
    fixture compares the session's failure count before and after the test's call phase (pytest
    counts a failed call before it runs the fixtures' teardown)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.pages: list[Any] = []
        self.failures_before = request.session.testsfailed

    def watch(self, page: Any) -> Any:
        self.pages.append(page)
        return page

    async def save_if_failed(self) -> list[Path]:
        if self.request.session.testsfailed <= self.failures_before:
            return []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.request.node.nodeid)[-150:]
        saved = []
        for index, page in enumerate(self.pages):
            if page.is_closed():
                continue
            path = ARTIFACTS / f"{stem}-{index}.png"
            try:
                await page.screenshot(path=str(path), full_page=True)
                saved.append(path)
            except Exception as exc:  # a crashed page: say so, the failure itself is what matters
                print(f"screenshot of page {index} failed: {exc}", file=sys.stderr)
        if saved:
            print("screenshots of the failed test: " + ", ".join(map(str, saved)), file=sys.stderr)
        return saved


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def evaluate_within(page: Any, function: str, arg: Any = None, *, timeout_ms: int = 15_000) -> Any:
    """`page.evaluate(function, arg)` that fails after `timeout_ms` (Playwright's evaluate has no
    deadline of its own: a promise that never settles would hang the test)."""
    return await page.evaluate(
        """([source, arg, timeout]) => Promise.race([
             (0, eval)(`(${source})`)(arg),
             new Promise((_, reject) => setTimeout(() => reject(new Error(`not settled within ${timeout} ms`)), timeout)),
           ])""", [function, arg, timeout_ms])
