"""WebSocket helpers for the end-to-end messaging tests: real sockets against the embedded system.

`Client` wraps one aiohttp client socket: receive frames with a deadline, keep every frame seen, and
collect room messages from `chat` frames and from the chat frames inside `batch` frames, with or
without dedup by message id. Nothing here sleeps to synchronise: every wait has an event (a frame) and
a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from pystacker.web.auth import INTERNAL_TOKEN_HEADER
from pystacker_tools.chaos.launcher import poll  # noqa: F401 - the tests import it from here
from tests.client import Http, User, new_user

DEFAULT_TIMEOUT = 5.0


def ws_url(gateway_base: str) -> str:
    return gateway_base.replace("http://", "ws://", 1).rstrip("/") + "/api/ws"


def text(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Closed(Exception):
    """The socket closed while a frame was expected."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"socket closed with code {code}")
        self.code = code


@dataclass
class Client:
    user: User
    ws: aiohttp.ClientWebSocketResponse
    frames: list[dict[str, Any]] = field(default_factory=list)  # every frame received, in order
    chats: list[dict[str, Any]] = field(default_factory=list)  # every chat message, duplicates included
    closed_code: int | None = None
    device: str = "default"

    # -- receiving --------------------------------------------------------------------------------

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The next JSON frame; raises TimeoutError after `timeout`, Closed when the socket ends.
        Pings and pongs (seen only with autoping=False) are skipped, unanswered."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = await self.ws.receive(timeout=max(deadline - time.monotonic(), 0.001))
            except aiohttp.ClientConnectionResetError:
                # aiohttp answered a ping on a socket the server is closing; what the server sent
                # before (frames, its close frame) is still buffered: keep reading, until the deadline.
                if time.monotonic() > deadline:
                    raise Closed(self.ws.close_code) from None
                continue
            if msg.type not in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                break
        if msg.type is aiohttp.WSMsgType.TEXT:
            frame = orjson.loads(msg.data)
            self.frames.append(frame)
            self.chats.extend(chats_of(frame))
            return frame
        if msg.type is aiohttp.WSMsgType.CLOSE:
            # The code the server sent (ws.close_code turns into 1006 when the server drops TCP
            # right after its close frame, before the client's answer is written).
            self.closed_code = int(msg.data)
            raise Closed(self.closed_code)
        if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            self.closed_code = self.ws.close_code
            raise Closed(self.closed_code)
        raise AssertionError(f"unexpected WebSocket message {msg.type}: {msg.data!r}")

    async def recv_until(self, predicate: Callable[[dict[str, Any]], bool],
                         timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Receive until a frame matches; returns it (the frames before it are kept in `frames`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching frame within {timeout}s; last frames: {self.frames[-3:]}")
            frame = await self.recv(left)
            if predicate(frame):
                return frame

    async def recv_type(self, kind: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        return await self.recv_until(lambda f: f.get("type") == kind, timeout)

    async def collect(self, count: int, *, room_id: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        """Receive until `count` distinct messages (of `room_id`, if given) are in; returns them in
        arrival order, deduplicated by id."""
        deadline = time.monotonic() + timeout
        while len(self.unique(room_id)) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.unique(room_id))} of {count} messages within {timeout}s")
            await self.recv(left)
        return self.unique(room_id)

    async def expect_silence(self, predicate: Callable[[dict[str, Any]], bool], within: float) -> None:
        """Fail if a matching frame arrives within `within` seconds (the wait is a receive deadline)."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await self.recv(left)
            except TimeoutError:
                return
            assert not predicate(frame), f"unexpected frame {frame}"

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Read (and keep) what is left until the server closes; returns the close code."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"socket not closed within {timeout}s")
            try:
                await self.recv(left)
            except Closed as closed:
                return closed.code

    def unique(self, room_id: int | None = None) -> list[dict[str, Any]]:
        return dedup(c for c in self.chats if room_id is None or c["room_id"] == room_id)

    def seqs(self, room_id: int) -> list[int]:
        return [c["seq"] for c in self.unique(room_id)]

    # -- sending ----------------------------------------------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def send_chat(self, room_id: int, body: str, client_msg_id: str | None = None, ref: Any = None) -> None:
        frame: dict[str, Any] = {"type": "send", "room_id": room_id, "content": {"type": "text", "text": body}}
        if client_msg_id is not None:
            frame["client_msg_id"] = client_msg_id
        if ref is not None:
            frame["ref"] = ref
        await self.send_frame(frame)

    async def close(self) -> None:
        await self.ws.close()

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (a client that vanished)."""
        transport = self.ws._response.connection.transport  # noqa: SLF001 - the raw socket, on purpose
        assert transport is not None
        transport.abort()


def chats_of(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages a frame carries: itself for `chat`, its payload list for `batch`."""
    if frame.get("type") == "chat":
        return [frame]
    if frame.get("type") == "batch" and isinstance(frame.get("payload"), list):
        return [c for item in frame["payload"] for c in chats_of(item)]
    return []


def dedup(chats: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[int] = set()
    out = []
    for chat in chats:
        if chat["id"] not in seen:
            seen.add(chat["id"])
            out.append(chat)
    return out


async def connect(session: aiohttp.ClientSession, gateway_base: str, user: User, *, via: str = "header",
                  catchup: bool = True, welcome: bool = True, autoping: bool = True, device: str | None = None,
                  acks: bool = False, events: bool = True, **kwargs: Any) -> Client:
    """Open /api/ws for `user` (token in the Authorization header, or `?token=`) as `device` (none:
    the `default` device), and by default read the welcome `system` frame. `events=False`: a
    GoStacker client (only GoStacker's frame types are sent to it)."""
    params: dict[str, str] = {}
    if events:
        params["events"] = "1"
    if device is not None:
        params["device_id"] = device
    if acks:  # the client's `ack` frames alone move its cursor
        params["acks"] = "1"
    headers: dict[str, str] = {}
    if via == "header":
        headers["Authorization"] = f"Bearer {user.token}"
    else:
        params["token"] = user.token
    if not catchup:
        params["catchup"] = "0"
    ws = await session.ws_connect(ws_url(gateway_base), headers=headers, params=params, autoping=autoping, **kwargs)
    client = Client(user, ws, device=device or "default")
    if welcome:
        frame = await client.recv()
        assert frame["type"] == "system" and frame["payload"] == "Connected to WebSocket server", frame
    return client


# -- HTTP shortcuts -----------------------------------------------------------------------------------


async def make_room(meta: Http, owner: User, members: list[User], *, is_group: bool = True) -> int:
    created = await meta.post("/api/chat/group/create",
                              {"name": text("room"), "is_group": is_group, "member_ids": [m.id for m in members]},
                              token=owner.token)
    assert created.status == 200, created
    return int(created.data["room_id"])


async def new_users(meta: Http, count: int, prefix: str = "u") -> list[User]:
    return list(await asyncio.gather(*(new_user(meta, prefix) for _ in range(count))))


async def send_http(send: Http, user: User, room_id: int, body: str, client_msg_id: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"room_id": room_id, "content": {"type": "text", "text": body}}
    if client_msg_id is not None:
        payload["client_msg_id"] = client_msg_id
    answer = await send.post("/api/chat/send_message", payload, token=user.token)
    assert answer.status == 200, answer
    return answer.data


async def history(send: Http, user: User, room_id: int, **params: Any) -> dict[str, Any]:
    answer = await send.get("/api/chat/history", params={"room_id": room_id, **params}, token=user.token)
    assert answer.status == 200, answer
    return answer.data




# -- the system under test ----------------------------------------------------------------------------


@dataclass
class Api:
    """HTTP clients for the embedded system's services, on a session of the test's own."""

    system: Any  # pystacker.embedded.EmbeddedSystem
    session: aiohttp.ClientSession
    meta: Http
    send: Http
    registry: Http
    gateway: Http

    @property
    def internal_headers(self) -> dict[str, str]:
        """The header internal routes need: the token `pystacker up` made in its data folder."""
        return {INTERNAL_TOKEN_HEADER: self.system.config.internal.token.get_secret_value()}

    @property
    def gateway_url(self) -> str:
        return self.system.urls["gateway"]

    async def users(self, count: int, prefix: str = "u") -> list[User]:
        """Registered over HTTP (one bcrypt each); tokens minted in-process to skip the login's bcrypt
        (the login route itself is covered by the client-flow test)."""
        async def one() -> User:
            username = f"{prefix}{uuid.uuid4().hex[:10]}"
            answer = await self.meta.post("/register", {"username": username, "password": "password-1"})
            assert answer.status == 200, answer
            user_id = answer.data["user_id"]
            return User(user_id, username, "password-1", self.system.runtime.tokens.issue(user_id, username))
        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def connect(self, user: User, **kwargs: Any) -> Client:
        return await connect(self.session, self.gateway_url, user, **kwargs)

    async def settle(self, client: Client, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Read until the gateway has confirmed every frame it wrote to this client. A client that
        never acks confirms by answering pings, which its library does while it reads; a real
        client reads all along, a test client only when told to, so tests call this before leaving
        when they assert that nothing is sent twice after a reconnect."""
        conn = self.gateway_service.connection(client.user.id, client.device)

        async def confirmed() -> bool:
            try:
                await client.recv(0.05)
            except TimeoutError:
                pass
            return conn is None or conn.confirmed

        await poll(confirmed, timeout=timeout)

    @property
    def gateway_service(self) -> Any:
        from pystacker.gateway.app import GATEWAY_SERVICE

        return self.system.apps["gateway"][GATEWAY_SERVICE]


@asynccontextmanager
async def open_api(system: Any) -> AsyncIterator[Api]:
    # limit=0: the sockets of a 50-member room must not wait for a free slot in the connection pool.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        urls = system.urls
        yield Api(system, session, Http(urls["meta"], session), Http(urls["send"], session),
                  Http(urls["registry"], session), Http(urls["gateway"], session))
