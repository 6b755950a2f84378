"""`/metrics` (Prometheus text format) and `/debug/stats` (the monitors as JSON) on every HTTP service."""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from pystacker.observability.monitor import MONITORS
from pystacker.web.openapi import DEBUG_STATS, STRING, Reply, Route, add_routes


async def metrics(_: web.Request) -> web.Response:
    # Every service of the process shares the registry; the `service` and `gateway` labels tell them apart.
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def debug_stats(_: web.Request) -> web.Response:
    body = {"window_seconds": 60, "monitors": {name: s.to_json() for name, s in MONITORS.snapshot().items()}}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def install_observability(app: web.Application) -> None:
    add_routes(app, [
        Route("GET", "/metrics", metrics, "Prometheus metrics of the process (text exposition format)",
              reply=Reply(STRING, media_type="text/plain"), tags=("operations",)),
        Route("GET", "/debug/stats", debug_stats, "The sliding-window monitors (last 60 s) as JSON",
              reply=Reply(DEBUG_STATS), tags=("operations",)),
    ])
