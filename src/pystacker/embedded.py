"""`pystacker up`: every service in one process, embedded engine and SQLite, GoStacker's ports."""

from __future__ import annotations

import logging

from pystacker.config import Config
from pystacker.meta.app import build_meta_app
from pystacker.runtime import Runtime
from pystacker.web.server import Listener, Servers

log = logging.getLogger("pystacker.up")


class EmbeddedSystem:
    """Start and stop the whole system; `urls` tells where each service answers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.runtime = Runtime(config, embedded=True)
        self.servers = Servers()

    async def start(self) -> None:
        await self.runtime.open_sql(migrate_to_head=True)
        host = self.config.host
        ports = self.config.ports
        await self.servers.start([
            Listener("meta", build_meta_app(self.runtime), host, ports.meta),
        ])

    @property
    def urls(self) -> dict[str, str]:
        shown = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return {name: f"http://{shown}:{port}" for name, port in self.servers.bound.items()}

    async def stop(self) -> None:
        await self.servers.stop()
        await self.runtime.close()
