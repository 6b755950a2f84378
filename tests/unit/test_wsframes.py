"""The gateway's prebuilt frames, written straight to a server socket, read back through a real
WebSocket client as the same text messages, in every header length form; its prebuilt ping is
answered by the client with a pong echoing the token, and its prebuilt pong answers a client's ping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from pystacker.gateway.wsframes import ping_frame, pong_frame, text_frame
from pystacker.web.server import Listener, Servers, bind_socket

SIZES = [0, 1, 125, 126, 65535, 65536, 200_000]


@asynccontextmanager
async def _serving(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """A server on a free port with `handler` at /ws; yields its URL."""
    app = web.Application()
    app.router.add_get("/ws", handler)
    servers = Servers()
    await servers.start([Listener("frames", app, bind_socket("127.0.0.1", 0))])
    try:
        yield f"http://127.0.0.1:{servers.bound['frames']}/ws"
    finally:
        await servers.stop()


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

    async with _serving(handler) as url, aiohttp.ClientSession() as session, \
            session.ws_connect(url, max_msg_size=0) as ws:
        for size in SIZES:
            message = await ws.receive(timeout=10)
            assert (message.type, message.data) == (WSMsgType.TEXT, _text(size))
        message = await ws.receive(timeout=10)
        assert message.data == "sent by aiohttp after them"


async def test_a_prebuilt_ping_is_answered_with_its_token() -> None:
    pongs: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, autoping=False)
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.write(text_frame("before the ping") + ping_frame(b"probe-17"))
        async for message in ws:
            if message.type is WSMsgType.PONG:
                await pongs.put(message.data)
        return ws

    async with _serving(handler) as url, aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        message = await ws.receive(timeout=10)  # aiohttp's client answers the ping as it reads on
        assert message.data == "before the ping"
        reader = asyncio.ensure_future(ws.receive())
        assert await asyncio.wait_for(pongs.get(), 10) == b"probe-17"
        reader.cancel()


async def test_a_prebuilt_pong_answers_a_clients_ping() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, autoping=False)
        await ws.prepare(request)
        assert request.transport is not None
        async for message in ws:
            if message.type is WSMsgType.PING:
                request.transport.write(pong_frame(message.data))
        return ws

    async with _serving(handler) as url, aiohttp.ClientSession() as session, \
            session.ws_connect(url, autoping=False) as ws:
        await ws.ping(b"are you there")
        message = await ws.receive(timeout=10)
        assert (message.type, message.data) == (WSMsgType.PONG, b"are you there")


def test_a_ping_token_longer_than_a_control_frame_allows_is_refused() -> None:
    assert ping_frame(b"x" * 125)[:2] == bytes([0x89, 125])
    with pytest.raises(ValueError):
        ping_frame(b"x" * 126)
