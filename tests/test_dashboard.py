"""deploy/: every metric the Grafana dashboard queries exists on /metrics of a system that carried some
traffic, and the Prometheus scrape config parses and names every port of a local `pystacker cluster`."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pystacker.cluster import default_port
from pystacker.config import RedisConfig
from pystacker.engine.base import EngineSettings
from pystacker.engine.redis_engine import RedisEngine, make_client
from tests.engine.support import zero_seed
from tests.ws import Api, make_room, open_api, poll, send_http

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"

# PromQL words that look like metric names once labels, ranges and strings are removed.
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: identifiers that are not a function (followed by `(`),
    a keyword, a label (inside `{}` or `by (...)`), a Grafana variable or a number."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings: label values, may hold anything
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, [$__rate_interval]
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr):
        if match.group(1).lower() not in _PROMQL_WORDS:
            names.add(match.group(1))
    return names


def dashboard_exprs() -> list[str]:
    def panels(items: list[dict]) -> list[dict]:
        return [p for item in items for p in (item, *panels(item.get("panels", [])))]
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]


def test_metric_names_reads_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, service) (rate(pystacker_http_request_duration_seconds_bucket'
            '{route!="/api/ws"}[$__rate_interval]))) / on (job) group_left process_cpu_seconds_total')
    assert metric_names(expr) == {"pystacker_http_request_duration_seconds_bucket", "process_cpu_seconds_total"}


async def redis_engine_calls() -> None:
    """The embedded system runs the memory engine; the Redis panels need a Redis engine's calls. One in
    this process (on the local Redis, keys under a prefix of its own, none written) puts its series on
    the same registry, so on the embedded services' /metrics."""
    engine = RedisEngine(EngineSettings(), zero_seed, client=make_client(RedisConfig()),
                         prefix=f"dash-{uuid.uuid4().hex[:10]}:", owns_clients=True)
    try:
        await engine.ping()
        await engine.registry.list_gateways()
    finally:
        await engine.close()


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


async def test_every_dashboard_metric_exists_on_metrics(api: Api) -> None:
    # Traffic first: labelled series (delivery latency, disconnects by code) appear on first use.
    users = await api.users(2, "dash")
    room_id = await make_room(api.meta, users[0], users[1:])
    clients = [await api.connect(user) for user in users]
    await send_http(api.send, users[0], room_id, "dashboard over HTTP")
    await clients[0].send_chat(room_id, "dashboard over WebSocket")  # a frame in
    for client in clients:
        await client.collect(2, room_id=room_id)
        await client.close()
    gateway = api.gateway_service.gateway_id
    await redis_engine_calls()

    async def scraped() -> set[str] | None:
        async with api.session.get(api.system.urls["gateway"] + "/metrics") as response:
            text = await response.text()
        names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        # The closes are counted once the sockets end on the server's side, and the registry's gauges
        # are refreshed every 5 s.
        closed = f'pystacker_ws_disconnects_total{{code="1000",gateway="{gateway}"}}' in text
        return names if closed and "pystacker_registry_gateway_load" in names else None

    exported = await poll(scraped, "the disconnects and the registry's gauges on /metrics", timeout=15)
    exprs = dashboard_exprs()
    assert len(exprs) >= 20, "the dashboard lost its panels"
    queried = set().union(*(metric_names(e) for e in exprs))
    assert {"pystacker_delivery_latency_seconds_bucket", "pystacker_inbox_pending",
            "pystacker_flusher_failures_total", "app_monitor_avg_time_ms", "pystacker_redis_call_seconds_bucket",
            "pystacker_sql_query_seconds_bucket", "pystacker_sql_errors_total"} <= queried
    assert queried - exported == set(), "queried by the dashboard but not on /metrics"


def test_prometheus_config_scrapes_the_local_cluster() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {target for job in config["scrape_configs"] for static in job["static_configs"]
               for target in static["targets"]}
    ports = {int(target.rsplit(":", 1)[1]) for target in targets}
    http_ports = {default_port(label) for label in ("send-1", "send-2", "meta", "registry", "gateway-1", "gateway-2")}
    assert http_ports == {8081, 8091, 8082, 8083, 8084, 8085}
    # the workers without HTTP: the metrics ports their example configs set
    worker_ports = {yaml.safe_load((ROOT / "config" / f"config.{name}.yaml").read_text())["metrics_port"]
                    for name in ("flusher", "msgflusher")}
    assert 0 not in worker_ports
    assert ports == http_ports | worker_ports
