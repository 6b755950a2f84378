"""Build and run aiohttp applications: one per service, several of them in one process if asked."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from pystacker.observability.routes import install_observability
from pystacker.web.auth import CREDENTIALS_KEY, Credentials
from pystacker.web.envelope import ok
from pystacker.web.middleware import error_middleware, request_log_middleware
from pystacker.web.openapi import Route, add_routes, install_openapi

log = logging.getLogger("pystacker.server")


def new_app(service: str, *, max_body_bytes: int, credentials: Credentials | None = None) -> web.Application:
    """An application with the middlewares every service shares and GoStacker's `/ping`.

    `credentials` are what its routes' `Auth` is checked against (add_routes); an application without
    them can only have public routes."""
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[request_log_middleware(service), error_middleware(service)],
    )
    app[CREDENTIALS_KEY] = credentials or Credentials()

    async def ping(_: web.Request) -> web.Response:
        return ok("pong")

    add_routes(app, [Route("GET", "/ping", ping, "Liveness in GoStacker's form: `pong`", tags=("operations",))])
    install_observability(app)  # /metrics and /debug/stats
    install_openapi(app, f"PyStacker {service}")
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before building the app, so a service knows its real port (port 0 picks a free one)
    when it registers itself in the registry."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        # Name the address: with four services in one process, "Address already in use" alone
        # does not say which port is taken.
        raise OSError(exc.errno, f"{host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


@dataclass
class Listener:
    name: str
    app: web.Application
    sock: socket.socket


class Servers:
    """Serves applications on pre-bound sockets and stops them cleanly."""

    def __init__(self) -> None:
        self._runners: list[web.AppRunner] = []
        self.bound: dict[str, int] = {}

    async def start(self, listeners: list[Listener]) -> None:
        for listener in listeners:
            runner = web.AppRunner(listener.app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
            await runner.setup()
            site = web.SockSite(runner, listener.sock, backlog=1024)
            await site.start()
            self._runners.append(runner)
            self.bound[listener.name] = bound_port(listener.sock)

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()


async def run_until_signalled(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
                              stopping: asyncio.Event | None = None) -> None:
    """Run `start`, wait for SIGINT/SIGTERM (or `stopping` set by the caller), then `stop` (GoStacker's
    meta/send swallow signals)."""
    import signal

    loop = asyncio.get_running_loop()
    stopping = stopping or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        await stopping.wait()
        log.info("stopping")
    finally:
        await stop()
