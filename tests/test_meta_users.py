"""Meta service, users: register, login, profile and the JWT rules of every protected route.

Everything goes over a real socket to the running meta app (fixture `meta`), once per database.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any

import jwt
import pytest

from tests.client import Http, new_user, unique_name
from tests.conftest import TEST_JWT_SECRET

PROFILE = "/api/user/profile"


def assert_error(answer: Any, status: int, msg: str | None = None, *, contains: str | None = None) -> None:
    """A failure answer: that status and GoStacker's envelope `{"code": status, "msg": ...}`."""
    assert answer.status == status, answer
    assert isinstance(answer.body, dict), answer
    assert answer.body["code"] == status, answer
    assert isinstance(answer.body["msg"], str) and answer.body["msg"], answer
    assert "data" not in answer.body, answer
    if msg is not None:
        assert answer.body["msg"] == msg, answer
    if contains is not None:
        assert contains in answer.body["msg"], answer


def claims(user_id: Any = 1, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"username": "someone", "user_id": user_id, "iat": now, "nbf": now, "exp": now + 600}
    base.update(extra)
    return base


# -- register ------------------------------------------------------------------------------------


async def test_register_returns_the_new_user_id(meta: Http) -> None:
    name = unique_name("reg")
    answer = await meta.post("/register", {"username": name, "password": "secret-pw", "nickname": "Reggie"})
    assert answer.status == 200, answer
    assert answer.body["code"] == 0 and answer.msg == "User registered successfully"
    user_id = answer.data["user_id"]
    assert isinstance(user_id, int) and user_id > 0

    login = await meta.post("/login", {"username": name, "password": "secret-pw"})
    profile = await meta.get(PROFILE, token=login.data["token"])
    assert profile.status == 200, profile
    assert profile.data["user_id"] == user_id
    assert profile.data["username"] == name
    assert profile.data["nickname"] == "Reggie"


async def test_register_without_nickname_stores_an_empty_one(meta: Http) -> None:
    name = unique_name("nonick")
    answer = await meta.post("/register", {"username": name, "password": "secret-pw"})
    assert answer.status == 200, answer
    login = await meta.post("/login", {"username": name, "password": "secret-pw"})
    profile = await meta.get(PROFILE, token=login.data["token"])
    assert profile.data["nickname"] == ""


async def test_register_ignores_unknown_fields(meta: Http) -> None:
    """GoStacker's binder ignores unknown keys; old clients may send extra ones."""
    answer = await meta.post("/register", {"username": unique_name("x"), "password": "secret-pw", "avatar": "a.png"})
    assert answer.status == 200, answer
    assert answer.data["user_id"] > 0


@pytest.mark.parametrize(("body", "fragment"), [
    ({"password": "secret-pw"}, "username is required"),
    ({"username": "someone"}, "password is required"),
    ({"username": 12345, "password": "secret-pw"}, "username"),
    ({"username": "someone", "password": 123456}, "password"),
    ({"username": "someone", "password": "secret-pw", "nickname": 5}, "nickname"),
    ({"username": "ab", "password": "secret-pw"}, "username"),
    ({"username": "a" * 51, "password": "secret-pw"}, "username"),
    ({"username": "someone", "password": "12345"}, "password"),
    ({"username": "someone", "password": "p" * 101}, "password"),
    ({"username": "someone", "password": "secret-pw", "nickname": "n" * 51}, "nickname"),
    ({"username": "bad\nname", "password": "secret-pw"}, "control characters"),
    ({"username": "bad\x00name", "password": "secret-pw"}, "control characters"),
    ({"username": "tab\tname", "password": "secret-pw"}, "control characters"),
    ({"username": "del\x7fname", "password": "secret-pw"}, "control characters"),
    ({"username": "someone", "password": "secret-pw", "nickname": "ni\x1bck"}, "control characters"),
], ids=["no-username", "no-password", "username-number", "password-number", "nickname-number",
        "username-short", "username-long", "password-short", "password-long", "nickname-long",
        "newline", "nul", "tab", "del", "escape-in-nickname"])
async def test_register_refuses_invalid_fields(meta: Http, body: dict[str, Any], fragment: str) -> None:
    answer = await meta.post("/register", body)
    assert_error(answer, 400, contains=fragment)


async def test_register_counts_username_length_in_characters(meta: Http) -> None:
    """50 multi-byte characters fit (GoStacker's second check counted bytes and answered 500)."""
    name = unique_name("ü")[:11] + "ü" * 39
    assert len(name) == 50 and len(name.encode()) > 50
    answer = await meta.post("/register", {"username": name, "password": "secret-pw"})
    assert answer.status == 200, answer
    login = await meta.post("/login", {"username": name, "password": "secret-pw"})
    assert login.status == 200, login


async def test_register_refuses_password_over_72_utf8_bytes(meta: Http) -> None:
    """bcrypt only hashes 72 bytes: a longer password would be silently truncated, so refuse it."""
    too_long = "é" * 37  # 37 characters, 74 bytes
    answer = await meta.post("/register", {"username": unique_name("b"), "password": too_long})
    assert_error(answer, 400, contains="72 bytes")


async def test_register_accepts_password_of_exactly_72_bytes_and_it_all_counts(meta: Http) -> None:
    name, password = unique_name("b72"), "é" * 36  # 72 bytes
    assert (await meta.post("/register", {"username": name, "password": password})).status == 200
    assert (await meta.post("/login", {"username": name, "password": password})).status == 200
    wrong_last = "é" * 35 + "e"
    assert_error(await meta.post("/login", {"username": name, "password": wrong_last}), 401,
                 "Invalid username or password")


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"{not json", "invalid JSON"),
    (b'{"username": "abc", ', "invalid JSON"),
    (b'"\\ud800"', "invalid JSON"),
    (b"[1, 2]", "must be an object"),
    (b'"a string"', "must be an object"),
    (b"null", "must be an object"),
    (b"", "body is required"),
    (b'{"username": "\xff\xfe", "password": "secret-pw"}', "invalid JSON"),
], ids=["garbage", "truncated", "lone-surrogate", "array", "string", "null", "empty", "not-utf8"])
async def test_register_refuses_bad_bodies(meta: Http, raw: bytes, fragment: str) -> None:
    answer = await meta.request("POST", "/register", data=raw, headers={"Content-Type": "application/json"})
    assert_error(answer, 400, contains=fragment)


async def test_register_decodes_json_whatever_the_content_type(meta: Http) -> None:
    """GoStacker decodes the body as JSON regardless of Content-Type; its clients rely on it."""
    body = f'{{"username": "{unique_name("ct")}", "password": "secret-pw"}}'.encode()
    answer = await meta.request("POST", "/register", data=body, headers={"Content-Type": "text/plain"})
    assert answer.status == 200, answer
    assert answer.data["user_id"] > 0


async def test_register_duplicate_username_is_409_not_500(meta: Http) -> None:
    name = unique_name("dup")
    first = await meta.post("/register", {"username": name, "password": "secret-pw"})
    assert first.status == 200, first
    second = await meta.post("/register", {"username": name, "password": "other-password"})
    assert_error(second, 409, "username already exists")
    # The first account is untouched: its password still works, the second one does not.
    assert (await meta.post("/login", {"username": name, "password": "secret-pw"})).status == 200
    assert (await meta.post("/login", {"username": name, "password": "other-password"})).status == 401


async def test_usernames_are_unique_and_log_in_whatever_their_case(meta: Http) -> None:
    name = unique_name("Case")
    first = await meta.post("/register", {"username": name, "password": "secret-pw"})
    assert first.status == 200, first
    assert_error(await meta.post("/register", {"username": name.upper(), "password": "secret-pw"}), 409,
                 "username already exists")
    login = await meta.post("/login", {"username": name.lower(), "password": "secret-pw"})
    assert login.status == 200, login
    assert login.data["user_id"] == first.data["user_id"]


@pytest.mark.parametrize(("before", "after"), [(" ", ""), ("", " "), (" ", " ")])
async def test_register_refuses_usernames_with_edge_spaces(meta: Http, before: str, after: str) -> None:
    answer = await meta.post("/register", {"username": before + unique_name("pad") + after, "password": "secret-pw"})
    assert_error(answer, 400, contains="must not start or end with spaces")


async def test_concurrent_registrations_of_one_name_succeed_once(meta: Http) -> None:
    name = unique_name("race")
    answers = await asyncio.gather(*(meta.post("/register", {"username": name, "password": f"password-{i}"})
                                     for i in range(5)))
    assert sorted(a.status for a in answers) == [200, 409, 409, 409, 409], answers
    for answer in answers:
        if answer.status == 409:
            assert_error(answer, 409, "username already exists")


# -- login ---------------------------------------------------------------------------------------


async def test_login_returns_a_token_for_that_user(meta: Http) -> None:
    user = await new_user(meta, "login")
    answer = await meta.post("/login", {"username": user.username, "password": user.password})
    assert answer.status == 200, answer
    assert answer.body["code"] == 0 and answer.msg == "Login successful"
    token = answer.data["token"]
    decoded = jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"])
    assert decoded["user_id"] == user.id and decoded["username"] == user.username
    assert decoded["exp"] - decoded["iat"] == 7200  # jwt.expire_duration default, as GoStacker
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


async def test_login_wrong_password_is_401(meta: Http) -> None:
    user = await new_user(meta, "wrongpw")
    answer = await meta.post("/login", {"username": user.username, "password": "not-the-password"})
    assert_error(answer, 401, "Invalid username or password")


async def test_login_unknown_user_is_401_with_the_same_text(meta: Http) -> None:
    answer = await meta.post("/login", {"username": unique_name("ghost"), "password": "whatever-pw"})
    assert_error(answer, 401, "Invalid username or password")


async def test_login_password_over_72_bytes_is_refused_not_500(meta: Http) -> None:
    user = await new_user(meta, "long")
    answer = await meta.post("/login", {"username": user.username, "password": "x" * 80})
    assert_error(answer, 401, "Invalid username or password")


@pytest.mark.parametrize("body", [
    {"password": "secret-pw"},
    {"username": "someone"},
    {"username": "", "password": "secret-pw"},
    {"username": "someone", "password": ""},
    {"username": ["someone"], "password": "secret-pw"},
], ids=["no-username", "no-password", "empty-username", "empty-password", "username-list"])
async def test_login_refuses_invalid_fields(meta: Http, body: dict[str, Any]) -> None:
    assert_error(await meta.post("/login", body), 400)


async def test_login_with_nul_in_username_is_a_client_error_not_500(meta: Http) -> None:
    """PostgreSQL refuses NUL in text; such a name can never exist, so it must not reach the SQL."""
    answer = await meta.post("/login", {"username": "ab\x00cd", "password": "secret-pw"})
    assert answer.status in (400, 401), answer
    assert answer.body["code"] == answer.status


# -- profile and the JWT middleware --------------------------------------------------------------


async def test_profile_answers_the_callers_own_data(meta: Http) -> None:
    user = await new_user(meta, "prof", nickname="Pro")
    answer = await meta.get(PROFILE, token=user.token)
    assert answer.status == 200, answer
    assert answer.body["code"] == 0
    assert answer.data["user_id"] == user.id
    assert answer.data["username"] == user.username
    assert answer.data["nickname"] == "Pro"
    assert answer.data["created_at"].endswith("Z")
    assert "password" not in str(answer.body) and "$2" not in str(answer.body)


async def test_protected_route_without_header_is_401(meta: Http) -> None:
    assert_error(await meta.get(PROFILE), 401, "Authorization header is required")


@pytest.mark.parametrize("header", ["Token abc", "bearer abc", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "abc"])
async def test_protected_route_with_bad_header_format_is_401(meta: Http, header: str) -> None:
    answer = await meta.get(PROFILE, headers={"Authorization": header})
    assert_error(answer, 401, "Authorization header format must be Bearer {token}")


async def test_valid_token_built_by_hand_is_accepted(meta: Http) -> None:
    """Control for the refusals below: the same construction with the right settings passes."""
    user = await new_user(meta, "hand")
    token = jwt.encode(claims(user.id, username=user.username), TEST_JWT_SECRET, algorithm="HS256")
    answer = await meta.get(PROFILE, token=token)
    assert answer.status == 200, answer
    assert answer.data["user_id"] == user.id


def _bad_tokens(user_id: int) -> dict[str, str]:
    now = int(time.time())
    with warnings.catch_warnings():
        # The HS384/512 tokens use the test secret on purpose; PyJWT warns that it is short for them.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return _build_bad_tokens(user_id, now)


def _build_bad_tokens(user_id: int, now: int) -> dict[str, str]:
    return {
        "expired": jwt.encode(claims(user_id, iat=now - 7300, nbf=now - 7300, exp=now - 100),
                              TEST_JWT_SECRET, algorithm="HS256"),
        "other-secret": jwt.encode(claims(user_id), "another-secret-that-is-long-enough", algorithm="HS256"),
        "alg-none": jwt.encode(claims(user_id), None, algorithm="none"),
        "hs512-right-secret": jwt.encode(claims(user_id), TEST_JWT_SECRET, algorithm="HS512"),
        "hs384-right-secret": jwt.encode(claims(user_id), TEST_JWT_SECRET, algorithm="HS384"),
        "nbf-in-future": jwt.encode(claims(user_id, nbf=now + 3600), TEST_JWT_SECRET, algorithm="HS256"),
        "no-user-id": jwt.encode({k: v for k, v in claims(user_id).items() if k != "user_id"},
                                 TEST_JWT_SECRET, algorithm="HS256"),
        "user-id-string": jwt.encode(claims(str(user_id)), TEST_JWT_SECRET, algorithm="HS256"),
        "user-id-zero": jwt.encode(claims(0), TEST_JWT_SECRET, algorithm="HS256"),
        "no-exp": jwt.encode({k: v for k, v in claims(user_id).items() if k != "exp"},
                             TEST_JWT_SECRET, algorithm="HS256"),
        "garbage": "not.a.jwt",
        "tampered": jwt.encode(claims(user_id), TEST_JWT_SECRET, algorithm="HS256")[:-4] + "AAAA",
    }


@pytest.mark.parametrize("kind", list(_bad_tokens(1)))
async def test_protected_route_refuses_bad_tokens(meta: Http, kind: str) -> None:
    user = await new_user(meta, "tok")
    answer = await meta.get(PROFILE, token=_bad_tokens(user.id)[kind])
    assert_error(answer, 401)
    assert answer.msg.startswith("Invalid token"), answer


async def test_token_of_a_user_that_no_longer_exists_is_refused_not_500(meta: Http) -> None:
    """A correctly signed token for an id with no user (e.g. the database was reset while the
    secret was kept) must not reach the SQL foreign keys as a 500."""
    ghost = jwt.encode(claims(2**62), TEST_JWT_SECRET, algorithm="HS256")
    profile = await meta.get(PROFILE, token=ghost)
    assert profile.status in (401, 404) and profile.body["code"] == profile.status, profile
    created = await meta.post("/api/chat/group/create", {"name": "ghost room", "is_group": True, "member_ids": []},
                              token=ghost)
    assert_error(created, 401, "Invalid token: user no longer exists")
    owner = await new_user(meta, "host")
    room = await meta.post("/api/chat/group/create", {"name": "host room", "is_group": True, "member_ids": []},
                           token=owner.token)
    room_id = room.data["room_id"]
    assert_error(await meta.post("/api/chat/group/join", {"room_id": room_id}, token=ghost), 401,
                 "Invalid token: user no longer exists")
    assert_error(await meta.post("/api/chat/group/join/request", {"room_id": room_id}, token=ghost), 401,
                 "Invalid token: user no longer exists")


@pytest.mark.parametrize("path", [
    "//api/user/profile", "/api//user/profile", "/foo/../api/user/profile", "/api/user/profile/",
    "/%61pi/user/profile", "/api/./user/profile", "/API/user/profile",
])
async def test_path_tricks_never_reach_a_protected_handler_without_a_token(meta: Http, path: str) -> None:
    """Raw request lines (a client library would normalise them): the auth check must not be
    skipped by a path the router still resolves."""
    host, port = meta.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    status = int(status_line.split()[1])
    assert status in (401, 404), raw
    body = rest.partition(b"\r\n\r\n")[2]
    assert f'"code":{status}'.encode() in body, raw
