"""Assemble the meta service's application."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from pystacker.messaging.membership import announce_membership_change
from pystacker.meta.routes import MetaRoutes
from pystacker.meta.service import MetaService
from pystacker.meta.store import MetaStore
from pystacker.runtime import Runtime
from pystacker.web.health import install_health
from pystacker.web.server import new_app
from pystacker.webapp.chat import install_chat_app
from pystacker.webapp.pages import install_browser_pages

META_SERVICE = web.AppKey("meta_service", MetaService)


def build_meta_app(runtime: Runtime) -> web.Application:
    limits = runtime.config.limits
    app = new_app("meta", max_body_bytes=limits.max_body_bytes, credentials=runtime.credentials)
    install_health(app, "meta", runtime.readiness_checks())
    install_browser_pages(app, "meta", runtime.config.web, root=not runtime.config.web.enabled)
    if runtime.config.web.enabled:  # the chat app takes `/`
        install_chat_app(app, runtime.config)
    parts = runtime.parts  # memberships live in the engine's roster cache: meta needs the engine
    service = MetaService(MetaStore(runtime.sql), runtime.tokens, parts.rosters, parts.cursors)
    MetaRoutes(service, max_members_per_request=limits.max_members_per_request,
               max_search_limit=limits.max_search_limit, login_user_limiter=runtime.login_user_limiter,
               login_address_limiter=runtime.login_address_limiter,
               register_address_limiter=runtime.register_address_limiter,
               room_change_limiter=runtime.room_change_limiter, reading=parts.reading,
               history=parts.history).install(app)
    app[META_SERVICE] = service

    async def membership_changed(room_id: int, joined: Sequence[int]) -> None:
        parts.members.invalidate(room_id)
        await announce_membership_change(runtime.engine.bus, room_id)
        if joined:
            await parts.cursors.joined(room_id, joined)
            await parts.devices.joined(room_id, joined)
            await parts.reading.joined(room_id, joined)

    service.on_membership_change(membership_changed)
    return app
