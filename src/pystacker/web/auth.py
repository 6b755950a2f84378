"""Who may call a route, and the checks that enforce it.

JWT issue and check (HS256 pinned), the Bearer header rules of GoStacker's middleware, the internal
token, and `guarded`: the one place that turns a route's `Auth` (its entry in a route table,
web/openapi.py) into the check its handler runs behind. No path prefix decides who may call what:
`add_routes` wraps each handler with the check its Route declares, and the same declaration is the
route's security in the OpenAPI document.
"""

from __future__ import annotations

import functools
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

import jwt
from aiohttp import web

from pystacker.web.envelope import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALGORITHM = "HS256"
INTERNAL_TOKEN_HEADER = "X-Internal-Token"
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
    """The caller of a route whose Auth is BEARER or WEBSOCKET (its check put him there)."""
    return request[IDENTITY_KEY]


def optional_identity(request: web.Request) -> Identity | None:
    """The caller of an OPTIONAL_BEARER route, when he sent a valid token."""
    return request.get(IDENTITY_KEY)


class Auth(Enum):
    """Who may call a route."""

    NONE = "none"
    BEARER = "bearer"  # Authorization: Bearer <jwt>
    OPTIONAL_BEARER = "optional-bearer"  # a token is used when sent (registry's lease), never required
    INTERNAL = "internal"  # the X-Internal-Token header (internal routes and registry writes)
    WEBSOCKET = "websocket"  # a bearer token in the header, or `?token=` (browsers cannot set headers)


@dataclass(frozen=True)
class Credentials:
    """What an application checks its callers against (`new_app(credentials=...)`).

    `internal_token` is the deployment's shared `internal.token`; when it is empty, the routes that
    need it are closed to everyone. None of either: the application has no route that needs it, and
    installing one is an error (at start, not at the first request)."""

    tokens: TokenService | None = None
    internal_token: str | None = None


CREDENTIALS_KEY = web.AppKey("credentials", Credentials)


def guarded(auth: Auth, handler: Handler, credentials: Credentials, *, route: str) -> Handler:
    """`handler` behind the check that `auth` names (`route` names it in a configuration error).

    BEARER and WEBSOCKET answer 401 with GoStacker's texts and put the caller in
    `request[IDENTITY_KEY]`; OPTIONAL_BEARER puts him there when his token is valid and never refuses;
    INTERNAL compares `X-Internal-Token` in constant time."""
    if auth is Auth.NONE:
        return handler
    if auth is Auth.INTERNAL:
        if credentials.internal_token is None:
            raise ValueError(f"{route} needs the internal token: the application has none (new_app credentials)")
        return _internal(handler, credentials.internal_token.encode())
    tokens = credentials.tokens
    if tokens is None:
        raise ValueError(f"{route} needs the JWT service: the application has none (new_app credentials)")
    check = {Auth.BEARER: _bearer, Auth.WEBSOCKET: _websocket, Auth.OPTIONAL_BEARER: _optional_bearer}[auth]
    return check(handler, tokens)


def _bearer(handler: Handler, tokens: TokenService) -> Handler:
    @functools.wraps(handler)
    async def bearer(request: web.Request) -> web.StreamResponse:
        # Never `?token=`: a URL ends up in proxy logs and browser history.
        request[IDENTITY_KEY] = tokens.verify(bearer_token(request))
        return await handler(request)

    return bearer


def _websocket(handler: Handler, tokens: TokenService) -> Handler:
    @functools.wraps(handler)
    async def websocket(request: web.Request) -> web.StreamResponse:
        # Browsers cannot set headers on a WebSocket: `?token=` is accepted here (and only here).
        if "Authorization" not in request.headers and request.query.get("token"):
            request[IDENTITY_KEY] = tokens.verify(request.query["token"])
        else:
            request[IDENTITY_KEY] = tokens.verify(bearer_token(request))
        return await handler(request)

    return websocket


def _optional_bearer(handler: Handler, tokens: TokenService) -> Handler:
    @functools.wraps(handler)
    async def optional_bearer(request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            try:
                request[IDENTITY_KEY] = tokens.verify(header[7:].strip())
            except ApiError:
                pass  # what the token is for is an optimisation (the registry's lease): no refusal
        return await handler(request)

    return optional_bearer


def _internal(handler: Handler, expected: bytes) -> Handler:
    """Internal routes (pushback, notify, registry writes, /center/forward) need the shared
    `internal.token` (GoStacker left them open: compatibility.md #31). With an empty token they are
    closed to everyone."""

    @functools.wraps(handler)
    async def internal(request: web.Request) -> web.StreamResponse:
        given = request.headers.get(INTERNAL_TOKEN_HEADER, "").encode()
        if not expected or not hmac.compare_digest(given, expected):
            raise ApiError(401, f"internal route: missing or wrong {INTERNAL_TOKEN_HEADER} header")
        return await handler(request)

    return internal
