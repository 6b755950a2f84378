"""The compose stack end to end, with podman: the image's services from deploy/compose/compose.yaml,
their commands and variables unchanged, on free published ports; a user registers, logs in, sends
and receives through the published ports; then the gateway container holding the receiver is
stopped and the receiver moves to the other gateway and still gets messages.

Opt-in (it builds images and starts a dozen containers): `scripts/compose-e2e` prepares the images
and runs this file with PYSTACKER_COMPOSE_E2E=1. Redis and MariaDB come from a local image of
Debian's packages (tests/compose_e2e/) since no registry is reachable here; Prometheus and Grafana
are not started (their images cannot be pulled).

podman 4.3 (Debian 12) cannot wait for `service_healthy` (podman-compose ignores the condition and
says so) and its `--requires` chains break on the exited one-shot db-upgrade container, so the stack
is brought up in the order its depends_on gives, one stage at a time with `--no-deps`, waiting on
each stage's condition here. Without systemd, podman runs no periodic healthchecks: a pump runs
`podman healthcheck run` for the project's containers, which is what the systemd timers would do.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pystacker.client import PyStackerClient

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"
OVERRIDE = REPO / "tests" / "compose_e2e" / "compose.e2e.yaml"
PODMAN_COMPOSE = str(Path(sys.executable).parent / "podman-compose")
PYSTACKER_SERVICES = ["meta", "registry", "send-1", "send-2", "gateway-1", "gateway-2", "flusher", "msgflusher"]
PORTS = ["META_PORT", "REGISTRY_PORT", "SEND_1_PORT", "SEND_2_PORT", "GATEWAY_1_PORT", "GATEWAY_2_PORT",
         "PROMETHEUS_PORT", "GRAFANA_PORT"]
STAGE_DEADLINE = 180.0  # seconds per stage; generous for a loaded machine
MOVE_DEADLINE = 60.0

pytestmark = pytest.mark.skipif(
    os.environ.get("PYSTACKER_COMPOSE_E2E") != "1",
    reason="opt-in: scripts/compose-e2e builds the images and runs it (podman; a few minutes); "
           "see docs/deployment.md, 'What is tested'")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, condition, deadline: float) -> None:  # type: ignore[no-untyped-def]
    """Poll `condition` until it holds; fail naming `what` at the deadline."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {deadline:.0f} s")
        time.sleep(0.25)  # the polling interval; the loop waits for the condition


class HealthPump:
    """Runs each container's healthcheck every second, in place of podman's systemd timers."""

    def __init__(self, project: str) -> None:
        self.project = project
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-pump", daemon=True)

    def __enter__(self) -> HealthPump:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in containers(self.project, running=True):
                subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, timeout=30)
            self._stop.wait(1.0)


def containers(project: str, *, running: bool = False, health: str | None = None) -> list[str]:
    args = ["podman", "ps", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"]
    if not running:
        args.insert(2, "-a")
    if health:
        args += ["--filter", f"health={health}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.split()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Stack:
    project: str
    env: dict[str, str]

    def url(self, port_variable: str) -> str:
        return f"http://127.0.0.1:{self.env[port_variable]}"

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"  # podman-compose's naming


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    project = f"pystacker-e2e-{secrets.token_hex(4)}"
    env = {
        "PYSTACKER_JWT_SECRET": secrets.token_urlsafe(32), "PYSTACKER_INTERNAL_TOKEN": secrets.token_urlsafe(32),
        "MARIADB_ROOT_PASSWORD": secrets.token_hex(12), "MARIADB_PASSWORD": secrets.token_hex(12),
        "REDIS_PASSWORD": secrets.token_hex(12), "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(12),
        "PYSTACKER_IMAGE": os.environ["PYSTACKER_E2E_IMAGE"],
        "PYSTACKER_E2E_STORES_IMAGE": os.environ["PYSTACKER_E2E_STORES_IMAGE"],
        **{name: str(free_port()) for name in PORTS},
    }
    env_file = tmp_path_factory.mktemp("compose-e2e") / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    base = [PODMAN_COMPOSE, "-p", project, "-f", str(COMPOSE), "-f", str(OVERRIDE), "--env-file", str(env_file)]

    def compose(*args: str) -> None:
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=STAGE_DEADLINE)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])

    stack = Stack(project, env)
    with HealthPump(project):
        try:
            compose("up", "-d", "--no-deps", "redis", "mariadb")
            wait_for("redis and mariadb healthy",
                     lambda: len(containers(project, health="healthy")) == 2, STAGE_DEADLINE)
            compose("up", "-d", "--no-deps", "db-upgrade")
            exit_code = subprocess.run(["podman", "wait", stack.container("db-upgrade")], capture_output=True,
                                       text=True, timeout=STAGE_DEADLINE).stdout.strip()
            assert exit_code == "0", subprocess.run(["podman", "logs", stack.container("db-upgrade")],
                                                    capture_output=True, text=True).stderr
            compose("up", "-d", "--no-deps", *PYSTACKER_SERVICES)
            for port in ("META_PORT", "REGISTRY_PORT", "SEND_1_PORT", "SEND_2_PORT", "GATEWAY_1_PORT",
                         "GATEWAY_2_PORT"):
                wait_for(f"{port} /ready", lambda port=port: answers(stack.url(port) + "/ready"), STAGE_DEADLINE)
            # The image's HEALTHCHECK, run by the pump, turns every PyStacker container healthy.
            wait_for("every PyStacker container healthy", lambda: {stack.container(s) for s in PYSTACKER_SERVICES}
                     <= set(containers(project, health="healthy")), STAGE_DEADLINE)
            yield stack
        finally:
            logs = REPO / "logs" / "compose-e2e"
            logs.mkdir(parents=True, exist_ok=True)
            for name in containers(project):
                result = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=60)
                (logs / f"{name}.log").write_text(result.stdout + result.stderr)
            subprocess.run([*base, "down", "-v", "-t", "30"], capture_output=True, timeout=STAGE_DEADLINE)


async def test_register_login_send_receive_then_a_stopped_gateways_users_move(stack: Stack) -> None:
    urls = (stack.url("META_PORT"), stack.url("SEND_1_PORT"), stack.url("REGISTRY_PORT"))
    async with PyStackerClient(*urls) as alice, PyStackerClient(*urls) as bob:
        suffix = secrets.token_hex(3)
        await alice.register(f"alice_{suffix}", "alice-password")
        bob_id = await bob.register(f"bob_{suffix}", "bob-password")
        await alice.login(f"alice_{suffix}", "alice-password")
        await bob.login(f"bob_{suffix}", "bob-password")
        room = await alice.create_room(f"e2e-{suffix}", [bob_id], is_group=False)

        session = await bob.connect()
        try:
            first_gateway = session.gateway.gateway_id if session.gateway else ""
            # The gateway's announced address is the published port: the client reached it.
            assert first_gateway in ("gateway-pystacker-200", "gateway-pystacker-201"), first_gateway

            await alice.send(room, "hello through the published ports")
            message = await session.receive(timeout=30)
            assert getattr(message, "text", None) == "hello through the published ports", message

            service = "gateway-1" if first_gateway.endswith("-200") else "gateway-2"
            # Not subprocess.run: the session must keep answering (the close handshake, pings) meanwhile.
            stop = await asyncio.create_subprocess_exec("podman", "stop", "-t", "30", stack.container(service),
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
            _, stop_errors = await asyncio.wait_for(stop.communicate(), 60)
            assert stop.returncode == 0, stop_errors
            exit_code = subprocess.run(["podman", "inspect", stack.container(service), "--format",
                                        "{{.State.ExitCode}}"], capture_output=True, text=True).stdout.strip()
            assert exit_code == "0", f"{service} did not stop cleanly on SIGTERM: exit {exit_code}"

            end = time.monotonic() + MOVE_DEADLINE
            while not (session.state == "connected" and session.gateway is not None
                       and session.gateway.gateway_id != first_gateway):
                assert time.monotonic() < end, f"bob did not move off {first_gateway}: {session.state}"
                await asyncio.sleep(0.1)  # the polling interval; the loop waits for the move
            assert session.gateway.gateway_id in ("gateway-pystacker-200", "gateway-pystacker-201")

            await alice.send(room, "after the move")
            message = await session.receive(timeout=30)
            assert getattr(message, "text", None) == "after the move", message
        finally:
            await session.close()
