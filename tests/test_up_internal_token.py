"""`pystacker up` as an operator runs it, in its own process on every interface (`--host 0.0.0.0`,
reached here over loopback): its internal and registry-write routes are closed without the token it
makes and keeps in its data folder, and the same token works after a restart."""

from __future__ import annotations

import stat
from pathlib import Path

import aiohttp

from pystacker_tools.bench.server import EmbeddedServer
from tests.client import Http, new_user
from tests.internal_routes import assert_internal_routes_need


async def check_running_system(server: EmbeddedServer, token: str) -> None:
    ports = server.ports
    async with aiohttp.ClientSession() as session:
        def http(name: str) -> Http:
            return Http(f"http://127.0.0.1:{ports[name]}", session)

        user = await new_user(http("meta"), "up")
        await assert_internal_routes_need(token, http("send"), http("registry"), http("gateway"), user.id)


async def test_up_makes_an_internal_token_and_requires_it_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = EmbeddedServer(tmp_path / "up.log", extra_env={"PYSTACKER_HOST": "0.0.0.0"}, data_dir=data_dir)
    await server.start()
    try:
        token_file = data_dir / "internal_token"
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        await check_running_system(server, token)
    finally:
        assert server.stop() == 0
    await server.start()
    try:
        assert token_file.read_text().strip() == token
        await check_running_system(server, token)
    finally:
        assert server.stop() == 0
