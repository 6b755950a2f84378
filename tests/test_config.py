"""The config loader: GoStacker's YAML files, validation with one-line errors, environment overrides,
the JWT secret check, and the example files shipped in config/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pystacker.config import ConfigError, check_jwt_secret, load_config

REPO = Path(__file__).resolve().parent.parent
GOOD_SECRET = "a-random-secret-of-enough-length-42"

# GoStacker's shipped config.meta.yaml (spec 1.3), with Viper's mixed-case keys allowed.
GOSTACKER_META = """\
port: 8082
name: gostacker-meta
mode: prod
version: 0.1
start_time: ""
machine_id: 2
push_mod: "metadata"
log:
  level: debug
  filename: logs/meta.log
  max_size: 100
  max_backups: 7
  max_age: 30
mysql:
  host: 127.0.0.1
  port: 3306
  user: root
  password: root
  dbname: GoStacker
  max_open_conns: 200
  max_idle_conns: 50
redis:
  host: 127.0.0.1
  port: 6379
  password: ""
  db: 0
  pool_size: 50
  batch_size: 128
group_cache:
  enabled: true
  cache_ttl_seconds: 86400
  dirty_retention_seconds: 604800
  flush_interval_seconds: 5
  batch_size: 100
jwt:
  secret: "secret"
  expire_duration: 7200
dispatcher:
  send_channel_size: 1024
  gateway_worker_count: 4
  gateway_queue_size: 1024
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own PYSTACKER_* variables must not change what these tests see."""
    for name in list(os.environ):
        if name.upper().startswith("PYSTACKER_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path | str | None, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    text = str(caught.value)
    assert "\n" not in text, text  # one line for the operator
    return text


# -- GoStacker's files ---------------------------------------------------------------------------


def test_gostacker_meta_file_loads_unchanged(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOSTACKER_META))
    assert config.port == 8082 and config.name == "gostacker-meta" and config.machine_id == 2
    assert config.log.level == "debug" and config.log.filename == "logs/meta.log"
    assert config.mysql is not None and config.mysql.dbname == "GoStacker"
    assert config.mysql.password.get_secret_value() == "root"
    assert config.database_url() == "mysql+asyncmy://root:root@127.0.0.1:3306/GoStacker?charset=utf8mb4"
    assert config.redis.url() == "redis://127.0.0.1:6379/0"
    assert config.jwt_secret() == "secret" and config.jwt.expire_duration == 7200
    assert config.group_cache.cache_ttl_seconds == 86400


def test_gostacker_gateway_and_msgflusher_keys_load(tmp_path: Path) -> None:
    gateway = load_config(write(tmp_path, """\
port: 8084
machine_id: 4
address: 127.0.0.1
dispatcher:
  worker_count: 4
  task_queue_size: 1024
  max_connections: 10000
  send_channel_size: 256
  stream_name: gateway-gostacker-gateway-4_stream
  group_name: gateway-gostacker-gateway-4_group
  consumer_name: gateway-gostacker-gateway-4_consumer
  interval: 5
  threshold_pending: 1000
registry:
  url: http://127.0.0.1:8083
center:
  address: ""
""", "gateway.yaml"))
    assert gateway.dispatcher.stream_name == "gateway-gostacker-gateway-4_stream"
    assert gateway.dispatcher.max_connections == 10000 and gateway.registry.url == "http://127.0.0.1:8083"
    flusher = load_config(write(tmp_path, """\
pending_msg_flusher:
  interval: 5
  batch_size: 100
  claim_idle_seconds: 30
  stream_suffix: _stream
  group_suffix: _group
send_redis:
  stream: {host: 10.0.0.2, port: 6380, password: "", db: 1, pool_size: 50}
""", "msgflusher.yaml"))
    assert flusher.pending_msg_flusher.claim_idle_seconds == 30
    assert flusher.send_redis.stream is not None and flusher.send_redis.stream.url() == "redis://10.0.0.2:6380/1"


def test_keys_are_case_insensitive_like_viper(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "Port: 9000\nMySQL:\n  HOST: db.local\n  DbName: chat\nLOG:\n  Level: WARN\n"))
    assert config.port == 9000
    assert config.mysql is not None and config.mysql.host == "db.local" and config.mysql.dbname == "chat"
    assert config.log.level == "warn"


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "# nothing set\n"))
    assert config.port == 0 and config.mysql is None
    assert config.database_url().startswith("sqlite+aiosqlite:///")
    assert config.limits.max_members_per_request == 500 and config.limits.max_search_limit == 100


def test_database_url_wins_over_the_mysql_block_and_passwords_are_quoted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "mysql:\n  password: 'p@ss:w/rd'\n  dbname: chat\n"))
    assert config.database_url() == "mysql+asyncmy://root:p%40ss%3Aw%2Frd@127.0.0.1:3306/chat?charset=utf8mb4"
    config = load_config(write(tmp_path, "mysql:\n  host: x\ndatabase:\n  url: postgresql+asyncpg://u@h/db\n"))
    assert config.database_url() == "postgresql+asyncpg://u@h/db"


# -- errors: one line naming the file and the key ------------------------------------------------


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 8082\ncolour: blue\n")
    assert load_error(path) == f"{path}: colour: unknown key"


def test_unknown_nested_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "mysql:\n  hots: 127.0.0.1\n")
    assert load_error(path) == f"{path}: mysql.hots: unknown key"


def test_gostackers_root_ws_section_is_refused_as_unknown(tmp_path: Path) -> None:
    """GoStacker's leftover root config.yaml has `ws.*`, which no binary reads: a typo-like key."""
    path = write(tmp_path, "ws:\n  max_write_wait: 10\n")
    assert load_error(path) == f"{path}: ws: unknown key"


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("port: eighty\n", "port", "(got 'eighty')"),
    ("port: 70000\n", "port", "(got 70000)"),
    ("mysql:\n  port: -1\n", "mysql.port", "(got -1)"),
    ("log:\n  level: verbose\n", "log.level", "(got 'verbose')"),
    ("engine: cassandra\n", "engine", "(got 'cassandra')"),
    ("dispatcher:\n  max_connections: 0\n", "dispatcher.max_connections", "greater than or equal to 1"),
    ("jwt:\n  expire_duration: 5\n", "jwt.expire_duration", "greater than or equal to 60"),
    ("limits:\n  max_body_bytes: 10\n", "limits.max_body_bytes", "greater than or equal to 1024"),
    ("group_cache:\n  enabled: maybe\n", "group_cache.enabled", "(got 'maybe')"),
    ("redis: 6379\n", "redis", "valid dictionary"),
], ids=["port-word", "port-range", "mysql-port", "log-level", "engine", "max-connections", "expire",
        "body-limit", "bool", "section-scalar"])
def test_bad_values_name_the_file_the_key_and_the_reason(tmp_path: Path, text: str, key: str,
                                                           fragment: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert message.startswith(f"{path}: {key}: "), message
    assert fragment in message, message


def test_several_problems_are_counted_in_the_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "port: x\nmachine_id: y\ncolour: z\n")
    message = load_error(path)
    assert message.startswith(f"{path}: ") and message.endswith("(and 2 more problems)"), message


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 8082\nmysql:\n  host: [unclosed\n")
    message = load_error(path)
    assert message.startswith(f"{path}: invalid YAML at line "), message


def test_yaml_whose_top_level_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "- port\n- 8082\n")
    assert load_error(path) == f"{path}: the top level must be a mapping of keys, not list"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert load_error(path) == f"{path}: file not found"


def test_a_directory_or_binary_file_is_a_config_error(tmp_path: Path) -> None:
    assert load_error(tmp_path).startswith(f"{tmp_path}: cannot read")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00port")
    assert load_error(binary).startswith(f"{binary}: cannot read")


# -- secrets never leak into error text ----------------------------------------------------------


@pytest.mark.parametrize("text", [
    "jwt: hunter2-the-jwt-secret\n",
    "jwt:\n  secret: [hunter2-the-jwt-secret]\n",
    "mysql:\n  password: [hunter2-the-jwt-secret]\n",
    "mysql: hunter2-the-jwt-secret\n",
    "internal:\n  token: 7777777777777777\n",
    "database: 'mysql+asyncmy://root:hunter2-the-jwt-secret@db/x'\n",
    "database:\n  url: 7777777777777777\n",
    "redis:\n  password: 7777777777777777\n",
    "send_redis:\n  stream:\n    password: 7777777777777777\n",
], ids=["jwt-scalar", "secret-list", "password-list", "mysql-scalar", "token-number", "database-scalar",
        "url-number", "redis-password-number", "send-redis-password"])
def test_secrets_never_appear_in_the_error_text(tmp_path: Path, text: str) -> None:
    message = load_error(write(tmp_path, text))
    assert "hunter2" not in message and "7777777777777777" not in message, message


def test_secrets_do_not_appear_in_the_repr_of_the_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "mysql:\n  password: hunter2pw\njwt:\n  secret: hunter2-the-jwt-secret\n"))
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)


def test_a_short_secret_is_refused_without_echoing_it(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "jwt:\n  secret: hunter2\n"))
    with pytest.raises(ConfigError) as caught:
        check_jwt_secret(config, embedded=False, source="f.yaml")
    assert str(caught.value) == "f.yaml: jwt.secret: must be at least 16 characters"


# -- environment overrides -----------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTACKER_MYSQL__HOST", "db.example.org")
    monkeypatch.setenv("PYSTACKER_JWT__SECRET", GOOD_SECRET)
    config = load_config(write(tmp_path, GOSTACKER_META))
    assert config.mysql is not None and config.mysql.host == "db.example.org"
    # The rest of the same section still comes from the file.
    assert config.mysql.dbname == "GoStacker" and config.mysql.password.get_secret_value() == "root"
    assert config.jwt_secret() == GOOD_SECRET and config.jwt.expire_duration == 7200
    check_jwt_secret(config, embedded=False)


def test_environment_names_are_case_insensitive_and_make_a_missing_section(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("pystacker_mysql__port", "3307")
    monkeypatch.setenv("PYSTACKER_PORTS__META", "18082")
    config = load_config(write(tmp_path, "port: 1\n"))
    assert config.mysql is not None and config.mysql.port == 3307 and config.mysql.host == "127.0.0.1"
    assert config.ports.meta == 18082
    assert load_config(None).ports.meta == 18082  # no file at all: defaults + environment


def test_command_line_overrides_beat_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pystacker up --data-dir X` must win over a PYSTACKER_DATA_DIR left in the shell."""
    monkeypatch.setenv("PYSTACKER_DATA_DIR", "/from/env")
    monkeypatch.setenv("PYSTACKER_ENGINE", "redis")
    path = write(tmp_path, "data_dir: /from/file\n")
    assert load_config(path).data_dir == "/from/env"
    config = load_config(path, overrides={"data_dir": "/from/flag", "engine": "memory"})
    assert config.data_dir == "/from/flag" and config.engine == "memory"


def test_a_bad_environment_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTACKER_MYSQL__PORT", "not-a-port")
    path = write(tmp_path, "port: 1\n")
    message = load_error(path)
    assert message.startswith(f"{path}: mysql.port (from PYSTACKER_MYSQL__PORT): "), message


def test_an_unknown_nested_environment_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTACKER_MYSQL__HOTS", "db")
    path = write(tmp_path, "port: 1\n")
    assert load_error(path) == f"{path}: mysql.hots (from PYSTACKER_MYSQL__HOTS): unknown key"


def test_a_secret_from_the_environment_never_appears_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTACKER_JWT", "hunter2-the-jwt-secret")
    monkeypatch.setenv("PYSTACKER_MYSQL", '{"password": 7777777777777777}')
    message = load_error(write(tmp_path, "port: 1\n"))
    assert "hunter2" not in message and "7777777777777777" not in message, message


# -- the JWT secret check ------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["", "secret", "SECRET", "your_jwt_secret_key", "changeme", "CHANGE-ME"])
def test_weak_or_default_secrets_are_refused_outside_the_embedded_mode(tmp_path: Path, secret: str) -> None:
    config = load_config(write(tmp_path, f"jwt:\n  secret: '{secret}'\n"))
    with pytest.raises(ConfigError) as caught:
        check_jwt_secret(config, embedded=False, source="meta.yaml")
    assert str(caught.value).startswith("meta.yaml: jwt.secret: "), caught.value
    check_jwt_secret(config, embedded=True)  # `pystacker up` makes its own secret instead


def test_a_long_random_secret_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"jwt:\n  secret: {GOOD_SECRET}\n"))
    check_jwt_secret(config, embedded=False)


# -- the example files of the distributed deployment ---------------------------------------------

EXAMPLES = sorted((REPO / "config").glob("*.yaml"))
EXPECTED = {  # file: (port, name, machine_id)
    "config.meta.yaml": (8082, "gostacker-meta", 2),
    "config.registry.yaml": (8083, "gostacker-registry", 1),
    "config.send.yaml": (8081, "gostacker-send", 1),
    "config.gateway.yaml": (8084, "gostacker-gateway", 4),
    "config.gateway2.yaml": (8085, "gostacker-gateway", 5),
    "config.flusher.yaml": (0, "gostacker-flusher", 3),
    "config.msgflusher.yaml": (0, "gostacker-msgflusher", 30),
}


def test_every_example_file_is_there() -> None:
    assert sorted(p.name for p in EXAMPLES) == sorted(EXPECTED)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_file_loads_with_a_secret_from_the_environment(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTACKER_JWT__SECRET", GOOD_SECRET)
    config = load_config(path)
    check_jwt_secret(config, embedded=False, source=str(path))
    assert (config.port, config.name, config.machine_id) == EXPECTED[path.name]
    assert config.engine == "redis" and config.redis.url() == "redis://127.0.0.1:6379/0"
    if config.mysql is not None:
        assert config.database_url() == "mysql+asyncmy://root:@127.0.0.1:3306/pystacker?charset=utf8mb4"
    else:
        assert path.name == "config.msgflusher.yaml"  # GoStacker's msgflusher has no SQL
    if path.name.startswith("config.gateway"):
        # send derives a gateway's stream from its id: the names must follow `gateway-<name>-<machine_id>`.
        gateway_id = f"gateway-{config.name}-{config.machine_id}"
        assert config.dispatcher.stream_name == f"{gateway_id}_stream"
        assert config.dispatcher.group_name == f"{gateway_id}_group"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_example_placeholder_secret_is_refused(path: Path) -> None:
    config = load_config(path)
    with pytest.raises(ConfigError) as caught:
        check_jwt_secret(config, embedded=False, source=str(path))
    assert "jwt.secret" in str(caught.value)
    assert "PYSTACKER_JWT__SECRET" in path.read_text()  # the file tells the operator what to do
