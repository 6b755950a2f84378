"""deploy/k8s: both overlays render with `kubectl kustomize`, every object validates against the
Kubernetes schemas (offline, kubernetes-validate), probes point at routes the services really serve,
commands are real `pystacker` commands, and secrets are referenced as files, never inlined."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pystacker.config import check_internal_token, check_jwt_secret, load_config
from tests.deployment_files import DEPLOY, command_is_real, service_of

K8S = DEPLOY / "k8s"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests aim at (autoscaling/v2, policy/v1)
SECRET_MOUNT = "/run/secrets/pystacker"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
# Custom resources: no schema ships with Kubernetes; test_the_service_monitor checks the one we use.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def render(overlay: str) -> list[dict[str, Any]]:
    if not Path(KUBECTL).exists():
        pytest.fail(f"kubectl not found at {KUBECTL}: the manifests cannot be rendered (install kubectl)")
    result = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=["dev", "prod"])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def pystacker_args(container: dict[str, Any]) -> list[str]:
    """The `pystacker` arguments a container runs: its args after the image's entrypoint, or the
    words after `exec pystacker` in a shell wrapper (which sets machine_id from the pod ordinal)."""
    if container.get("command", [None])[0] != "/bin/sh":
        return list(container["args"])
    words = shlex.split(" ".join(container["args"]))
    return words[words.index("pystacker") + 1:]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_every_object_validates_against_the_kubernetes_schemas(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    validated = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises on any problem
        validated += 1
    assert validated >= 15


def test_the_validator_rejects_a_broken_object(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    gateway = yaml.safe_load(yaml.safe_dump(named(overlay[1], "StatefulSet", "pystacker-gateway")))
    containers(gateway)[0]["readinessProbe"]["httpGet"]["port"] = {"not": "a port"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSION, strict=True)


def test_every_container_runs_a_real_pystacker_command(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    seen = set()
    for workload in workloads(overlay[1]):
        for container in containers(workload):
            args = pystacker_args(container)
            assert command_is_real(args) is None, (workload["metadata"]["name"], command_is_real(args))
            seen.add(service_of(args))
    assert seen == {"db upgrade", "meta", "registry", "send", "gateway", "flusher", "msgflusher"}


async def served_get_routes(tmp_path: Path) -> dict[str, set[str]]:
    """GET paths of each service's real route table: the HTTP services of an in-process system, and
    the observability app the flusher and msgflusher serve on metrics_port."""
    from pystacker.services import _metrics_only
    from tests.conftest import embedded_system

    def get_paths(app: Any) -> set[str]:
        return {route.resource.canonical for route in app.router.routes() if route.method in ("GET", "*")}

    async with embedded_system(tmp_path) as system:
        routes = {name: get_paths(app) for name, app in system.apps.items()}
        for worker in ("flusher", "msgflusher"):
            routes[worker] = get_paths(_metrics_only(system.runtime, worker))
    return routes


async def test_probes_point_at_routes_the_services_serve(overlay: tuple[str, list[dict[str, Any]]],
                                                         tmp_path: Path) -> None:
    routes = await served_get_routes(tmp_path)
    assert {"meta", "send", "registry", "gateway", "flusher", "msgflusher"} <= set(routes)
    probed = set()
    for workload in workloads(overlay[1]):
        if workload["kind"] == "Job":
            continue
        for container in containers(workload):
            service = service_of(pystacker_args(container))
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            listen = int(env.get("PYSTACKER_PORT") or env["PYSTACKER_METRICS_PORT"])
            for kind, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
                probe = container[kind]["httpGet"]
                assert probe["path"] == path, (service, kind)
                assert probe["path"] in routes[service], (service, probe["path"], sorted(routes[service]))
                assert ports[probe["port"]] == listen, (service, kind)  # the probe reaches the service's port
            probed.add(service)
    assert probed == {"meta", "registry", "send", "gateway", "flusher", "msgflusher"}


def test_secrets_are_mounted_files_never_inlined(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    settings = named(objects, "ConfigMap", "pystacker-settings")["data"]
    secret_files = {key: value for key, value in settings.items() if key.endswith("_FILE")}
    assert {"PYSTACKER_JWT__SECRET_FILE", "PYSTACKER_INTERNAL__TOKEN_FILE", "PYSTACKER_MYSQL__PASSWORD_FILE",
            "PYSTACKER_REDIS__PASSWORD_FILE"} <= set(secret_files)
    for key, value in settings.items():
        if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN")):
            assert key.endswith("_FILE") and value.startswith(SECRET_MOUNT + "/"), key
    for workload in workloads(objects):
        spec = workload["spec"]["template"]["spec"]
        assert {"name": "secrets", "secret": {"secretName": "pystacker-secrets"}} in spec["volumes"]
        for container in spec["containers"]:
            assert {"name": "secrets", "mountPath": SECRET_MOUNT, "readOnly": True} in container["volumeMounts"]
            for env in container.get("env", []):
                assert not any(word in env["name"] for word in ("PASSWORD", "SECRET", "TOKEN")), env
    secrets = [o for o in objects if o["kind"] == "Secret"]
    if name == "prod":
        assert secrets == []  # the operator's Secret is referenced, not shipped
    else:
        keys = {Path(path).name for path in secret_files.values()}
        assert [s["metadata"]["name"] for s in secrets] == ["pystacker-secrets"]
        assert set(secrets[0]["data"]) == keys


def test_the_dev_config_loads_from_the_configmap_and_the_secret_files(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    objects = render("dev")
    secret = named(objects, "Secret", "pystacker-secrets")
    for key, value in secret["data"].items():
        (tmp_path / key).write_bytes(base64.b64decode(value))
    for variable in [v for v in os.environ if v.upper().startswith("PYSTACKER_")]:
        monkeypatch.delenv(variable)
    for key, value in named(objects, "ConfigMap", "pystacker-settings")["data"].items():
        monkeypatch.setenv(key, value.replace(SECRET_MOUNT, str(tmp_path)))
    config = load_config(DEPLOY / "image" / "pystacker.yaml")
    check_jwt_secret(config, embedded=False)
    check_internal_token(config)
    assert config.mysql is not None and config.mysql.password.get_secret_value() == "dev-only-mysql-password"


def test_each_send_and_gateway_pod_gets_its_own_machine_id(tmp_path: Path) -> None:
    """The shell wrapper, run for real with a stand-in `pystacker` that prints what it was given."""
    fake = tmp_path / "pystacker"
    fake.write_text('#!/bin/sh\necho "$PYSTACKER_MACHINE_ID $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    objects = render("prod")
    ids: dict[int, str] = {}
    for name in ("pystacker-send", "pystacker-gateway"):
        container = containers(named(objects, "StatefulSet", name))[0]
        script = " ".join(container["args"]).replace("$$", "$")  # Kubernetes turns $$ into $
        for ordinal in range(3):
            pod = f"{name}-{ordinal}"
            out = subprocess.run([container["command"][0], container["command"][1], script],
                                 env={"PATH": f"{tmp_path}:/usr/bin:/bin", "POD_NAME": pod},
                                 capture_output=True, text=True, timeout=10, check=True).stdout.split()
            machine_id = int(out[0])
            assert out[1:] == pystacker_args(container)
            assert machine_id not in ids and 0 <= machine_id <= 1023, (pod, machine_id, ids)
            ids[machine_id] = pod
    assert set(ids) == {100, 101, 102, 200, 201, 202}


def test_gateways_announce_their_pod_address_and_drain_before_stopping(
        overlay: tuple[str, list[dict[str, Any]]]) -> None:
    gateway = named(overlay[1], "StatefulSet", "pystacker-gateway")
    container = containers(gateway)[0]
    env = {e["name"]: e for e in container["env"]}
    assert env["PYSTACKER_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    # The gateway closes its sockets at SIGTERM, after preStop: the grace period must cover both.
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= pre_stop + 10


def test_dev_runs_one_replica_of_everything() -> None:
    for workload in workloads(render("dev")):
        if workload["kind"] != "Job":
            assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]


def test_prod_budgets_scales_and_requests() -> None:
    objects = render("prod")
    gateway_labels = named(objects, "StatefulSet", "pystacker-gateway")["spec"]["template"]["metadata"]["labels"]
    budget = named(objects, "PodDisruptionBudget", "pystacker-gateway")
    assert budget["spec"]["selector"]["matchLabels"].items() <= gateway_labels.items()
    for name in ("pystacker-send", "pystacker-gateway"):
        hpa = named(objects, "HorizontalPodAutoscaler", name)
        target = hpa["spec"]["scaleTargetRef"]
        assert named(objects, target["kind"], target["name"])  # it scales an object that exists
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert hpa["spec"]["maxReplicas"] <= 100  # machine_id = base + ordinal stays in its hundred
    for workload in workloads(objects):
        for container in containers(workload):
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), workload["metadata"]["name"]


def test_the_service_monitor_scrapes_each_service_once_under_the_dashboards_jobs() -> None:
    objects = render("prod")
    monitor = named(objects, "ServiceMonitor", "pystacker")
    expression = monitor["spec"]["selector"]["matchExpressions"][0]
    assert expression["key"] == monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    selected = [s for s in objects if s["kind"] == "Service"
                and s["metadata"].get("labels", {}).get(expression["key"]) in expression["values"]]
    jobs = [s["metadata"]["labels"][expression["key"]] for s in selected]
    local_jobs = [job["job_name"] for job in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]]
    assert sorted(jobs) == sorted(local_jobs)  # one Service per job: no pod is scraped twice
    port = monitor["spec"]["endpoints"][0]["port"]
    assert all(port in {p["name"] for p in s["spec"]["ports"]} for s in selected)
