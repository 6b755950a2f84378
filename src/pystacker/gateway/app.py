"""Assemble a gateway: WebSocket endpoint, inbox consumer, registry entry."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from pystacker.gateway.client_frames import ClientFrames
from pystacker.gateway.presence_watch import PresenceWatch
from pystacker.gateway.routes import GatewayRoutes, WebSocketSettings
from pystacker.gateway.service import GatewayService, GatewaySettings
from pystacker.messaging.typing_signals import TypingSignals
from pystacker.registry.presence import GatewayPresence
from pystacker.registry.service import RegistryService
from pystacker.runtime import Runtime
from pystacker.send.app import new_send_service
from pystacker.web.health import install_health
from pystacker.web.server import new_app
from pystacker.webapp.pages import install_browser_pages

GATEWAY_SERVICE = web.AppKey("gateway_service", GatewayService)


def gateway_id_of(runtime: Runtime) -> str:
    return f"gateway-{runtime.config.name}-{runtime.config.machine_id}"


def build_gateway_app(runtime: Runtime, *, port: int) -> web.Application:
    config = runtime.config
    parts = runtime.parts
    gateway_id = gateway_id_of(runtime)
    app = new_app("gateway", max_body_bytes=config.limits.max_body_bytes, credentials=runtime.credentials)
    install_health(app, "gateway", runtime.readiness_checks())
    install_browser_pages(app, "gateway", config.web)
    presence = GatewayPresence(runtime.engine.registry, gateway_id, config.address, port,
                               config.dispatcher.max_connections, lambda: service.connection_count,
                               ttl=config.registry.gateway_heartbeat_timeout,
                               interval=config.registry.gateway_heartbeat_interval)
    settings = GatewaySettings(
        gateway_id=gateway_id,
        consumer=config.dispatcher.consumer_name or f"{gateway_id}_consumer",
        max_connections=config.dispatcher.max_connections,
        queue_size=config.dispatcher.send_channel_size,
        threshold_pending=config.dispatcher.threshold_pending)
    registry = RegistryService(runtime.engine.registry, user_route_ttl=config.registry.user_route_ttl)
    watch = PresenceWatch(parts.presence, recheck=config.registry.presence_ttl / 2)
    service = GatewayService(runtime.engine, settings, parts.cursors, parts.handoff, registry, presence, parts.reading,
                             parts.devices, device_limit=config.limits.devices_per_user,
                             user_presence=parts.presence, watch=watch)
    presence.on_vanished = service.registry_entry_vanished  # Redis lost its state: every client catches up
    sender = new_send_service(runtime)
    frames = ClientFrames(sender, parts.history, parts.members, TypingSignals(parts.handoff), watch,
                          runtime.send_limiter)
    ws_settings = WebSocketSettings(config.websocket.ping_interval, config.websocket.pong_deadline)
    GatewayRoutes(service, frames, parts.history, parts.devices, ws_settings).install(app)
    app[GATEWAY_SERVICE] = service

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await parts.members.listen(runtime.engine.bus)
        sender.fanout.start()
        await service.start()
        yield
        await service.stop()
        await sender.fanout.drain(timeout=5.0)
        await sender.fanout.stop()

    async def close_sockets(_: web.Application) -> None:
        # aiohttp calls on_shutdown before it waits (shutdown_timeout) for the handlers and cancels
        # them, and runs the cleanup above only after that: without this, clients got 1006 after the
        # timeout instead of 1001 at once.
        await service.close_connections()

    app.on_shutdown.append(close_sockets)
    app.cleanup_ctx.append(lifecycle)
    return app
