"""Running one service per process: `pystacker meta|registry|send|gateway|flusher|msgflusher`.

Each service says what it needs (SQL, the engine), which port it serves on (if any) and what it runs.
SIGINT/SIGTERM stop it cleanly (GoStacker's meta, registry, send and flusher ignored them: compatibility.md #9):
a gateway drains its sockets, send finishes its queued pushes, the flusher writes what it holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pystacker.config import Config, ConfigError, check_internal_token
from pystacker.runtime import Runtime, StartupError
from pystacker.web.health import install_health
from pystacker.web.server import Listener, Servers, bind_socket, bound_port, new_app, run_until_signalled

log = logging.getLogger("pystacker.service")

AppBuilder = Callable[[Runtime, int], web.Application]
Worker = Callable[[Runtime], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    summary: str
    default_port: int
    needs_sql: bool
    build_app: AppBuilder | None = None
    worker: Worker | None = None  # a background loop for services without HTTP


def _meta(runtime: Runtime, _: int) -> web.Application:
    from pystacker.meta.app import build_meta_app

    return build_meta_app(runtime)


def _registry(runtime: Runtime, _: int) -> web.Application:
    from pystacker.registry.app import build_registry_app

    return build_registry_app(runtime)


def _send(runtime: Runtime, port: int) -> web.Application:
    from pystacker.send.app import build_send_app

    return build_send_app(runtime, port=port)


def _gateway(runtime: Runtime, port: int) -> web.Application:
    from pystacker.gateway.app import build_gateway_app

    return build_gateway_app(runtime, port=port)


def _metrics_only(runtime: Runtime, service: str) -> web.Application:
    """The observability routes alone, for a worker without HTTP (`metrics_port`): Prometheus and a
    supervisor watch the flusher and msgflusher as they watch the HTTP services."""
    app = new_app(service, max_body_bytes=runtime.config.limits.max_body_bytes)  # /metrics, /debug/stats
    install_health(app, service, runtime.readiness_checks())
    return app


async def _flusher(runtime: Runtime) -> None:
    from pystacker.flusher.messages import MessageFlusher, flusher_settings

    flusher = MessageFlusher(runtime.engine, runtime.parts.store,
                             **flusher_settings(runtime.config))
    try:
        await flusher.run()
    finally:
        await asyncio.shield(flusher.flush_all())


async def _msgflusher(runtime: Runtime) -> None:
    from pystacker.messaging.handoff import Handoff, LiveGateways
    from pystacker.msgflusher.service import Reclaimer

    settings = runtime.config.pending_msg_flusher
    # Not runtime.parts: that needs SQL, which msgflusher does not open (GoStacker's has no mysql block);
    # it raised inside the worker task, so the msgflusher process never reclaimed anything.
    handoff = Handoff(runtime.engine, LiveGateways(runtime.engine))
    reclaimer = Reclaimer(runtime.engine, handoff,
                          consumer=f"msgflusher-{runtime.config.name}-{runtime.config.machine_id}",
                          claim_idle_seconds=settings.claim_idle_seconds, batch_size=settings.batch_size)
    await reclaimer.run(settings.interval)


SERVICES: dict[str, ServiceSpec] = {spec.name: spec for spec in (
    ServiceSpec("meta", "users, rooms, members, join requests", 8082, True, build_app=_meta),
    ServiceSpec("registry", "gateway and send discovery, user routes", 8083, False, build_app=_registry),
    ServiceSpec("send", "accepts messages and fans them out", 8081, True, build_app=_send),
    ServiceSpec("gateway", "WebSocket connections", 8084, True, build_app=_gateway),
    ServiceSpec("flusher", "write-behind of messages, cursors and memberships to SQL", 0, True, worker=_flusher),
    ServiceSpec("msgflusher", "reclaims inbox entries of dead or stuck gateways", 0, False, worker=_msgflusher),
)}


async def run_service(spec: ServiceSpec, config: Config, source: str) -> None:
    runtime = Runtime(config, source=source)  # checks the JWT secret first
    try:
        # Every service, even one without internal routes of its own (meta, the flushers), so that a
        # deployment cannot be half-configured: the token is one value shared by all of them.
        check_internal_token(config, source=source)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    servers = Servers()
    worker_task: asyncio.Task[None] | None = None
    stopping = asyncio.Event()
    failure: list[BaseException] = []

    def worker_ended(task: asyncio.Task[None]) -> None:
        # A worker only ends by cancellation; one that died must stop the process (and make it exit
        # non-zero) instead of leaving it alive, doing nothing, for its supervisor to trust.
        error = None if task.cancelled() else task.exception()
        if error is not None:
            failure.append(error)
            log.error("%s worker failed", spec.name, exc_info=error)
            stopping.set()

    async def start() -> None:
        nonlocal worker_task
        if spec.needs_sql:
            await runtime.open_sql(migrate_to_head=False)
        await runtime.open_engine()
        if spec.build_app is not None:
            sock = bind_socket(config.host, config.port or spec.default_port)
            await servers.start([Listener(spec.name, spec.build_app(runtime, bound_port(sock)), sock)])
            log.info("%s listening on %s:%d", spec.name, config.host, servers.bound[spec.name])
        elif config.metrics_port:
            sock = bind_socket(config.host, config.metrics_port)
            await servers.start([Listener(spec.name, _metrics_only(runtime, spec.name), sock)])
            log.info("%s metrics on %s:%d", spec.name, config.host, servers.bound[spec.name])
        if spec.worker is not None:
            worker_task = asyncio.create_task(spec.worker(runtime), name=spec.name)
            worker_task.add_done_callback(worker_ended)
            log.info("%s running", spec.name)

    async def stop() -> None:
        await servers.stop()
        if worker_task is not None:
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
        await runtime.close()

    await run_until_signalled(start, stop, stopping)
    if failure:
        raise StartupError(f"{spec.name} stopped: its worker failed: {failure[0]!r}")
