"""The deployment a fault run works on: every service as its own process, with a Redis and a database
of its own, and the SQL fault proxy in between.

```
 harness (load, checker) ──HTTP/WS──> registry, meta, send-1..N, gateway-1..M, flusher, msgflusher
                                            │ Redis: LocalRedis on a free port (no persistence)
                                            │ SQL: FaultProxy :free ──> MariaDB/PostgreSQL (scratch database)
```

The harness is also the deployment's supervisor: a process it kills is started again (same label,
port and machine_id, so a gateway keeps its id and inbox) when the scenario says so. The harness's
own SQL reads (what did the flusher store?) go to the database directly, never through the proxy,
so they neither count as the deployment's statements nor fail during an outage.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pystacker import cluster
from pystacker.client import PyStackerClient, PyStackerError
from pystacker.testing import issue_token, stored_messages
from pystacker_tools.bench import procfs
from pystacker_tools.bench.targets import Targets
from pystacker_tools.chaos.launcher import (
    LOAD_GENERATOR_LIMITS,
    LocalRedis,
    deployment_env,
    drop_database,
    new_key_prefix,
    plan_on_free_ports,
    point_at,
    poll,
    redis_env,
    scratch_database_url,
)
from pystacker_tools.chaos.proxy import FaultProxy

READY_DEADLINE = 90.0  # a busy 2-core machine starting eight Python processes at once
STOP_DEADLINE = 15.0
# Short heartbeat TTLs: a killed gateway leaves the live list within seconds. Not less: a gateway
# starved of CPU for a few seconds on a busy machine must not drop out of the live list.
GATEWAY_TTL = 6
SEND_TTL = 6
USER_ROUTE_TTL = 30
GATEWAY_NAME = "gostacker-gateway"  # `name` in config.gateway.yaml: gateway ids are gateway-<name>-<machine_id>
PASSWORD = "chaos-password-0"
REGISTER_CONCURRENCY = 8
REGISTER_ATTEMPTS = 5
TOKEN_LIFETIME = 4 * 3600  # seconds: longer than any run


@dataclass(frozen=True)
class PoolUser:
    index: int
    user_id: int
    token: str


class ChaosDeployment:
    def __init__(self, *, config_dir: Path, log_dir: Path, database_server: str, gateways: int = 2,
                 sends: int = 2, extra_env: dict[str, str] | None = None) -> None:
        self.config_dir = config_dir
        self.log_dir = log_dir
        self.database_server = database_server
        self.gateway_count = gateways
        self.send_count = sends
        self.extra_env = extra_env or {}
        self.database_url = scratch_database_url(database_server)
        self.backend = make_url(self.database_url).get_backend_name()
        self.prefix = new_key_prefix("chaos")
        self.jwt_secret = secrets.token_urlsafe(48)
        self.internal_token = secrets.token_urlsafe(32)
        self.redis = LocalRedis()
        target = make_url(self.database_url)
        self.proxy = FaultProxy(target.host or "127.0.0.1", int(target.port or _default_port(self.backend)),
                                parse_mysql=self.backend in ("mysql", "mariadb"))
        self.inner: cluster.Deployment | None = None
        self.sql: AsyncEngine | None = None
        self.session: aiohttp.ClientSession | None = None
        self._database_created = False

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.redis.start)
            await self.proxy.start()
            proxied = point_at(self.database_url, "127.0.0.1", self.proxy.port)
            env = deployment_env(
                database_url=proxied, key_prefix=self.prefix, jwt_secret=self.jwt_secret,
                internal_token=self.internal_token, redis=redis_env(self.redis.host, self.redis.port),
                gateway_ttl=GATEWAY_TTL, send_ttl=SEND_TTL, user_route_ttl=USER_ROUTE_TTL,
                extra={**LOAD_GENERATOR_LIMITS, **self.extra_env})
            self._database_created = True  # `db upgrade` creates it; dropped at stop either way
            await asyncio.to_thread(cluster.migrate, self.config_dir, {**env, "PYSTACKER_DATABASE__URL": self.database_url})
            members = plan_on_free_ports(self.config_dir, gateways=self.gateway_count, sends=self.send_count)
            self.inner = cluster.Deployment(members, log_dir=self.log_dir, env=env)
            self.sql = create_async_engine(self.database_url, pool_size=5)
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                 timeout=aiohttp.ClientTimeout(total=30))
            self.inner.start()
            problems = await self.inner.wait_ready(timeout=READY_DEADLINE)
            if problems:
                raise RuntimeError("; ".join(problems) + f" (logs in {self.log_dir})")
            for label in ("flusher", "msgflusher"):
                if not self.member(label).running:
                    raise RuntimeError(f"{label} exited; see {self.log_dir}/{label}.log")
            await poll(self._all_gateways_listed, "every gateway in the registry", timeout=READY_DEADLINE)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.inner is not None:
            for member in self.inner.members:  # a frozen process cannot take SIGTERM
                if member.running and member.pid is not None:
                    os.kill(member.pid, signal.SIGCONT)
            await asyncio.to_thread(self.inner.stop, timeout=STOP_DEADLINE)
        await self.proxy.close()
        await asyncio.to_thread(self.redis.stop)
        if self.session is not None:
            await self.session.close()
        if self.sql is not None:
            await self.sql.dispose()
        if self._database_created:
            try:
                await drop_database(self.database_url)
            except Exception as exc:  # a database left behind is worth a line, not a failed run
                print(f"chaos: could not drop {make_url(self.database_url).database}: {exc}", file=sys.stderr)

    # -- members ------------------------------------------------------------------------------------------

    def member(self, label: str) -> cluster.Member:
        assert self.inner is not None
        return self.inner.member(label)

    def labels(self, service: str) -> list[str]:
        assert self.inner is not None
        return [m.label for m in self.inner.members if m.service == service]

    def url(self, label: str) -> str:
        return self.member(label).url

    @property
    def targets(self) -> Targets:
        return Targets(self.url("meta"), self.url("send-1"), self.url("registry"))

    @property
    def send_urls(self) -> list[str]:
        return [self.url(label) for label in self.labels("send")]

    def gateway_id(self, label: str) -> str:
        return f"gateway-{GATEWAY_NAME}-{self.member(label).env['PYSTACKER_MACHINE_ID']}"

    def stream_key(self, label: str) -> str:
        return f"{self.prefix}{self.gateway_id(label)}_stream"

    def pid(self, label: str) -> int:
        pid = self.member(label).pid
        assert pid is not None, label
        return pid

    def signal(self, label: str, sig: signal.Signals) -> None:
        """Signal one member: only a process this deployment started, by its PID."""
        member = self.member(label)
        if not member.running:
            raise RuntimeError(f"{label} is not running")
        os.kill(self.pid(label), sig)

    async def kill(self, label: str) -> None:
        """SIGKILL, then wait (with a deadline) until the process is gone."""
        self.signal(label, signal.SIGKILL)
        process = self.member(label).process
        assert process is not None
        await poll(lambda: process.poll() is not None, f"{label} exiting", timeout=STOP_DEADLINE)

    async def restart(self, label: str) -> float:
        """Start a killed member again (the supervisor's job); returns the seconds until it was ready."""
        assert self.inner is not None
        member = self.member(label)
        if member.running:
            raise RuntimeError(f"{label} is still running")
        started = time.monotonic()
        self.inner.spawn(member)
        if member.port:
            problems = await self.inner.wait_ready([member], timeout=READY_DEADLINE)
            if problems:
                raise RuntimeError("; ".join(problems) + f" (see {member.log_path})")
        if member.service == "gateway":
            await poll(lambda: self._listed(label), f"{label} in the registry", timeout=READY_DEADLINE)
        return time.monotonic() - started

    def exited(self) -> list[str]:
        assert self.inner is not None
        return [m.label for m in self.inner.exited()]

    def rss_kib(self, labels: list[str]) -> dict[str, int]:
        return {label: procfs.sample(self.pid(label)).rss_kib for label in labels if self.member(label).running}

    def log_tail(self, label: str, lines: int = 20) -> str:
        path = self.member(label).log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- the registry -------------------------------------------------------------------------------------

    async def live_gateway_ids(self) -> set[str]:
        assert self.session is not None
        async with self.session.get(self.url("registry") + "/registry/gateway/instances") as response:
            data = await response.json()
        return {g["gateway_id"] for g in (data.get("data") or {}).get("gateways") or []}

    async def _listed(self, label: str) -> bool:
        try:
            return self.gateway_id(label) in await self.live_gateway_ids()
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return False

    async def _all_gateways_listed(self) -> bool:
        try:
            live = await self.live_gateway_ids()
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return False
        return {self.gateway_id(label) for label in self.labels("gateway")} <= live

    async def gateways_listed_exactly_running(self) -> bool:
        """The registry lists the running gateways and no dead one (a killed one stays listed until
        its heartbeat TTL runs out)."""
        running = {self.gateway_id(label) for label in self.labels("gateway") if self.member(label).running}
        try:
            return await self.live_gateway_ids() == running
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return False

    # -- users ----------------------------------------------------------------------------------------------

    def client(self, user: PoolUser | None = None) -> PyStackerClient:
        """An SDK client of the deployment as `user` (anonymous: None), on the harness's HTTP session."""
        assert self.session is not None
        if user is None:
            return self.targets.client(self.session)
        return self.targets.client(self.session, token=user.token, user_id=user.user_id)

    async def register_users(self, count: int, tag: str) -> list[PoolUser]:
        """Register through meta (one bcrypt each); tokens are minted with the deployment's secret,
        which spares the login's second bcrypt."""
        anonymous = self.client()
        limit = asyncio.Semaphore(REGISTER_CONCURRENCY)
        run = uuid.uuid4().hex[:6]

        async def one(index: int) -> PoolUser:
            name = f"{tag}_{run}_{index}"
            async with limit:
                for attempt in range(REGISTER_ATTEMPTS):
                    try:
                        user_id = await anonymous.register(name, PASSWORD)
                        break
                    except PyStackerError as exc:
                        if exc.status or attempt == REGISTER_ATTEMPTS - 1:  # only no answer is tried again
                            raise RuntimeError(f"registering {name}: {exc}") from None
                        await asyncio.sleep(0.5)  # back off before trying again
            if not user_id:
                raise RuntimeError(f"registering {name}: no user id in the answer")
            return PoolUser(index, user_id, issue_token(self.jwt_secret, user_id, name, TOKEN_LIFETIME))

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def create_room(self, owner: PoolUser, members: list[PoolUser], name: str) -> int:
        """Through meta as the owner; a 5xx or a dropped connection (a store just restarted) is tried
        again a few times, a 4xx is not."""
        client = self.client(owner)
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                return await client.create_room(name, [m.user_id for m in members if m is not owner], is_group=True)
            except PyStackerError as exc:  # status 0: no answer
                if 0 < exc.status < 500 or attempt == REGISTER_ATTEMPTS - 1:
                    raise RuntimeError(f"creating room {name}: {exc}") from None
            await asyncio.sleep(0.5)  # back off before trying again
        raise AssertionError("unreachable")


def _default_port(backend: str) -> int:
    return 5432 if backend == "postgresql" else 3306


def describe_exit(deployment: ChaosDeployment) -> str:
    return "; ".join(f"{label} exited:\n{deployment.log_tail(label)}" for label in deployment.exited())


async def sql_ids(sql: AsyncEngine, room_ids: list[int]) -> dict[int, tuple[int, int, int, str | None]]:
    """msgID -> (room, seq, sender id, client_msg_id) of every stored message of these rooms."""
    from sqlalchemy import select

    if not room_ids:
        return {}
    messages = stored_messages()
    query = select(messages.c.id, messages.c.room_id, messages.c.seq, messages.c.sender_id,
                   messages.c.client_msg_id).where(messages.c.room_id.in_(room_ids))
    async with sql.connect() as conn:
        rows = await conn.execute(query)
        return {int(r[0]): (int(r[1]), int(r[2]), int(r[3]), r[4]) for r in rows}

