"""The gateway's prebuilt frames, written straight to a server socket, read back through a real
WebSocket client as the same text messages, in every header length form."""

from __future__ import annotations

import aiohttp
from aiohttp import WSMsgType, web

from pystacker.gateway.wsframes import text_frame
from pystacker.web.server import Listener, Servers, bind_socket

SIZES = [0, 1, 125, 126, 65535, 65536, 200_000]


def _text(size: int) -> str:
    return ("é" * size)[:size]  # multi-byte UTF-8: the header counts bytes, not characters


async def test_prebuilt_frames_read_back_as_the_same_texts() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        assert request.transport is not None
        # All of them in one transport write, as a connection writes a burst.
        request.transport.write(b"".join(text_frame(_text(size)) for size in SIZES))
        await ws.send_str("sent by aiohttp after them")
        await ws.receive()  # until the client closes
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    servers = Servers()
    await servers.start([Listener("frames", app, bind_socket("127.0.0.1", 0))])
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{servers.bound['frames']}/ws", max_msg_size=0) as ws:
            for size in SIZES:
                message = await ws.receive(timeout=10)
                assert (message.type, message.data) == (WSMsgType.TEXT, _text(size))
            message = await ws.receive(timeout=10)
            assert message.data == "sent by aiohttp after them"
    finally:
        await servers.stop()
