"""JWT issue and check (HS256 pinned), and the Bearer header rules of GoStacker's middleware."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt
from aiohttp import web

from pystacker.web.envelope import ApiError

ALGORITHM = "HS256"
# Tokens whose signature was checked, remembered with their validity window: a sender's every request
# carries the same token, and decoding it again (HMAC, base64, JSON) was ~6% of a loaded send's CPU.
VERIFIED_CACHE_SIZE = 10_000


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
        # token -> (identity, nbf, exp); the string is what was signed, so equal strings, equal claims.
        self._verified: OrderedDict[str, tuple[Identity, float, float]] = OrderedDict()

    def issue(self, user_id: int, username: str, *, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims = {"username": username, "user_id": user_id, "iat": issued, "nbf": issued,
                  "exp": issued + self._lifetime}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Identity:
        """Check signature, algorithm, exp and nbf; raise ApiError(401) with GoStacker's text."""
        known = self._verified.get(token)
        if known is not None:
            found, not_before, expires = known
            if not_before <= time.time() < expires:
                self._verified.move_to_end(token)
                return found
            del self._verified[token]  # expired (or not yet valid): let the full check say why
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
        found = Identity(user_id=user_id, username=username if isinstance(username, str) else "")
        not_before = claims.get("nbf", float("-inf"))
        if isinstance(claims["exp"], (int, float)) and isinstance(not_before, (int, float)):
            self._verified[token] = (found, float(not_before), float(claims["exp"]))
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return found


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
