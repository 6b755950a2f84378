"""Assemble the registry service."""

from __future__ import annotations

from aiohttp import web

from pystacker.observability.metrics import background, refresh_registry_gauges
from pystacker.registry.liveness import GatewayLiveness
from pystacker.registry.routes import RegistryRoutes
from pystacker.registry.service import RegistryService
from pystacker.runtime import Runtime
from pystacker.web.health import install_health
from pystacker.web.server import new_app
from pystacker.webapp.pages import install_browser_pages


def build_registry_app(runtime: Runtime) -> web.Application:
    config = runtime.config
    app = new_app("registry", max_body_bytes=config.limits.max_body_bytes, credentials=runtime.credentials)
    install_health(app, "registry", runtime.readiness_checks(), liveness=False)
    install_browser_pages(app, "registry", config.web)
    liveness = GatewayLiveness(config.registry.gateway_heartbeat_interval)
    service = RegistryService(runtime.engine.registry, user_route_ttl=config.registry.user_route_ttl,
                              liveness=liveness)
    RegistryRoutes(runtime.engine, service, gateway_ttl=config.registry.gateway_heartbeat_timeout,
                   send_ttl=config.registry.send_heartbeat_timeout).install(app)
    app.cleanup_ctx.append(background(lambda: refresh_registry_gauges(runtime.engine)))

    async def close_liveness(_: web.Application) -> None:
        await liveness.close()

    app.on_cleanup.append(close_liveness)
    return app
