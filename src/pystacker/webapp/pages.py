"""What a browser finds on every service: a root page that says what the service is, and `/docs`, which
renders the service's own `/openapi.json` with Swagger UI.

Swagger UI comes from the `swagger-ui-py` package (Swagger UI 5, which reads OpenAPI 3.1; the
`swagger-ui-bundle` package still ships Swagger UI 4, which cannot). Its files are served from this
process, so the docs work on a machine with no network. Only its static files are used, found without
importing the package: its framework glue would install routes outside the route tables, which are
the document.

The root page answers JSON to a client that asks for it (`Accept: application/json`).

The pages are HTML and stay small: no script on the root page, and on /docs only Swagger UI's
bundle and the two lines that point it at /openapi.json.
"""

from __future__ import annotations

import html
from importlib.util import find_spec
from pathlib import Path

from aiohttp import web

from pystacker import __version__
from pystacker.config import WebConfig
from pystacker.web.envelope import ok
from pystacker.web.openapi import OPENAPI_PATH, Route, add_routes
from pystacker.webapp.assets import HTML_REPLY, AssetFolder
from pystacker.webapp.cors import allow_browsers

DOCS_PATH = "/docs"
TAGS = ("browser pages",)

SERVICE_JOBS = {
    "send": "accepts messages (HTTP and WebSocket), gives each its id and per-room seq, fans them out to "
            "the gateways, and serves history and read state.",
    "meta": "users (register, login, JWT), rooms, members, roles and join requests.",
    "registry": "which gateway a client should use, gateway and send heartbeats, and user routes.",
    "gateway": "the WebSocket connections (`/api/ws`): ordered, deduplicated delivery and catch-up.",
}

SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")

_STYLE = ("body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem;"
          "color:#1b1b1b;background:#fff}a{color:#0b57d0}code{background:#f1f3f4;padding:0 .2em}")


def swagger_ui_folder() -> Path:
    spec = find_spec("swagger_ui")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("swagger-ui-py is not installed (a dependency of pystacker)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def service_summary(service: str) -> dict[str, object]:
    """The root page as JSON."""
    links = {"docs": DOCS_PATH, "openapi": OPENAPI_PATH, "health": "/health", "ready": "/ready"}
    return {"service": service, "job": SERVICE_JOBS.get(service, "a PyStacker service."),
            "version": __version__, "links": links}


def wants_json(request: web.Request) -> bool:
    """True when the client prefers JSON to HTML (a browser's Accept lists text/html first)."""
    accept = request.headers.get("Accept", "")
    json_at, html_at = accept.find("application/json"), accept.find("text/html")
    return json_at >= 0 and (html_at < 0 or json_at < html_at)


def service_page(service: str) -> str:
    """The root page: the service, its job, and where its API is described."""
    name = html.escape(service)
    job = html.escape(SERVICE_JOBS.get(service, "a PyStacker service."))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>PyStacker {name}</title><style>{_STYLE}</style></head><body>"
            f"<h1>PyStacker {name}</h1><p>The {name} service {job}</p><ul>"
            f'<li><a href="{DOCS_PATH}">API documentation</a> (<a href="{OPENAPI_PATH}">OpenAPI document</a>)</li>'
            f'<li><a href="/health">/health</a>, <a href="/ready">/ready</a>, <a href="/metrics">/metrics</a></li>'
            f"</ul><p>PyStacker {html.escape(__version__)}</p></body></html>")


def docs_page(service: str) -> str:
    name = html.escape(service)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>PyStacker {name}: API</title>"
            f'<link rel="stylesheet" href="{DOCS_PATH}/swagger-ui.css">'
            f'<link rel="icon" type="image/png" href="{DOCS_PATH}/favicon-32x32.png"></head><body>'
            f'<main id="swagger-ui" aria-label="PyStacker {name} API"></main>'
            f'<script src="{DOCS_PATH}/swagger-ui-bundle.js"></script>'
            f'<script>window.ui = SwaggerUIBundle({{url: "{OPENAPI_PATH}", dom_id: "#swagger-ui", '
            f"deepLinking: true}});</script></body></html>")


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8")


def install_browser_pages(app: web.Application, service: str, web_config: WebConfig, *, root: bool = True) -> None:
    """Every service: `/docs` and its files, the root page (unless the app takes `/`: meta), and CORS."""
    folder = AssetFolder(swagger_ui_folder(), SWAGGER_FILES)
    service_html, docs_html = service_page(service), docs_page(service)

    summary = service_summary(service)

    async def root_page(request: web.Request) -> web.Response:
        return ok("ok", summary) if wants_json(request) else _html(service_html)

    async def docs(_: web.Request) -> web.Response:
        return _html(docs_html)

    routes = [Route("GET", DOCS_PATH, docs, "This API, rendered by Swagger UI from /openapi.json",
                    reply=HTML_REPLY, tags=TAGS),
              folder.route(DOCS_PATH, "Swagger UI's files (served locally: no CDN)", TAGS)]
    if root:
        routes.insert(0, Route("GET", "/", root_page, "What this service is, with links to /docs (HTML, or "
                               "the envelope with `data.service`, `data.links` for Accept: application/json)",
                               reply=HTML_REPLY, tags=TAGS))
    add_routes(app, routes)
    allow_browsers(app, web_config.cors_origins)
