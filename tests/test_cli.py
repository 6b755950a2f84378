"""The `pystacker` command, run as a real subprocess: help, version, one-line startup errors,
`db upgrade`, a service started from a config file and `pystacker up` answering over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import Any

import pytest

PYSTACKER = str(Path(sys.executable).parent / "pystacker")
GOOD_SECRET = "cli-test-secret-that-is-long-enough-0123"
INTERNAL_TOKEN = "cli-test-internal-token-0123456789"
STARTUP_DEADLINE = 60.0  # seconds; generous for a loaded CI machine
STOP_DEADLINE = 30.0


@pytest.fixture
def env() -> dict[str, str]:
    """The child's environment without a developer's own PYSTACKER_* settings."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("PYSTACKER_")}


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYSTACKER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sqlite_config(tmp_path: Path, db_file: Path, **extra: Any) -> Path:
    lines = [f"database:\n  url: sqlite+aiosqlite:///{db_file}", f"jwt:\n  secret: {GOOD_SECRET}",
             f"internal:\n  token: {INTERNAL_TOKEN}", "engine: memory", "host: 127.0.0.1"]
    lines += [f"{key}: {value}" for key, value in extra.items()]
    path = tmp_path / "service.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def http(method: str, url: str, body: Any = None, timeout: float = 5) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_until_answering(url: str, process: subprocess.Popen[str], deadline: float) -> None:
    """Poll until the server answers, the process dies, or the deadline passes."""
    while True:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"pystacker exited with {process.returncode} before answering:\n{out}\n{err}")
        try:
            status, body = http("GET", url, timeout=1)
            assert status == 200, body
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                pytest.fail(f"{url} did not answer within the deadline")
            time.sleep(0.05)  # the polling interval; the loop itself waits for the event


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at the end are killed, so none outlives the test."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def start(args: list[str], cwd: Path, env: dict[str, str],
          started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    process = subprocess.Popen([PYSTACKER, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    started.append(process)
    return process


def interrupt_and_wait(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[str, str]:
    process.send_signal(sig)
    try:
        out, err = process.communicate(timeout=STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"pystacker did not stop within {STOP_DEADLINE}s after {sig!r}:\n{out}\n{err}")
    assert process.returncode == 0, (process.returncode, out, err)
    return out, err


# -- help and version ----------------------------------------------------------------------------


def test_version(tmp_path: Path, env: dict[str, str]) -> None:
    from pystacker import __version__

    result = run(["version"], tmp_path, env)
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"pystacker {__version__}"
    assert result.stderr == ""


@pytest.mark.parametrize(("args", "expected"), [
    (["--help"], ["up", "meta", "db", "version"]),
    (["-h"], ["up", "meta"]),
    (["meta", "--help"], ["--config", "config.meta.yaml"]),
    (["up", "--help"], ["--data-dir", "--config", "--host"]),
    (["db", "upgrade", "--help"], ["--config"]),
], ids=["help", "h", "meta", "up", "db-upgrade"])
def test_help_exits_zero(tmp_path: Path, env: dict[str, str], args: list[str], expected: list[str]) -> None:
    result = run(args, tmp_path, env)
    assert result.returncode == 0, result
    assert result.stdout.startswith("Usage: pystacker"), result.stdout
    for word in expected:
        assert word in result.stdout, word


def test_unknown_command_is_a_usage_error(tmp_path: Path, env: dict[str, str]) -> None:
    result = run(["frobnicate"], tmp_path, env)
    assert result.returncode == 2
    assert "No such command" in result.stderr and "Traceback" not in result.stderr


# -- the tools' commands, from pystacker-tools (tools/) through entry points ----------------------


def test_bench_and_chaos_are_the_tools_entry_points(tmp_path: Path, env: dict[str, str]) -> None:
    points = {point.name: point for point in entry_points(group="pystacker.commands")}
    assert {name: point.dist.name if point.dist else None for name, point in points.items()
            if name in ("bench", "chaos")} == {"bench": "pystacker-tools", "chaos": "pystacker-tools"}
    for args, expected in ((["bench", "--help"], ["fanout", "pairs", "idle", "catchup", "rawlimit"]),
                           (["bench", "rawlimit", "--help"], ["--connections", "--receiver-procs"]),
                           (["chaos", "--help"], ["--scenario", "--long", "gateway-kill"]),
                           (["--help"], ["bench", "chaos", "meta", "up"])):
        result = run(args, tmp_path, env)
        assert result.returncode == 0, result
        assert result.stdout.startswith(f"Usage: pystacker {' '.join(args[:-1])}".rstrip()), result.stdout
        for word in expected:
            assert word in result.stdout, (args, word)


@pytest.mark.parametrize("command", ["meta", "up"])
def test_a_running_service_has_imported_none_of_the_tools(tmp_path: Path, env: dict[str, str], command: str,
                                                          started: list[subprocess.Popen[str]]) -> None:
    """Under `python -X importtime` the interpreter writes a line for every module it imports: a service
    that is up and answering has imported its own modules and none of pystacker_tools."""
    assert distribution("pystacker-tools").entry_points  # installed, so that its absence below means something
    if command == "meta":
        port = free_port()
        config = sqlite_config(tmp_path, tmp_path / "meta.db", port=port)
        assert run(["db", "upgrade", "--config", str(config)], tmp_path, env).returncode == 0
        args, own = ["meta", "--config", str(config)], "pystacker.meta.routes"
    else:
        ports = {name: free_port() for name in ("send", "meta", "registry", "gateway")}
        env.update({f"PYSTACKER_PORTS__{name.upper()}": str(p) for name, p in ports.items()})
        port = ports["meta"]
        args, own = ["up", "--data-dir", str(tmp_path / "data")], "pystacker.embedded"
    log = tmp_path / "importtime.log"
    with open(log, "w") as stderr:  # a file, not a pipe: a full pipe would stop the service mid-start
        process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "pystacker", *args], cwd=tmp_path,
                                   env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    started.append(process)
    wait_until_answering(f"http://127.0.0.1:{port}/ping", process, time.monotonic() + STARTUP_DEADLINE)
    interrupt_and_wait(process, signal.SIGTERM)
    imported = {line.rpartition("|")[2].strip() for line in log.read_text().splitlines()
                if line.startswith("import time:")}
    assert own in imported and "pystacker.cli" in imported
    assert sorted(name for name in imported if name.partition(".")[0] == "pystacker_tools") == []


# -- one-line config errors ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fragments"), [
    ("port: 8082\nmysql:\n  host: [unclosed\n", ["invalid YAML at line"]),
    ("port: 8082\ncolour: blue\n", ["colour: unknown key"]),
    ("mysql:\n  hots: db\n", ["mysql.hots: unknown key"]),
    ("port: eighty\n", ["port:", "'eighty'"]),
    ("log:\n  level: verbose\n", ["log.level:", "'verbose'"]),
], ids=["bad-yaml", "unknown-key", "unknown-nested-key", "bad-port", "bad-level"])
def test_meta_with_a_broken_config_fails_in_one_line(tmp_path: Path, env: dict[str, str], text: str,
                                                      fragments: list[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = run(["meta", "--config", str(path)], tmp_path, env)
    assert_one_line_error(result, str(path), *fragments)
    assert result.stdout == ""


def test_meta_with_a_missing_config_file_fails_in_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    result = run(["meta", "--config", "nope.yaml"], tmp_path, env)
    assert_one_line_error(result, "nope.yaml", "file not found")


def test_meta_without_config_looks_for_config_meta_yaml(tmp_path: Path, env: dict[str, str]) -> None:
    result = run(["meta"], tmp_path, env)
    assert_one_line_error(result, "config.meta.yaml", "file not found")


@pytest.mark.parametrize("secret", ["secret", "short", ""])
def test_meta_with_a_weak_jwt_secret_fails_in_one_line(tmp_path: Path, env: dict[str, str], secret: str) -> None:
    path = tmp_path / "weak.yaml"
    path.write_text(f"database:\n  url: sqlite+aiosqlite:///{tmp_path / 'x.db'}\njwt:\n  secret: '{secret}'\n")
    result = run(["meta", "--config", str(path)], tmp_path, env)
    line = assert_one_line_error(result, str(path), "jwt.secret")
    assert "PYSTACKER_JWT__SECRET" in line or "16 characters" in line


def test_the_shipped_example_config_is_refused_until_a_secret_is_set(tmp_path: Path, env: dict[str, str]) -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "config.meta.yaml"
    result = run(["meta", "--config", str(example)], tmp_path, env)
    assert_one_line_error(result, "jwt.secret")


@pytest.mark.parametrize("service", ["meta", "send", "registry", "gateway", "flusher", "msgflusher"])
def test_a_service_without_an_internal_token_fails_in_one_line(tmp_path: Path, env: dict[str, str],
                                                               service: str) -> None:
    path = tmp_path / "no-token.yaml"
    path.write_text(f"database:\n  url: sqlite+aiosqlite:///{tmp_path / 'x.db'}\njwt:\n  secret: {GOOD_SECRET}\n"
                    "engine: memory\nhost: 127.0.0.1\n")
    result = run([service, "--config", str(path)], tmp_path, env)
    assert_one_line_error(result, str(path), "internal.token", "PYSTACKER_INTERNAL__TOKEN")
    # a blank token is no token
    env["PYSTACKER_INTERNAL__TOKEN"] = "   "
    result = run([service, "--config", str(path)], tmp_path, env)
    assert_one_line_error(result, "internal.token")


def test_the_internal_token_can_come_from_the_environment(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "no-token.yaml"
    path.write_text(f"database:\n  url: sqlite+aiosqlite:///{tmp_path / 'empty.db'}\njwt:\n  secret: {GOOD_SECRET}\n"
                    f"engine: memory\nhost: 127.0.0.1\nport: {free_port()}\n")
    env["PYSTACKER_INTERNAL__TOKEN"] = INTERNAL_TOKEN
    result = run(["meta", "--config", str(path)], tmp_path, env)
    # past the token check: it stops at the next one, the missing schema
    assert_one_line_error(result, "pystacker db upgrade")


def test_a_bad_environment_value_fails_in_one_line_naming_the_variable(tmp_path: Path, env: dict[str, str]) -> None:
    path = sqlite_config(tmp_path, tmp_path / "x.db")
    env["PYSTACKER_MYSQL__PORT"] = "not-a-port"
    result = run(["meta", "--config", str(path)], tmp_path, env)
    assert_one_line_error(result, "mysql.port", "PYSTACKER_MYSQL__PORT")


def test_config_errors_never_print_the_secret(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "leaky.yaml"
    path.write_text("jwt: hunter2-the-real-secret\nmysql:\n  password: [hunter2-db-password]\n")
    result = run(["meta", "--config", str(path)], tmp_path, env)
    assert_one_line_error(result, str(path))
    assert "hunter2" not in result.stderr + result.stdout


# -- db upgrade and a service on its schema ------------------------------------------------------


def test_db_upgrade_creates_the_schema_in_a_fresh_sqlite_file(tmp_path: Path, env: dict[str, str]) -> None:
    db_file = tmp_path / "fresh" / "pystacker.db"
    config = sqlite_config(tmp_path, db_file)
    result = run(["db", "upgrade", "--config", str(config)], tmp_path, env)
    assert result.returncode == 0, result
    assert "schema at revision" in result.stdout
    with sqlite3.connect(db_file) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert {"users", "chat_rooms", "room_members", "join_requests", "chat_messages"} <= tables
    assert revision in result.stdout
    # Running it again is harmless.
    again = run(["db", "upgrade", "--config", str(config)], tmp_path, env)
    assert again.returncode == 0, again
    assert f"schema at revision {revision}" in again.stdout


def test_db_upgrade_on_an_unreachable_database_fails_in_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    port = free_port()  # nothing listens there
    config = tmp_path / "db.yaml"
    config.write_text(f"mysql:\n  host: 127.0.0.1\n  port: {port}\n  password: hunter2pw\n")
    result = run(["db", "upgrade", "--config", str(config)], tmp_path, env, timeout=120)
    # The line names the database (password masked) and the reason.
    line = assert_one_line_error(result, f"127.0.0.1:{port}", "refused")
    assert "hunter2pw" not in result.stderr + result.stdout and "***" in line


def test_meta_on_a_database_without_schema_says_to_run_db_upgrade(tmp_path: Path, env: dict[str, str]) -> None:
    config = sqlite_config(tmp_path, tmp_path / "empty.db", port=free_port())
    result = run(["meta", "--config", str(config)], tmp_path, env)
    assert_one_line_error(result, "pystacker db upgrade")


def test_meta_serves_after_db_upgrade_and_stops_on_sigterm(tmp_path: Path, env: dict[str, str],
                                                           started: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    config = sqlite_config(tmp_path, tmp_path / "meta.db", port=port)
    assert run(["db", "upgrade", "--config", str(config)], tmp_path, env).returncode == 0
    process = start(["meta", "--config", str(config)], tmp_path, env, started)
    base = f"http://127.0.0.1:{port}"
    wait_until_answering(base + "/ping", process, time.monotonic() + STARTUP_DEADLINE)
    status, body = http("POST", base + "/register", {"username": "cli_meta_user", "password": "secret-pw"})
    assert status == 200 and body["code"] == 0 and body["data"]["user_id"] > 0, body
    status, body = http("POST", base + "/login", {"username": "cli_meta_user", "password": "secret-pw"})
    assert status == 200 and body["data"]["token"], body
    interrupt_and_wait(process, signal.SIGTERM)


# -- pystacker up --------------------------------------------------------------------------------


def test_up_answers_registers_and_stops_on_sigint(tmp_path: Path, env: dict[str, str],
                                                  started: list[subprocess.Popen[str]]) -> None:
    # Free ports through the environment: a developer's own `pystacker up` may hold 8081-8084.
    ports = {name: free_port() for name in ("send", "meta", "registry", "gateway")}
    for name, port in ports.items():
        env[f"PYSTACKER_PORTS__{name.upper()}"] = str(port)
    data_dir = tmp_path / "data"
    process = start(["up", "--data-dir", str(data_dir)], tmp_path, env, started)
    base = f"http://127.0.0.1:{ports['meta']}"
    wait_until_answering(base + "/ping", process, time.monotonic() + STARTUP_DEADLINE)

    status, body = http("POST", base + "/register", {"username": "cli_up_user", "password": "secret-pw"})
    assert status == 200 and body["code"] == 0 and body["data"]["user_id"] > 0, body
    status, body = http("POST", base + "/login", {"username": "cli_up_user", "password": "secret-pw"})
    assert status == 200 and body["data"]["token"], body

    out, _ = interrupt_and_wait(process, signal.SIGINT)
    assert f"http://127.0.0.1:{ports['meta']}" in out
    assert (data_dir / "pystacker.db").exists() and (data_dir / "jwt_secret").exists()


def test_up_keeps_users_and_tokens_across_a_restart(tmp_path: Path, env: dict[str, str],
                                                    started: list[subprocess.Popen[str]]) -> None:
    """The embedded secret lives in the data folder: a token issued before a restart still works."""
    ports = {name: free_port() for name in ("send", "meta", "registry", "gateway")}
    for name, port in ports.items():
        env[f"PYSTACKER_PORTS__{name.upper()}"] = str(port)
    base = f"http://127.0.0.1:{ports['meta']}"
    args = ["up", "--data-dir", str(tmp_path / "data")]

    first = start(args, tmp_path, env, started)
    wait_until_answering(base + "/ping", first, time.monotonic() + STARTUP_DEADLINE)
    assert http("POST", base + "/register", {"username": "restart_user", "password": "secret-pw"})[0] == 200
    token = http("POST", base + "/login", {"username": "restart_user", "password": "secret-pw"})[1]["data"]["token"]
    interrupt_and_wait(first)

    second = start(args, tmp_path, env, started)
    wait_until_answering(base + "/ping", second, time.monotonic() + STARTUP_DEADLINE)
    request = urllib.request.Request(base + "/api/user/profile", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        profile = json.loads(response.read())
    assert profile["data"]["username"] == "restart_user"
    interrupt_and_wait(second)


def test_up_command_line_data_dir_beats_the_environment(tmp_path: Path, env: dict[str, str],
                                                        started: list[subprocess.Popen[str]]) -> None:
    ports = {name: free_port() for name in ("send", "meta", "registry", "gateway")}
    for name, port in ports.items():
        env[f"PYSTACKER_PORTS__{name.upper()}"] = str(port)
    env["PYSTACKER_DATA_DIR"] = str(tmp_path / "from-env")
    process = start(["up", "--data-dir", str(tmp_path / "from-flag")], tmp_path, env, started)
    wait_until_answering(f"http://127.0.0.1:{ports['meta']}/ping", process, time.monotonic() + STARTUP_DEADLINE)
    interrupt_and_wait(process)
    assert (tmp_path / "from-flag" / "pystacker.db").exists()
    assert not (tmp_path / "from-env").exists()


def test_up_on_a_busy_port_fails_in_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {name: free_port() for name in ("send", "registry", "gateway")}
        ports["meta"] = busy.getsockname()[1]
        for name, port in ports.items():
            env[f"PYSTACKER_PORTS__{name.upper()}"] = str(port)
        result = run(["up", "--data-dir", str(tmp_path / "data")], tmp_path, env)
    # Progress lines may come first (the database was opened); the error itself is one line, last.
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pystacker: cannot start: "), last
    assert f"127.0.0.1:{ports['meta']}" in last and "in use" in last, last
