"""Gateway HTTP routes: the WebSocket endpoint and GoStacker's legacy /center/forward."""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from pystacker.gateway.client_frames import ClientFrames
from pystacker.gateway.connection import Connection, RawFrame
from pystacker.gateway.service import GatewayService
from pystacker.gateway.transport import AiohttpTransport
from pystacker.messaging.devices import DEVICE_ID_PATTERN, Devices
from pystacker.messaging.frames import encode, error_frame, system_frame
from pystacker.messaging.history import History
from pystacker.messaging.model import DEFAULT_DEVICE, INT64_MAX, PushEntry, decode_entry
from pystacker.web.auth import Auth, identity
from pystacker.web.envelope import ApiError, ok
from pystacker.web.openapi import Param, Reply, Route, add_routes
from pystacker.web.requests import request_device

log = logging.getLogger("pystacker.gateway.ws")

MAX_FRAME_BYTES = 64 * 1024

# Decoded by hand (decode_entry reads GoStacker's CamelCase keys and snake_case alike).
_INT64 = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
PUSH_ENTRY = {
    "type": "object",
    "description": "GoStacker's PushMessage (every key optional). The snake_case forms of the keys are read too.",
    "properties": {"ID": _INT64, "Type": {"enum": ["chat", "ack"]}, "RoomID": _INT64, "SenderID": _INT64,
                   "TargetIDs": {"type": "array", "items": _INT64}, "Payload": {}, "Seq": _INT64,
                   "ClientMsgID": {"type": ["string", "null"]}, "TS": _INT64, "ContentType": {"type": "string"}}}


class WebSocketSettings:
    """GoStacker's heartbeat contract: a ping after `ping_interval` s of silence, and the socket
    dropped `pong_deadline` s after the client was last heard from. The connection's delivery core
    keeps it (gateway/delivery.py, DeliveryCore.heartbeat), the same for every transport."""

    def __init__(self, ping_interval: float, pong_deadline: float) -> None:
        self.ping_interval = ping_interval
        self.pong_deadline = max(pong_deadline, ping_interval + 1.0)


class GatewayRoutes:
    def __init__(self, service: GatewayService, frames: ClientFrames, history: History, devices: Devices,
                 ws_settings: WebSocketSettings) -> None:
        self.service = service
        self.frames = frames
        self.history = history
        self.devices = devices
        self.ws_settings = ws_settings

    def install(self, app: web.Application) -> None:
        # The route table: handlers and their OpenAPI description (GET /openapi.json) in one place.
        add_routes(app, [
            Route("GET", "/api/ws", self.websocket,
                  "Open the WebSocket (frames: docs/compatibility.md). A plain HTTP request gets 400.",
                  auth=Auth.WEBSOCKET, params=[
                      Param("catchup", {"type": "string"}, "`0`: no catch-up on connect (the client syncs itself)"),
                      Param("acks", {"type": "string"}, "`1`: the client's `ack` frames alone move its cursor"),
                      Param("events", {"type": "string"}, "`1`: the client knows PyStacker's frames (read, typing, "
                            "edit, recall, reaction); without it, only GoStacker's frame types are sent"),
                      Param("device_id", {"type": "string", "pattern": DEVICE_ID_PATTERN},
                            "This device (also the `X-Device-Id` header); none: `default`. Each device of a "
                            "user has its own socket and cursors")],
                  reply=Reply(None, status=101, description="Switching Protocols: the WebSocket is open"),
                  errors=(400, 503), error_bodies={503: None},
                  error_text={400: "not a WebSocket upgrade request",
                              503: "the gateway is draining or full (GoStacker's empty body): ask the registry again"},
                  tags=("websocket",)),
            Route("POST", "/center/forward", self.center_forward,
                  "GoStacker's legacy injection of an inbox entry for local delivery", auth=Auth.INTERNAL,
                  body=PUSH_ENTRY, tags=("internal",)),
        ])

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        user_id = identity(request).user_id  # Auth.WEBSOCKET: the header's token, or `?token=`
        device_id = request_device(request)
        if not self.service.accepting or not self.service.has_capacity():
            return web.Response(status=503)  # GoStacker: 503 with an empty body
        cursors = await self.devices.cursors_for(user_id, device_id)
        # No aiohttp heartbeat and no autoping: the connection pings and answers pings itself, and
        # the pongs of its probes confirm delivery (see Connection).
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, compress=False, autoping=False)
        if not ws.can_prepare(request).ok:
            raise ApiError(400, "expected a WebSocket upgrade request")
        await ws.prepare(request)
        try:
            transport = AiohttpTransport(request, ws)
        except ConnectionResetError:
            return ws  # the client left during the upgrade
        conn = Connection(user_id, transport, queue_size=self.service.settings.queue_size, history=self.history,
                          cursors=cursors, tracker=self.service.tracker, device_id=device_id,
                          metrics=self.service.metrics,
                          # `?acks=1`: the client acknowledges what it read, so its acks alone move its
                          # cursor, from the first frame on (a message written into a socket that dies
                          # unread is then sent again).
                          client_acks=request.query.get("acks") == "1",
                          # `?events=1`: the client knows PyStacker's frames (read, typing, room
                          # events); without it, only GoStacker's types are sent (messaging/frames.py,
                          # gostacker_event_frame).
                          events=request.query.get("events") == "1",
                          ping_interval=self.ws_settings.ping_interval, pong_deadline=self.ws_settings.pong_deadline)
        self.service.metrics.connects.inc()
        self.service.metrics.connections.inc()
        try:
            welcome = system_frame(user_id=user_id, gateway_id=self.service.gateway_id)
            if device_id != DEFAULT_DEVICE:
                welcome["device_id"] = device_id
            await self.service.attach(conn, catch_up=request.query.get("catchup") != "0", welcome=welcome)
            async for message in ws:
                conn.heard()
                if message.type is WSMsgType.TEXT:
                    await self.frames.handle(conn, message.data)
                elif message.type is WSMsgType.PONG:
                    conn.pong_received(message.data)
                elif message.type is WSMsgType.PING:
                    conn.ping_received(message.data)
                elif message.type is WSMsgType.BINARY:
                    conn.metrics.frame_in("binary")
                    conn.offer(RawFrame(encode(error_frame(400, "binary frames are not supported; send JSON text"))))
                elif message.type is WSMsgType.ERROR:
                    log.debug("socket error: %s", ws.exception(), extra={"user_id": user_id})
                    break
        finally:
            # The server's code when it closed the socket (4008, 4009, 1001), else the client's.
            self.service.metrics.disconnected(conn.close_code or ws.close_code)
            await self.service.detach(conn)
        return ws

    async def center_forward(self, request: web.Request) -> web.Response:
        """GoStacker's legacy injection of a PushMessage for local delivery (internal token required)."""
        raw = await request.read()
        try:
            push: PushEntry = decode_entry(raw)
        except ValueError:
            raise ApiError(400, "invalid request payload") from None
        await self.service.dispatch(push, None)
        return ok("message forwarded successfully")
