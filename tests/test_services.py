"""`pystacker <service>`: a service whose background worker dies stops, and says so (it used to stay
up doing nothing: msgflusher's worker died at its first line and the process looked healthy)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from pystacker.config import load_config
from pystacker.runtime import Runtime, StartupError
from pystacker.services import ServiceSpec, run_service
from tests.conftest import TEST_JWT_SECRET
from tests.deployment import free_ports
from tests.ws import poll


async def test_a_service_whose_worker_fails_stops_with_an_error(tmp_path: Path) -> None:
    async def failing_worker(runtime: Runtime) -> None:
        raise RuntimeError("broken worker")

    spec = ServiceSpec("broken", "a worker that fails", 0, needs_sql=False, worker=failing_worker)
    config = load_config(None, overrides={"engine": "memory", "data_dir": str(tmp_path),
                                          "jwt": {"secret": TEST_JWT_SECRET},
                                          "internal": {"token": "test-internal-token"}})
    with pytest.raises(StartupError, match="broken stopped: its worker failed: RuntimeError\\('broken worker'\\)"):
        await run_service(spec, config, "test")


async def test_the_msgflusher_worker_runs_without_sql(tmp_path: Path) -> None:
    """msgflusher opens no database: its worker must not need one. It proves it by doing its job: a
    departed gateway's unread entry is handed on and acknowledged, and the drained inbox removed."""
    from pystacker.services import SERVICES

    config = load_config(None, overrides={"engine": "memory", "data_dir": str(tmp_path),
                                          "jwt": {"secret": TEST_JWT_SECRET},
                                          "pending_msg_flusher": {"interval": 1}})
    runtime = Runtime(config)
    engine = await runtime.open_engine()
    worker = SERVICES["msgflusher"].worker
    assert worker is not None and not SERVICES["msgflusher"].needs_sql
    departed = "gateway-departed-1"
    await engine.inbox.ensure_group(departed)
    await engine.inbox.add([(departed, b'{"Type": "chat", "ID": 1, "RoomID": 1, "TargetIDs": [7], "Seq": 1}')])
    task = asyncio.create_task(worker(runtime))

    async def drained() -> bool:
        if task.done():  # a worker that needs SQL dies at its first step
            raise AssertionError(f"the msgflusher worker stopped: {task.exception()!r}")
        return departed not in await engine.inbox.gateways()

    try:
        await poll(drained, "the departed gateway's inbox drained and removed")
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runtime.close()


async def test_the_flusher_serves_metrics_on_its_metrics_port(tmp_path: Path) -> None:
    """`pystacker flusher` with `metrics_port`: its own series on /metrics, /ready 200, and SIGTERM ends
    it cleanly (exit 0)."""
    port = free_ports(1)[0]
    config_file = tmp_path / "config.flusher.yaml"
    config_file.write_text(yaml.safe_dump({
        "engine": "memory", "host": "127.0.0.1", "metrics_port": port, "data_dir": str(tmp_path),
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'flusher.db'}"},
        "jwt": {"secret": TEST_JWT_SECRET}, "internal": {"token": "test-internal-token"},
        "log": {"level": "info"}}))
    command = [sys.executable, "-m", "pystacker"]
    subprocess.run([*command, "db", "upgrade", "--config", str(config_file)], check=True, capture_output=True)
    output = tmp_path / "flusher.out"
    with output.open("wb") as out:
        process = subprocess.Popen([*command, "flusher", "--config", str(config_file)], stdout=out,
                                   stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async def flusher_series() -> str | None:
                assert process.poll() is None, f"the flusher exited:\n{output.read_text()}"
                try:
                    async with session.get(base + "/metrics") as response:
                        text = await response.text()
                except aiohttp.ClientConnectionError:
                    return None  # not listening yet
                return text if "pystacker_flusher_messages_flushed_total" in text else None

            text = await poll(flusher_series, "the flusher's /metrics", timeout=30)
            assert "pystacker_flusher_batch_size_count" in text and "process_cpu_seconds_total" in text
            for route in ("/health", "/ready", "/debug/stats"):
                async with session.get(base + route) as response:
                    assert response.status == 200, (route, await response.text())
            async with session.get(base + "/ready") as response:
                assert (await response.json())["checks"] == {"sql": "ok", "engine": "ok"}
        process.send_signal(signal.SIGTERM)
        code = await poll(lambda: process.poll() is not None and (process.returncode,), "the flusher's exit",
                          timeout=15)
        assert code == (0,), output.read_text()
    finally:
        if process.poll() is None:  # only when an assertion above failed: never leave it running
            process.kill()
            process.wait()
