"""The gateway's WebSocket endpoint on picows (`websocket.transport: picows`), beside aiohttp's.

picows is a WebSocket stack compiled with Cython (the handshake, the frame parser and the transport
glue, over aiofastnet's compiled socket transports): each parsed frame reaches one callback with no
Python parser, reader queue or task in between. It serves WebSocket upgrades only (a GET without a
body), so it has a listener of its own (`websocket.port`; 0 picks a free one) and the gateway's
HTTP routes (/ping, /health, /metrics, /center/forward, /docs) stay on aiohttp at the gateway's
port, which keeps serving /api/ws too. The registry advertises the picows port: clients that ask it
for a gateway (GoStacker's do) connect there.

The upgrade is checked as aiohttp's route does it: the path, the token (the Authorization header,
or `?token=` for browsers) with the same 401 answers, the device id (400), the gateway draining or
full (503 with GoStacker's empty body). Then one session per socket runs the same Connection, and
the same ClientFrames, as the aiohttp route: frames are handled one at a time, in order; a client
that sends faster than they are handled is paused (its socket is not read) past INBOUND_BYTES, as
aiohttp's reader pauses past its own limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import orjson
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from pystacker.engine.base import DEFAULT_DEVICE
from pystacker.gateway.client_frames import ClientFrames
from pystacker.gateway.connection import Connection, RawFrame
from pystacker.gateway.service import GatewayService
from pystacker.gateway.transport import reset_on_close
from pystacker.messaging.devices import Devices, parse_device_id
from pystacker.messaging.frames import CloseCode, encode, error_frame, system_frame
from pystacker.messaging.history import History
from pystacker.web.auth import TokenService, bearer_of
from pystacker.web.envelope import ApiError

log = logging.getLogger("pystacker.gateway.ws")

PATH = b"/api/ws"
INBOUND_BYTES = 64 * 1024  # frames received and not yet handled: past this the socket is not read
# picows' read buffer per socket starts at 16 KiB (grown when a frame needs more): a client sends
# small JSON frames, and at 10,000 idle sockets those buffers were most of the memory.
READ_BUFFER_BYTES = 1024
HANDSHAKE_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0  # how long a stopping gateway waits for its closed sockets' sessions to end


class PicowsTransport:
    """picows' WSTransport and the TCP transport under it. Frames go straight to the TCP transport
    (`underlying_transport`), as one write per burst; flow control is picows' pause_writing and
    resume_writing, relayed by the session; the close frame is picows' own `send_close`, so picows
    knows the handshake started."""

    __slots__ = ("_ws", "_tcp", "_writable", "write", "buffered")

    def __init__(self, ws: WSTransport) -> None:
        tcp = ws.underlying_transport
        self._ws = ws
        self._tcp = tcp
        self._writable = asyncio.Event()
        self._writable.set()
        self.write = tcp.write
        self.buffered = tcp.get_write_buffer_size

    def ready(self) -> bool:
        tcp = self._tcp
        return not tcp.is_closing() and not tcp.get_write_buffer_size()

    def is_closing(self) -> bool:
        return self._tcp.is_closing() or self._ws.is_close_frame_sent

    def paused(self, paused: bool) -> None:
        if paused:
            self._writable.clear()
        else:
            self._writable.set()

    async def drain(self) -> None:
        if not self._writable.is_set() and not self._tcp.is_closing():
            await self._writable.wait()

    async def close(self, code: int, reason: bytes) -> None:
        self._ws.send_close(code, reason)  # type: ignore[arg-type]  # picows' WSCloseCode is a C enum: any 16-bit code goes
        await self._ws.wait_disconnected()  # the session disconnects on the client's answer

    def abort(self) -> None:
        reset_on_close(self._tcp)
        self._ws.disconnect(graceful=False)


class PicowsEndpoint:
    def __init__(self, service: GatewayService, frames: ClientFrames, history: History, devices: Devices,
                 tokens: TokenService, *, ping_interval: float, pong_deadline: float, max_frame_bytes: int) -> None:
        self.service = service
        self.frames = frames
        self.history = history
        self.devices = devices
        self.tokens = tokens
        self.ping_interval = ping_interval
        self.pong_deadline = pong_deadline
        self.max_frame_bytes = max_frame_bytes
        self.sessions: set[_Session] = set()
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        # No auto ping or pong: the connection pings and answers pings itself (delivery core).
        self._server = await ws_create_server(self._upgrade, sock=sock, websocket_handshake_timeout=HANDSHAKE_TIMEOUT,
                                              enable_auto_ping=False, enable_auto_pong=False,
                                              max_frame_size=self.max_frame_bytes, backlog=1024,
                                              read_buffer_init_size=READ_BUFFER_BYTES,
                                              logger_name=_ClientFaults(logging.getLogger("pystacker.gateway.picows")))

    async def stop(self) -> None:
        """Stop listening; wait for the sessions (their sockets are closed by the gateway's drain)."""
        if self._server is not None:
            self._server.close()
        tasks = [s.task for s in self.sessions if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _upgrade(self, request: WSUpgradeRequest) -> _Session | WSUpgradeResponseWithListener | None:
        path, _, raw_query = request.path.partition(b"?")
        if path != PATH:
            return None  # 404
        query = {k: v[0] for k, v in parse_qs(raw_query.decode("latin-1")).items()}
        try:
            header = request.headers.get("Authorization")
            if header is None and query.get("token"):
                user = self.tokens.verify(query["token"])
            else:
                user = self.tokens.verify(bearer_of(header))
            device_id = parse_device_id(query.get("device_id") or request.headers.get("X-Device-Id"))
        except ApiError as exc:
            return _refusal(exc.status, orjson.dumps({"code": exc.status, "msg": exc.msg}))
        except ValueError as exc:
            return _refusal(400, orjson.dumps({"code": 400, "msg": str(exc)}))
        if not self.service.accepting or not self.service.has_capacity():
            return _refusal(503, b"")  # GoStacker: 503 with an empty body
        return _Session(self, user.user_id, device_id, query)


class _ClientFaults(logging.LoggerAdapter):  # type: ignore[type-arg]  # (generic only in typeshed)
    """picows logs a client's protocol error (a bad opcode, a frame too big) at ERROR, then closes
    the socket with the right code. It is the client's fault, as aiohttp treats it: INFO here.
    (The session's own failures are caught and logged before picows sees them.)"""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        super().log(min(level, logging.INFO), msg, *args, **kwargs)


def _refusal(status: int, body: bytes) -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse.create_error_response(HTTPStatus(status), body or None,
                                                       {"Content-Type": "application/json"} if body else None)
    return WSUpgradeResponseWithListener(response, None)


class _Session(WSListener):
    """One socket: picows' callbacks in, the connection's inputs out; its frames handled in order."""

    def __init__(self, endpoint: PicowsEndpoint, user_id: int, device_id: str, query: dict[str, str]) -> None:
        self.endpoint = endpoint
        self.user_id = user_id
        self.device_id = device_id
        self.query = query
        self.ws: WSTransport | None = None
        self.transport: PicowsTransport | None = None
        self.conn: Connection | None = None
        self.task: asyncio.Task[None] | None = None
        self.inbound: deque[tuple[WSMsgType, bytes]] = deque()  # frames not yet handled (INBOUND_BYTES)
        self.inbound_bytes = 0
        self.reading = True
        self.arrived = asyncio.Event()
        self.gone = False
        self.client_code: int | None = None  # the code of the client's close frame
        self.partial: bytearray | None = None  # a fragmented text message being reassembled
        self.partial_type = WSMsgType.TEXT

    # -- picows' callbacks ----------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ws = transport
        self.transport = PicowsTransport(transport)
        self.endpoint.sessions.add(self)
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # Our own failures are logged here, as ours: what picows logs itself is then only a client's
        # protocol error (see _ClientFaults).
        try:
            self._frame(transport, frame)
        except Exception:
            log.exception("frame handling failed", extra={"user_id": self.user_id})
            self._fail(transport, WSCloseCode.INTERNAL_ERROR, "internal error")

    def _frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.rsv1 or frame.rsv2 or frame.rsv3:  # no extension was negotiated (RFC 6455 5.2)
            self._fail(transport, WSCloseCode.PROTOCOL_ERROR, "reserved bits set")
            return
        kind = frame.msg_type
        conn = self.conn
        if conn is not None:
            conn.heard()
        if kind is WSMsgType.PONG or kind is WSMsgType.PING:  # control frames: never fragmented, may come between fragments
            if conn is None:
                self._push(kind, frame.get_payload_as_bytes())  # before the connection is attached: in order, later
            elif kind is WSMsgType.PONG:
                conn.pong_received(frame.get_payload_as_bytes())
            else:
                conn.ping_received(frame.get_payload_as_bytes())
            return
        if kind is WSMsgType.CLOSE:
            payload = frame.get_payload_as_bytes()  # picows checked the code; none given: 1005
            self.client_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        if kind is WSMsgType.CONTINUATION or not frame.fin or self.partial is not None:
            if not self._reassemble(transport, frame):
                return
            data: bytes = bytes(self.partial or b"")
            kind, self.partial = self.partial_type, None
        else:
            data = frame.get_payload_as_bytes()
        self._push(kind, data)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gone = True
        if self.transport is not None:
            self.transport.paused(False)  # a writer waiting to drain finds the socket gone
        self.arrived.set()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.paused(True)

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.paused(False)

    def _reassemble(self, transport: WSTransport, frame: WSFrame) -> bool:
        """A fragment of a message (RFC 6455 5.4): True when the message is complete."""
        if frame.msg_type is WSMsgType.CONTINUATION:
            if self.partial is None:
                self._fail(transport, WSCloseCode.PROTOCOL_ERROR, "continuation without a message")
                return False
        else:
            if self.partial is not None:
                self._fail(transport, WSCloseCode.PROTOCOL_ERROR, "a new message inside a fragmented one")
                return False
            self.partial, self.partial_type = bytearray(), frame.msg_type
        self.partial += frame.get_payload_as_memoryview()
        if len(self.partial) > self.endpoint.max_frame_bytes:
            self._fail(transport, WSCloseCode.MESSAGE_TOO_BIG, "message too big")
            return False
        return frame.fin

    def _fail(self, transport: WSTransport, code: WSCloseCode, reason: str) -> None:
        self.partial = None
        transport.send_close(code, reason.encode())
        transport.disconnect()

    def _push(self, kind: WSMsgType, data: bytes) -> None:
        self.inbound.append((kind, data))
        self.inbound_bytes += len(data)
        if self.reading and self.inbound_bytes > INBOUND_BYTES and self.ws is not None:
            self.reading = False
            self.ws.underlying_transport.pause_reading()  # back-pressure on a client that floods
        self.arrived.set()

    # -- the session ----------------------------------------------------------------------------

    async def _next(self) -> tuple[WSMsgType, bytes] | None:
        while not self.inbound:
            if self.gone:
                return None
            self.arrived.clear()
            await self.arrived.wait()
        kind, data = self.inbound.popleft()
        self.inbound_bytes -= len(data)
        if not self.reading and self.inbound_bytes <= INBOUND_BYTES // 4 and not self.gone and self.ws is not None:
            self.reading = True
            self.ws.underlying_transport.resume_reading()
        return kind, data

    async def _serve(self) -> None:
        endpoint, service = self.endpoint, self.endpoint.service
        assert self.ws is not None and self.transport is not None
        try:
            cursors = await endpoint.devices.cursors_for(self.user_id, self.device_id)
        except Exception:
            log.exception("device cursors unavailable", extra={"user_id": self.user_id})
            self.ws.send_close(WSCloseCode.INTERNAL_ERROR)
            self.ws.disconnect()
            endpoint.sessions.discard(self)
            return
        conn = Connection(self.user_id, self.transport, queue_size=service.settings.queue_size,
                          history=endpoint.history, cursors=cursors, tracker=service.tracker, device_id=self.device_id,
                          metrics=service.metrics, client_acks=self.query.get("acks") == "1",
                          events=self.query.get("events") == "1", ping_interval=endpoint.ping_interval,
                          pong_deadline=endpoint.pong_deadline)
        service.metrics.connects.inc()
        service.metrics.connections.inc()
        try:
            welcome = system_frame(user_id=self.user_id, gateway_id=service.gateway_id)
            if self.device_id != DEFAULT_DEVICE:
                welcome["device_id"] = self.device_id
            await service.attach(conn, catch_up=self.query.get("catchup") != "0", welcome=welcome)
            self.conn = conn
            while (received := await self._next()) is not None:
                kind, data = received
                conn.heard()
                if kind is WSMsgType.TEXT:
                    try:
                        text = data.decode()
                    except UnicodeDecodeError:
                        self.ws.send_close(WSCloseCode.INVALID_TEXT, b"invalid UTF-8")
                        self.ws.disconnect()
                        break
                    await endpoint.frames.handle(conn, text)
                elif kind is WSMsgType.BINARY:
                    conn.metrics.frame_in("binary")
                    conn.offer(RawFrame(encode(error_frame(400, "binary frames are not supported; send JSON text"))))
                elif kind is WSMsgType.PONG:  # (before attach; later ones are handled as they come)
                    conn.pong_received(data)
                elif kind is WSMsgType.PING:
                    conn.ping_received(data)
        except Exception:
            log.exception("session failed", extra={"user_id": self.user_id})
            if not self.gone:
                self.ws.send_close(CloseCode.INTERNAL_ERROR)  # type: ignore[arg-type]  # any 16-bit code goes
                self.ws.disconnect()
        finally:
            service.metrics.disconnected(conn.close_code or self.client_code)
            await service.detach(conn)
            endpoint.sessions.discard(self)
