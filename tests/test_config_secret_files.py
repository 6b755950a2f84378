"""Containers' ways of configuring: secrets in files named by `PYSTACKER_*_FILE` variables, and a
config made only of environment variables (the image's config file is empty), loaded for real."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest

from pystacker.config import ConfigError, check_internal_token, check_jwt_secret, load_config

REPO = Path(__file__).resolve().parent.parent
IMAGE_CONFIG = REPO / "deploy" / "image" / "pystacker.yaml"  # what the Dockerfile puts in /etc/pystacker
PYSTACKER = str(Path(sys.executable).parent / "pystacker")
JWT_SECRET = "a-jwt-secret-read-from-a-file-0123456789"
INTERNAL_TOKEN = "an-internal-token-read-from-a-file-0123"
DB_PASSWORD = "p@ss word/with:specials"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own PYSTACKER_* variables must not change what these tests see."""
    for name in list(os.environ):
        if name.upper().startswith("PYSTACKER_"):
            monkeypatch.delenv(name)


def secret_file(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(value + "\n", encoding="utf-8")  # as `echo value > file` writes it
    return path


def load_error(path: Path | None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "\n" not in text, text
    return text


def test_every_secret_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTACKER_JWT__SECRET_FILE", str(secret_file(tmp_path, "jwt", JWT_SECRET)))
    monkeypatch.setenv("PYSTACKER_INTERNAL__TOKEN_FILE", str(secret_file(tmp_path, "internal", INTERNAL_TOKEN)))
    monkeypatch.setenv("PYSTACKER_MYSQL__PASSWORD_FILE", str(secret_file(tmp_path, "mysql", DB_PASSWORD)))
    monkeypatch.setenv("PYSTACKER_REDIS__PASSWORD_FILE", str(secret_file(tmp_path, "redis", "redis-pw")))
    monkeypatch.setenv("PYSTACKER_MYSQL__HOST", "mariadb")
    config = load_config(None)
    # The trailing newline of the file is not part of the secret.
    assert config.jwt_secret() == JWT_SECRET
    assert config.internal.token.get_secret_value() == INTERNAL_TOKEN
    assert config.mysql is not None and config.mysql.host == "mariadb"
    assert config.mysql.password.get_secret_value() == DB_PASSWORD
    assert "p%40ss+word%2Fwith%3Aspecials@mariadb:3306" in config.database_url()
    assert config.redis.url() == "redis://:redis-pw@127.0.0.1:6379/0"
    check_jwt_secret(config, embedded=False)  # a file's secret passes the same checks
    check_internal_token(config)


def test_a_file_beats_the_yaml_file_like_a_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text("jwt:\n  secret: the-yaml-files-own-secret-value\n  expire_duration: 600\n")
    monkeypatch.setenv("PYSTACKER_JWT__SECRET_FILE", str(secret_file(tmp_path, "jwt", JWT_SECRET)))
    config = load_config(yaml_file)
    assert config.jwt_secret() == JWT_SECRET
    assert config.jwt.expire_duration == 600  # the rest of the section stays the file's


def test_a_database_url_file_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+asyncpg://pystacker:pw@postgres:5432/pystacker"
    monkeypatch.setenv("PYSTACKER_DATABASE__URL_FILE", str(secret_file(tmp_path, "url", url)))
    assert load_config(None).database_url() == url


def test_a_variable_and_its_file_twin_together_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTACKER_JWT__SECRET", "the-variables-secret-value-0123")
    monkeypatch.setenv("PYSTACKER_JWT__SECRET_FILE", str(secret_file(tmp_path, "jwt", JWT_SECRET)))
    error = load_error(None)
    assert "PYSTACKER_JWT__SECRET and PYSTACKER_JWT__SECRET_FILE are both set" in error
    assert JWT_SECRET not in error and "the-variables-secret-value" not in error


def test_a_missing_file_names_the_variable_and_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "jwt_secret"
    monkeypatch.setenv("PYSTACKER_JWT__SECRET_FILE", str(missing))
    error = load_error(None)
    assert "PYSTACKER_JWT__SECRET_FILE" in error and str(missing) in error and "No such file" in error


def test_a_bad_value_in_a_file_names_the_file_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTACKER_MYSQL__PORT_FILE", str(secret_file(tmp_path, "port", "not-a-port")))
    error = load_error(None)
    assert "mysql.port (from PYSTACKER_MYSQL__PORT_FILE)" in error


def test_a_short_secret_from_a_file_is_refused_without_echoing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTACKER_JWT__SECRET_FILE", str(secret_file(tmp_path, "jwt", "tiny-secret")))
    config = load_config(None)
    with pytest.raises(ConfigError) as caught:
        check_jwt_secret(config, embedded=False)
    assert "16 characters" in str(caught.value) and "tiny-secret" not in str(caught.value)


def test_the_image_config_file_with_only_environment_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's /etc/pystacker/pystacker.yaml adds nothing: the environment is the whole config."""
    monkeypatch.setenv("PYSTACKER_PORT", "8085")
    monkeypatch.setenv("PYSTACKER_MACHINE_ID", "201")
    monkeypatch.setenv("PYSTACKER_ADDRESS", "10.1.2.3")
    monkeypatch.setenv("PYSTACKER_REDIS__HOST", "redis")
    monkeypatch.setenv("PYSTACKER_DISPATCHER__MAX_CONNECTIONS", "20000")
    monkeypatch.setenv("PYSTACKER_JWT__SECRET_FILE", str(secret_file(tmp_path, "jwt", JWT_SECRET)))
    from_image_file = load_config(IMAGE_CONFIG)
    assert from_image_file == load_config(None)
    assert (from_image_file.port, from_image_file.machine_id, from_image_file.address) == (8085, 201, "10.1.2.3")
    assert from_image_file.redis.host == "redis" and from_image_file.dispatcher.max_connections == 20000
    assert from_image_file.jwt_secret() == JWT_SECRET


def test_a_service_runs_from_environment_variables_and_secret_files_alone(tmp_path: Path) -> None:
    """`pystacker db upgrade` and `pystacker meta` as a container runs them: the image's empty config
    file, settings in variables, secrets in files; then a user registers and logs in (the token is
    signed with the file's secret)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db_file = tmp_path / "env-only.db"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PYSTACKER_")}
    env.update({
        "PYSTACKER_ENGINE": "memory", "PYSTACKER_HOST": "127.0.0.1", "PYSTACKER_PORT": str(port),
        "PYSTACKER_DATABASE__URL_FILE": str(secret_file(tmp_path, "url", f"sqlite+aiosqlite:///{db_file}")),
        "PYSTACKER_JWT__SECRET_FILE": str(secret_file(tmp_path, "jwt", JWT_SECRET)),
        "PYSTACKER_INTERNAL__TOKEN_FILE": str(secret_file(tmp_path, "internal", INTERNAL_TOKEN)),
    })
    upgrade = subprocess.run([PYSTACKER, "db", "upgrade", "--config", str(IMAGE_CONFIG)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0 and "schema at revision" in upgrade.stdout, upgrade
    process = subprocess.Popen([PYSTACKER, "meta", "--config", str(IMAGE_CONFIG)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def post(path: str, body: dict[str, str]) -> dict[str, object]:
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                with urllib.request.urlopen(base + "/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{base}/ready did not answer within 60 s"
            time.sleep(0.05)  # the polling interval; the loop waits for the process
        credentials = {"username": "env_only_user", "password": "secret-pw"}
        assert post("/register", credentials)["code"] == 0
        token = post("/login", credentials)["data"]["token"]  # type: ignore[index]
        claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])  # fails unless signed with the file's
        assert claims
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, (out, err)
    assert JWT_SECRET not in out + err and INTERNAL_TOKEN not in out + err
