"""The REST side of the client: accounts, rooms, history and sending over HTTP.

One `PyStackerClient` talks to the three HTTP services (meta, send, registry) with one aiohttp
session and one token. `connect()` opens a WebSocket `Session` (session.py) for live messages.
Every request has a timeout; every refusal raises `PyStackerError(status, msg)` with the server's text.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from pystacker.client.errors import PyStackerError
from pystacker.client.models import (
    ChatMessage,
    EditResult,
    Gateway,
    HistoryPage,
    Member,
    PresenceEvent,
    ReactResult,
    RecallResult,
    RoomInfo,
    RoomState,
    SendResult,
    as_content,
    room_entry_from_frame,
)

if TYPE_CHECKING:
    from pystacker.client.session import Session

DEFAULT_TIMEOUT = 10.0


def new_client_msg_id() -> str:
    return uuid.uuid4().hex


def user_id_from_token(token: str) -> int | None:
    """The `user_id` claim of a JWT, read without verifying it (GoStacker's login answer has no
    user id; the server verifies the token anyway)."""
    try:
        body = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return int(claims["user_id"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class PyStackerClient:
    def __init__(self, meta_url: str, send_url: str, registry_url: str, *, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, http: aiohttp.ClientSession | None = None,
                 device_id: str | None = None) -> None:
        """`device_id`: this device of the user (1-64 printable ASCII characters, no space at either end), kept
        across runs by the application: each device has its own socket and cursors, and gets the
        acks of what it sends. None: the user's `default` device, as a GoStacker client."""
        self.meta_url = meta_url.rstrip("/")
        self.device_id = device_id
        self.send_url = send_url.rstrip("/")
        self.registry_url = registry_url.rstrip("/")
        self.timeout = timeout
        self.token = token
        self.user_id: int | None = user_id_from_token(token) if token else None
        self._credentials: tuple[str, str] | None = None
        self._http = http
        self._owns_http = http is None

    async def __aenter__(self) -> PyStackerClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # No session-wide total: each request sets its own, and a WebSocket lives as long as it likes.
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout))
            self._owns_http = True
        return self._http

    async def close(self) -> None:
        if self._owns_http and self._http is not None and not self._http.closed:
            await self._http.close()

    # -- transport -------------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        if not self.token:
            raise PyStackerError(401, "not logged in")
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.device_id is not None:
            headers["X-Device-Id"] = self.device_id  # the WebSocket, and the acks of HTTP sends
        return headers

    async def _call(self, method: str, url: str, *, json: Any = None, params: dict[str, Any] | None = None,
                    auth: bool = True) -> Any:
        """One request; the envelope's `data` on success, PyStackerError otherwise."""
        headers = self.auth_headers() if auth else {}
        try:
            async with self.http.request(method, url, json=json, params=params, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                raw = await response.read()
                status = response.status
                reason = response.reason or ""
        except TimeoutError:
            raise PyStackerError(0, f"{method} {url}: no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise PyStackerError(0, f"{method} {url}: {exc}") from None
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict) and status < 300 and body.get("code", 0) == 0:
            return body.get("data")
        if isinstance(body, dict) and isinstance(body.get("msg"), str):
            raise PyStackerError(status, body["msg"])
        text = raw.decode(errors="replace").strip()[:200]
        raise PyStackerError(status, text or reason or "unexpected answer")

    # -- users -----------------------------------------------------------------------------------

    async def register(self, username: str, password: str, nickname: str = "") -> int:
        """Create an account; returns its user id (PyStacker's answer has it; GoStacker's has not: 0)."""
        data = await self._call("POST", f"{self.meta_url}/register", auth=False,
                                json={"username": username, "password": password, "nickname": nickname})
        return int((data or {}).get("user_id", 0))

    async def login(self, username: str, password: str) -> str:
        """Log in and keep the token (and the credentials, to log in again when the token expires)."""
        data = await self._call("POST", f"{self.meta_url}/login", auth=False,
                                json={"username": username, "password": password})
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            raise PyStackerError(500, "login answer without a token")
        self.token = data["token"]
        self.user_id = int(data["user_id"]) if data.get("user_id") else user_id_from_token(self.token)
        self._credentials = (username, password)
        return self.token

    async def relogin(self) -> bool:
        """Log in again with the credentials of the last login; False when there are none."""
        if self._credentials is None:
            return False
        await self.login(*self._credentials)
        return True

    async def profile(self) -> dict[str, Any]:
        profile: dict[str, Any] = await self._call("GET", f"{self.meta_url}/api/user/profile")
        return profile

    # -- rooms -----------------------------------------------------------------------------------

    async def create_room(self, name: str, member_ids: list[int] | tuple[int, ...] = (), is_group: bool = True) -> int:
        data = await self._call("POST", f"{self.meta_url}/api/chat/group/create",
                                json={"name": name, "is_group": is_group, "member_ids": list(member_ids)})
        return int(data["room_id"])

    async def add_members(self, room_id: int, member_ids: list[int] | tuple[int, ...]) -> None:
        await self._call("POST", f"{self.meta_url}/api/chat/group/add_members",
                         json={"room_id": room_id, "member_ids": list(member_ids)})

    async def add_member(self, room_id: int, member_id: int) -> None:
        """One member: GoStacker's route, the only one it has (`add_members` answers 404 there)."""
        await self._call("POST", f"{self.meta_url}/api/chat/group/add_member",
                         json={"room_id": room_id, "member_id": member_id})

    async def join(self, room_id: int) -> None:
        await self._call("POST", f"{self.meta_url}/api/chat/group/join", json={"room_id": room_id})

    async def leave(self, room_id: int) -> None:
        await self._call("POST", f"{self.meta_url}/api/chat/group/leave", json={"room_id": room_id})

    async def joined_rooms(self) -> list[int]:
        data = await self._call("GET", f"{self.meta_url}/api/joined_rooms")
        return sorted(int(r) for r in (data or {}).get("room_ids") or [])

    async def rooms(self) -> list[RoomState]:
        """Your rooms with their read state, unread counts and last messages, by room id."""
        data = await self._call("GET", f"{self.meta_url}/api/joined_rooms")
        return sorted((RoomState.from_json(r) for r in (data or {}).get("rooms") or []), key=lambda r: r.room_id)

    async def room_info(self, room_id: int) -> RoomInfo:
        data = await self._call("GET", f"{self.meta_url}/api/chat/group/info", params={"room_id": room_id})
        return RoomInfo(int(data["id"]), str(data.get("name", "")), bool(data.get("is_group", True)),
                        int(data.get("member_count", 0)))

    async def members(self, room_id: int) -> list[Member]:
        data = await self._call("GET", f"{self.meta_url}/api/chat/group/members", params={"room_id": room_id})
        return [Member(int(m["user_id"]), str(m.get("username", "")), str(m.get("nickname") or ""),
                       int(m.get("role", 2))) for m in (data or {}).get("members") or []]

    async def search_rooms(self, query: str = "", limit: int = 20) -> list[dict[str, Any]]:
        data = await self._call("GET", f"{self.meta_url}/api/chat/group/search", params={"q": query, "limit": limit})
        return list((data or {}).get("rooms") or [])

    # -- messages --------------------------------------------------------------------------------

    async def send(self, room_id: int, content: str | dict[str, Any], client_msg_id: str | None = None, *,
                   reply_to: int | None = None) -> SendResult:
        """Send over HTTP. With a client_msg_id a retry is safe: it returns the first send's answer.
        `reply_to`: the id of the message of the same room this one answers (400 if it is not there)."""
        body: dict[str, Any] = {"room_id": room_id, "content": as_content(content)}
        if client_msg_id is not None:
            body["client_msg_id"] = client_msg_id
        if reply_to is not None:
            body["reply_to"] = reply_to
        data = await self._call("POST", f"{self.send_url}/api/chat/send_message", json=body)
        return SendResult.from_answer(data or {}, room_id)

    async def edit(self, message_id: int, content: str | dict[str, Any],
                   client_msg_id: str | None = None) -> EditResult:
        """Replace the content of one of your messages (within `limits.edit_window_s`: 409 after it, and
        on a recalled message; 403 on another's). The room gets an `edit` event. A client_msg_id is
        generated when none is given; the result carries it: a retry with it is answered with the first
        edit (duplicate=True), so nothing is changed twice."""
        client_msg_id = client_msg_id or new_client_msg_id()
        data = await self._call("POST", f"{self.send_url}/api/chat/edit_message",
                                json={"message_id": message_id, "content": as_content(content),
                                      "client_msg_id": client_msg_id})
        return EditResult.from_answer(data or {}, client_msg_id)

    async def recall(self, message_id: int, client_msg_id: str | None = None) -> RecallResult:
        """Take a message back: its content is gone for everyone, a tombstone stays. Its sender within
        `limits.recall_window_s` (409 after it), the room's owner and admins at any time (403 for the
        others); 409 if it already was. The client_msg_id is as for `edit`."""
        client_msg_id = client_msg_id or new_client_msg_id()
        data = await self._call("POST", f"{self.send_url}/api/chat/recall_message",
                                json={"message_id": message_id, "client_msg_id": client_msg_id})
        return RecallResult.from_answer(data or {}, client_msg_id)

    async def hide(self, message_id: int) -> int:
        """Hide a message from your own history, on every device; nobody is told. Returns its room id."""
        data = await self._call("POST", f"{self.send_url}/api/chat/hide_message", json={"message_id": message_id})
        return int((data or {}).get("room_id", 0))

    async def react(self, message_id: int, emoji: str, on: bool = True,
                    client_msg_id: str | None = None) -> ReactResult:
        """Put (`on`) or take back an emoji (1-32 bytes of UTF-8; at most 20 distinct per message: 409)
        on a message. The room gets a `reaction` event when it changed something (`seq` None when not).
        The client_msg_id is as for `edit`."""
        client_msg_id = client_msg_id or new_client_msg_id()
        data = await self._call("POST", f"{self.send_url}/api/chat/react",
                                json={"message_id": message_id, "emoji": emoji, "on": on,
                                      "client_msg_id": client_msg_id})
        return ReactResult.from_answer(data or {}, client_msg_id)

    async def read(self, room_id: int, seq: int) -> int:
        """You have read the room up to `seq` (past its end counts as its end); returns your read mark,
        which only moves forward. Your connections and the other members get a `read` frame."""
        data = await self._call("POST", f"{self.send_url}/api/chat/read", json={"room_id": room_id, "seq": seq})
        return int(data["seq"])

    async def read_state(self, room_id: int) -> dict[int, int]:
        """Every member's read seq of a room (user id -> seq)."""
        data = await self._call("GET", f"{self.send_url}/api/chat/read_state", params={"room_id": room_id})
        return {int(m["user_id"]): int(m["read_seq"]) for m in (data or {}).get("members") or []}

    async def presence(self, user_ids: Sequence[int]) -> dict[int, PresenceEvent]:
        """Whether each user (at most 200) is online, and his last_seen."""
        data = await self._call("GET", f"{self.send_url}/api/presence",
                                params={"user_ids": ",".join(str(u) for u in user_ids)})
        return {event.user_id: event for event in (PresenceEvent.from_frame(u) for u in (data or {}).get("users") or [])}

    async def history(self, room_id: int, after_seq: int | None = None, before_seq: int | None = None,
                      limit: int = 50, *, events: bool = False) -> HistoryPage:
        """A page of a room: ascending after `after_seq`, else the newest before `before_seq` (or the
        newest of all); `limit` is at most 200. The messages are in their current state (edited
        content, tombstones, quotes, reactions), without those you hid. `events=True`: every entry
        of the page by seq instead, messages and room events (`page.events`; `page.messages` are its
        messages), to follow a room incrementally."""
        params: dict[str, Any] = {"room_id": room_id, "limit": limit}
        if after_seq is not None:
            params["after_seq"] = after_seq
        if before_seq is not None:
            params["before_seq"] = before_seq
        if events:
            params["events"] = 1
        data = await self._call("GET", f"{self.send_url}/api/chat/history", params=params)
        entries = [e for e in (room_entry_from_frame(f) for f in data.get("events") or [] if isinstance(f, dict))
                   if e is not None]
        messages = ([e for e in entries if isinstance(e, ChatMessage)] if events else
                    [ChatMessage.from_frame(m) for m in data.get("messages") or []])
        return HistoryPage(int(data.get("room_id", room_id)), int(data.get("last_seq", 0)),
                           bool(data.get("has_more", False)), messages, entries)

    # -- live connection -------------------------------------------------------------------------

    async def available_gateway(self, avoid: Sequence[str] = ()) -> Gateway:
        """The gateway the registry chooses for this user (it keeps a reconnecting user where he was).
        `avoid`: gateways this client could not reach; the registry checks them and names another one
        if it can."""
        params: dict[str, Any] = {"user_id": self.user_id} if self.user_id else {}
        if self.device_id is not None:
            params["device_id"] = self.device_id  # this device's own reconnect lease
        if avoid:
            params["exclude"] = ",".join(avoid)
        data = await self._call("GET", f"{self.registry_url}/registry/gateway/available", params=params or None,
                                auth=False)
        address = str(data.get("address") or "")
        if address in ("", "0.0.0.0", "::"):  # a gateway bound to every interface: reach it where the registry is
            address = urlsplit(self.registry_url).hostname or "127.0.0.1"
        return Gateway(str(data.get("gateway_id", "")), address, int(data["port"]))

    async def connect(self, **options: Any) -> Session:
        """Open a live session (WebSocket); see `Session` for the options. Raises PyStackerError when
        the first connection cannot be made; later drops are repaired by the session itself."""
        from pystacker.client.session import Session

        session = Session(self, **options)
        await session.start()
        return session
