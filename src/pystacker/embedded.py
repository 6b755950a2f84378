"""`pystacker up`: every service in one process, embedded engine and SQLite, GoStacker's ports."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from pystacker.config import Config
from pystacker.flusher.messages import MessageFlusher, flusher_settings
from pystacker.gateway.app import build_gateway_app
from pystacker.meta.app import build_meta_app
from pystacker.registry.app import build_registry_app
from pystacker.runtime import Runtime
from pystacker.send.app import build_send_app
from pystacker.web.server import Listener, Servers, bind_socket, bound_port

log = logging.getLogger("pystacker.up")


class EmbeddedSystem:
    """Start and stop the whole system; `urls` tells where each service answers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.runtime = Runtime(config, embedded=True)
        self.servers = Servers()
        self.flusher: MessageFlusher | None = None
        self._flusher_task: asyncio.Task[None] | None = None
        # Each service's application by name, for in-process tooling and tests (e.g. the gateway's
        # GatewayService under gateway.app.GATEWAY_SERVICE).
        self.apps: dict[str, web.Application] = {}

    async def start(self) -> None:
        runtime = self.runtime
        host, ports = self.config.host, self.config.ports
        # Ports first: a port in use is the most common start problem, and should be the only line.
        sockets = {name: bind_socket(host, port) for name, port in
                   (("send", ports.send), ("meta", ports.meta), ("registry", ports.registry), ("gateway", ports.gateway))}
        await runtime.open_sql(migrate_to_head=True)
        await runtime.open_engine()
        # The gateway advertises where clients reach it; with port 0 (tests) that is the bound port.
        self.config.address = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.flusher = MessageFlusher(runtime.engine, runtime.parts.store,
                                      **flusher_settings(runtime.config))
        self._flusher_task = asyncio.create_task(self.flusher.run(), name="flusher")
        listeners = [
            Listener("registry", build_registry_app(runtime), sockets["registry"]),
            Listener("meta", build_meta_app(runtime), sockets["meta"]),
            Listener("send", build_send_app(runtime, port=bound_port(sockets["send"])), sockets["send"]),
            Listener("gateway", build_gateway_app(runtime, port=bound_port(sockets["gateway"])), sockets["gateway"]),
        ]
        self.apps = {listener.name: listener.app for listener in listeners}
        await self.servers.start(listeners)

    @property
    def urls(self) -> dict[str, str]:
        return {name: f"http://{self.config.address}:{port}" for name, port in self.servers.bound.items()}

    async def stop(self) -> None:
        await self.servers.stop()
        if self._flusher_task is not None:
            self._flusher_task.cancel()
            await asyncio.gather(self._flusher_task, return_exceptions=True)
        if self.flusher is not None:
            await self.flusher.flush_all()  # nothing accepted is left only in memory
        await self.runtime.close()
