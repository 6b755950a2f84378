"""`pystacker cluster` survives the faults it exists to show (issue 12): a gateway and a send
instance killed with SIGKILL come back on their ports, the cluster says so, and it keeps serving;
Ctrl-C (SIGINT) still stops everything.

The cluster runs as the real command, a process of its own, with the example configs of `config/`,
its ports moved by `--port-offset` to a free range, and the environment of a throwaway deployment (its
own database, Redis key prefix and secrets). The PIDs killed are the ones the cluster printed for its
children; nothing else is signalled.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from pystacker.cluster import WORKER_METRICS_PORTS, Deployment, Member, default_port
from pystacker.supervisor import RestartPolicy, Supervisor
from pystacker.web.auth import TokenService
from pystacker_tools.chaos.launcher import LOAD_GENERATOR_LIMITS, deployment_env, new_key_prefix, redis_env
from tests.client import Http, User
from tests.ws import connect, make_room, poll, send_http

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["registry", "meta", "send-1", "send-2", "gateway-1", "gateway-2"]
START_DEADLINE = 120.0  # migrations, then six processes importing and answering /ready
RESTART_DEADLINE = 30.0


def free_offset() -> int:
    """A port offset under which every port of a 2+2 cluster can be bound now."""
    ports = [default_port(label) for label in LABELS] + list(WORKER_METRICS_PORTS.values())
    for _ in range(100):
        offset = random.randrange(20000, 50000)
        try:
            sockets = []
            for port in ports:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return offset
    raise AssertionError("no free port range for the cluster")


@dataclass
class RunningCluster:
    process: subprocess.Popen[bytes]
    output: Path
    offset: int
    tokens: TokenService

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def url(self, label: str) -> str:
        return f"http://127.0.0.1:{default_port(label) + self.offset}"

    def pids(self) -> dict[str, int]:
        """The PIDs of the table the cluster printed when it was up."""
        return {m[1]: int(m[2]) for m in re.finditer(r"^\s+(\S+)\s+\S.*\bpid (\d+)$", self.text(), re.M)}

    async def said(self, pattern: str, timeout: float) -> re.Match[str]:
        def match() -> re.Match[str] | None:
            assert self.process.poll() is None, f"the cluster exited:\n{self.text()}"
            return re.search(pattern, self.text(), re.M)
        try:
            return await poll(match, f"the cluster saying {pattern!r}", timeout=timeout)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.text()}") from None


def stop_children(pids: list[int]) -> None:
    """SIGKILL the children the cluster printed, where a failed test left them behind."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def running(distributed_mariadb: str, tmp_path: Path) -> AsyncIterator[RunningCluster]:
    prefix = new_key_prefix("cr")
    jwt_secret = secrets.token_urlsafe(48)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           **deployment_env(database_url=distributed_mariadb, key_prefix=prefix, jwt_secret=jwt_secret,
                            internal_token=secrets.token_urlsafe(32), redis=redis_env("127.0.0.1", 6379),
                            gateway_ttl=6, send_ttl=6, user_route_ttl=30, extra=LOAD_GENERATOR_LIMITS)}
    offset = free_offset()
    output = tmp_path / "cluster.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pystacker", "cluster", "--config-dir", str(ROOT / "config"),
             "--log-dir", str(tmp_path / "logs"), "--port-offset", str(offset), "--gateways", "2", "--send", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    cluster = RunningCluster(process, output, offset, TokenService(jwt_secret, 7200))
    seen: set[int] = set()
    try:
        await cluster.said(r"Press Ctrl-C to stop", START_DEADLINE)
        seen.update(cluster.pids().values())
        yield cluster
    finally:
        seen.update(cluster.pids().values())
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stop_children(sorted(seen))
        redis = Redis(decode_responses=True)
        try:
            for pattern in (f"{prefix}*", f"{{{prefix}*"):
                async for key in redis.scan_iter(match=pattern, count=1000):
                    await redis.delete(key)
        finally:
            await redis.aclose()


async def test_killed_gateway_and_send_come_back_and_the_cluster_keeps_serving(running: RunningCluster) -> None:
    cluster = running
    pids = cluster.pids()
    assert set(pids) >= set(LABELS) | {"flusher", "msgflusher"}, cluster.text()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        meta = Http(cluster.url("meta"), session)
        users = []
        for name in ("alice", "bob"):
            username = f"{name}{secrets.token_hex(5)}"
            answer = await meta.post("/register", {"username": username, "password": "password-1"})
            assert answer.status == 200, answer
            users.append(User(answer.data["user_id"], username, "password-1",
                              cluster.tokens.issue(answer.data["user_id"], username)))
        alice, bob = users
        room = await make_room(meta, bob, [alice])
        reader = await connect(session, cluster.url("gateway-1"), alice)
        first = await send_http(Http(cluster.url("send-1"), session), bob, room, "before the kills")
        await reader.collect(1, room_id=room)

        os.kill(pids["gateway-1"], signal.SIGKILL)
        os.kill(pids["send-1"], signal.SIGKILL)
        # Sent while alice's gateway is down: it waits in the gateway's inbox and her cursor.
        during = await send_http(Http(cluster.url("send-2"), session), bob, room, "while gateway-1 is down")
        for label in ("gateway-1", "send-1"):
            await cluster.said(rf"{label} exited with code -9; restarting it in [\d.]+s", RESTART_DEADLINE)
            restarted = await cluster.said(rf"{label} restarted, pid (\d+)", RESTART_DEADLINE)
            assert int(restarted[1]) != pids[label] and alive(int(restarted[1]))
            await cluster.said(rf"{label} is ready again at {re.escape(cluster.url(label))}", RESTART_DEADLINE)

        # She catches up on the restarted gateway, and the restarted send instance serves again.
        after = await send_http(Http(cluster.url("send-1"), session), bob, room, "through the restarted send-1")
        reader = await connect(session, cluster.url("gateway-1"), alice)
        got = await reader.collect(3, room_id=room, timeout=20)
        assert [c["id"] for c in got] == [first["msgID"], during["msgID"], after["msgID"]]
        assert [c["seq"] for c in got] == [1, 2, 3]
        await reader.close()
    assert cluster.process.poll() is None, cluster.text()
    assert "stopping the cluster" not in cluster.text()

    # Ctrl-C stops the cluster and every child, the restarted ones included.
    children = cluster.pids() | {label: int(m[1]) for label in ("gateway-1", "send-1")
                                 for m in re.finditer(rf"{label} restarted, pid (\d+)", cluster.text())}
    cluster.process.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(cluster.process.wait, 30) == 0, cluster.text()
    assert [label for label, pid in children.items() if alive(pid)] == []


async def test_a_member_in_a_crash_loop_stops_the_cluster_with_the_reason(tmp_path: Path) -> None:
    """A child that dies at once every time (here: its config file does not exist) is restarted with
    a growing pause, then the supervisor gives up and names it."""
    broken = Member("gateway-1", "gateway", tmp_path / "missing.yaml", 0)
    deployment = Deployment([broken], log_dir=tmp_path / "logs", env={})
    lines: list[str] = []
    supervisor = Supervisor(deployment, RestartPolicy(first_delay=0.1, crash_loop_exits=2), say=lines.append)
    deployment.start()
    supervisor.started()
    try:
        problem = await asyncio.wait_for(supervisor.watch(asyncio.Event()), 60)
    finally:
        deployment.stop()
    assert problem is not None and problem.startswith("gateway-1 exited with code 2: 3 exits in a row"), problem
    assert [re.sub(r"pid \d+", "pid N", line) for line in lines] == [
        "gateway-1 exited with code 2; restarting it in 0.1s", "gateway-1 restarted, pid N",
        "gateway-1 exited with code 2; restarting it in 0.2s", "gateway-1 restarted, pid N"]
