"""A distributed deployment for tests: every service as its own OS process, over real sockets.

`start_deployment` runs `pystacker db upgrade` on the given database, then starts registry, meta, the
flusher, msgflusher, N send instances and M gateways with the launcher of `pystacker cluster`
(`pystacker.cluster.plan` and `Deployment`, on free ports and with the shared environment of
`pystacker_tools.chaos.launcher`, which `pystacker chaos` uses too), with the example configs of `config/` and
environment overrides: the database URL, a Redis key prefix of its own (so it never meets another test
on the shared Redis), a fresh JWT secret and internal token, distinct machine_ids, and short timings
(heartbeat TTLs of a few seconds, msgflusher claiming after 1 s). It waits for `/ready` of every HTTP
service with a deadline. `stop` ends every process it started (SIGTERM, wait, SIGKILL), by PID only,
and deletes the prefix's keys.

Nothing here sleeps to synchronise: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pystacker import cluster
from pystacker.web.auth import TokenService
from pystacker_tools.chaos.launcher import (
    LOAD_GENERATOR_LIMITS,
    deployment_env,
    free_ports,
    new_key_prefix,
    plan_on_free_ports,
    redis_env,
)
from tests.client import Http, User
from tests.ws import Client, connect, poll

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"
READY_DEADLINE = 60.0
STOP_DEADLINE = 10.0
GATEWAY_NAME = "gostacker-gateway"  # `name` in config.gateway.yaml: gateway ids are gateway-<name>-<machine_id>

# A dead gateway leaves the live list within this TTL (heartbeats every TTL/3). Not less: a live
# gateway starved of CPU for a few seconds on a busy 2-core machine (the whole suite running, benches
# included) must not drop out of the live list in the middle of a test.
GATEWAY_TTL = 6
SEND_TTL = 6
USER_ROUTE_TTL = 30  # the reconnect lease
PRESENCE_TTL = GATEWAY_TTL  # a killed gateway's users show offline within this (watchers re-check every half)


@dataclass
class RedisTarget:
    """Where the deployment's Redis is: the shared server, or a local Redis Cluster's startup node."""

    host: str = "127.0.0.1"
    port: int = 6379
    cluster: bool = False

    def env(self) -> dict[str, str]:
        return redis_env(self.host, self.port, cluster_mode=self.cluster)

    def client(self) -> Redis | RedisCluster:
        if self.cluster:
            return RedisCluster(host=self.host, port=self.port, decode_responses=True)
        return Redis(host=self.host, port=self.port, decode_responses=True)


@dataclass
class TestDeployment:
    """A running deployment: URLs, PIDs and helpers of the tests."""

    __test__ = False  # not a test class, whatever its name

    inner: cluster.Deployment
    database_url: str
    prefix: str
    redis_target: RedisTarget
    tokens: TokenService
    session: aiohttp.ClientSession
    redis: Redis | RedisCluster
    sql: AsyncEngine
    internal_token: str
    gateways_started: int = 0
    stopped: bool = False
    _http: dict[str, Http] = field(default_factory=dict)

    # -- members -------------------------------------------------------------------------------------

    def member(self, label: str) -> cluster.Member:
        return self.inner.member(label)

    def pid(self, label: str) -> int:
        pid = self.member(label).pid
        assert pid is not None, label
        return pid

    def url(self, label: str) -> str:
        return self.member(label).url

    def labels(self, service: str) -> list[str]:
        """Members of one service that are running, in start order."""
        return [m.label for m in self.inner.members if m.service == service and m.running]

    @property
    def gateways(self) -> list[str]:
        return self.labels("gateway")

    @property
    def sends(self) -> list[Http]:
        return [self.http(label) for label in self.labels("send")]

    def http(self, label: str) -> Http:
        if label not in self._http:
            self._http[label] = Http(self.url(label), self.session)
        return self._http[label]

    @property
    def meta(self) -> Http:
        return self.http("meta")

    @property
    def registry(self) -> Http:
        return self.http("registry")

    def gateway_id(self, label: str) -> str:
        return f"gateway-{GATEWAY_NAME}-{self.member(label).env['PYSTACKER_MACHINE_ID']}"

    def label_of_gateway(self, gateway_id: str) -> str:
        for member in self.inner.members:
            if member.service == "gateway" and self.gateway_id(member.label) == gateway_id:
                return member.label
        raise KeyError(gateway_id)

    def stream_key(self, label: str) -> str:
        """The gateway's inbox stream (the key prefix goes in front of GoStacker's name)."""
        return f"{self.prefix}{self.gateway_id(label)}_stream"

    def signal(self, label: str, sig: signal.Signals) -> None:
        """Send a signal to one member: only a process this deployment started, by its PID."""
        member = self.member(label)
        assert member.running, f"{label} is not running"
        os.kill(self.pid(label), sig)

    async def wait_exit(self, label: str, timeout: float = STOP_DEADLINE) -> int:
        process = self.member(label).process
        assert process is not None
        await poll(lambda: process.poll() is not None, f"{label} exiting", timeout=timeout)
        return process.returncode

    def log_tail(self, label: str, lines: int = 30) -> str:
        path = self.member(label).log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def log_size(self, label: str) -> int:
        path = self.member(label).log_path
        return path.stat().st_size if path is not None and path.exists() else 0

    def log_since(self, label: str, offset: int) -> list[str]:
        """The lines a member logged after its log had `offset` bytes (see log_size)."""
        path = self.member(label).log_path
        if path is None or not path.exists():
            return []
        with open(path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()

    async def live_gateway_ids(self) -> set[str]:
        answer = await self.registry.get("/registry/gateway/instances")
        assert answer.status == 200, answer
        return {g["gateway_id"] for g in answer.data["gateways"] or []}

    async def add_gateway(self) -> str:
        """Start one more gateway (a new machine_id, so a new gateway id); returns its label when it
        is ready and listed in the registry."""
        self.gateways_started += 1
        number = self.gateways_started
        member = cluster.service_member(CONFIG_DIR, "gateway", number, free_ports(1)[0])
        self.inner.spawn(member)
        problems = await self.inner.wait_ready([member], timeout=READY_DEADLINE)
        assert not problems, f"{problems}\n{self.log_tail(member.label)}"
        await poll(lambda: self._listed(member.label), f"{member.label} in the registry")
        return member.label

    async def _listed(self, label: str) -> bool:
        return self.gateway_id(label) in await self.live_gateway_ids()

    async def ensure_gateways(self, count: int) -> list[str]:
        """At least `count` running gateways (tests that kill one leave fewer), and the registry lists
        exactly those (a killed one stays listed until its heartbeat TTL runs out); returns them."""
        while len(self.gateways) < count:
            await self.add_gateway()

        async def listed_as_running() -> bool:
            return await self.live_gateway_ids() == {self.gateway_id(label) for label in self.gateways}

        await poll(listed_as_running, "the registry listing exactly the running gateways", timeout=GATEWAY_TTL + 5)
        return self.gateways

    # -- users and sockets -----------------------------------------------------------------------------

    async def users(self, count: int, prefix: str = "d") -> list[User]:
        """Registered through meta (one bcrypt each); tokens minted with the deployment's secret, which
        skips the login's bcrypt (meta's own tests cover the login)."""
        async def one() -> User:
            username = f"{prefix}{uuid.uuid4().hex[:10]}"
            answer = await self.meta.post("/register", {"username": username, "password": "password-1"})
            assert answer.status == 200, answer
            user_id = answer.data["user_id"]
            return User(user_id, username, "password-1", self.tokens.issue(user_id, username))
        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def available(self, user: User) -> str:
        """The gateway (label) the registry gives `user` (the Bearer token names him for the lease)."""
        answer = await self.registry.get("/registry/gateway/available", token=user.token)
        assert answer.status == 200, answer
        return self.label_of_gateway(answer.data["gateway_id"])

    async def connect_to(self, label: str, user: User, **kwargs: Any) -> Client:
        client = await connect(self.session, self.url(label), user, **kwargs)
        if kwargs.get("welcome", True):
            assert client.frames[0].get("gateway_id") == self.gateway_id(label), client.frames[0]
        return client

    async def connect(self, user: User, **kwargs: Any) -> tuple[Client, str]:
        """As a client does: ask the registry, then open the socket there."""
        label = await self.available(user)
        return await self.connect_to(label, user, **kwargs), label

    # -- the stores -------------------------------------------------------------------------------------

    async def keys(self) -> list[str]:
        """Every Redis key of this deployment (plain and hash-tagged ones)."""
        found: list[str] = []
        for pattern in (f"{self.prefix}*", f"{{{self.prefix}*"):
            found += [key async for key in self.redis.scan_iter(match=pattern, count=1000)]
        return found

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            for member in self.inner.members:  # a process a failed test left frozen cannot take SIGTERM
                if member.running:
                    os.kill(member.pid, signal.SIGCONT)  # type: ignore[arg-type]
            await asyncio.to_thread(self.inner.stop, timeout=STOP_DEADLINE)
        finally:
            try:
                for key in await self.keys():  # one by one: on a cluster they live in different slots
                    await self.redis.delete(key)
            finally:
                await self.redis.aclose()
                await self.sql.dispose()
                await self.session.close()


async def start_deployment(log_dir: Path, database_url: str, *, redis: RedisTarget | None = None,
                           gateways: int = 2, sends: int = 2, env: dict[str, str] | None = None) -> TestDeployment:
    redis = redis or RedisTarget()
    prefix = new_key_prefix("dt")
    jwt_secret, internal_token = secrets.token_urlsafe(48), secrets.token_urlsafe(32)
    shared = deployment_env(database_url=database_url, key_prefix=prefix, jwt_secret=jwt_secret,
                            internal_token=internal_token, redis=redis.env(), gateway_ttl=GATEWAY_TTL,
                            send_ttl=SEND_TTL, user_route_ttl=USER_ROUTE_TTL,
                            extra={**LOAD_GENERATOR_LIMITS, "PYSTACKER_REGISTRY__PRESENCE_TTL": str(PRESENCE_TTL),
                                   **(env or {})})
    await asyncio.to_thread(cluster.migrate, CONFIG_DIR, shared)
    # every port free (the flusher's and msgflusher's metrics ports too: the example configs fix them)
    members = plan_on_free_ports(CONFIG_DIR, gateways=gateways, sends=sends)
    inner = cluster.Deployment(members, log_dir=log_dir, env=shared)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    timeout=aiohttp.ClientTimeout(total=30))
    deployment = TestDeployment(inner, database_url, prefix, redis, TokenService(jwt_secret, 7200), session,
                                redis.client(), create_async_engine(database_url), internal_token,
                                gateways_started=gateways)
    try:
        inner.start()
        problems = await inner.wait_ready(timeout=READY_DEADLINE)
        assert not problems, "; ".join(problems) + "".join(
            f"\n--- {m.label}\n{deployment.log_tail(m.label)}" for m in inner.members)
        # The workers without HTTP have no /ready: they must at least be running.
        for label in ("flusher", "msgflusher"):
            assert deployment.member(label).running, f"{label} exited\n{deployment.log_tail(label)}"
        for label in deployment.gateways:
            await poll(lambda label=label: deployment._listed(label), f"{label} in the registry")
    except BaseException:
        await deployment.stop()
        raise
    return deployment


async def with_deadline(awaitable: Awaitable[Any], what: str, timeout: float) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout}s") from None
