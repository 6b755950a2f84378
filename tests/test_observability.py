"""Observability: the counters on /metrics add up after a scripted exchange (tests/counters.py, shared
with the distributed deployment's test), the store metrics of SQL and Redis, the sliding-window monitor
never blocks and forgets old samples, /ready follows its dependencies (SQL and Redis), and every
documented metric exists.

The embedded system is shared by the whole session, so the exchange reads deltas of the counters.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from pystacker.logs import JSONFormatter
from pystacker.observability.monitor import Monitor, MonitorCollector, Monitors
from pystacker.runtime import Runtime
from pystacker.web.health import install_health
from pystacker.web.server import Listener, Servers, bind_socket, new_app
from tests.client import User
from tests.conftest import make_config
from tests.counters import Samples, check_counters_add_up, value
from tests.counters import scrape as scrape_url
from tests.deployment import free_ports
from tests.ws import Api, Client, make_room, open_api, poll, send_http

DOC = Path(__file__).resolve().parents[1] / "docs" / "observability.md"


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


async def scrape(api: Api, service: str = "gateway") -> Samples:
    """Every sample on a service's /metrics (the embedded services share one registry)."""
    return await scrape_url(api.session, api.system.urls[service])


@dataclass
class EmbeddedExchange:
    """The embedded system as tests/counters.py's check drives it: one process, one gateway."""

    api: Api
    redis_engine: bool = False

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.api.session

    @property
    def metrics_urls(self) -> list[str]:
        return [self.api.system.urls["gateway"]]  # one registry for all four services: read it once

    async def users(self, count: int, prefix: str) -> list[User]:
        return await self.api.users(count, prefix)

    async def make_room(self, owner: User, members: list[User]) -> int:
        return await make_room(self.api.meta, owner, members)

    async def connect(self, index: int, user: User) -> tuple[Client, str]:
        return await self.api.connect(user), self.api.gateway_service.gateway_id

    async def send_http(self, index: int, user: User, room_id: int, body: str) -> None:
        await send_http(self.api.send, user, room_id, body)


async def test_counters_add_up_after_an_exchange(api: Api) -> None:
    await check_counters_add_up(EmbeddedExchange(api))
    # the gauge is the gateway's own count of its connections (polled: a closing socket leaves the
    # gauge just before it leaves the gateway's table)
    gateway = api.gateway_service.gateway_id

    async def gauge_is_the_table() -> bool:
        samples = await scrape(api)
        return value(samples, "pystacker_ws_connections", gateway=gateway) == api.gateway_service.connection_count

    await poll(gauge_is_the_table, "the connections gauge equal to the gateway's connections")


async def test_every_service_serves_metrics_and_debug_stats(api: Api) -> None:
    for service, url in api.system.urls.items():
        async with api.session.get(url + "/debug/stats") as response:
            assert response.status == 200, service
            body = await response.json()
        assert {"sql", "send", "push_ws"} <= set(body["monitors"]), body
        assert set(body["monitors"]["sql"]) == {"avg_time_ms", "success_rate", "count"}
        samples = await scrape(api, service)
        assert value(samples, "process_cpu_seconds_total") > 0  # the default process collector
        # the /debug/stats request just made was counted under its canonical route
        assert value(samples, "pystacker_http_requests_total", service=service, route="/debug/stats",
                     method="GET", status="200") >= 1


async def test_unknown_paths_share_one_series(api: Api) -> None:
    for junk in ("/no/such/1", "/no/such/2"):
        assert (await api.meta.get(junk)).status == 404
    samples = await scrape(api, "meta")
    assert value(samples, "pystacker_http_requests_total", service="meta", route="(unmatched)",
                 method="GET", status="404") >= 2
    assert not any("/no/such" in dict(labels).get("route", "") for _, labels in samples)


async def test_one_grep_of_the_msg_id_follows_a_message(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """At debug level, the send path logs the message id at accept, fan-out, the gateway's inbox and
    the socket write; the JSON log line carries it as `msg_id`."""
    caplog.set_level(logging.DEBUG, logger="pystacker")
    users = await api.users(2, "grep")
    room_id = await make_room(api.meta, users[0], users[1:])
    receiver = await api.connect(users[1])
    msg_id = (await send_http(api.send, users[0], room_id, "follow me"))["msgID"]
    await receiver.collect(1, room_id=room_id)

    def lines() -> dict[str, str] | None:
        found = {r.message: r.name for r in caplog.records if getattr(r, "msg_id", None) == msg_id}
        return found if {"accepted", "fan-out", "inbox entry", "written"} <= set(found) else None

    found = await poll(lines, f"the log lines of message {msg_id}")
    assert set(found.values()) >= {"pystacker.send", "pystacker.send.fanout", "pystacker.gateway",
                                   "pystacker.gateway.connection"}, found
    written = next(r for r in caplog.records if r.message == "written" and getattr(r, "msg_id", None) == msg_id)
    assert orjson.loads(JSONFormatter().format(written))["msg_id"] == msg_id
    await receiver.close()


# -- the monitor ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_monitor_keeps_answering_after_many_operations() -> None:
    monitor = Monitor("sql", capacity=1000)
    for i in range(100_000):
        monitor.record(0.002, ok=i % 4 != 0)
    stats = monitor.stats()
    assert stats.count == 1000  # the ring buffer keeps the newest `capacity` samples
    assert stats.avg_time_ms == pytest.approx(2.0)
    assert stats.success_rate == pytest.approx(0.75)
    monitor.record(0.004)  # and it still records
    assert monitor.stats().count == 1000


def test_monitor_drops_samples_older_than_its_window() -> None:
    clock = FakeClock()
    monitor = Monitor("send", window=60.0, clock=clock)
    monitor.record(0.010, ok=False)
    clock.now += 30
    monitor.record(0.030, ok=True)
    stats = monitor.stats()
    assert (stats.count, stats.avg_time_ms, stats.success_rate) == (2, pytest.approx(20.0), 0.5)
    clock.now += 31  # the first sample is 61 s old, the second 31 s
    stats = monitor.stats()
    assert (stats.count, stats.avg_time_ms, stats.success_rate) == (1, pytest.approx(30.0), 1.0)
    clock.now += 60
    assert monitor.stats().count == 0 and monitor.stats().avg_time_ms == 0.0


def test_monitor_counts_client_errors_as_successes() -> None:
    class Forbidden(Exception):
        status = 403

    monitor = Monitor("send")
    for exc in (Forbidden(), RuntimeError("store down")):
        with pytest.raises(type(exc)), monitor.track():
            raise exc
    with monitor.track():
        pass
    assert monitor.stats().count == 3
    assert monitor.stats().success_rate == pytest.approx(2 / 3)


def test_collector_exports_gostacker_names() -> None:
    monitors = Monitors()
    monitors.get("redis").record(0.005)
    families = {f.name: f for f in MonitorCollector(monitors).collect()}
    assert set(families) == {"app_monitor_avg_time_ms", "app_monitor_success_rate", "app_monitor_count"}
    assert [(s.labels, s.value) for s in families["app_monitor_count"].samples] == [({"monitor": "redis"}, 1)]
    assert families["app_monitor_avg_time_ms"].samples[0].value == pytest.approx(5.0)


# -- readiness --------------------------------------------------------------------------------------


async def test_ready_follows_sql(tmp_path: Path) -> None:
    """/ready answers 503 naming `sql` while the database file cannot be opened, and 200 once it can."""
    db_dir = tmp_path / "db"
    runtime = Runtime(make_config(f"sqlite+aiosqlite:///{db_dir / 'ready.db'}", tmp_path))
    await runtime.open_sql(migrate_to_head=True)
    app = new_app("probe", max_body_bytes=1024)
    install_health(app, "probe", runtime.readiness_checks())
    servers = Servers()
    await servers.start([Listener("probe", app, bind_socket("127.0.0.1", 0))])
    url = f"http://127.0.0.1:{servers.bound['probe']}/ready"
    try:
        async with aiohttp.ClientSession() as session:
            async def ready() -> tuple[int, dict]:
                async with session.get(url) as response:
                    return response.status, await response.json()

            assert (await ready())[0] == 200
            # The database goes away: its folder is gone (even root cannot open a file there), and the
            # pooled connections are closed, as a restart of a database server would close them.
            db_dir.rename(tmp_path / "db-away")
            await runtime.sql.dispose()
            status, body = await ready()
            assert status == 503
            assert body["status"] == "unready" and body["checks"]["sql"].startswith("error"), body
            # It comes back: ready again without a restart.
            (tmp_path / "db-away").rename(db_dir)
            status, body = await ready()
            assert (status, body["checks"]["sql"]) == (200, "ok"), body
    finally:
        await servers.stop()
        await runtime.close()


def start_private_redis(port: int, work_dir: Path) -> subprocess.Popen[bytes]:
    """A Redis of this test's own on `port` (never the machine's shared 6379), without persistence."""
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_ready_follows_redis(tmp_path: Path) -> None:
    """/ready answers 503 naming `engine` while the engine's Redis is stopped, and 200 once it is back."""
    port = free_ports(1)[0]
    redis_process = start_private_redis(port, tmp_path)
    runtime = Runtime(make_config(f"sqlite+aiosqlite:///{tmp_path / 'ready.db'}", tmp_path, engine="redis",
                                  redis={"host": "127.0.0.1", "port": port}))
    servers = Servers()
    try:
        await runtime.open_sql(migrate_to_head=True)
        # open_engine pings Redis: wait until the fresh server accepts connections.
        await poll(lambda: _answers(port), f"redis-server on {port}")
        await runtime.open_engine()
        app = new_app("probe", max_body_bytes=1024)
        install_health(app, "probe", runtime.readiness_checks())
        await servers.start([Listener("probe", app, bind_socket("127.0.0.1", 0))])
        url = f"http://127.0.0.1:{servers.bound['probe']}/ready"
        async with aiohttp.ClientSession() as session:
            async def ready() -> tuple[int, dict]:
                async with session.get(url) as response:
                    return response.status, await response.json()

            assert (await ready())[0] == 200
            redis_process.terminate()  # by its PID: the Redis this test started
            redis_process.wait(timeout=10)

            async def unready() -> dict | None:
                status, body = await ready()
                return body if status == 503 else None

            body = await poll(unready, "/ready 503 with Redis stopped", timeout=15)
            assert body["status"] == "unready" and body["checks"]["engine"] != "ok", body
            assert body["checks"]["sql"] == "ok", body
            # Redis comes back on the same port: ready again without a restart of the service.
            redis_process = start_private_redis(port, tmp_path)

            async def ready_again() -> dict | None:
                status, body = await ready()
                return body if status == 200 else None

            body = await poll(ready_again, "/ready 200 with Redis back", timeout=20)
            assert body["checks"] == {"sql": "ok", "engine": "ok"}, body
    finally:
        await servers.stop()
        await runtime.close()
        if redis_process.poll() is None:
            redis_process.terminate()
            redis_process.wait(timeout=10)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


# -- documentation ------------------------------------------------------------------------------------


def documented_metrics() -> set[str]:
    return set(re.findall(r"`((?:pystacker|app_monitor)_[a-z_]+)`", DOC.read_text()))


async def test_every_documented_metric_exists_and_every_metric_is_documented(api: Api) -> None:
    async with api.session.get(api.system.urls["gateway"] + "/metrics") as response:
        text = await response.text()
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    documented = documented_metrics()
    assert documented, "docs/observability.md lists no metric"
    assert documented - exported == set(), "documented but not on /metrics"
    ours = {name for name in exported if name.startswith(("pystacker_", "app_monitor_"))}
    assert ours - documented == set(), "on /metrics but not documented"
