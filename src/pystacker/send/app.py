"""Assemble the send service: routes, fan-out workers, its registry entry."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from pystacker.messaging.offline_notify import OfflineNotifier
from pystacker.registry.presence import SendPresence
from pystacker.runtime import Runtime
from pystacker.send.fanout import Fanout
from pystacker.send.routes import SendRoutes
from pystacker.send.service import SendService
from pystacker.web.health import install_health
from pystacker.web.server import new_app
from pystacker.webapp.pages import install_browser_pages

SEND_SERVICE = web.AppKey("send_service", SendService)


def send_instance_id(runtime: Runtime) -> str:
    return f"send-{runtime.config.name}-{runtime.config.machine_id}"


def new_send_service(runtime: Runtime) -> SendService:
    """A SendService with its own fan-out workers (the gateway makes one for `send` frames)."""
    config = runtime.config
    parts = runtime.parts
    notify = config.notify
    notifier = None if not notify.webhook_url else OfflineNotifier(
        notify.webhook_url, notify.secret.get_secret_value().encode(), parts.reading, batch_ms=notify.batch_ms,
        queue_size=notify.queue_size, timeout_s=notify.timeout_s, retry_for_s=notify.retry_for_s)
    fanout = Fanout(runtime.engine, parts.handoff, workers=config.send_dispatcher.gateway_worker_count,
                    queue_size=config.send_dispatcher.gateway_queue_size, notifier=notifier)
    return SendService(runtime.engine, parts.store, parts.members, fanout, runtime.ids, reading=parts.reading,
                       rosters=parts.rosters, history=parts.history, edit_window_s=config.limits.edit_window_s,
                       recall_window_s=config.limits.recall_window_s)


def build_send_app(runtime: Runtime, *, port: int) -> web.Application:
    config = runtime.config
    app = new_app("send", max_body_bytes=config.limits.max_body_bytes, credentials=runtime.credentials)
    install_health(app, "send", runtime.readiness_checks())
    install_browser_pages(app, "send", config.web)
    service = new_send_service(runtime)
    SendRoutes(service, runtime.parts.handoff, runtime.parts.presence, runtime.send_limiter).install(app)
    presence = SendPresence(runtime.engine.registry, send_instance_id(runtime), config.address, port,
                            ttl=config.registry.send_heartbeat_timeout)
    app[SEND_SERVICE] = service

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await runtime.parts.members.listen(runtime.engine.bus)
        service.fanout.start()
        await presence.start()
        yield
        await presence.stop()
        await service.fanout.drain(timeout=5.0)
        await service.fanout.stop()

    app.cleanup_ctx.append(lifecycle)
    return app
