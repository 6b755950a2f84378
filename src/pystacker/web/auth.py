"""JWT issue and check (HS256 pinned), and the Bearer header rules of GoStacker's middleware."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from aiohttp import web

from pystacker.web.envelope import ApiError

ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    username: str


class TokenService:
    def __init__(self, secret: str, lifetime_seconds: int) -> None:
        if not secret:
            raise ValueError("empty JWT secret")
        self._secret = secret
        self._lifetime = lifetime_seconds

    def issue(self, user_id: int, username: str, *, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims = {"username": username, "user_id": user_id, "iat": issued, "nbf": issued,
                  "exp": issued + self._lifetime}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Identity:
        """Check signature, algorithm, exp and nbf; raise ApiError(401) with GoStacker's text."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # pinned: "none" and other HMAC variants are refused
                options={"require": ["exp", "user_id"]},
            )
        except jwt.PyJWTError as exc:
            raise ApiError(401, f"Invalid token: {exc}") from None
        user_id = claims.get("user_id")
        if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
            raise ApiError(401, "Invalid token: bad user_id claim")
        username = claims.get("username")
        return Identity(user_id=user_id, username=username if isinstance(username, str) else "")


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization")
    if not header:
        raise ApiError(401, "Authorization header is required")
    scheme, _, token = header.partition(" ")
    if scheme != "Bearer" or not token.strip():
        raise ApiError(401, "Authorization header format must be Bearer {token}")
    return token.strip()


IDENTITY_KEY = web.RequestKey("identity", Identity)


def identity(request: web.Request) -> Identity:
    """The caller of a route that sits behind `require_user`."""
    return request[IDENTITY_KEY]
