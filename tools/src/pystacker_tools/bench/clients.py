"""WebSocket receivers and the two ways of sending (HTTP send_message, WebSocket `send` frame).

A receiver is one user's connection, found the way GoStacker's clients find it (the registry names a
gateway; asked through the SDK). It stamps every frame with time.monotonic_ns() as soon as it is read,
before parsing, and hands each chat message (live `chat` frames and the messages inside catch-up
`batch` frames) to the integrity checker. If the server closes the socket (slow consumer 4008, a
gateway restart), it reconnects like a real client and catches up; the closes are counted and reported.

The socket and the sends are raw aiohttp, not the SDK's `Session` and `send`: the session orders and
dedups what arrives (it would hide the very duplicates, holes and reorderings the checker counts) and
parses each frame before the bench could stamp it; and the bench's sends are the measured path, which
must cost the load generator as little as it can on the cores it shares with the server (the SDK's
`send`, with its stdlib JSON and answer model, costs about a fifth more client CPU per send than
`post_send` on this machine: some 215 against 180 us on uvloop).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from pystacker.client import PyStackerClient, PyStackerError
from pystacker_tools.bench.checker import IntegrityChecker
from pystacker_tools.bench.safety import check_target
from pystacker_tools.bench.tags import Tag, parse_text
from pystacker_tools.bench.targets import Targets

MAX_FRAME_BYTES = 8 * 1024 * 1024  # a catch-up batch is 50 messages; be generous with other servers
RECONNECT_DELAYS = (0.1, 0.3, 1.0, 2.0, 4.0)  # one attempt per entry: bounded

# Called with (client index, msgID, tag, arrival ns) for a client's first copy of a message.
OnNew = Callable[[int, int, Tag, int], None]


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    msg_id: int = 0
    error: str = ""  # "status 403", "TimeoutError", ...


class SendRefused(Exception):
    """The send instance answered, and not with a message."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(f"{status} {msg}")
        self.status = status
        self.msg = msg


async def post_send(http: aiohttp.ClientSession, send_url: str, token: str, room_id: int, content: dict[str, Any],
                    client_msg_id: str | None, timeout: aiohttp.ClientTimeout) -> dict[str, Any]:
    """POST /api/chat/send_message to one send instance; the answer's `data` (msgID, seq, ...).

    Refusals raise SendRefused; transport failures stay aiohttp's (and TimeoutError), so that a caller
    can tell a refused connection from a slow answer."""
    body: dict[str, Any] = {"room_id": room_id, "content": content}
    if client_msg_id is not None:
        body["client_msg_id"] = client_msg_id
    async with http.post(send_url + "/api/chat/send_message", data=orjson.dumps(body),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                         timeout=timeout) as response:
        raw = await response.read()
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SendRefused(response.status, raw[:200].decode(errors="replace")) from None
    if response.status != 200 or not isinstance(envelope, dict) or envelope.get("code", 0) != 0:
        raise SendRefused(response.status, str(envelope.get("msg", "")) if isinstance(envelope, dict) else "")
    data: dict[str, Any] = envelope["data"]
    return data


class Receiver:
    def __init__(self, index: int, client: PyStackerClient, session: aiohttp.ClientSession,
                 checker: IntegrityChecker, on_new: OnNew | None, *, connect_timeout: float,
                 allow_remote: bool = False) -> None:
        """`client`: the user's SDK client (token, user id and device), for the registry lookup;
        `session`: where the WebSocket is opened."""
        assert client.token is not None and client.user_id is not None
        self.index = index
        self.user_id = client.user_id
        self.device_id = client.device_id  # None: the user's default device (a GoStacker client)
        self.token = client.token
        self.client = client
        self.allow_remote = allow_remote
        self.session = session
        self.checker = checker
        self.on_new = on_new
        self.connect_timeout = connect_timeout
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False
        self._pending: dict[int, asyncio.Future[SendResult]] = {}  # `send` frames awaiting send_ok/error
        self._next_ref = 0
        # What the report says about this connection.
        self.close_codes: Counter[str] = Counter()  # closes the client did not ask for
        self.reconnects = 0
        self.bad_frames = 0
        self.acks = 0
        self.signals: Counter[str] = Counter()  # typing and presence frames received

    @property
    def is_open(self) -> bool:
        return self.ws is not None and not self.ws.closed

    async def connect(self) -> float:
        """Connect and wait for the welcome frame; return the seconds it took."""
        started = time.monotonic()
        url = await self._gateway_url()
        ws = await self.session.ws_connect(url, headers={"Authorization": f"Bearer {self.token}"},
                                           max_msg_size=MAX_FRAME_BYTES, autoping=True,
                                           timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                                           receive_timeout=None)
        try:
            # The welcome (a `system` frame) comes first; it means the server has set the user's
            # route, so from now on his messages are pushed here live.
            while True:
                msg = await asyncio.wait_for(ws.receive(), max(self.connect_timeout - (time.monotonic() - started), 0.01))
                if msg.type is not WSMsgType.TEXT:
                    raise ConnectionError(f"closed before the welcome frame ({ws.close_code})")
                if self._on_text(msg.data, time.monotonic_ns()) == "system":
                    break
        except BaseException:
            await ws.close()
            raise
        self.ws = ws
        self._closing = False
        self._reader = asyncio.create_task(self._read(ws), name=f"receiver-{self.index}")
        return time.monotonic() - started

    async def _gateway_url(self) -> str:
        """Where this user (this device of his, if named) connects, as GoStacker's clients learn it:
        the registry says."""
        gateway = await self.client.available_gateway()
        url = f"ws://{gateway.address}:{gateway.port}/api/ws"
        if self.device_id is not None:
            url += f"?device_id={self.device_id}"
        # The registry could name a gateway elsewhere: it is a target like the others.
        check_target(url, allow_remote=self.allow_remote, what="gateway")
        return url

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self._fail_pending("connection closed")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                msg = await ws.receive()
                now = time.monotonic_ns()  # first: the arrival time must not include our parsing
                if msg.type is WSMsgType.TEXT:
                    self._on_text(msg.data, now)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self.close_codes[f"read error: {type(exc).__name__}"] += 1  # then reconnect, as on a close
        self._fail_pending("connection closed")
        if not self._closing:
            self.close_codes[str(ws.close_code)] += 1
            self._reconnecting = asyncio.create_task(self._reconnect(), name=f"reconnect-{self.index}")

    async def _reconnect(self) -> None:
        """The server closed us: reconnect (bounded attempts) and let the catch-up fill the gap."""
        for delay in RECONNECT_DELAYS:
            await asyncio.sleep(delay)  # back off, as a real client does
            if self._closing:
                return
            try:
                await asyncio.wait_for(self.connect(), self.connect_timeout)
                self.reconnects += 1
                return
            except (TimeoutError, aiohttp.ClientError, PyStackerError, ConnectionError, OSError):
                continue
        self.close_codes["gave up reconnecting"] += 1

    def _on_text(self, data: str, now: int) -> object:
        """Handle one text frame; return its type."""
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.bad_frames += 1
            return None
        if not isinstance(frame, dict):
            self.bad_frames += 1
            return None
        kind = frame.get("type")
        if kind == "chat":
            self._chat(frame, now)
        elif kind == "batch":
            for chat in frame.get("payload") or ():
                if isinstance(chat, dict):
                    self._chat(chat, now)
        elif kind == "ack":
            self.acks += 1
        elif kind in ("typing", "presence"):
            self.signals[kind] += 1
        elif kind in ("send_ok", "error"):
            payload = frame.get("payload")
            ref = payload.get("ref") if isinstance(payload, dict) else None
            future = self._pending.pop(ref, None) if isinstance(ref, int) else None
            if future is not None and not future.done() and isinstance(payload, dict):
                if kind == "send_ok":
                    future.set_result(SendResult(True, int(payload.get("msgID") or frame.get("id") or 0)))
                else:
                    future.set_result(SendResult(False, error=f"status {payload.get('code')}"))
        return kind

    def _chat(self, frame: dict[str, Any], now: int) -> None:
        payload = frame.get("payload")
        tag = parse_text(payload.get("text")) if isinstance(payload, dict) else None
        msg_id = frame.get("id")
        if self.checker.arrive(self.index, msg_id, frame.get("room_id"), frame.get("seq"), tag, now):
            if self.on_new is not None:
                self.on_new(self.index, msg_id, tag, now)  # type: ignore[arg-type]  # arrive() took them: an id and a tag

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result(SendResult(False, error=reason))

    async def send_frame(self, room_id: int, content: dict[str, Any], client_msg_id: str, timeout: float) -> SendResult:
        """PyStacker's WebSocket `send` frame, answered by `send_ok` (or `error`) with our ref."""
        ws = self.ws
        if ws is None or ws.closed:
            return SendResult(False, error="not connected")
        self._next_ref += 1
        ref = self._next_ref
        future: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await ws.send_str(orjson.dumps({"type": "send", "room_id": room_id, "content": content,
                                            "client_msg_id": client_msg_id, "ref": ref}).decode())
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return SendResult(False, error="TimeoutError")
        except (aiohttp.ClientError, ConnectionError) as exc:
            return SendResult(False, error=type(exc).__name__)
        finally:
            self._pending.pop(ref, None)


class HttpSender:
    """POST /api/chat/send_message as the user, to the room's send instance."""

    def __init__(self, http: aiohttp.ClientSession, targets: Targets, token: str, timeout: float) -> None:
        self.http = http
        self.targets = targets
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, room_id: int, content: dict[str, Any], client_msg_id: str) -> SendResult:
        try:
            data = await post_send(self.http, self.targets.send_for(room_id), self.token, room_id, content,
                                   client_msg_id, self.timeout)
            return SendResult(True, int(data["msgID"]))
        except SendRefused as exc:
            return SendResult(False, error=f"status {exc.status}")
        except (TimeoutError, aiohttp.ClientError, OSError, KeyError, ValueError) as exc:
            return SendResult(False, error=type(exc).__name__)


class WsSender:
    """The `send` frame on the user's own receiver socket."""

    def __init__(self, receiver: Receiver, timeout: float) -> None:
        self.receiver = receiver
        self.timeout = timeout

    async def send(self, room_id: int, content: dict[str, Any], client_msg_id: str) -> SendResult:
        return await self.receiver.send_frame(room_id, content, client_msg_id, self.timeout)
