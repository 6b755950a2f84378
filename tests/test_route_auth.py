"""Who may call a route is what its route table entry says (`Route.auth`), and nothing else: no path
prefix, no middleware of the service's own. A small application with one route of each `Auth` kind,
under paths that the services' old prefix rules would have judged otherwise (a bearer route outside
`/api/`, a public one under `/api/`, an internal one outside `/internal/`), served by the services'
own server code on a free port and called over real HTTP.

The services' real tables are held to their documents by tests/test_fuzz_http.py
(test_documented_security_is_enforced); the texts of the 401s by tests/test_meta_users.py and
tests/test_security_audit.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import pystacker.web.auth as auth_module
from pystacker.web.auth import INTERNAL_TOKEN_HEADER, Auth, Credentials, TokenService, optional_identity
from pystacker.web.envelope import ok
from pystacker.web.openapi import Route, add_routes
from pystacker.web.server import Listener, Servers, bind_socket, new_app
from pystacker.webapp.cors import allow_browsers
from tests.client import Answer, Http

SECRET = "route-auth-test-secret-0123456789"
INTERNAL_TOKEN = "route-auth-internal-" + uuid.uuid4().hex
USER_ID = 42

# Each kind of route, at a path chosen so that only the table can say what it needs.
PATHS = {
    Auth.NONE: "/api/open",
    Auth.BEARER: "/plain/bearer",
    Auth.OPTIONAL_BEARER: "/api/optional",
    Auth.INTERNAL: "/service/internal",
    Auth.WEBSOCKET: "/socket",
}


async def who(request: web.Request) -> web.Response:
    """What the route's check left for the handler: the caller, if any."""
    caller = optional_identity(request)
    return ok("ok", {"user_id": caller.user_id if caller else None})


def probe_app(credentials: Credentials) -> web.Application:
    app = new_app("probe", max_body_bytes=1024, credentials=credentials)
    add_routes(app, [Route("GET", path, who, f"{kind.value} probe", auth=kind) for kind, path in PATHS.items()]
               + [Route("POST", "/service/internal", who, "internal probe (POST)", auth=Auth.INTERNAL)])
    allow_browsers(app, ())  # preflights of the probe's own host are answered, as on every service
    return app


@dataclass
class Probe:
    http: Http
    tokens: TokenService

    async def call(self, method: str, kind_or_path: Auth | str, *, headers: dict[str, str] | None = None,
                   params: dict[str, Any] | None = None) -> Answer:
        path = PATHS[kind_or_path] if isinstance(kind_or_path, Auth) else kind_or_path
        return await self.http.request(method, path, headers=headers, params=params)


@asynccontextmanager
async def serving(credentials: Credentials) -> AsyncIterator[Http]:
    servers = Servers()
    await servers.start([Listener("probe", probe_app(credentials), bind_socket("127.0.0.1", 0))])
    try:
        async with aiohttp.ClientSession() as session:
            yield Http(f"http://127.0.0.1:{servers.bound['probe']}", session)
    finally:
        await servers.stop()


@pytest.fixture(scope="module")
async def probe() -> AsyncIterator[Probe]:
    tokens = TokenService(SECRET, 3600)
    async with serving(Credentials(tokens, INTERNAL_TOKEN)) as http:
        yield Probe(http, tokens)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(answer: Answer, msg: str) -> bool:
    return answer.status == 401 and answer.body == {"code": 401, "msg": msg}


MISSING = "Authorization header is required"
MALFORMED = "Authorization header format must be Bearer {token}"
WRONG_INTERNAL = f"internal route: missing or wrong {INTERNAL_TOKEN_HEADER} header"


async def test_a_public_route_needs_nothing_and_names_nobody(probe: Probe) -> None:
    """Under /api/, where every route used to need a token: the table says NONE, so none is asked,
    and a token sent anyway names nobody (the handler sees no caller)."""
    token = probe.tokens.issue(USER_ID, "alice")
    for headers in (None, bearer(token), bearer("not.a.jwt"), {INTERNAL_TOKEN_HEADER: "wrong"}):
        answer = await probe.call("GET", Auth.NONE, headers=headers)
        assert answer.status == 200 and answer.data == {"user_id": None}, (headers, answer)


async def test_a_bearer_route_refuses_with_gostackers_texts_and_names_the_caller(probe: Probe) -> None:
    """Outside /api/: the table alone makes it a bearer route."""
    token = probe.tokens.issue(USER_ID, "alice")
    assert refused(await probe.call("GET", Auth.BEARER), MISSING)
    assert refused(await probe.call("GET", Auth.BEARER, params={"token": token}), MISSING)  # never ?token=
    assert refused(await probe.call("GET", Auth.BEARER, headers={"Authorization": "Basic abc"}), MALFORMED)
    assert refused(await probe.call("GET", Auth.BEARER, headers={"Authorization": "Bearer "}), MALFORMED)
    wrong = await probe.call("GET", Auth.BEARER, headers=bearer("not.a.jwt"))
    assert wrong.status == 401 and wrong.body["code"] == 401 and wrong.msg.startswith("Invalid token: ")
    other = TokenService("another-secret-0123456789abcdef-xyz", 3600).issue(USER_ID, "alice")
    assert (await probe.call("GET", Auth.BEARER, headers=bearer(other))).status == 401
    expired = probe.tokens.issue(USER_ID, "alice", now=1_000_000)
    assert (await probe.call("GET", Auth.BEARER, headers=bearer(expired))).msg == "Invalid token: Signature has expired"
    assert refused(await probe.call("GET", Auth.BEARER, headers={INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN}), MISSING)
    answer = await probe.call("GET", Auth.BEARER, headers=bearer(token))
    assert answer.status == 200 and answer.data == {"user_id": USER_ID}
    # aiohttp's HEAD of a GET route goes through the same check
    assert (await probe.call("HEAD", Auth.BEARER)).status == 401
    assert (await probe.call("HEAD", Auth.BEARER, headers=bearer(token))).status == 200


async def test_an_optional_bearer_route_never_refuses(probe: Probe) -> None:
    token = probe.tokens.issue(USER_ID, "alice")
    for headers in (None, bearer("not.a.jwt"), {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        answer = await probe.call("GET", Auth.OPTIONAL_BEARER, headers=headers)
        assert answer.status == 200 and answer.data == {"user_id": None}, (headers, answer)
    answer = await probe.call("GET", Auth.OPTIONAL_BEARER, headers=bearer(token))
    assert answer.status == 200 and answer.data == {"user_id": USER_ID}


async def test_an_internal_route_needs_the_token_and_nothing_else_opens_it(probe: Probe) -> None:
    """Outside /internal/ and /center/: the table alone makes it internal, on every method."""
    token = probe.tokens.issue(USER_ID, "alice")
    for method in ("GET", "POST"):
        for headers in (None, {INTERNAL_TOKEN_HEADER: ""}, {INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN + "x"},
                        {INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN[:-1]}, bearer(token)):
            assert refused(await probe.call(method, Auth.INTERNAL, headers=headers), WRONG_INTERNAL), (method, headers)
        answer = await probe.call(method, Auth.INTERNAL, headers={INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN})
        assert answer.status == 200 and answer.data == {"user_id": None}, method


async def test_a_websocket_route_takes_the_header_or_the_query_token(probe: Probe) -> None:
    token = probe.tokens.issue(USER_ID, "alice")
    assert refused(await probe.call("GET", Auth.WEBSOCKET), MISSING)
    assert (await probe.call("GET", Auth.WEBSOCKET, params={"token": "not.a.jwt"})).msg.startswith("Invalid token: ")
    for headers, params in ((bearer(token), None), (None, {"token": token})):
        answer = await probe.call("GET", Auth.WEBSOCKET, headers=headers, params=params)
        assert answer.status == 200 and answer.data == {"user_id": USER_ID}, (headers, params)
    # a header, when sent, is the one checked (as GoStacker's middleware does)
    assert (await probe.call("GET", Auth.WEBSOCKET, headers=bearer("not.a.jwt"), params={"token": token})).status == 401
    assert refused(await probe.call("GET", Auth.WEBSOCKET, headers={"Authorization": "Basic abc"},
                                    params={"token": token}), MALFORMED)


async def test_what_is_not_in_the_table_is_not_found_and_preflights_need_no_token(probe: Probe) -> None:
    """No prefix protects a path the table does not have: it is a 404 (a wrong method a 405), with or
    without credentials. A browser's preflight carries no token and is answered before any check."""
    for path in ("/api/nothing", "/plain/nothing", "/internal/nothing", "/center/nothing", "/nothing"):
        for headers in (None, {INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN}):
            answer = await probe.call("POST", path, headers=headers)
            assert answer.status == 404 and answer.body == {"code": 404, "msg": "not found"}, (path, answer)
    wrong_method = await probe.call("DELETE", Auth.BEARER)
    assert wrong_method.status == 405 and wrong_method.body == {"code": 405, "msg": "method not allowed"}
    origin = probe.http.base_url
    for kind in (Auth.BEARER, Auth.INTERNAL):
        preflight = await probe.call("OPTIONS", kind, headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
        assert preflight.status == 204, (kind, preflight)
    token = probe.tokens.issue(USER_ID, "alice")
    answer = await probe.call("GET", Auth.BEARER, headers={**bearer(token), "Origin": origin})
    assert answer.status == 200


async def test_the_internal_token_is_compared_in_constant_time(probe: Probe, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = auth_module.hmac.compare_digest

    def recording(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", recording)
    assert (await probe.call("GET", Auth.INTERNAL, headers={INTERNAL_TOKEN_HEADER: "nope"})).status == 401
    assert (await probe.call("GET", Auth.INTERNAL, headers={INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN})).status == 200
    assert compared == [(b"nope", INTERNAL_TOKEN.encode()), (INTERNAL_TOKEN.encode(), INTERNAL_TOKEN.encode())]


async def test_an_empty_internal_token_closes_the_internal_routes_to_everyone() -> None:
    tokens = TokenService(SECRET, 3600)
    async with serving(Credentials(tokens, "")) as http:
        for headers in (None, {INTERNAL_TOKEN_HEADER: ""}, {INTERNAL_TOKEN_HEADER: "anything"}):
            for method in ("GET", "POST"):
                assert refused(await http.request(method, PATHS[Auth.INTERNAL], headers=headers), WRONG_INTERNAL)
        assert (await http.get(PATHS[Auth.BEARER], token=tokens.issue(USER_ID, "alice"))).status == 200


@pytest.mark.parametrize(("kind", "credentials"), [
    (Auth.BEARER, Credentials(internal_token=INTERNAL_TOKEN)),
    (Auth.OPTIONAL_BEARER, Credentials(internal_token=INTERNAL_TOKEN)),
    (Auth.WEBSOCKET, Credentials()),
    (Auth.INTERNAL, Credentials(tokens=TokenService(SECRET, 3600))),
])
def test_a_route_whose_check_the_app_cannot_make_is_refused_at_start(kind: Auth, credentials: Credentials) -> None:
    """Not a route that would answer every caller (or none) at run time: the application is not built."""
    app = new_app("probe", max_body_bytes=1024, credentials=credentials)
    with pytest.raises(ValueError, match="/needs"):
        add_routes(app, [Route("GET", "/needs", who, "probe", auth=kind)])
    add_routes(app, [Route("GET", "/public", who, "probe")])  # a public route needs nothing
