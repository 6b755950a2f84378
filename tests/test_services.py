"""`pystacker <service>`: a service whose background worker dies stops, and says so (it used to stay
up doing nothing: msgflusher's worker died at its first line and the process looked healthy)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pystacker.config import load_config
from pystacker.runtime import Runtime, StartupError
from pystacker.services import ServiceSpec, run_service
from tests.conftest import TEST_JWT_SECRET


async def test_a_service_whose_worker_fails_stops_with_an_error(tmp_path: Path) -> None:
    async def failing_worker(runtime: Runtime) -> None:
        raise RuntimeError("broken worker")

    spec = ServiceSpec("broken", "a worker that fails", 0, needs_sql=False, worker=failing_worker)
    config = load_config(None, overrides={"engine": "memory", "data_dir": str(tmp_path),
                                          "jwt": {"secret": TEST_JWT_SECRET}})
    with pytest.raises(StartupError, match="broken stopped: its worker failed: RuntimeError\\('broken worker'\\)"):
        await run_service(spec, config, "test")


async def test_the_msgflusher_worker_runs_without_sql(tmp_path: Path) -> None:
    """msgflusher opens no database: its worker must not need one."""
    from pystacker.services import SERVICES

    config = load_config(None, overrides={"engine": "memory", "data_dir": str(tmp_path),
                                          "jwt": {"secret": TEST_JWT_SECRET},
                                          "pending_msg_flusher": {"interval": 1}})
    runtime = Runtime(config)
    await runtime.open_engine()
    worker = SERVICES["msgflusher"].worker
    assert worker is not None and not SERVICES["msgflusher"].needs_sql
    task = asyncio.create_task(worker(runtime))
    try:
        for _ in range(5):  # let it run its first steps: a worker that needs SQL fails in the first one
            await asyncio.sleep(0)
        assert not task.done(), task.exception()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runtime.close()
