"""Configuration: GoStacker's YAML layout and key names, validated, with environment overrides.

A GoStacker config file (`config.meta.yaml`, `config.gateway.yaml`, ...) loads unchanged. Keys are
case-insensitive as in Viper. Unknown keys are refused, so a typo stops the process instead of being
silently ignored; the keys GoStacker ships but never reads are accepted (and ignored) so that its
files still load.

Environment variables override the file: `PYSTACKER_<SECTION>__<KEY>`, e.g. `PYSTACKER_MYSQL__HOST`, or
`PYSTACKER_<SECTION>__<KEY>_FILE` naming a file that holds the value (secret_files.py);
values given on the command line (`load_config(..., overrides=...)`) override both.

PyStacker's own keys (not in GoStacker): `host`, `database.url`, `engine`, `internal.token`,
`ports.*` (embedded mode), `metrics_port`, `data_dir`, `limits.*`, `redis.cluster` (and in each `send_redis` block),
`tracing.*`, `notify.*`, `web.*`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote_plus

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from pystacker.secret_files import EnvironmentWithSecretFiles, SecretFileError

ENV_PREFIX = "PYSTACKER_"
# GoStacker ships `jwt.secret: "secret"` in every file; such a secret makes every token forgeable.
WEAK_JWT_SECRETS = {"", "secret", "your_jwt_secret_key", "changeme"}
MIN_JWT_SECRET_LENGTH = 16


class ConfigError(Exception):
    """A config problem, reported to the operator as one line."""


# The YAML values of the file load_config is reading; a settings source below the environment.
_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("pystacker_config_file_values", default=None)


class _YAMLFileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ hands over the whole mapping

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LogConfig(Section):
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    filename: str = ""  # empty: console only
    max_size: int = Field(100, ge=1, description="MB before rotation")
    max_backups: int = Field(7, ge=0)
    max_age: int = Field(30, ge=0, description="days (kept for compatibility; rotation is by size)")

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class MySQLConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(3306, ge=1, le=65535)
    user: str = "root"
    password: SecretStr = SecretStr("")
    dbname: str = "GoStacker"
    max_open_conns: int = Field(200, ge=1)
    max_idle_conns: int = Field(50, ge=0)


class DatabaseConfig(Section):
    """PyStacker extension: any SQLAlchemy async URL; wins over the `mysql` block when set."""

    url: SecretStr | None = None
    echo: bool = False


class RedisConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    password: SecretStr = SecretStr("")
    db: int = Field(0, ge=0)
    pool_size: int = Field(50, ge=1)
    batch_size: int = 128  # unused by GoStacker too
    # PyStacker extension: host:port is a startup node of a Redis Cluster (db must be 0). The engine's
    # keys are hash-tagged so that each of its Lua scripts stays in one slot.
    cluster: bool = False
    # PyStacker extension: prepended to every engine key (inside the hash tags), so that several
    # deployments or test runs can share one Redis. Letters, digits, `:`, `_`, `-` only.
    key_prefix: str = Field("", pattern=r"^[A-Za-z0-9:_-]*$", max_length=64)

    def url(self) -> str:
        auth = f":{quote_plus(self.password.get_secret_value())}@" if self.password.get_secret_value() else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


class SendRedisConfig(Section):
    stream: RedisConfig | None = None
    queue: RedisConfig | None = None
    cache: RedisConfig | None = None


class GroupCacheConfig(Section):
    enabled: bool = True
    cache_ttl_seconds: int = 86400
    post_flush_ttl_seconds: int = 5
    dirty_retention_seconds: int = 604800
    flush_interval_seconds: int = 5
    batch_size: int = 100
    max_retries: int = 3  # unused by GoStacker too


class JWTConfig(Section):
    secret: SecretStr = SecretStr("")
    expire_duration: int = Field(7200, ge=60, le=30 * 86400)


class SendDispatcherConfig(Section):
    send_channel_size: int = 1024
    gateway_worker_count: int = 4
    gateway_queue_size: int = 1024


class DispatcherConfig(Section):
    worker_count: int = 4  # unused by GoStacker too
    task_queue_size: int = 1024  # unused by GoStacker too
    max_connections: int = Field(10000, ge=1)
    send_channel_size: int = Field(256, ge=1)
    stream_name: str = ""
    group_name: str = ""
    consumer_name: str = ""
    interval: int = Field(5, ge=1)
    threshold_pending: int = Field(1000, ge=1)
    # GoStacker puts these send-dispatcher keys in the meta and flusher files; accepted and ignored.
    gateway_worker_count: int | None = None
    gateway_queue_size: int | None = None


class PendingMsgFlusherConfig(Section):
    interval: int = Field(5, ge=1)
    batch_size: int = Field(100, ge=1)
    claim_idle_seconds: int = Field(30, ge=1)
    stream_suffix: str = "_stream"
    group_suffix: str = "_group"
    outbox_ttl: int | None = None  # unused by GoStacker too


class CenterConfig(Section):
    address: str = ""  # GoStacker's dead "center"; accepted and ignored


class RegistryConfig(Section):
    url: str = ""
    gateway_heartbeat_timeout: int = Field(30, ge=1)
    # PyStacker extension: how often a gateway beats. Frequent beats let the registry tell a dead
    # gateway within seconds (registry/liveness.py); the timeout above only removes its entry.
    gateway_heartbeat_interval: float = Field(1.0, gt=0)
    send_heartbeat_timeout: int = Field(30, ge=1)
    user_route_ttl: int = Field(120, ge=1)
    # PyStacker extension: a user whose gateway died shows offline within this many seconds (the
    # gateways re-check the users their clients watch every half of it; docs/architecture.md).
    presence_ttl: int = Field(60, ge=2)
    cleanup_interval: int = 10  # unused by GoStacker too


class InternalConfig(Section):
    """PyStacker extension: the shared token that internal and registry-write routes require.

    Mandatory for `pystacker <service>` (check_internal_token); `pystacker up` makes one when it is
    empty and keeps it in `data_dir/internal_token`."""

    token: SecretStr = SecretStr("")


class EmbeddedPorts(Section):
    """PyStacker extension: the ports `pystacker up` serves each service on."""

    send: int = Field(8081, ge=0, le=65535)
    meta: int = Field(8082, ge=0, le=65535)
    registry: int = Field(8083, ge=0, le=65535)
    gateway: int = Field(8084, ge=0, le=65535)


class WebSocketConfig(Section):
    """PyStacker extension: GoStacker hard-codes these."""

    ping_interval: float = Field(54.0, gt=0)
    pong_deadline: float = Field(60.0, gt=0)


class LimitsConfig(Section):
    """PyStacker extension: input limits (a request over them gets a 4xx, never a 5xx)."""

    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_members_per_request: int = Field(500, ge=1)
    max_search_limit: int = Field(100, ge=1)
    # Token buckets, per process (see web/ratelimit.py); a rate of 0 turns that limit off.
    # Sends: one bucket per user, shared by POST /api/chat/send_message and the WebSocket `send` frame.
    send_rate: float = Field(50.0, ge=0, description="sends per second per user")
    send_burst: int = Field(200, ge=1)
    # Logins: one bucket per username (password guessing) and one per remote address (a looser one,
    # since many users may share an address behind NAT). Failed attempts count too.
    login_rate: float = Field(5.0, ge=0, description="logins per second per username")
    login_burst: int = Field(20, ge=1)
    login_address_rate: float = Field(20.0, ge=0, description="logins per second per remote address")
    login_address_burst: int = Field(100, ge=1)
    # Registrations: one bucket per remote address (each costs a bcrypt hash and an SQL insert).
    register_address_rate: float = Field(0.5, ge=0, description="registrations per second per remote address")
    register_address_burst: int = Field(20, ge=1)
    # Room and membership changes (create, members, roles, nicknames, join, leave, join requests and
    # their answers): one bucket per user; each change is an SQL or roster write.
    room_change_rate: float = Field(10.0, ge=0, description="room and membership changes per second per user")
    room_change_burst: int = Field(100, ge=1)
    rate_limit_max_keys: int = Field(100_000, ge=1, description="buckets kept per limiter (LRU)")
    # A group's read receipts: at most one per reader and room in this many ms (0: every one).
    read_receipt_interval_ms: int = Field(1000, ge=0)
    # Devices of one user online at once (docs/client.md); one more closes the one connected longest
    # ago with 4011. 0: no limit.
    devices_per_user: int = Field(10, ge=0, le=1000)
    # A named device not seen for this long (seconds) is forgotten with its cursors (30 days).
    device_ttl: int = Field(30 * 86400, ge=3600)
    # A device without a cursor in a room (new, or new to the room) starts with at most this many of
    # its latest messages after the user's read seq.
    device_backlog: int = Field(50, ge=0, le=10_000)
    # How long after sending its sender may edit a message, and recall it (owners and admins of the
    # room may recall at any time). 0: no limit.
    edit_window_s: int = Field(172_800, ge=0)
    recall_window_s: int = Field(120, ge=0)


class WebConfig(Section):
    """PyStacker extension: what browsers get (docs/web.md). The meta service serves the chat app at `/`
    and the JavaScript SDK at `/sdk/pystacker.js` while `enabled`; every service serves `/docs`."""

    enabled: bool = True
    # Where the app's browsers reach send and registry; empty: the page's own host with `ports.send`
    # and `ports.registry` (what `pystacker up` serves).
    send_url: str = Field("", pattern=r"^(https?://[^\s/]+(/\S*)?)?$")
    registry_url: str = Field("", pattern=r"^(https?://[^\s/]+(/\S*)?)?$")
    # Origins (`scheme://host[:port]`) whose pages may call the HTTP routes besides those on the
    # service's own host; `*` allows every origin (tokens travel in headers, never in cookies).
    cors_origins: list[Annotated[str, StringConstraints(pattern=r"^(\*|https?://[^\s/]+)$")]] = Field(default_factory=list)


class NotifyConfig(Section):
    """PyStacker extension: the offline notification webhook (messaging/offline_notify.py). Off while
    `webhook_url` is empty; with it, `secret` signs every batch (X-PyStacker-Signature) and is required."""

    webhook_url: str = Field("", pattern=r"^(https?://[^\s/]+(/\S*)?)?$")
    secret: SecretStr = SecretStr("")
    batch_ms: int = Field(1000, ge=10, le=60_000)
    queue_size: int = Field(10_000, ge=1, le=1_000_000)
    timeout_s: float = Field(5.0, gt=0, le=60)
    retry_for_s: float = Field(300.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _secret_with_url(self) -> NotifyConfig:
        if self.webhook_url and not self.secret.get_secret_value():
            raise ValueError("notify.secret is required with notify.webhook_url (it signs every batch)")
        return self


class TracingConfig(Section):
    """PyStacker extension: OpenTelemetry traces of each message, from send to the socket writes
    (docs/observability.md). Off by default; on, it needs the `tracing` extra installed."""

    enabled: bool = False
    # OTLP over HTTP: the collector's base URL (`/v1/traces` is added) or the full traces URL. Empty:
    # OpenTelemetry's own settings (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT),
    # else http://localhost:4318.
    otlp_endpoint: str = Field("", pattern=r"^(https?://\S+)?$")
    service_name: str = ""  # the `service.name` of this process's spans; empty: the `name` key
    # The share of messages traced, decided once where the trace starts (send); the gateways follow it.
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        validate_assignment=True,
    )

    port: int = Field(0, ge=0, le=65535)
    host: str = "0.0.0.0"
    name: str = "pystacker"
    mode: str = "prod"
    version: str | float = "0.1"
    start_time: str = ""
    machine_id: int = Field(1, ge=0, le=1023)  # also the snowflake node (GoStacker hard-codes 1)
    push_mod: str = "gateway"
    address: str = "127.0.0.1"
    engine: Literal["memory", "redis"] = "redis"
    # PyStacker extension: the flusher and msgflusher serve no HTTP API, so /metrics, /health, /ready
    # and /debug/stats have no port there unless this one is set (0: off). HTTP services ignore it.
    metrics_port: int = Field(0, ge=0, le=65535)
    data_dir: str = "./data"

    log: LogConfig = LogConfig()
    mysql: MySQLConfig | None = None
    database: DatabaseConfig = DatabaseConfig()
    redis: RedisConfig = RedisConfig()
    send_redis: SendRedisConfig = SendRedisConfig()
    group_cache: GroupCacheConfig = GroupCacheConfig()
    jwt: JWTConfig = JWTConfig()
    send_dispatcher: SendDispatcherConfig = SendDispatcherConfig()
    dispatcher: DispatcherConfig = DispatcherConfig()
    pending_msg_flusher: PendingMsgFlusherConfig = PendingMsgFlusherConfig()
    center: CenterConfig = CenterConfig()
    registry: RegistryConfig = RegistryConfig()
    internal: InternalConfig = InternalConfig()
    ports: EmbeddedPorts = EmbeddedPorts()
    limits: LimitsConfig = LimitsConfig()
    websocket: WebSocketConfig = WebSocketConfig()
    tracing: TracingConfig = TracingConfig()
    notify: NotifyConfig = NotifyConfig()
    web: WebConfig = WebConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: command-line overrides (init kwargs), then the environment (a variable or the
        # file its `_FILE` twin names: never both), then the YAML file.
        return (init_settings, EnvironmentWithSecretFiles(settings_cls), _YAMLFileSource(settings_cls))

    # -- derived values -------------------------------------------------------------------------

    def database_url(self) -> str:
        """The SQLAlchemy async URL: `database.url`, else the `mysql` block, else embedded SQLite."""
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        if self.mysql is not None:
            m = self.mysql
            password = quote_plus(m.password.get_secret_value())
            return f"mysql+asyncmy://{m.user}:{password}@{m.host}:{m.port}/{m.dbname}?charset=utf8mb4"
        return f"sqlite+aiosqlite:///{Path(self.data_dir) / 'pystacker.db'}"

    def jwt_secret(self) -> str:
        return self.jwt.secret.get_secret_value()


def _lower_keys(value: Any) -> Any:
    """Viper treats keys case-insensitively; so do we."""
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    return value


# Keys whose values are never echoed in an error: the line goes to logs and terminals.
_SENSITIVE_KEYS = {"password", "secret", "token", "url"}
# A whole section given as a scalar (`jwt: my-secret`) would otherwise be echoed with its secret.
_SECTION_TYPE_ERRORS = {"model_type", "model_attributes_type", "dict_type"}


def _env_name_for(loc: tuple[Any, ...]) -> str | None:
    """The PYSTACKER_* variable that set this key (or one of its sections), if any."""
    present = {name.upper() for name in os.environ}
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(str(part) for part in loc[:depth]).upper()
        for candidate in (name, name + "_FILE"):
            if candidate in present:
                return candidate
    return None


def _format_validation_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(part) for part in loc) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        reason = "unknown key"
    else:
        reason = first["msg"]
        given = first.get("input")
        sensitive = any(str(part) in _SENSITIVE_KEYS for part in loc) or kind in _SECTION_TYPE_ERRORS
        if isinstance(given, (str, int, float, bool)) and not sensitive:
            reason += f" (got {given!r})"
    env_name = _env_name_for(loc)
    if env_name:
        key += f" (from {env_name})"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {key}: {reason}{suffix}"


def load_config(path: str | os.PathLike[str] | None, *, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a config file (or only defaults + environment when `path` is None).

    Every problem raises ConfigError with one line that names the file, the key and the reason.
    """
    data: dict[str, Any] = {}
    source = str(path) if path is not None else "config"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read: {exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of keys, not {type(loaded).__name__}")
        data = _lower_keys(loaded)
    token = _FILE_VALUES.set(data)
    try:
        return Config(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None
    except SettingsError as exc:  # an environment variable pydantic-settings could not parse
        raise ConfigError(f"{source}: environment: {str(exc).splitlines()[0]}") from None
    except SecretFileError as exc:
        raise ConfigError(f"{source}: environment: {exc}") from None
    finally:
        _FILE_VALUES.reset(token)


def check_jwt_secret(config: Config, *, embedded: bool, source: str = "config") -> None:
    """Refuse a weak or default JWT secret, except in the embedded mode (which makes its own)."""
    secret = config.jwt_secret()
    if embedded:
        return
    if secret.lower() in WEAK_JWT_SECRETS:
        raise ConfigError(
            f"{source}: jwt.secret: a default or empty secret is refused outside `pystacker up`; "
            "set a random one of at least 16 characters (e.g. PYSTACKER_JWT__SECRET)"
        )
    if len(secret) < MIN_JWT_SECRET_LENGTH:
        raise ConfigError(f"{source}: jwt.secret: must be at least {MIN_JWT_SECRET_LENGTH} characters")


def check_internal_token(config: Config, *, source: str = "config") -> None:
    """Refuse to run a service without `internal.token`: its internal and registry-write routes would
    be open to anyone who reaches the port (compatibility.md #31). Only `pystacker up` skips it."""
    token = config.internal.token.get_secret_value()
    if not token.strip():
        raise ConfigError(
            f"{source}: internal.token: required outside `pystacker up`; set the same random token on "
            "every service (e.g. PYSTACKER_INTERNAL__TOKEN)")
