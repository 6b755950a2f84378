"""The socket under one device's connection, behind the few operations the connection's driver needs.

The driver (gateway/connection.py) writes complete WebSocket frames that it built itself
(gateway/wsframes.py), so a transport only moves bytes, reports and waits for its write buffer,
closes with a code, and aborts. Each WebSocket stack implements it with its public API only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Protocol

from aiohttp import web


class Transport(Protocol):
    def write(self, data: bytes) -> None:
        """Queue complete frames for the socket; never blocks (the buffer grows instead)."""

    def ready(self) -> bool:
        """Open with nothing buffered: a frame written now goes out at once."""

    def buffered(self) -> int:
        """Bytes waiting in the write buffer."""

    def is_closing(self) -> bool:
        """The socket is closing or gone: writes are lost."""

    async def drain(self) -> None:
        """Return once the write buffer is below its high-water mark (at once if it is)."""

    async def close(self, code: int, reason: bytes) -> None:
        """Send a close frame with `code` and wait for the client's answer (the caller bounds the wait)."""

    def abort(self) -> None:
        """Drop the TCP connection now, with a reset: what is still buffered is discarded."""


def reset_on_close(transport: asyncio.BaseTransport) -> None:
    """Make closing the socket send a reset. Closing a socket only hands its unsent data to the
    kernel, which goes on sending it, and holding it (up to the send buffer's few MiB), to a peer
    that does not read; with a zero linger time the kernel drops it at once and the peer learns at
    once that it must reconnect."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already gone


class AiohttpTransport:
    """aiohttp's WebSocketResponse and the TCP transport under it (`request.transport`). Frames go
    straight to the TCP transport, as one write per burst; flow control is the request's stream
    writer's `drain()` (the one aiohttp's own sends wait on); the close handshake is the
    WebSocketResponse's, so aiohttp's reader knows the socket is closing and answers nothing after it."""

    __slots__ = ("_ws", "_tcp", "_writer", "write", "buffered")

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        tcp = request.transport
        if tcp is None:
            raise ConnectionResetError("the socket closed during the upgrade")
        self._ws = ws
        self._tcp = tcp
        self._writer = request.writer
        # The TCP transport's own methods, bound once: a write per burst and a buffer check per
        # fast-path offer pay no wrapper call.
        self.write = tcp.write
        self.buffered = tcp.get_write_buffer_size

    def ready(self) -> bool:
        tcp = self._tcp
        return not tcp.is_closing() and not tcp.get_write_buffer_size()

    def is_closing(self) -> bool:
        return self._ws.closed or self._tcp.is_closing()

    async def drain(self) -> None:
        await self._writer.drain()

    async def close(self, code: int, reason: bytes) -> None:
        await self._ws.close(code=code, message=reason)

    def abort(self) -> None:
        reset_on_close(self._tcp)
        self._tcp.abort()
