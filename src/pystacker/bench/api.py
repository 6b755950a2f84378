"""The public HTTP API the bench uses, and nothing else: what any GoStacker client can call.

meta: /register, /login, /api/chat/group/create, /api/chat/group/add_members (add_member as a
fallback); send: /api/chat/send_message; registry: /registry/gateway/available.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from pystacker.bench.safety import BenchError, check_target

JSON_HEADERS = {"Content-Type": "application/json"}
MEMBERS_PER_REQUEST = 500  # PyStacker's limit; GoStacker has none


@dataclass(frozen=True)
class Targets:
    meta: str
    send: str  # one URL, or several separated by commas (a deployment with several send instances)
    registry: str

    @property
    def sends(self) -> list[str]:
        return [url.strip().rstrip("/") for url in self.send.split(",") if url.strip()]

    def send_for(self, room_id: int) -> str:
        """The send instance for a room: a room sticks to one, as behind a balancer with affinity."""
        sends = self.sends
        return sends[room_id % len(sends)]

    def check(self, allow_remote: bool) -> None:
        for name in ("meta", "registry"):
            check_target(getattr(self, name), allow_remote=allow_remote, what=f"--{name}")
        for url in self.sends:
            check_target(url, allow_remote=allow_remote, what="--send")


class ApiError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(f"{status} {msg}")
        self.status = status
        self.msg = msg


def user_id_from_token(token: str) -> int | None:
    """The `user_id` claim of a JWT, unverified: GoStacker's login answer has no user id."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        value = claims.get("user_id")
        return int(value) if value is not None else None
    except (IndexError, ValueError, TypeError, orjson.JSONDecodeError):
        return None


def _auth(token: str) -> dict[str, str]:
    return {**JSON_HEADERS, "Authorization": f"Bearer {token}"}


class PublicApi:
    def __init__(self, session: aiohttp.ClientSession, targets: Targets, *, allow_remote: bool,
                 timeout: float = 30.0) -> None:
        self.session = session
        self.targets = targets
        self.allow_remote = allow_remote
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, method: str, url: str, body: Any = None, token: str | None = None,
                    params: dict[str, str] | None = None) -> Any:
        headers = _auth(token) if token else JSON_HEADERS
        data = orjson.dumps(body) if body is not None else None
        async with self.session.request(method, url, data=data, headers=headers, params=params,
                                        timeout=self.timeout) as response:
            raw = await response.read()
        try:
            envelope = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise ApiError(response.status, raw[:200].decode(errors="replace")) from None
        if not isinstance(envelope, dict):
            raise ApiError(response.status, "answer is not a JSON object")
        if response.status != 200 or envelope.get("code", 0) != 0:
            raise ApiError(response.status, str(envelope.get("msg", "")))
        return envelope.get("data") or {}

    async def register(self, username: str, password: str) -> int | None:
        """The new user's id (None when the server does not say, as GoStacker)."""
        data = await self._call("POST", self.targets.meta + "/register", {"username": username, "password": password})
        value = data.get("user_id") if isinstance(data, dict) else None
        return int(value) if value is not None else None

    async def login(self, username: str, password: str) -> tuple[int, str]:
        data = await self._call("POST", self.targets.meta + "/login", {"username": username, "password": password})
        token = data["token"]
        user_id = data.get("user_id") or user_id_from_token(token)
        if user_id is None:
            raise BenchError("login answer has no user id and the token has no user_id claim")
        return int(user_id), token

    async def create_room(self, token: str, name: str, is_group: bool, member_ids: list[int]) -> int:
        first, rest = member_ids[:MEMBERS_PER_REQUEST], member_ids[MEMBERS_PER_REQUEST:]
        data = await self._call("POST", self.targets.meta + "/api/chat/group/create",
                                {"name": name, "is_group": is_group, "member_ids": first}, token)
        room_id = int(data["room_id"])
        for start in range(0, len(rest), MEMBERS_PER_REQUEST):
            await self.add_members(token, room_id, rest[start:start + MEMBERS_PER_REQUEST])
        return room_id

    async def add_members(self, token: str, room_id: int, member_ids: list[int]) -> None:
        try:
            await self._call("POST", self.targets.meta + "/api/chat/group/add_members",
                             {"room_id": room_id, "member_ids": member_ids}, token)
        except ApiError as exc:
            if exc.status != 404:
                raise
            for member_id in member_ids:  # GoStacker has only the one-by-one route
                await self._call("POST", self.targets.meta + "/api/chat/group/add_member",
                                 {"room_id": room_id, "member_id": member_id}, token)

    async def joined_rooms(self, token: str) -> list[int]:
        data = await self._call("GET", self.targets.meta + "/api/joined_rooms", token=token)
        return list(data.get("room_ids") or [])

    async def send_message(self, token: str, room_id: int, content: dict[str, Any], client_msg_id: str | None,
                           timeout: aiohttp.ClientTimeout | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"room_id": room_id, "content": content}
        if client_msg_id is not None:
            body["client_msg_id"] = client_msg_id
        async with self.session.post(self.targets.send_for(room_id) + "/api/chat/send_message", data=orjson.dumps(body),
                                     headers=_auth(token), timeout=timeout or self.timeout) as response:
            raw = await response.read()
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(response.status, raw[:200].decode(errors="replace")) from None
        if response.status != 200 or envelope.get("code", 0) != 0:
            raise ApiError(response.status, str(envelope.get("msg", "")))
        data: dict[str, Any] = envelope["data"]
        return data

    async def gateway_url(self, user_id: int, device_id: str | None = None) -> str:
        """Where this user (this device of his, if named) should connect, as GoStacker's clients learn
        it: ask the registry."""
        params = {"user_id": str(user_id)}
        if device_id is not None:
            params["device_id"] = device_id
        data = await self._call("GET", self.targets.registry + "/registry/gateway/available", params=params)
        url = f"ws://{data['address']}:{data['port']}/api/ws"
        if device_id is not None:
            url += f"?device_id={device_id}"
        # The registry could name a gateway elsewhere: it is a target like the others.
        check_target(url, allow_remote=self.allow_remote, what="gateway")
        return url
