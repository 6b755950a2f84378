"""GoStacker's response envelope `{"code", "msg", "data"}` and the error that produces it.

`code` is 0 on success and the HTTP status on failure, as in GoStacker; `data` is omitted when empty.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from pystacker.messaging.errors import Conflict, Invalid, NotAllowed, NotFound, Refused, TooLarge


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def ok(msg: str, data: Any = None, *, status: int = 200) -> web.Response:
    body: dict[str, Any] = {"code": 0, "msg": msg}
    if data is not None:
        body["data"] = data
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, msg: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps({"code": status, "msg": msg}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class ApiError(Exception):
    """Raised anywhere below a handler; the error middleware turns it into an envelope."""

    def __init__(self, status: int, msg: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.headers = headers


REFUSAL_STATUS: dict[type[Refused], int] = {Invalid: 400, TooLarge: 413, NotAllowed: 403, NotFound: 404, Conflict: 409}


def refusal_status(refused: Refused) -> int:
    """The HTTP status of a refusal of the messaging rules (messaging/errors.py)."""
    return next((status for kind, status in REFUSAL_STATUS.items() if isinstance(refused, kind)), 400)


def bad_request(msg: str) -> ApiError:
    return ApiError(400, msg)


def forbidden(msg: str = "permission denied") -> ApiError:
    return ApiError(403, msg)


def not_found(msg: str) -> ApiError:
    return ApiError(404, msg)


def conflict(msg: str) -> ApiError:
    return ApiError(409, msg)
