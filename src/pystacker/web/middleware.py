"""Middlewares every HTTP service installs: errors as envelopes, one log line per request.

Who may call a route is not a middleware's business: each route's handler is installed behind the
check its route table entry names (`Route.auth`, web/auth.py `guarded`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from pystacker.messaging.errors import Refused
from pystacker.observability.metrics import observe_request
from pystacker.web.envelope import ApiError, error_response, refusal_status

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp raises these for routing and body-size problems; give them our envelope and a clear text.
_HTTP_ERROR_TEXT = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
}


def error_middleware(service: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    log = logging.getLogger(f"pystacker.{service}")

    @web.middleware
    async def handle_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.msg, headers=exc.headers)
        except Refused as exc:
            return error_response(refusal_status(exc), exc.msg)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            text = _HTTP_ERROR_TEXT.get(exc.status, exc.reason)
            return error_response(exc.status, text, headers={"Allow": exc.headers["Allow"]}
                                  if "Allow" in exc.headers else None)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "internal server error")

    return handle_errors


def request_log_middleware(service: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    log = logging.getLogger(f"pystacker.{service}.http")

    @web.middleware
    async def log_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            observe_request(service, request, status, elapsed_ms / 1000)
            log.info("%s %s %d %.1fms", request.method, request.path, status, elapsed_ms,
                     extra={"method": request.method, "path": request.path, "status": status,
                            "duration_ms": round(elapsed_ms, 2), "remote": request.remote})

    return log_request
