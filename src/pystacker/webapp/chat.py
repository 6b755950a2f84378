"""The chat app and the JavaScript SDK, served by meta: `/` (the app's page), `/web/{asset}` (its
modules and style) and `/sdk/{asset}` (`pystacker.js` and its TypeScript declarations).

The page is the one file that is not served as it is: meta writes into it where the browser reaches
send and the registry (`web.send_url`, `web.registry_url`; empty: the page's own host with
`ports.send` and `ports.registry`), as JSON in a `<script type="application/json">`, which no
browser runs.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from aiohttp import web

from pystacker.config import Config
from pystacker.web.openapi import Route, add_routes
from pystacker.webapp.assets import HTML_REPLY, AssetFolder

STATIC = Path(__file__).parent / "static"
APP_FOLDER = STATIC / "app"
SDK_FOLDER = STATIC / "sdk"
PAGE = "index.html"
SETTINGS_MARK = "{{settings}}"
TAGS = ("browser pages",)


def browser_settings(config: Config) -> dict[str, object]:
    """What the app needs to reach the other services."""
    web_config = config.web
    return {"send_url": web_config.send_url, "registry_url": web_config.registry_url,
            "send_port": config.ports.send, "registry_port": config.ports.registry}


def render_page(template: str, settings: dict[str, object]) -> str:
    # `<` escaped: the JSON can never close its script element.
    encoded = orjson.dumps(settings).decode().replace("<", "\\u003c")
    if SETTINGS_MARK not in template:
        raise ValueError(f"{PAGE} has no {SETTINGS_MARK} mark")
    return template.replace(SETTINGS_MARK, encoded)


def install_chat_app(app: web.Application, config: Config) -> None:
    page = render_page((APP_FOLDER / PAGE).read_text(encoding="utf-8"), browser_settings(config))
    assets = AssetFolder(APP_FOLDER, [p.name for p in APP_FOLDER.iterdir() if p.is_file() and p.name != PAGE])
    sdk = AssetFolder(SDK_FOLDER, ["pystacker.js", "pystacker.d.ts"])

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    add_routes(app, [
        Route("GET", "/", index, "The chat app (web.enabled)", reply=HTML_REPLY, tags=TAGS),
        assets.route("/web", "The chat app's modules and style", TAGS),
        sdk.route("/sdk", "The JavaScript SDK (an ES module) and its TypeScript declarations", TAGS),
    ])
