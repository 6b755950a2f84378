"""Assemble the meta service's application."""

from __future__ import annotations

from aiohttp import web

from pystacker.meta.routes import MetaRoutes
from pystacker.meta.service import MetaService
from pystacker.meta.store import MetaStore
from pystacker.runtime import Runtime
from pystacker.web.middleware import auth_middleware
from pystacker.web.server import new_app

META_SERVICE = web.AppKey("meta_service", MetaService)


def build_meta_app(runtime: Runtime) -> web.Application:
    limits = runtime.config.limits
    app = new_app("meta", max_body_bytes=limits.max_body_bytes, middlewares=[auth_middleware(runtime.tokens)])
    service = MetaService(MetaStore(runtime.sql), runtime.tokens)
    MetaRoutes(service, max_members_per_request=limits.max_members_per_request,
               max_search_limit=limits.max_search_limit).install(app)
    app[META_SERVICE] = service
    return app
