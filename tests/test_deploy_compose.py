"""deploy/compose/compose.yaml: valid for the compose specification and for podman-compose, and each
PyStacker container runs a real `pystacker` command with a config that loads and passes the checks
the service makes at start, on GoStacker's ports, scraped by Prometheus under the dashboard's jobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pystacker.config import check_internal_token, check_jwt_secret, load_config
from pystacker.services import SERVICES
from tests.deployment_files import DEPLOY, REPO, command_is_real, service_of

COMPOSE = DEPLOY / "compose" / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "compose" / ".env.example"
PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"
GOSTACKER_PORTS = {"send": 8081, "meta": 8082, "registry": 8083, "gateway": 8084}


def compose_spec_schema() -> dict[str, Any]:
    # The compose-spec schema as check-jsonschema vendors it (offline; `--builtin-schema vendor.compose-spec`).
    import check_jsonschema

    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stack as podman-compose resolves it with the committed .env.example: anchors merged,
    variables substituted (a missing required one would fail here)."""
    if shutil.which("podman") is None:
        pytest.fail("podman-compose needs the podman binary (apt-get install podman; .ci/run installs it)")
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    shutil.copy(ENV_EXAMPLE, env_file)
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PYSTACKER_", "MARIADB_"))}
    result = subprocess.run([str(PODMAN_COMPOSE), "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
                            capture_output=True, text=True, timeout=60, env=environ)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


def pystacker_services(rendered: dict[str, Any]) -> dict[str, dict[str, Any]]:
    image = rendered["services"]["meta"]["image"]
    return {name: spec for name, spec in rendered["services"].items() if spec.get("image") == image}


def container_port(spec: dict[str, Any]) -> int:
    env = spec["environment"]
    return int(env.get("PYSTACKER_PORT") or env["PYSTACKER_METRICS_PORT"])


def published_and_target(port: str | dict[str, Any]) -> tuple[int, int]:
    if isinstance(port, dict):
        return int(port["published"]), int(port["target"])
    *_, published, target = port.split(":")  # [host_ip:]published:target
    return int(published), int(target)


def test_the_file_and_its_rendering_follow_the_compose_specification(rendered: dict[str, Any]) -> None:
    schema = compose_spec_schema()
    jsonschema.validate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), schema)
    jsonschema.validate(rendered, schema)


def test_a_required_secret_missing_from_env_stops_compose(tmp_path: Path) -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman-compose needs the podman binary (apt-get install podman; .ci/run installs it)")
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(line for line in ENV_EXAMPLE.read_text().splitlines()
                                  if not line.startswith("PYSTACKER_JWT_SECRET=")) + "\n")
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("PYSTACKER_")}
    result = subprocess.run([str(PODMAN_COMPOSE), "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
                            capture_output=True, text=True, timeout=60, env=environ)
    assert result.returncode != 0
    assert "PYSTACKER_JWT_SECRET" in result.stdout + result.stderr


def test_the_stack_has_every_service_the_issue_lists(rendered: dict[str, Any]) -> None:
    by_service: dict[str, list[str]] = {}
    for name, spec in pystacker_services(rendered).items():
        by_service.setdefault(service_of(spec["command"]), []).append(name)
    assert {key: len(names) for key, names in by_service.items()} == {
        "db upgrade": 1, "meta": 1, "registry": 1, "send": 2, "gateway": 2, "flusher": 1, "msgflusher": 1}
    assert {"redis", "mariadb", "prometheus", "grafana"} <= set(rendered["services"])


def test_every_container_command_is_a_real_pystacker_command(rendered: dict[str, Any]) -> None:
    for name, spec in pystacker_services(rendered).items():
        assert command_is_real(spec["command"]) is None, (name, command_is_real(spec["command"]))


@pytest.mark.parametrize("command", [["gateway", "--confg", "x"], ["serve", "gateway"]])
def test_the_command_check_catches_a_wrong_command(command: list[str]) -> None:
    assert command_is_real(command) is not None


def test_each_service_config_loads_and_passes_the_start_checks(rendered: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    machine_ids: dict[int, str] = {}
    for name, spec in pystacker_services(rendered).items():
        for variable in [v for v in os.environ if v.upper().startswith("PYSTACKER_")]:
            monkeypatch.delenv(variable)
        for variable, value in spec["environment"].items():
            monkeypatch.setenv(variable, str(value))
        config = load_config(DEPLOY / "image" / "pystacker.yaml")  # the file the image ships
        check_jwt_secret(config, embedded=False, source=name)
        check_internal_token(config, source=name)
        assert config.engine == "redis" and config.redis.host == "redis" and config.mysql is not None
        assert config.database_url().startswith("mysql+asyncmy://pystacker:")
        if service_of(spec["command"]) != "db upgrade":
            # Snowflake ids (messages) and instance ids need one machine_id per process.
            assert config.machine_id not in machine_ids, (name, machine_ids)
            machine_ids[config.machine_id] = name


def test_services_listen_on_the_port_they_publish_gostackers_for_the_first(rendered: dict[str, Any]) -> None:
    first: dict[str, int] = {}
    for name, spec in pystacker_services(rendered).items():
        service = service_of(spec["command"])
        if service not in GOSTACKER_PORTS:
            continue
        port = container_port(spec)
        published = [published_and_target(p) for p in spec["ports"]]
        # Send and gateways announce their own port: only when it is the published one can clients use it.
        assert published == [(port, port)], (name, published)
        first.setdefault(service, min(port, first.get(service, port)))
        first[service] = min(first[service], port)
    assert first == GOSTACKER_PORTS
    assert {name: spec.default_port for name, spec in SERVICES.items() if spec.default_port} == GOSTACKER_PORTS


def test_services_wait_for_healthy_stores_and_the_schema(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    assert "healthcheck" in services["redis"] and "healthcheck" in services["mariadb"]
    assert services["db-upgrade"]["depends_on"]["mariadb"]["condition"] == "service_healthy"
    for name, spec in pystacker_services(rendered).items():
        if name == "db-upgrade":
            continue
        assert spec["depends_on"]["db-upgrade"]["condition"] == "service_completed_successfully", name
        assert spec["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert spec["depends_on"]["mariadb"]["condition"] == "service_healthy", name


def test_redis_persists_and_never_evicts(rendered: dict[str, Any]) -> None:
    command = rendered["services"]["redis"]["command"]
    words = command.split() if isinstance(command, str) else command
    assert words[words.index("--appendonly") + 1] == "yes"
    assert words[words.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(volume.endswith(":/data") or volume.get("target") == "/data"  # type: ignore[union-attr]
               for volume in rendered["services"]["redis"]["volumes"])


def test_prometheus_scrapes_every_service_under_the_dashboards_job_names(rendered: dict[str, Any]) -> None:
    local = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    stack = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert [job["job_name"] for job in stack["scrape_configs"]] == [job["job_name"] for job in local["scrape_configs"]]
    scraped = {target for job in stack["scrape_configs"] for group in job["static_configs"]
               for target in group["targets"]}
    expected = {f"{name}:{container_port(spec)}" for name, spec in pystacker_services(rendered).items()
                if name != "db-upgrade"}
    assert scraped == expected
    jobs = {job["job_name"]: job for job in stack["scrape_configs"]}
    for name, spec in pystacker_services(rendered).items():
        if name != "db-upgrade":
            service = service_of(spec["command"])
            assert f"{name}:{container_port(spec)}" in jobs[f"pystacker-{service}"]["static_configs"][0]["targets"]


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus(rendered: dict[str, Any]) -> None:
    volumes = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in
               rendered["services"]["grafana"]["volumes"]]
    dashboard = next(v for v in volumes if v.split(":")[1].endswith(".json"))
    assert (COMPOSE.parent / dashboard.split(":")[0]).resolve() == (DEPLOY / "grafana-dashboard.json").resolve()
    provisioning = DEPLOY / "compose" / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "pystacker.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == str(Path(dashboard.split(":")[1]).parent)
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_env_example_is_committed_and_env_is_not() -> None:
    tracked = subprocess.run(["git", "ls-files", "deploy/compose"], cwd=REPO, capture_output=True, text=True).stdout
    assert "deploy/compose/.env.example" in tracked.split()
    assert "deploy/compose/.env" not in tracked.split()
    ignored = subprocess.run(["git", "check-ignore", "deploy/compose/.env"], cwd=REPO, capture_output=True, text=True)
    assert ignored.returncode == 0, "deploy/compose/.env must be ignored by git"

