"""What every service of one process shares: config, SQL engine, token service.

`pystacker up` builds one Runtime for all services; `pystacker <service>` builds one per process.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pystacker.config import Config, ConfigError, check_jwt_secret
from pystacker.db import migrate
from pystacker.db.engine import create_engine
from pystacker.engine.base import Engine, EngineSettings, LogEnd
from pystacker.messaging.ids import Snowflake
from pystacker.messaging.parts import MessagingParts
from pystacker.messaging.store import MessageStore
from pystacker.observability import tracing
from pystacker.web.auth import Credentials, TokenService
from pystacker.web.ratelimit import TokenBucketLimiter

log = logging.getLogger("pystacker.runtime")


class StartupError(Exception):
    """A problem that stops the process at start; printed as one line."""


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def embedded_secret(data_dir: Path, name: str) -> str:
    """One of the embedded mode's secrets (`jwt_secret`, `internal_token`): made once and kept in the
    data folder, readable by its owner only, so tokens survive a restart."""
    path = data_dir / name
    if path.exists():
        secret = path.read_text().strip()
        if len(secret) >= 32:
            return secret
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.write_text(secret)
    path.chmod(0o600)
    return secret


class Runtime:
    def __init__(self, config: Config, *, embedded: bool = False, source: str = "config") -> None:
        self.config = config
        self.embedded = embedded
        if embedded and (not config.jwt_secret() or config.jwt_secret() == "secret"):
            config.jwt.secret = SecretStr(embedded_secret(Path(config.data_dir), "jwt_secret"))
        if embedded and not config.internal.token.get_secret_value().strip():
            # One process needs none of its internal routes open: they stay closed to whoever reaches
            # the ports (`--host 0.0.0.0` is the whole network), and open to tools given this token.
            config.internal.token = SecretStr(embedded_secret(Path(config.data_dir), "internal_token"))
        try:
            check_jwt_secret(config, embedded=embedded, source=source)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        self.tokens = TokenService(config.jwt_secret(), config.jwt.expire_duration)
        try:
            # Off by default; on, this process's spans are named after `name` (tracing.service_name wins).
            self.tracing = tracing.configure(config.tracing, service_name=config.name,
                                             instance_id=f"{config.name}-{config.machine_id}")
        except tracing.TracingUnavailable as exc:
            raise StartupError(str(exc)) from None
        self._sql: AsyncEngine | None = None
        self._engine: Engine | None = None
        self._parts: MessagingParts | None = None
        # One id generator per process: two generators with one node could mint the same id.
        self.ids = Snowflake(config.machine_id)
        # One set of rate limits per process: in `up` (or a gateway, which also takes `send` frames)
        # HTTP and WebSocket sends of one user draw from the same bucket.
        limits = config.limits
        self.send_limiter = TokenBucketLimiter(limits.send_rate, limits.send_burst,
                                               max_keys=limits.rate_limit_max_keys)
        self.login_user_limiter = TokenBucketLimiter(limits.login_rate, limits.login_burst,
                                                     max_keys=limits.rate_limit_max_keys)
        self.login_address_limiter = TokenBucketLimiter(limits.login_address_rate, limits.login_address_burst,
                                                        max_keys=limits.rate_limit_max_keys)
        self.register_address_limiter = TokenBucketLimiter(limits.register_address_rate,
                                                           limits.register_address_burst,
                                                           max_keys=limits.rate_limit_max_keys)
        self.room_change_limiter = TokenBucketLimiter(limits.room_change_rate, limits.room_change_burst,
                                                      max_keys=limits.rate_limit_max_keys)

    @property
    def credentials(self) -> Credentials:
        """What the services' routes check callers against: the JWT service and `internal.token`."""
        return Credentials(self.tokens, self.config.internal.token.get_secret_value())

    @property
    def sql(self) -> AsyncEngine:
        if self._sql is None:
            raise RuntimeError("Runtime.open_sql() was not called")
        return self._sql

    async def open_sql(self, *, migrate_to_head: bool) -> AsyncEngine:
        """Connect, and either migrate (embedded) or check the schema is current (services)."""
        url = self.config.database_url()
        pool = self.config.mysql.max_open_conns if self.config.mysql else 20
        engine = create_engine(url, pool_size=min(pool, 50), echo=self.config.database.echo)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            if migrate_to_head:
                await migrate.upgrade(engine)
            else:
                current, head = await migrate.current_revision(engine), migrate.head_revision()
                if current != head:
                    raise StartupError(
                        f"database {safe_url(url)} is at schema revision {current or 'none'}, expected {head}: "
                        "run `pystacker db upgrade --config FILE`")
        except StartupError:
            await engine.dispose()
            raise
        except Exception as exc:  # any driver error: report it in one line, without the password
            await engine.dispose()
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StartupError(f"cannot use the database {safe_url(url)}: {first_line}") from None
        self._sql = engine
        log.info("database ready", extra={"database": safe_url(url)})
        return engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("Runtime.open_engine() was not called")
        return self._engine

    async def open_engine(self) -> Engine:
        """The fast store (memory or Redis, by `engine`). Seq seeds come from SQL, opened or not: only
        services that append messages (send, gateway) need them, and those open SQL first."""
        group_cache = self.config.group_cache
        settings = EngineSettings(roster_ttl=group_cache.cache_ttl_seconds,
                                  roster_flushed_ttl=group_cache.post_flush_ttl_seconds)

        async def seq_seed(room_id: int) -> LogEnd:
            return await MessageStore(self.sql).log_end(room_id)

        engine: Engine
        if self.config.engine == "memory":
            from pystacker.engine.memory import MemoryEngine

            engine = MemoryEngine(settings, seq_seed)
        else:
            from pystacker.engine.redis_engine import RedisEngine

            try:
                engine = RedisEngine.from_config(self.config, settings, seq_seed,
                                                 prefix=self.config.redis.key_prefix)
            except ValueError as exc:  # a config the Redis client refuses (e.g. a db on a cluster)
                raise StartupError(f"redis: {exc}") from None
        try:
            await engine.ping()
        except Exception as exc:  # the redis engine names the unreachable host:port in one line
            await engine.close()
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StartupError(first_line) from None
        self._engine = engine
        return engine

    @property
    def parts(self) -> MessagingParts:
        """The messaging pieces every service of this process shares (one cache, one id generator)."""
        if self._parts is None:
            self._parts = MessagingParts.build(
                self.engine, MessageStore(self.sql),
                read_receipt_interval=self.config.limits.read_receipt_interval_ms / 1000,
                device_backlog=self.config.limits.device_backlog)
        return self._parts

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[object]]]:
        """What `/ready` checks: the stores this process opened."""
        checks: dict[str, Callable[[], Awaitable[object]]] = {}
        if self._sql is not None:
            sql = self._sql

            async def sql_check() -> None:
                async with sql.connect() as conn:
                    await conn.execute(text("SELECT 1"))

            checks["sql"] = sql_check
        if self._engine is not None:
            checks["engine"] = self._engine.ping
        return checks

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.close()
            self._engine = None
        if self._sql is not None:
            await self._sql.dispose()
            self._sql = None
        if self.tracing is not None:  # last: exports the spans still queued
            await self.tracing.shutdown()
            self.tracing = None
