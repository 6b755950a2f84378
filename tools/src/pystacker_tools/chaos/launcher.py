"""A throwaway distributed deployment of its own: free ports, a scratch database, a private Redis.

Shared by `pystacker chaos` and the distributed test suite (tests/deployment.py), so that both start
deployments the same way as `pystacker cluster` (pystacker.cluster.plan and Deployment):

- `free_ports`: distinct free ports of 127.0.0.1;
- `plan_on_free_ports`: the members of a deployment, every HTTP service and the flusher's and
  msgflusher's metrics endpoints on free ports (never GoStacker's fixed ones, so that deployments
  never collide with each other or with a `pystacker cluster` running);
- `deployment_env`: the environment every process shares: database URL, Redis location and key
  prefix, one JWT secret and internal token, short heartbeat TTLs;
- `LocalRedis`: a redis-server of our own (no persistence) on a free port, which can be killed and
  restarted empty by its PID without touching anyone else's Redis;
- `scratch_database_url` / `drop_database`: a database of our own on a MariaDB/PostgreSQL server
  (created by `pystacker db upgrade`, which creates a missing database), dropped at the end.

Every wait polls with a deadline; processes are only ever signalled by the PIDs started here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from pystacker import cluster

REDIS_START_DEADLINE = 20.0
REDIS_STOP_DEADLINE = 10.0
POLL_INTERVAL = 0.05


def free_ports(count: int) -> list[int]:
    """Distinct free ports of 127.0.0.1 (all sockets stay bound until every port is chosen)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def plan_on_free_ports(config_dir: Path, *, gateways: int, sends: int) -> list[cluster.Member]:
    """The members of a deployment (cluster.plan) with every port chosen free."""
    labels = ["registry", "meta", *(f"send-{n}" for n in range(1, sends + 1)),
              *(f"gateway-{n}" for n in range(1, gateways + 1))]
    ports = dict(zip(labels, free_ports(len(labels)), strict=True))
    members = cluster.plan(config_dir, gateways=gateways, sends=sends, port_of=lambda label: ports.get(label, 0))
    # The example configs give the flusher and msgflusher fixed metrics ports (9101, 9102).
    workers = [m for m in members if m.label in ("flusher", "msgflusher")]
    for member, metrics_port in zip(workers, free_ports(len(workers)), strict=True):
        member.env["PYSTACKER_METRICS_PORT"] = str(metrics_port)
    return members


def redis_env(host: str, port: int, *, cluster_mode: bool = False) -> dict[str, str]:
    """Point the `redis` block and send's role blocks (config.send.yaml names 6379 itself) at host:port."""
    values = {"HOST": host, "PORT": str(port), "CLUSTER": "true" if cluster_mode else "false"}
    env = {f"PYSTACKER_REDIS__{k}": v for k, v in values.items()}
    for role in ("STREAM", "QUEUE", "CACHE"):
        env.update({f"PYSTACKER_SEND_REDIS__{role}__{k}": v for k, v in values.items()})
    return env


# A load generator sends faster than a person, and registers and logs in every user from one
# address: the per-user and per-address limits would measure themselves instead of the system.
LOAD_GENERATOR_LIMITS = {f"PYSTACKER_LIMITS__{key}": "0" for key in (
    "SEND_RATE", "LOGIN_RATE", "LOGIN_ADDRESS_RATE", "REGISTER_ADDRESS_RATE", "ROOM_CHANGE_RATE")}


def deployment_env(*, database_url: str, key_prefix: str, jwt_secret: str, internal_token: str,
                   redis: Mapping[str, str], gateway_ttl: int, send_ttl: int, user_route_ttl: int,
                   extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment shared by every process of a throwaway deployment."""
    return {
        "PYSTACKER_DATABASE__URL": database_url,
        "PYSTACKER_JWT__SECRET": jwt_secret,
        "PYSTACKER_INTERNAL__TOKEN": internal_token,
        "PYSTACKER_REDIS__KEY_PREFIX": key_prefix,
        "PYSTACKER_REGISTRY__GATEWAY_HEARTBEAT_TIMEOUT": str(gateway_ttl),
        "PYSTACKER_REGISTRY__SEND_HEARTBEAT_TIMEOUT": str(send_ttl),
        "PYSTACKER_REGISTRY__USER_ROUTE_TTL": str(user_route_ttl),
        # msgflusher hands on what a dead gateway left pending after a second, not GoStacker's 30 s
        "PYSTACKER_PENDING_MSG_FLUSHER__CLAIM_IDLE_SECONDS": "1",
        "PYSTACKER_PENDING_MSG_FLUSHER__INTERVAL": "1",
        "PYSTACKER_LOG__LEVEL": "info",
        "PYSTACKER_HOST": "127.0.0.1",  # listen where the free ports were found, not on every interface
        **redis,
        **(extra or {}),
    }


def new_key_prefix(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:10]}:"


# -- a Redis of our own ---------------------------------------------------------------------------------


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    """One redis-server without persistence (`--save ""`, no AOF), on a free port, in a temporary
    folder: a restart comes back empty, which is what a Redis without persistence does after a crash."""

    def __init__(self, folder: Path | None = None, port: int | None = None) -> None:
        self._own_folder = folder is None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="pystacker-redis-"))
        self.port = port or free_ports(1)[0]
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is needed (the harness runs a Redis of its own)")
        if _redis_answers(self.port):
            raise RuntimeError(f"port {self.port} already serves Redis")
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--maxmemory-policy", "noeviction"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + REDIS_START_DEADLINE
        while not _redis_answers(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.folder}/redis.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} not answering within {REDIS_START_DEADLINE}s")
            time.sleep(POLL_INTERVAL)

    def kill(self) -> None:
        """SIGKILL by PID: everything it held is gone (no persistence)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(REDIS_STOP_DEADLINE)

    def restart(self) -> None:
        """Kill, then start again on the same port, empty."""
        self.kill()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(REDIS_STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(REDIS_STOP_DEADLINE)
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


# -- a database of our own ---------------------------------------------------------------------------------


def scratch_database_url(server_url: str, tag: str = "pystacker_chaos") -> str:
    """`server_url` (any database on the server) with a new, unique database name."""
    name = f"{tag}_{uuid.uuid4().hex[:8]}"
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def point_at(url: str, host: str, port: int) -> str:
    """The same database URL through another host:port (a proxy)."""
    return make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    """Drop a scratch database (MariaDB/MySQL or PostgreSQL); SQLite files are the caller's."""
    parsed = make_url(url)
    name = parsed.database
    backend = parsed.get_backend_name()
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"refusing to drop {name!r}")
    if backend in ("mysql", "mariadb"):
        server = create_async_engine(parsed.set(database=""))
        statement = f"DROP DATABASE IF EXISTS `{name}`"
    elif backend == "postgresql":
        server = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        statement = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    else:
        return
    try:
        async with server.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await server.dispose()


async def poll(check: Callable[[], Any], what: str = "condition", *, timeout: float = 10.0,
               interval: float = POLL_INTERVAL) -> Any:
    """Call `check` (sync or async) until it returns something truthy, and return that; TimeoutError
    naming `what` and the last value after `timeout` seconds. The pause between calls is a polling
    interval, not a synchronisation: the deadline decides. (The tests use this one too.)"""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s (last: {result!r})")
        await asyncio.sleep(interval)
