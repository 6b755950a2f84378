"""Redis for the engine tests: the shared server on 6379, and a throwaway 3-master Redis Cluster.

The cluster runs from a temporary folder (no persistence) on free ports (`free_cluster_ports`; 7101-7103
by default when constructed by hand); it is started once per test session and its processes are stopped
by PID at the end. Free ports let two test sessions on one machine each have their own cluster.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
CLUSTER_PORTS = (7101, 7102, 7103)
START_DEADLINE = 30.0  # seconds for the nodes to answer, and again for the cluster to agree
POLL_INTERVAL = 0.05


def free_cluster_ports(count: int = 3) -> tuple[int, ...]:
    """Ports that are free and whose cluster bus ports (port + 10000) are free too."""
    chosen: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(chosen) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((REDIS_HOST, 0))
            held.append(sock)
            port = sock.getsockname()[1]
            if port + 10000 > 65535:
                continue
            bus = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                bus.bind((REDIS_HOST, port + 10000))
            except OSError:
                continue
            finally:
                bus.close()
            chosen.append(port)
        return tuple(chosen)
    finally:
        for sock in held:
            sock.close()


def _poll(condition: Callable[[], bool], what: str, deadline: float = START_DEADLINE) -> None:
    """Wait until condition() holds; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise RuntimeError(f"{what}: not within {deadline} s")
        time.sleep(POLL_INTERVAL)


def _answers(port: int) -> bool:
    try:
        with redis.Redis(host=REDIS_HOST, port=port, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


def _cluster_ok(port: int) -> bool:
    with redis.Redis(host=REDIS_HOST, port=port) as client:
        return client.cluster("info").get("cluster_state") == "ok"


@dataclass
class LocalCluster:
    folder: Path
    ports: tuple[int, ...] = CLUSTER_PORTS
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return REDIS_HOST

    @property
    def port(self) -> int:
        """The startup node."""
        return self.ports[0]

    def start(self) -> None:
        busy = [port for port in self.ports if _answers(port)]
        if busy:
            raise RuntimeError(f"ports {busy} already serve Redis: stop that server (a previous test run?)")
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed for the Redis Cluster tests")
        try:
            for port in self.ports:
                log = (self.folder / f"redis-{port}.log").open("wb")
                self.processes.append(subprocess.Popen(
                    [server, "--port", str(port), "--bind", REDIS_HOST, "--cluster-enabled", "yes",
                     "--cluster-config-file", str(self.folder / f"nodes-{port}.conf"), "--dir", str(self.folder),
                     "--save", "", "--appendonly", "no", "--daemonize", "no"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.folder))
                log.close()  # the child has its own descriptor
            for port in self.ports:
                _poll(lambda port=port: _answers(port), f"Redis node {port} answering")
            subprocess.run([cli, "--cluster", "create", *(f"{REDIS_HOST}:{port}" for port in self.ports),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=START_DEADLINE)
            for port in self.ports:
                _poll(lambda port=port: _cluster_ok(port), f"cluster_state:ok on node {port}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.processes.clear()
