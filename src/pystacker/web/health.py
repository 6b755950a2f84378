"""Liveness (`/health`) and readiness (`/ready`) routes.

`/health` answers while the process serves requests. `/ready` checks the dependencies (SQL, the
engine) with a short timeout each and answers 503 naming the failing ones: a load balancer or
`pystacker cluster` waits on it, and it turns ready again by itself when they come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from pystacker.web.openapi import HEALTH, READINESS, Reply, Route, add_routes

Check = Callable[[], Awaitable[object]]
CHECK_TIMEOUT = 2.0


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def _run(check: Check) -> str:
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
        return "ok"
    except TimeoutError:
        return "timeout"
    except Exception as exc:  # any driver error: report its kind, not a stack
        return f"error: {type(exc).__name__}"


def install_health(app: web.Application, service: str, checks: Mapping[str, Check], *, liveness: bool = True) -> None:
    async def health(_: web.Request) -> web.Response:
        return _json({"status": "ok", "service": service})

    async def ready(_: web.Request) -> web.Response:
        names = list(checks)
        results = dict(zip(names, await asyncio.gather(*(_run(checks[n]) for n in names)), strict=True))
        is_ready = all(result == "ok" for result in results.values())
        return _json({"status": "ready" if is_ready else "unready", "service": service, "checks": results},
                     200 if is_ready else 503)

    routes = [Route("GET", "/ready", ready, "Readiness: every dependency answers within 2 s",
                    reply=Reply(READINESS), errors=(503,), error_bodies={503: READINESS},
                    error_text={503: "A dependency is down or slow: `checks` names it"},
                    tags=("operations",))]
    if liveness:
        routes.insert(0, Route("GET", "/health", health, "Liveness: the process serves requests",
                               reply=Reply(HEALTH), tags=("operations",)))
    add_routes(app, routes)
