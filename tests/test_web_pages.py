"""What browsers get from the services, over real sockets: the root pages (HTML or JSON), `/docs`
rendered by Swagger UI in Chromium with every operation listed, the chat app and the SDK on meta
(and `web.enabled: false`), CORS, and the gateway's `device_id` parameter."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from pystacker.config import ConfigError, load_config
from tests.browser import ROOT, Screenshots, launch_chromium
from tests.client import Http, new_user
from tests.conftest import embedded_system

SDK_SOURCE = ROOT / "sdk" / "js" / "pystacker.js"
SERVICES = ("send", "meta", "registry", "gateway")


@pytest.fixture(scope="module")
async def web_system(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    async with embedded_system(tmp_path_factory.mktemp("web-pages"),
                               web={"cors_origins": ["https://chat.example.org"]}) as embedded:
        yield embedded


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- root pages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["send", "registry", "gateway"])
async def test_root_says_what_the_service_is(web_system: Any, http: aiohttp.ClientSession, service: str) -> None:
    base = web_system.urls[service]
    async with http.get(base + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}) as page:
        assert page.status == 200 and page.content_type == "text/html"
        body = await page.text()
    assert f"<h1>PyStacker {service}</h1>" in body and 'href="/docs"' in body
    async with http.get(base + "/", headers={"Accept": "application/json"}) as answer:
        assert answer.status == 200 and answer.content_type == "application/json"
        data = (await answer.json())["data"]
    assert data["service"] == service and data["links"]["docs"] == "/docs"


async def test_unknown_paths_stay_envelope_404s(web_system: Any, http: aiohttp.ClientSession) -> None:
    for path in ("/nothing", "/docs/nothing.js", "/docs/..%2Fopenapi.json", "/docs/..%2F..%2Fconfig.py"):
        async with http.get(web_system.urls["send"] + path) as answer:
            assert answer.status == 404, path
            assert (await answer.json())["code"] == 404


# -- the app and the SDK on meta ----------------------------------------------------------------------


async def test_meta_serves_the_app_with_where_the_services_are(web_system: Any, http: aiohttp.ClientSession) -> None:
    async with http.get(web_system.urls["meta"] + "/") as page:
        assert page.status == 200 and page.content_type == "text/html"
        body = await page.text()
    settings = re.search(r'<script type="application/json" id="pystacker-settings">(.*?)</script>', body)
    assert settings is not None, body[:500]
    ports = web_system.runtime.config.ports
    assert f'"send_port":{ports.send}' in settings.group(1) and f'"registry_port":{ports.registry}' in settings.group(1)
    for asset in ("/web/app.js", "/web/format.js", "/web/app.css"):
        async with http.get(web_system.urls["meta"] + asset) as answer:
            assert answer.status == 200, asset


async def test_the_sdk_is_served_from_its_one_source(web_system: Any, http: aiohttp.ClientSession) -> None:
    url = web_system.urls["meta"] + "/sdk/pystacker.js"
    async with http.get(url) as answer:
        assert answer.status == 200 and answer.content_type == "text/javascript"
        assert await answer.read() == SDK_SOURCE.read_bytes()
        etag = answer.headers["ETag"]
    async with http.get(url, headers={"If-None-Match": etag}) as again:
        assert again.status == 304
    async with http.get(web_system.urls["meta"] + "/sdk/pystacker.d.ts") as types:
        assert types.status == 200
    # Only the module and its declarations: the package folder's other files are not served.
    for name in ("package.json", "test"):
        async with http.get(web_system.urls["meta"] + f"/sdk/{name}") as answer:
            assert answer.status == 404, name


def test_every_export_of_the_sdk_is_declared() -> None:
    source = SDK_SOURCE.read_text()
    declarations = (SDK_SOURCE.parent / "pystacker.d.ts").read_text()
    exported = set(re.findall(r"^export (?:async )?(?:const|class|function) (\w+)", source, flags=re.MULTILINE))
    declared = set(re.findall(r"^export declare (?:const|class|function) (\w+)", declarations, flags=re.MULTILINE))
    assert len(exported) >= 8 and exported == declared, (exported ^ declared)


async def test_web_disabled_gives_meta_its_service_page(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    async with embedded_system(tmp_path, web={"enabled": False}) as embedded:
        meta = embedded.urls["meta"]
        async with http.get(meta + "/") as page:
            assert page.status == 200 and "<h1>PyStacker meta</h1>" in await page.text()
        for path in ("/sdk/pystacker.js", "/web/app.js"):
            async with http.get(meta + path) as answer:
                assert answer.status == 404, path
        async with http.get(meta + "/docs") as docs:
            assert docs.status == 200


def test_web_config_refuses_origins_that_are_not_origins(tmp_path: Any) -> None:
    for origin in ("chat.example.org", "https://chat.example.org/path", "ftp://x"):
        with pytest.raises(ConfigError, match="cors_origins"):
            load_config(None, overrides={"data_dir": str(tmp_path), "web": {"cors_origins": [origin]}})


# -- CORS ----------------------------------------------------------------------------------------------


async def preflight(http: aiohttp.ClientSession, url: str, origin: str, headers: str = "authorization") -> aiohttp.ClientResponse:
    async with http.options(url, headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                                          "Access-Control-Request-Headers": headers}) as answer:
        await answer.read()
        return answer


async def test_cors_allows_the_app_and_listed_origins_only(web_system: Any, http: aiohttp.ClientSession) -> None:
    history = web_system.urls["send"] + "/api/chat/history?room_id=1"
    app_origin = web_system.urls["meta"]  # same host, another port: the app calling send
    allowed = await preflight(http, history, app_origin)
    assert allowed.status == 204 and allowed.headers["Access-Control-Allow-Origin"] == app_origin
    assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    listed = await preflight(http, history, "https://chat.example.org")
    assert listed.status == 204
    refused = await preflight(http, history, "https://evil.example.com")
    assert refused.status == 403 and "Access-Control-Allow-Origin" not in refused.headers
    # A real request from a foreign origin gets an answer without the header: the browser hides it.
    async with http.get(history, headers={"Origin": "https://evil.example.com"}) as answer:
        assert answer.status == 401 and "Access-Control-Allow-Origin" not in answer.headers
    async with http.get(history, headers={"Origin": app_origin}) as answer:
        assert answer.status == 401 and answer.headers["Access-Control-Allow-Origin"] == app_origin


# -- the gateway's query parameters --------------------------------------------------------------------


async def test_gateway_accepts_a_device_id_and_unknown_parameters(web_system: Any, http: aiohttp.ClientSession) -> None:
    user = await new_user(Http(web_system.urls["meta"], http))
    ws_url = web_system.urls["gateway"].replace("http://", "ws://") + "/api/ws"
    params = {"token": user.token, "device_id": "tab-1 (Chromium)", "acks": "1", "catchup": "0", "future": "x"}
    async with http.ws_connect(ws_url, params=params) as ws:
        welcome = await ws.receive_json(timeout=10)
        assert welcome["type"] == "system" and welcome["user_id"] == user.id


# -- /docs in Chromium ---------------------------------------------------------------------------------


@pytest.fixture
async def shots(request: pytest.FixtureRequest) -> AsyncIterator[Screenshots]:
    screenshots = Screenshots(request)
    yield screenshots
    await screenshots.save_if_failed()  # after the call phase: a failure is counted by then


async def test_docs_render_every_operation_in_chromium(web_system: Any, http: aiohttp.ClientSession,
                                                       shots: Screenshots) -> None:
    async with launch_chromium() as browser:
        page = shots.watch(await browser.new_page())
        for service in SERVICES:
            base = web_system.urls[service]
            async with http.get(base + "/openapi.json") as answer:
                document = await answer.json()
            operations = sum(len(methods) for methods in document["paths"].values())
            await page.goto(base + "/docs")
            blocks = page.locator(".opblock")
            await blocks.first.wait_for(timeout=15_000)
            assert await blocks.count() == operations, service
            paths = set(await page.locator(".opblock-summary-path").evaluate_all(
                "nodes => nodes.map(n => n.getAttribute('data-path') || n.textContent)"))
            assert {p.replace("\u200b", "") for p in paths} == set(document["paths"]), service
            assert f"PyStacker {service}" in (await page.locator(".info .title").first.text_content() or ""), service
