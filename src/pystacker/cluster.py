"""`pystacker cluster`: a local distributed deployment in one command.

Starts registry, meta, N send instances, M gateways, the flusher and msgflusher as separate processes
from the files in a config folder (config/ by default), each with its own port and machine_id given
through environment overrides, and waits until every HTTP service answers /ready. A child that dies
is started again with a backoff (`pystacker.supervisor`), so the deployment survives the faults it
exists to show; on Ctrl-C or SIGTERM, or when a child is in a crash loop, it stops them in reverse
order with SIGTERM (gateways drain their sockets) before it exits.

The distributed test suite starts its deployments with the same `plan` and `Deployment` (free ports,
its own database, Redis key prefix and short timings given as `env`), so the command and the tests
cannot drift apart.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from pystacker.supervisor import Supervisor

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

SEND_MACHINE_IDS = 100  # send-<n> gets machine_id 100 + n - 1, gateway-<n> 200 + n - 1: distinct snowflake nodes
GATEWAY_MACHINE_IDS = 200


@dataclass
class Member:
    label: str
    service: str
    config: Path
    port: int  # 0: no HTTP
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


WORKER_METRICS_PORTS = {"flusher": 9101, "msgflusher": 9102}  # as in the example configs


def default_port(label: str) -> int:
    """GoStacker's ports: send 8081 (more send instances 8091, 8092, ...), meta 8082, registry 8083,
    gateways 8084, 8085, ..."""
    if label in ("registry", "meta"):
        return {"registry": 8083, "meta": 8082}[label]
    kind, number = label.rsplit("-", 1)
    index = int(number) - 1
    if kind == "send":
        return 8081 if index == 0 else 8090 + index
    if kind == "gateway":
        return 8084 + index
    return 0


def service_member(config_dir: Path, service: str, number: int, port: int, *, host: str = "127.0.0.1") -> Member:
    """One send instance or gateway (`send-<number>`, `gateway-<number>`) with its own port and machine_id."""
    base = SEND_MACHINE_IDS if service == "send" else GATEWAY_MACHINE_IDS
    member = Member(f"{service}-{number}", service, config_dir / f"config.{service}.yaml", port,
                    {"PYSTACKER_MACHINE_ID": str(base + number - 1)})
    _finish(member, host)
    return member


def _finish(member: Member, host: str) -> None:
    member.env["PYSTACKER_LOG__FILENAME"] = ""  # the process's output goes to its own log file instead
    if member.port:
        member.env.update({"PYSTACKER_PORT": str(member.port), "PYSTACKER_ADDRESS": host})


def plan(config_dir: Path, *, gateways: int, sends: int, host: str = "127.0.0.1",
         port_of: Callable[[str], int] = default_port) -> list[Member]:
    """The members of a deployment, in start order. `port_of(label)` gives each HTTP member's port
    (GoStacker's by default; the tests give free ones)."""
    def cfg(name: str) -> Path:
        return config_dir / f"config.{name}.yaml"

    members = [
        Member("registry", "registry", cfg("registry"), port_of("registry")),
        Member("meta", "meta", cfg("meta"), port_of("meta")),
        Member("flusher", "flusher", cfg("flusher"), 0),
        Member("msgflusher", "msgflusher", cfg("msgflusher"), 0),
    ]
    for member in members:
        _finish(member, host)
    members += [service_member(config_dir, "send", n, port_of(f"send-{n}"), host=host) for n in range(1, sends + 1)]
    members += [service_member(config_dir, "gateway", n, port_of(f"gateway-{n}"), host=host)
                for n in range(1, gateways + 1)]
    return members


def shared_secrets() -> dict[str, str]:
    """One JWT secret and internal token for every process: taken from the environment, or made
    for this run (tokens then last as long as the cluster)."""
    return {name: os.environ.get(name) or secrets.token_urlsafe(48)
            for name in ("PYSTACKER_JWT__SECRET", "PYSTACKER_INTERNAL__TOKEN")}


def migrate(config_dir: Path, env: Mapping[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "pystacker", "db", "upgrade", "--config",
                    str(config_dir / "config.meta.yaml")], check=True, env={**os.environ, **env},
                   stdout=subprocess.DEVNULL)


class Deployment:
    """The processes of one local deployment: each member runs `python -m pystacker <service>` in its
    own session with `env` (shared by all) and its own overrides, its output in `<log_dir>/<label>.log`.
    Only the processes started here are ever signalled, by their own PIDs."""

    def __init__(self, members: list[Member], *, log_dir: Path, env: Mapping[str, str]) -> None:
        self.members = list(members)
        self.log_dir = log_dir
        self.env = dict(env)

    def member(self, label: str) -> Member:
        for member in self.members:
            if member.label == label:
                return member
        raise KeyError(label)

    def spawn(self, member: Member) -> None:
        if member not in self.members:
            self.members.append(member)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        member.log_path = self.log_dir / f"{member.label}.log"
        with open(member.log_path, "ab") as log_file:  # the child keeps its own descriptor
            member.process = subprocess.Popen(
                [sys.executable, "-m", "pystacker", member.service, "--config", str(member.config)],
                env={**os.environ, **self.env, **member.env}, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self) -> None:
        for member in self.members:
            self.spawn(member)

    async def wait_ready(self, members: list[Member] | None = None, timeout: float = READY_TIMEOUT) -> list[str]:
        """Poll /ready of every HTTP member until all answer 200; returns what went wrong (nothing: ready)."""
        waiting = {m.label: m for m in (self.members if members is None else members) if m.port}
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while waiting and time.monotonic() < deadline:
                for label, member in list(waiting.items()):
                    if member.process is not None and member.process.poll() is not None:
                        return [f"{label} exited with code {member.process.returncode}"]
                    try:
                        async with session.get(f"{member.url}/ready") as response:
                            if response.status == 200:
                                del waiting[label]
                    except (TimeoutError, aiohttp.ClientError):
                        pass
                if waiting:
                    await asyncio.sleep(0.1)
        return [f"{label} not ready after {timeout:.0f}s" for label in waiting]

    def exited(self) -> list[Member]:
        """Members that were started and have ended."""
        return [m for m in self.members if m.process is not None and m.process.poll() is not None]

    def stop(self, members: list[Member] | None = None, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM in reverse start order, wait up to `timeout`, then SIGKILL what is left."""
        chosen = list(reversed(self.members if members is None else members))
        for member in chosen:
            if member.running and member.process is not None:
                member.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for member in chosen:
            if member.process is None:
                continue
            try:
                member.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()


def shifted_plan(config_dir: Path, *, gateways: int, sends: int, port_offset: int) -> list[Member]:
    """`plan` on GoStacker's ports plus `port_offset`; the workers' metrics ports move with them, so
    two clusters can run side by side on one machine."""
    members = plan(config_dir, gateways=gateways, sends=sends,
                   port_of=lambda label: default_port(label) + port_offset if default_port(label) else 0)
    if port_offset:
        for member in members:
            if member.label in WORKER_METRICS_PORTS:
                member.env["PYSTACKER_METRICS_PORT"] = str(WORKER_METRICS_PORTS[member.label] + port_offset)
    return members


def say(line: str) -> None:
    print(f"pystacker cluster: {line}", flush=True)


async def run_cluster(config_dir: Path, *, gateways: int, sends: int, log_dir: Path, port_offset: int = 0) -> int:
    shared = shared_secrets()
    migrate(config_dir, shared)
    deployment = Deployment(shifted_plan(config_dir, gateways=gateways, sends=sends, port_offset=port_offset),
                            log_dir=log_dir, env=shared)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        deployment.start()
        problems = await deployment.wait_ready()
        if problems:
            print("pystacker cluster: " + "; ".join(problems) + f" (logs in {log_dir})", file=sys.stderr)
            return 1
        print("PyStacker cluster is up:")
        for member in deployment.members:
            where = member.url if member.port else "(no HTTP)"
            print(f"  {member.label:<11} {where:<24} pid {member.pid or '-'}")
        print(f"Logs in {log_dir}. A process that dies is restarted. Press Ctrl-C to stop.", flush=True)
        supervisor = Supervisor(deployment, say=say)
        supervisor.started()
        problem = await supervisor.watch(stopping)
        if problem is not None:
            print(f"pystacker cluster: {problem}", file=sys.stderr, flush=True)
            return 1
        return 0
    finally:
        await asyncio.to_thread(deployment.stop)
