"""Meta HTTP routes: GoStacker's paths, request fields, messages and response shapes.

PyStacker additions: `data.user_id` in the register answer, GET /api/user/profile,
GET /api/chat/group/members, POST /api/chat/group/leave, GET /api/chat/group/info.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, StrictBool, StrictInt, StringConstraints, WithJsonSchema

from pystacker.db.schema import ROLE_ADMIN, ROLE_MEMBER, ROLE_OWNER
from pystacker.db.sqlutil import rfc3339
from pystacker.messaging.history import History
from pystacker.messaging.model import INT64_MAX, PositiveId, QueryId
from pystacker.messaging.readstate import ReadState, room_summaries
from pystacker.meta.service import MetaService
from pystacker.meta.store import Room
from pystacker.web.auth import Auth, identity
from pystacker.web.envelope import ApiError, ok
from pystacker.web.openapi import (
    BOOLEAN,
    ID,
    INTEGER,
    STRING,
    TIMESTAMP,
    Param,
    Reply,
    Route,
    add_routes,
    array,
    component,
    envelope,
    nullable,
    obj,
)
from pystacker.web.ratelimit import TokenBucketLimiter
from pystacker.web.requests import RequestModel, parse_json, parse_query

MAX_BCRYPT_BYTES = 72  # bcrypt ignores (or, in newer versions, refuses) anything longer

# GoStacker's "required" on a number means non-zero; ids here are also positive.


def _no_control_characters(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _no_nul(value: str) -> str:
    # Free text may span lines, but PostgreSQL refuses NUL in text (it would be a 500).
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _no_edge_spaces(value: str) -> str:
    if value != value.strip():
        raise ValueError("must not start or end with spaces")
    return value


def _password_fits_bcrypt(value: str) -> str:
    if len(value.encode()) > MAX_BCRYPT_BYTES:
        raise ValueError(f"must be at most {MAX_BCRYPT_BYTES} bytes in UTF-8")
    return value


Username = Annotated[str, StringConstraints(min_length=3, max_length=50), AfterValidator(_no_control_characters),
                     AfterValidator(_no_edge_spaces)]
Password = Annotated[str, StringConstraints(min_length=6, max_length=100), AfterValidator(_password_fits_bcrypt)]


class RegisterRequest(RequestModel):
    username: Username
    password: Password
    nickname: Annotated[str, StringConstraints(max_length=50), AfterValidator(_no_control_characters)] = ""


class LoginRequest(RequestModel):
    # No stored name has control characters, and PostgreSQL refuses NUL in a query parameter (500).
    username: Annotated[str, StringConstraints(min_length=1, max_length=50), AfterValidator(_no_control_characters)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class CreateRoomRequest(RequestModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_no_control_characters)]
    is_group: StrictBool = False
    member_ids: list[PositiveId]


class AddMemberRequest(RequestModel):
    room_id: PositiveId
    member_id: PositiveId


class AddMembersRequest(RequestModel):
    room_id: PositiveId
    member_ids: list[PositiveId]


class RoomRequest(RequestModel):
    room_id: PositiveId


class TargetRequest(RequestModel):
    room_id: PositiveId
    target_user_id: PositiveId


class ChangeNicknameRequest(RequestModel):
    room_id: PositiveId
    nickname: Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_no_control_characters)]


# Any integer passes the model; MetaService.change_role refuses the others with a text naming the
# three roles (a 400 either way). The schema documents the three.
Role = Annotated[StrictInt, WithJsonSchema({
    "type": "integer", "enum": [ROLE_OWNER, ROLE_ADMIN, ROLE_MEMBER], "minimum": ROLE_OWNER, "maximum": ROLE_MEMBER,
    "description": "0 hands the ownership over (the old owner becomes admin), 1 admin, 2 member"})]


class ChangeRoleRequest(RequestModel):
    room_id: PositiveId
    target_user_id: PositiveId
    new_role: Role


class JoinRequestBody(RequestModel):
    room_id: PositiveId
    message: Annotated[str, StringConstraints(max_length=500), AfterValidator(_no_nul)] | None = None


class RespondRequest(RequestModel):
    request_id: PositiveId
    approve: StrictBool = False


class RoomQuery(RequestModel):
    room_id: QueryId


# -- answers, as OpenAPI components (the handlers below build exactly these) ---------------------------

TAGS_USERS, TAGS_ROOMS, TAGS_MEMBERS, TAGS_REQUESTS = ("users",), ("rooms",), ("members",), ("join requests",)
MAX_SEARCH_TEXT = 100
DEFAULT_SEARCH_LIMIT = 20

REGISTERED = component("Registered", obj({"user_id": ID}))
LOGGED_IN = component("LoggedIn", obj({"token": STRING, "user_id": ID}))
PROFILE = component("Profile", obj({"user_id": ID, "username": STRING, "nickname": nullable(STRING),
                                    "created_at": TIMESTAMP}))
ROOM_CREATED = component("RoomCreated", obj({"room_id": ID}))
MEMBERS_ADDED = component("MembersAdded", obj({"added": array(ID)}))
_ROOM_FIELDS = {"id": ID, "name": STRING, "creator_id": ID, "created_at": TIMESTAMP}
ROOM = component("Room", obj(_ROOM_FIELDS))
SEARCH_RESULT = component("SearchResult", obj({"rooms": array(ROOM)}))
ROOM_INFO = component("RoomInfo", obj({**_ROOM_FIELDS, "is_group": BOOLEAN,
                                       "member_count": {"type": "integer", "minimum": 0}}))
MEMBER = component("Member", obj({"user_id": ID, "username": STRING,
                                  "role": {"enum": [ROLE_OWNER, ROLE_ADMIN, ROLE_MEMBER]},
                                  "nickname": nullable(STRING), "joined_at": nullable(TIMESTAMP)}))
MEMBER_LIST = component("MemberList", obj({"members": array(MEMBER)}))
JOIN_REQUEST_CREATED = component("JoinRequestCreated", obj({"request_id": ID}))
JOIN_REQUEST = component("JoinRequest", obj({"id": ID, "room_id": ID, "user_id": ID, "message": STRING,
                                             "created_at": TIMESTAMP}))
JOIN_REQUEST_LIST = component("JoinRequestList", obj({"requests": array(JOIN_REQUEST)}))
_SEQ = {"type": "integer", "minimum": 0}
LAST_MESSAGE = component("LastMessage", obj({
    "id": ID, "id_str": STRING, "seq": _SEQ, "sender_id": ID, "content_type": STRING,
    "preview": {"type": "string", "description": "the start of a text, else the content type in brackets"},
    "ts": INTEGER}))
JOINED_ROOM = component("JoinedRoom", obj({
    "room_id": ID, "last_seq": _SEQ, "read_seq": _SEQ,
    "unread": {"type": "integer", "minimum": 0, "description": "messages after read_seq (one's own are never unread)"},
    "last_message": nullable(LAST_MESSAGE)}))
JOINED_ROOMS = component("JoinedRooms", obj({"room_ids": array(ID), "rooms": array(JOINED_ROOM)}))


def _room_json(room: Room) -> dict[str, object]:
    return {"id": room.id, "name": room.name, "creator_id": room.creator_id,
            "created_at": rfc3339(room.created_at)}


class MetaRoutes:
    def __init__(self, service: MetaService, *, max_members_per_request: int, max_search_limit: int,
                 login_user_limiter: TokenBucketLimiter | None = None,
                 login_address_limiter: TokenBucketLimiter | None = None,
                 register_address_limiter: TokenBucketLimiter | None = None,
                 room_change_limiter: TokenBucketLimiter | None = None,
                 reading: ReadState | None = None, history: History | None = None) -> None:
        self.reading = reading
        self.history = history
        self.service = service
        self.max_members = max_members_per_request
        self.max_search_limit = max_search_limit
        self.login_user_limiter = login_user_limiter
        self.login_address_limiter = login_address_limiter
        self.register_address_limiter = register_address_limiter
        self.room_change_limiter = room_change_limiter

    def install(self, app: web.Application) -> None:
        # The route table: handlers and their OpenAPI description (GET /openapi.json) in one place.
        bearer, group = Auth.BEARER, "/api/chat/group"
        # 503: the room's membership kept changing under the request; 429: the caller's room_change bucket
        member_change = (403, 404, 429, 503)
        add_routes(app, [
            Route("POST", "/register", self.register, "Create a user", body=RegisterRequest,
                  reply=Reply(envelope(REGISTERED)), errors=(409, 429), error_text={409: "username already exists"},
                  tags=TAGS_USERS),
            Route("POST", "/login", self.login, "Log in: a JWT for the other services", body=LoginRequest,
                  reply=Reply(envelope(LOGGED_IN)), errors=(401, 429),
                  error_text={401: "Invalid username or password (the same answer for an unknown name)"},
                  tags=TAGS_USERS),
            Route("GET", "/api/user/profile", self.profile, "The caller's own profile", auth=bearer,
                  reply=Reply(envelope(PROFILE)), errors=(404,), tags=TAGS_USERS),
            Route("POST", f"{group}/create", self.create, "Create a group or a private (two-member) room",
                  auth=bearer, body=CreateRoomRequest, reply=Reply(envelope(ROOM_CREATED)), errors=(404, 429),
                  error_text={404: "a member id names no user"}, tags=TAGS_ROOMS),
            Route("POST", f"{group}/add_member", self.add_member, "Add one member (owner or admin)", auth=bearer,
                  body=AddMemberRequest, errors=member_change, tags=TAGS_MEMBERS),
            Route("POST", f"{group}/add_members", self.add_members, "Add members (owner or admin)", auth=bearer,
                  body=AddMembersRequest, reply=Reply(envelope(MEMBERS_ADDED)), errors=member_change,
                  tags=TAGS_MEMBERS),
            Route("POST", f"{group}/change_nickname", self.change_nickname, "Set the caller's nickname in a room",
                  auth=bearer, body=ChangeNicknameRequest, errors=member_change, tags=TAGS_MEMBERS),
            Route("POST", f"{group}/change_member_role", self.change_member_role,
                  "Change a member's role (owner only; new_role 0 hands the ownership over)", auth=bearer,
                  body=ChangeRoleRequest, errors=member_change, tags=TAGS_MEMBERS),
            Route("POST", f"{group}/remove_member", self.remove_member, "Remove a member (owner or admin)",
                  auth=bearer, body=TargetRequest, errors=member_change, tags=TAGS_MEMBERS),
            Route("POST", f"{group}/leave", self.leave, "Leave a room", auth=bearer, body=RoomRequest,
                  errors=member_change, tags=TAGS_MEMBERS),
            Route("POST", f"{group}/join", self.join, "Join a group", auth=bearer, body=RoomRequest,
                  errors=member_change, tags=TAGS_MEMBERS),
            Route("GET", f"{group}/search", self.search, "Search groups by name", auth=bearer,
                  params=[Param("q", {"type": "string", "maxLength": MAX_SEARCH_TEXT},
                               "Part of the name; `%` and `_` match themselves"),
                         Param("limit", {"type": "integer", "maximum": INT64_MAX},
                               f"Rooms to return: default {DEFAULT_SEARCH_LIMIT}, capped at limits.max_search_limit; "
                               "a non-numeric or non-positive value means the default (GoStacker's rule)")],
                  reply=Reply(envelope(SEARCH_RESULT)), errors=(400,), tags=TAGS_ROOMS),
            Route("GET", f"{group}/info", self.info, "A room's details (any group; a private room for its members)",
                  auth=bearer, params=RoomQuery, reply=Reply(envelope(ROOM_INFO)), errors=(403, 404),
                  tags=TAGS_ROOMS),
            Route("GET", f"{group}/members", self.members, "A room's members (members only)", auth=bearer,
                  params=RoomQuery, reply=Reply(envelope(MEMBER_LIST)), errors=(403, 404), tags=TAGS_MEMBERS),
            Route("POST", f"{group}/join/request", self.join_request, "Ask to join a group", auth=bearer,
                  body=JoinRequestBody, reply=Reply(envelope(JOIN_REQUEST_CREATED)), errors=(404, 409, 429),
                  tags=TAGS_REQUESTS),
            Route("GET", f"{group}/join/requests", self.join_requests, "Pending join requests (owner or admin)",
                  auth=bearer, params=RoomQuery, reply=Reply(envelope(JOIN_REQUEST_LIST)), errors=(403, 404),
                  tags=TAGS_REQUESTS),
            Route("POST", f"{group}/join/respond", self.join_respond, "Approve or reject a join request",
                  auth=bearer, body=RespondRequest, errors=member_change, tags=TAGS_REQUESTS),
            Route("GET", "/api/joined_rooms", self.joined_rooms,
                  "The caller's rooms: their ids (GoStacker's answer) and, in `rooms`, each one's read state, "
                  "unread count and last message", auth=bearer,
                  reply=Reply(envelope(JOINED_ROOMS)), tags=TAGS_ROOMS),
        ])

    def _check_list_size(self, ids: list[int]) -> None:
        if len(ids) > self.max_members:
            raise ApiError(400, f"member_ids: at most {self.max_members} ids per request")

    def _check_room_change(self, request: web.Request) -> None:
        """One token of the caller's room_change bucket; called after parsing, so that a malformed
        request is a 400 and costs nothing."""
        if self.room_change_limiter is not None:
            self.room_change_limiter.check(identity(request).user_id, "room and membership changes")

    async def register(self, request: web.Request) -> web.Response:
        body = await parse_json(request, RegisterRequest)
        # Before the bcrypt hash, which is what a flood would make us spend; the same proxy caveat
        # as for logins applies to `request.remote`.
        if self.register_address_limiter is not None:
            self.register_address_limiter.check(request.remote or "", "registrations from this address")
        user_id = await self.service.register(body.username, body.password, body.nickname)
        return ok("User registered successfully", {"user_id": user_id})

    async def login(self, request: web.Request) -> web.Response:
        body = await parse_json(request, LoginRequest)
        # Before the password check, and whether the name exists or not: each attempt costs a token,
        # so guessing is slow and the answer (429 or not) says nothing about the account.
        # `request.remote` is the peer: behind a reverse proxy it is the proxy's address.
        if self.login_address_limiter is not None:
            self.login_address_limiter.check(request.remote or "", "login attempts from this address")
        if self.login_user_limiter is not None:
            self.login_user_limiter.check(body.username.lower(), "login attempts for this user")
        token, user = await self.service.login(body.username, body.password)
        return ok("Login successful", {"token": token, "user_id": user.id})

    async def profile(self, request: web.Request) -> web.Response:
        user = await self.service.profile(identity(request).user_id)
        return ok("ok", {"user_id": user.id, "username": user.username, "nickname": user.nickname,
                         "created_at": rfc3339(user.created_at)})

    async def create(self, request: web.Request) -> web.Response:
        body = await parse_json(request, CreateRoomRequest)
        self._check_room_change(request)
        self._check_list_size(body.member_ids)
        room_id = await self.service.create_room(identity(request).user_id, body.name, body.is_group,
                                                 body.member_ids)
        return ok("Chat room created successfully", {"room_id": room_id})

    async def add_member(self, request: web.Request) -> web.Response:
        body = await parse_json(request, AddMemberRequest)
        self._check_room_change(request)
        await self.service.add_members(identity(request).user_id, body.room_id, [body.member_id])
        return ok("Member added successfully")

    async def add_members(self, request: web.Request) -> web.Response:
        body = await parse_json(request, AddMembersRequest)
        self._check_room_change(request)
        self._check_list_size(body.member_ids)
        added = await self.service.add_members(identity(request).user_id, body.room_id, body.member_ids)
        return ok("Members added successfully", {"added": added})

    async def change_nickname(self, request: web.Request) -> web.Response:
        body = await parse_json(request, ChangeNicknameRequest)
        self._check_room_change(request)
        await self.service.change_nickname(identity(request).user_id, body.room_id, body.nickname)
        return ok("Nickname changed successfully")

    async def change_member_role(self, request: web.Request) -> web.Response:
        body = await parse_json(request, ChangeRoleRequest)
        self._check_room_change(request)
        await self.service.change_role(identity(request).user_id, body.room_id, body.target_user_id,
                                       body.new_role)
        return ok("Member role changed successfully")

    async def remove_member(self, request: web.Request) -> web.Response:
        body = await parse_json(request, TargetRequest)
        self._check_room_change(request)
        await self.service.remove_member(identity(request).user_id, body.room_id, body.target_user_id)
        return ok("Member removed successfully")

    async def leave(self, request: web.Request) -> web.Response:
        body = await parse_json(request, RoomRequest)
        self._check_room_change(request)
        await self.service.leave(identity(request).user_id, body.room_id)
        return ok("Left room successfully")

    async def join(self, request: web.Request) -> web.Response:
        body = await parse_json(request, RoomRequest)
        self._check_room_change(request)
        await self.service.join(identity(request).user_id, body.room_id)
        return ok("Joined room successfully")

    async def search(self, request: web.Request) -> web.Response:
        text = request.query.get("q", "")
        if len(text) > MAX_SEARCH_TEXT:
            raise ApiError(400, f"q: at most {MAX_SEARCH_TEXT} characters")
        try:
            _no_control_characters(text)
        except ValueError as exc:
            raise ApiError(400, f"q: {exc}") from None
        try:
            limit = int(request.query.get("limit", DEFAULT_SEARCH_LIMIT))
        except ValueError:
            limit = DEFAULT_SEARCH_LIMIT  # GoStacker's rule: non-numeric means the default
        if limit <= 0:
            limit = DEFAULT_SEARCH_LIMIT
        rooms = await self.service.search(text, min(limit, self.max_search_limit))
        return ok("ok", {"rooms": [_room_json(room) for room in rooms]})

    async def info(self, request: web.Request) -> web.Response:
        query = parse_query(request, RoomQuery)
        room = await self.service.room_for_member(identity(request).user_id, query.room_id)
        count = await self.service.member_count(room.id)
        return ok("ok", {**_room_json(room), "is_group": room.is_group, "member_count": count})

    async def members(self, request: web.Request) -> web.Response:
        query = parse_query(request, RoomQuery)
        members = await self.service.members(identity(request).user_id, query.room_id)
        return ok("ok", {"members": [
            {"user_id": m.user_id, "username": m.username, "role": m.role, "nickname": m.nickname,
             "joined_at": rfc3339(m.joined_at)} for m in members]})

    async def join_request(self, request: web.Request) -> web.Response:
        body = await parse_json(request, JoinRequestBody)
        self._check_room_change(request)
        request_id = await self.service.request_join(identity(request).user_id, body.room_id, body.message)
        return ok("request created", {"request_id": request_id})

    async def join_requests(self, request: web.Request) -> web.Response:
        raw = request.query.get("room_id")
        if not raw:
            raise ApiError(400, "room_id required")
        try:
            room_id = int(raw)
        except ValueError:
            raise ApiError(400, "invalid room_id") from None
        if room_id <= 0 or room_id > INT64_MAX:
            raise ApiError(400, "invalid room_id")
        requests = await self.service.join_requests(identity(request).user_id, room_id)
        return ok("ok", {"requests": [
            {"id": r.id, "room_id": r.room_id, "user_id": r.user_id, "message": r.message or "",
             "created_at": rfc3339(r.created_at)} for r in requests]})

    async def join_respond(self, request: web.Request) -> web.Response:
        body = await parse_json(request, RespondRequest)
        self._check_room_change(request)
        await self.service.respond(identity(request).user_id, body.request_id, body.approve)
        return ok("ok")

    async def joined_rooms(self, request: web.Request) -> web.Response:
        user_id = identity(request).user_id
        room_ids = await self.service.joined_rooms(user_id)
        rooms = (await room_summaries(self.reading, self.history, user_id, room_ids)
                 if self.reading is not None and self.history is not None else [])
        return ok("ok", {"room_ids": room_ids, "rooms": rooms})
