"""The JavaScript SDK's own tests (sdk/js/test/sdk.test.js), run in headless Chromium against a real
`pystacker up` process, plus the server restart, which the page cannot do by itself.

The test page is served from the SDK's package folder by a small static server of this test (another
origin than the services: the SDK's calls go through CORS as a third-party page's would).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.browser import ROOT, Screenshots, UpProcess, evaluate_within, launch_chromium, running_up

SDK_FOLDER = ROOT / "sdk" / "js"
SCENARIO_MS = 30_000


def scenario_names() -> list[str]:
    """The names the scenarios are registered under in sdk.test.js (`test('name', ...)`)."""
    import re

    source = (SDK_FOLDER / "test" / "sdk.test.js").read_text()
    return re.findall(r"^test\('([^']+)'", source, flags=re.MULTILINE)


@pytest.fixture(scope="module")
async def up(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[UpProcess]:
    async with running_up(tmp_path_factory.mktemp("sdk-up")) as process:
        yield process


@pytest.fixture(scope="module")
async def sdk_origin() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_static("/", SDK_FOLDER)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
async def page(browser: Any, sdk_origin: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    shots = Screenshots(request)
    context = await browser.new_context()
    test_page = shots.watch(await context.new_page())
    errors: list[str] = []
    test_page.on("pageerror", lambda exc: errors.append(str(exc)))
    await test_page.goto(f"{sdk_origin}/test/index.html")
    await test_page.wait_for_function("document.body.dataset.ready === 'true'", timeout=10_000)
    yield test_page
    await shots.save_if_failed()
    await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def settings_of(up: UpProcess) -> dict[str, str]:
    return {"metaUrl": up.url("meta"), "sendUrl": up.url("send"), "registryUrl": up.url("registry")}


def test_every_scenario_is_collected() -> None:
    # A typo in the regex above would silently run nothing.
    assert len(scenario_names()) >= 8, scenario_names()


async def test_the_page_lists_the_same_scenarios(page: Any) -> None:
    assert await page.evaluate("window.sdkTestNames") == scenario_names()


@pytest.mark.parametrize("name", scenario_names())
async def test_sdk_scenario(page: Any, up: UpProcess, name: str) -> None:
    result = await evaluate_within(page, "([name, settings]) => window.runSdkTest(name, settings)",
                                   [name, settings_of(up)], timeout_ms=SCENARIO_MS)
    assert result == "passed", result


async def test_clients_reconnect_after_a_server_restart_and_lose_nothing(page: Any, up: UpProcess) -> None:
    """Two connected clients; the server stops (SIGINT) and starts again on the same ports: both go
    `connecting`, come back `connected` by themselves, and every message sent before, during and after
    the restart reaches the other once, in order."""
    await evaluate_within(page, """async (settings) => {
        const { PyStackerClient } = await import(new URL('../pystacker.js', location.href).href);
        const user = async () => {
            const client = new PyStackerClient(settings), name = `r${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
            await client.register(name, 'sdk-secret-1');
            await client.login(name, 'sdk-secret-1');
            client.states = [];
            client.on('state', ({ newState }) => client.states.push(newState));
            const up = new Promise((resolve) => client.once('connected', resolve));
            client.connect();
            await up;
            return client;
        };
        const ann = await user(), bob = await user();
        const roomId = await ann.createRoom('restart', [bob.userId]);
        bob.track(roomId, 0);
        bob.seen = [];
        bob.on('message', (m) => bob.seen.push(m.text));
        await ann.send(roomId, 'before');
        Object.assign(window, { ann, bob, roomId });
    }""", settings_of(up))
    await page.wait_for_function("window.bob.seen.length === 1", timeout=10_000)

    await up.stop()
    await page.wait_for_function("window.ann.state === 'connecting' && window.bob.state === 'connecting'",
                                 timeout=10_000)
    # Sent while the server is down: the SDK keeps it and sends it after the reconnect.
    await page.evaluate("() => { window.during = window.ann.send(window.roomId, 'during'); }")
    await up.start()

    await page.wait_for_function("window.ann.state === 'connected' && window.bob.state === 'connected'",
                                 timeout=20_000)
    await evaluate_within(page, "async () => { await window.during; await window.ann.send(window.roomId, 'after'); }")
    await page.wait_for_function("window.bob.seen.length >= 3", timeout=10_000)
    seen = await page.evaluate("window.bob.seen")
    assert seen == ["before", "during", "after"], seen
    states = json.loads(await page.evaluate("JSON.stringify([window.ann.states, window.bob.states])"))
    for client_states in states:
        assert client_states[:2] == ["connecting", "connected"] and client_states[-1] == "connected", client_states
        assert "connecting" in client_states[2:], client_states
