"""A small HTTP helper for tests: real requests over a real socket, answers as (status, body)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def data(self) -> Any:
        return self.body["data"]

    @property
    def msg(self) -> str:
        return self.body["msg"]


class Http:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session

    async def request(self, method: str, path: str, *, json: Any = None, data: Any = None,
                      token: str | None = None, headers: dict[str, str] | None = None,
                      params: dict[str, Any] | None = None) -> Answer:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.base_url + path, json=json, data=data,
                                        headers=all_headers, params=params) as response:
            text = await response.text()
            try:
                body: Any = await response.json(content_type=None) if text else None
            except ValueError:
                body = text
            return Answer(response.status, body)

    async def get(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> Answer:
        return await self.request("POST", path, json=json, **kwargs)


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class User:
    id: int
    username: str
    password: str
    token: str


async def new_user(meta: Http, prefix: str = "u", nickname: str = "") -> User:
    username, password = unique_name(prefix), "password-1"
    answer = await meta.post("/register", {"username": username, "password": password, "nickname": nickname})
    assert answer.status == 200, answer
    login = await meta.post("/login", {"username": username, "password": password})
    assert login.status == 200, login
    return User(answer.data["user_id"], username, password, login.data["token"])
