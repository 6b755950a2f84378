"""`--embedded`: the system under test as `pystacker up` in its own process, on free ports.

A subprocess, not in-process: the bench must be able to read the server's own CPU time and memory
from /proc, apart from the load generator's. It gets a temporary data folder (fresh SQLite file and
JWT secret) and GoStacker's port settings through PYSTACKER_PORTS__*; its output goes to a log file
(a pipe nobody reads would fill up and stall it). Stopped with SIGINT like an operator would.
With --server-data the folder is kept, so users made by one run (see --users-file) serve the next.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from pystacker_tools.bench.safety import BenchError
from pystacker_tools.bench.targets import Targets
from pystacker_tools.chaos.launcher import LOAD_GENERATOR_LIMITS

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    def __init__(self, log_path: Path, extra_env: dict[str, str] | None = None, data_dir: Path | None = None) -> None:
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        # A given folder is kept (users survive for --users-file); a temporary one is removed at stop.
        self.keep_data = data_dir is not None
        self.data_dir: Path | None = data_dir
        self.ports: dict[str, int] = {}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def targets(self) -> Targets:
        return Targets(meta=f"http://127.0.0.1:{self.ports['meta']}", send=f"http://127.0.0.1:{self.ports['send']}",
                       registry=f"http://127.0.0.1:{self.ports['registry']}")

    async def start(self) -> None:
        self.ports = {name: free_port() for name in ("send", "meta", "registry", "gateway")}
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="pystacker-bench-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The developer's own PYSTACKER_* settings would change what is measured: leave them out.
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PYSTACKER_")}
        env.update({f"PYSTACKER_PORTS__{name.upper()}": str(port) for name, port in self.ports.items()})
        env["PYSTACKER_HOST"] = "127.0.0.1"
        env.update(LOAD_GENERATOR_LIMITS)  # the bench measures the server, not its rate limits
        env.update(self.extra_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches the bench, which stops the server itself.
            self.process = subprocess.Popen([sys.executable, "-m", "pystacker", "up", "--data-dir", str(self.data_dir)],
                                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Poll until every service answers and the gateway is registered, the process dies, or time is up."""
        deadline = time.monotonic() + START_TIMEOUT
        targets = self.targets
        checks = [targets.meta + "/ping", *(url + "/ping" for url in targets.sends), targets.registry + "/ping",
                  targets.registry + "/registry/gateway/available"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for url in checks:
                while True:
                    assert self.process is not None
                    if self.process.poll() is not None:
                        raise BenchError(f"the embedded server exited with {self.process.returncode}; "
                                         f"see {self.log_path}")
                    try:
                        async with session.get(url) as response:
                            if response.status == 200:
                                break
                    except (TimeoutError, aiohttp.ClientError, OSError):
                        pass
                    if time.monotonic() > deadline:
                        raise BenchError(f"the embedded server did not answer {url} within {START_TIMEOUT:.0f}s; "
                                         f"see {self.log_path}")
                    await asyncio.sleep(0.05)  # polling interval of the readiness wait

    def stop(self) -> int | None:
        """SIGINT, wait, kill if it hangs; remove the data folder. Returns the exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self.data_dir is not None and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return code

    def log_problems(self) -> dict[str, int]:
        """Lines of the server's output that say something went wrong."""
        counts = {"error_lines": 0, "warning_lines": 0, "tracebacks": 0}
        try:
            with open(self.log_path, errors="replace") as log:
                for line in log:
                    if "Traceback (most recent call last)" in line:
                        counts["tracebacks"] += 1
                    if " ERROR " in line or '"level":"ERROR"' in line.replace(" ", ""):
                        counts["error_lines"] += 1
                    elif " WARNING " in line or '"level":"WARNING"' in line.replace(" ", ""):
                        counts["warning_lines"] += 1
        except OSError:
            pass
        return counts
