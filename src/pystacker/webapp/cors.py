"""CORS: which web pages may call a service's HTTP routes from another origin.

The chat app is served by meta (port 8082) and calls send (history) and the registry (which gateway)
on other ports: other origins, for a browser. A page may call a service when its Origin is on the
service's own host (any port: the app and the services of one deployment), is listed in
`web.cors_origins`, or that list holds `*`. Tokens travel in the Authorization header, never in
cookies, so an allowed origin gains nothing that a page does not already hold; credentials
(`Access-Control-Allow-Credentials`) are never allowed, and `X-Internal-Token` is not among the
headers a page may send.

A preflight (OPTIONS with Access-Control-Request-Method) is answered by a middleware in front of the
others, before routing reaches a handler and the check of its route (a preflight carries no token),
so no OPTIONS route is added to the route tables. Every other answer gets its headers when it is prepared, errors included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web

from pystacker.web.envelope import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOWED_METHODS = "GET, POST"
ALLOWED_HEADERS = "Authorization, Content-Type, X-Device-Id"  # X-Device-Id: which device gets the ack
EXPOSED_HEADERS = "Retry-After"
PREFLIGHT_MAX_AGE = "600"


class OriginRule:
    def __init__(self, origins: Iterable[str]) -> None:
        self.listed = {origin.rstrip("/").lower() for origin in origins}
        self.any = "*" in self.listed

    def allows(self, request: web.Request, origin: str) -> bool:
        if self.any or origin.lower() in self.listed:
            return True
        try:
            origin_host = urlsplit(origin).hostname
        except ValueError:
            return False
        return origin_host is not None and origin_host == (request.url.host or "").lower()


def allow_browsers(app: web.Application, origins: Iterable[str]) -> None:
    """Answer preflights and add the CORS headers to every answer for the origins the rule allows."""
    rule = OriginRule(origins)

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        origin = request.headers.get("Origin", "")
        if not origin or not rule.allows(request, origin):
            return error_response(403, "origin not allowed: list it in web.cors_origins")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS, "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Vary": "Origin"})

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin and rule.allows(request, origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            response.headers.add("Vary", "Origin")

    # First: a preflight never reaches a route's handler and its check (it carries no token).
    app.middlewares.insert(0, preflight)
    app.on_response_prepare.append(add_headers)
