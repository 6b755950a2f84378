"""`pystacker cluster`: a local distributed deployment in one command.

Starts registry, meta, N send instances, M gateways, the flusher and msgflusher as separate processes
from the files in a config folder (config/ by default), each with its own port and machine_id given
through environment overrides, waits until every HTTP service answers /ready, and on Ctrl-C or
SIGTERM stops them in reverse order with SIGTERM (gateways drain their sockets) before it exits.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@dataclass
class Member:
    label: str
    service: str
    config: Path
    port: int  # 0: no HTTP
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


def plan(config_dir: Path, *, gateways: int, sends: int, host: str = "127.0.0.1") -> list[Member]:
    def cfg(name: str) -> Path:
        return config_dir / f"config.{name}.yaml"

    members = [
        Member("registry", "registry", cfg("registry"), 8083),
        Member("meta", "meta", cfg("meta"), 8082),
        Member("flusher", "flusher", cfg("flusher"), 0),
        Member("msgflusher", "msgflusher", cfg("msgflusher"), 0),
    ]
    for index in range(sends):
        port = 8081 if index == 0 else 8090 + index
        members.append(Member(f"send-{index + 1}", "send", cfg("send"), port,
                              {"PYSTACKER_MACHINE_ID": str(100 + index)}))
    for index in range(gateways):
        members.append(Member(f"gateway-{index + 1}", "gateway", cfg("gateway"), 8084 + index,
                              {"PYSTACKER_MACHINE_ID": str(200 + index)}))
    for member in members:
        member.env["PYSTACKER_LOG__FILENAME"] = ""  # the process's output goes to its own log file instead
        if member.port:
            member.env.update({"PYSTACKER_PORT": str(member.port), "PYSTACKER_ADDRESS": host})
    return members


def shared_secrets() -> dict[str, str]:
    """One JWT secret and internal token for every process: taken from the environment, or made
    for this run (tokens then last as long as the cluster)."""
    return {name: os.environ.get(name) or secrets.token_urlsafe(48)
            for name in ("PYSTACKER_JWT__SECRET", "PYSTACKER_INTERNAL__TOKEN")}


def _spawn(member: Member, log_dir: Path, shared: dict[str, str]) -> None:
    env = {**os.environ, **shared, **member.env}
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(log_dir / f"{member.label}.log", "ab")  # noqa: SIM115 - the child owns it
    member.process = subprocess.Popen(
        [sys.executable, "-m", "pystacker", member.service, "--config", str(member.config)],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    log_file.close()


async def _wait_ready(members: list[Member]) -> list[str]:
    """Poll /ready of every HTTP member until all answer 200; returns the labels that never did."""
    waiting = {m.label: m for m in members if m.port}
    deadline = time.monotonic() + READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while waiting and time.monotonic() < deadline:
            for label, member in list(waiting.items()):
                if member.process is not None and member.process.poll() is not None:
                    return [f"{label} exited with code {member.process.returncode}"]
                try:
                    async with session.get(f"http://127.0.0.1:{member.port}/ready") as response:
                        if response.status == 200:
                            del waiting[label]
                except aiohttp.ClientError:
                    pass
            if waiting:
                await asyncio.sleep(0.2)
    return [f"{label} not ready after {READY_TIMEOUT:.0f}s" for label in waiting]


def stop_all(members: list[Member]) -> None:
    for member in reversed(members):
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for member in reversed(members):
        if member.process is None:
            continue
        try:
            member.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            member.process.kill()
            member.process.wait()


def migrate(config_dir: Path, shared: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "pystacker", "db", "upgrade", "--config",
                    str(config_dir / "config.meta.yaml")], check=True, env={**os.environ, **shared})


async def run_cluster(config_dir: Path, *, gateways: int, sends: int, log_dir: Path) -> int:
    members = plan(config_dir, gateways=gateways, sends=sends)
    shared = shared_secrets()
    migrate(config_dir, shared)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        for member in members:
            _spawn(member, log_dir, shared)
        problems = await _wait_ready(members)
        if problems:
            print("pystacker cluster: " + "; ".join(problems) + f" (logs in {log_dir})", file=sys.stderr)
            return 1
        print("PyStacker cluster is up:")
        for member in members:
            where = f"http://127.0.0.1:{member.port}" if member.port else "(no HTTP)"
            print(f"  {member.label:<11} {where:<24} pid {member.process.pid if member.process else '-'}")
        print(f"Logs in {log_dir}. Press Ctrl-C to stop.")
        while not stopping.is_set():
            dead = [m for m in members if m.process is not None and m.process.poll() is not None]
            if dead:
                print(f"pystacker cluster: {dead[0].label} exited with code {dead[0].process.returncode}; "  # type: ignore[union-attr]
                      "stopping the others", file=sys.stderr)
                return 1
            try:
                await asyncio.wait_for(stopping.wait(), 1.0)
            except TimeoutError:
                pass
        return 0
    finally:
        await asyncio.to_thread(stop_all, members)
