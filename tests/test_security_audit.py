"""Security rules not covered elsewhere, checked over real HTTP against the embedded system (docs/security.md):

- a login for an unknown username takes as long as one with a wrong password (no existence oracle);
- passwords and tokens never reach the logs;
- a token in the query string is accepted on the WebSocket route only, never on a REST route;
- every length and count limit: the value at the limit passes, one more is a 400.

The rate limits and the internal token are in tests/test_security_limits.py, JWT refusals in
tests/test_meta_users.py, the fuzzers in tests/test_fuzz_http.py and tests/test_fuzz_ws.py.
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.client import User
from tests.ws import Api, make_room, open_api

LOGIN_SAMPLES = 15  # under the per-username login burst (20): no attempt is answered by the limiter


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


async def timed_login(api: Api, username: str, password: str) -> float:
    started = time.perf_counter()
    answer = await api.meta.post("/login", {"username": username, "password": password})
    elapsed = time.perf_counter() - started
    assert answer.status == 401, answer
    return elapsed


async def test_an_unknown_username_takes_as_long_to_refuse_as_a_wrong_password(api: Api) -> None:
    """A behaviour check, not a benchmark: without the bcrypt check against a decoy hash, an unknown
    name is refused about 50 times faster (no hash to check) and the timing tells which names exist.
    The two kinds alternate, so that a slower or faster phase of the machine affects both alike."""
    (user,) = await api.users(1, "timing")
    unknown, wrong = [], []
    for attempt in range(LOGIN_SAMPLES):
        unknown.append(await timed_login(api, f"nobody-{uuid.uuid4().hex[:12]}", "wrong-password"))
        wrong.append(await timed_login(api, user.username, f"wrong-password-{attempt}"))
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 <= ratio <= 2, (f"median unknown-user login {statistics.median(unknown) * 1000:.1f} ms, "
                               f"wrong-password login {statistics.median(wrong) * 1000:.1f} ms")


def everything_logged(records: list[logging.LogRecord]) -> str:
    """The text of every record: message, arguments, extra fields and traceback."""
    standard = set(vars(logging.makeLogRecord({})))
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.extend(repr(value) for key, value in vars(record).items() if key not in standard)
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


async def test_passwords_and_tokens_never_reach_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # everything any handler could write, a log file included
    password = f"Pw-{uuid.uuid4().hex}"
    username = f"logcheck{uuid.uuid4().hex[:8]}"
    assert (await api.meta.post("/register", {"username": username, "password": password})).status == 200
    login = await api.meta.post("/login", {"username": username, "password": password})
    assert login.status == 200
    token = login.data["token"]
    assert (await api.meta.post("/login", {"username": username, "password": password + "x"})).status == 401
    assert (await api.meta.post("/login", {"username": "nobody-" + username, "password": password})).status == 401
    # refused bodies: one too long, one malformed JSON around the password
    assert (await api.meta.post("/register", {"username": username + "2", "password": password * 4})).status == 400
    raw = f'{{"username": "{username}", "password": "{password}"'.encode()
    assert (await api.meta.request("POST", "/login", data=raw)).status == 400
    # the token in the WebSocket's query string, and on a REST route where it is refused
    user = User(login.data["user_id"], username, password, token)
    client = await api.connect(user, via="query")
    await client.close()
    assert (await api.meta.get("/api/user/profile", params={"token": token})).status == 401
    logged = everything_logged(caplog.records)
    assert caplog.records, "nothing was logged: the check would prove nothing"
    assert password not in logged
    assert token not in logged and token.split(".")[2] not in logged  # nor the signature alone


async def test_a_token_in_the_query_string_is_refused_on_every_rest_route(api: Api) -> None:
    """Browsers need `?token=` for the WebSocket only; on REST a token in a URL ends up in proxy logs
    and browser history, so every route that needs a bearer token refuses it there."""
    (user,) = await api.users(1, "qtoken")
    checked = []
    for service in ("meta", "send"):
        http = getattr(api, service)
        document = (await http.get("/openapi.json")).body
        for path, methods in document["paths"].items():
            for method, operation in methods.items():
                if {"bearerAuth": []} not in operation.get("security", []):
                    continue
                answer = await http.request(method.upper(), path, params={"token": user.token}, json={})
                assert answer.status == 401, (service, method, path, answer)
                assert answer.body == {"code": 401, "msg": "Authorization header is required"}, answer
                checked.append(path)
    assert len(checked) >= 19 and "/api/chat/send_message" in checked
    # the WebSocket route takes it (tests/test_messaging_flow.py covers the socket itself)
    gateway_doc = (await api.gateway.get("/openapi.json")).body
    assert {"queryToken": []} in gateway_doc["paths"]["/api/ws"]["get"]["security"]


# -- limits: at the limit passes, one more is refused --------------------------------------------------


def unique(prefix: str, length: int) -> str:
    return (prefix + uuid.uuid4().hex * 4)[:length]


async def test_username_and_nickname_limits_at_registration(api: Api) -> None:
    assert (await api.meta.post("/register", {"username": unique("u", 50), "password": "password-1"})).status == 200
    too_long = await api.meta.post("/register", {"username": unique("u", 51), "password": "password-1"})
    assert too_long.status == 400 and "username" in too_long.msg
    at_limit = await api.meta.post("/register", {"username": unique("n", 20), "password": "password-1",
                                                 "nickname": "n" * 50})
    assert at_limit.status == 200, at_limit
    over = await api.meta.post("/register", {"username": unique("n", 20), "password": "password-1",
                                             "nickname": "n" * 51})
    assert over.status == 400 and "nickname" in over.msg
    # login refuses a name no account can have, before any lookup
    assert (await api.meta.post("/login", {"username": "u" * 51, "password": "password-1"})).status == 400


@pytest.mark.parametrize(("path", "field", "limit", "body"), [
    ("/api/chat/group/create", "name", 100, lambda room_id, value: {"name": value, "is_group": True, "member_ids": []}),
    ("/api/chat/group/change_nickname", "nickname", 100,
     lambda room_id, value: {"room_id": room_id, "nickname": value}),
    ("/api/chat/group/join/request", "message", 500, lambda room_id, value: {"room_id": room_id, "message": value}),
], ids=["room-name", "room-nickname", "join-request-message"])
async def test_room_text_limits(api: Api, path: str, field: str, limit: int, body: Any) -> None:
    owner, asker = await api.users(2, "textlim")
    room_id = await make_room(api.meta, owner, [])
    caller = asker if path.endswith("join/request") else owner
    at_limit = await api.meta.post(path, body(room_id, "é" * limit), token=caller.token)  # characters, not bytes
    assert at_limit.status == 200, at_limit
    if path.endswith("join/request"):  # a second pending request would be a 409: answer the first
        caller = (await api.users(1, "textlim"))[0]
    over = await api.meta.post(path, body(room_id, "é" * (limit + 1)), token=caller.token)
    assert over.status == 400 and field in over.msg, over


async def test_member_list_limit_is_checked_before_anything_else(api: Api) -> None:
    """500 ids pass the count check (then 404: no such users, nobody added); 501 are refused at once."""
    (owner,) = await api.users(1, "listlim")
    room_id = await make_room(api.meta, owner, [])
    ghosts = list(range(2**62, 2**62 + 501))
    for path, body in (("/api/chat/group/add_members", {"room_id": room_id}),
                       ("/api/chat/group/create", {"name": "big", "is_group": True})):
        at_limit = await api.meta.post(path, {**body, "member_ids": ghosts[:500]}, token=owner.token)
        assert at_limit.status == 404, (path, at_limit)
        over = await api.meta.post(path, {**body, "member_ids": ghosts}, token=owner.token)
        assert over.status == 400 and over.msg == "member_ids: at most 500 ids per request", (path, over)


async def test_search_text_and_limit(api: Api) -> None:
    (user,) = await api.users(1, "searchlim")
    assert (await api.meta.get("/api/chat/group/search", params={"q": "q" * 100}, token=user.token)).status == 200
    over = await api.meta.get("/api/chat/group/search", params={"q": "q" * 101}, token=user.token)
    assert over.status == 400 and over.msg == "q: at most 100 characters"
    # a limit over the cap is served capped, not refused (GoStacker's clients send large ones)
    capped = await api.meta.get("/api/chat/group/search", params={"limit": 10**6}, token=user.token)
    assert capped.status == 200 and len(capped.data["rooms"]) <= 100
