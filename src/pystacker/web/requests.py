"""Request parsing: JSON bodies and query strings into pydantic models, failures as clear 400s."""

from __future__ import annotations

from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from pystacker.messaging.devices import parse_device_id
from pystacker.web.envelope import ApiError

M = TypeVar("M", bound=BaseModel)


class RequestModel(BaseModel):
    """Base of every request body: strict types (a string is not a number), unknown keys ignored
    as GoStacker's binder ignores them."""

    model_config = ConfigDict(strict=True, extra="ignore", str_strip_whitespace=False)


def describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    if kind == "missing":
        return f"{field} is required"
    return f"{field}: {first['msg']}" if field else first["msg"]


async def parse_json(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    if not raw:
        raise ApiError(400, "request body is required")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid JSON body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, describe(exc)) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    """Query values arrive as strings, so they are validated in lax mode (`"7"` -> 7)."""
    try:
        return model.model_validate(dict(request.query), strict=False)
    except ValidationError as exc:
        raise ApiError(400, describe(exc)) from None


def request_device(request: web.Request) -> str:
    """The device a request speaks for: `?device_id=`, else the `X-Device-Id` header, else `default`."""
    raw = request.query.get("device_id") or request.headers.get("X-Device-Id")
    try:
        return parse_device_id(raw)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
