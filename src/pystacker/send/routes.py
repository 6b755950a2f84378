"""Send HTTP routes: send_message, resend_message, internal pushback and notify, plus history
and read state."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, StrictBool, StringConstraints, WithJsonSchema

from pystacker.messaging.content import content_json_schema
from pystacker.messaging.handoff import Handoff
from pystacker.messaging.lifecycle import Change
from pystacker.messaging.model import INT64_MAX, ClientMsgId, MessageId, PositiveId, QueryId, QuerySeq, Seq, StoredMessage
from pystacker.messaging.user_presence import MAX_WATCHED, Presence
from pystacker.send.service import SendService
from pystacker.web.auth import Auth, identity
from pystacker.web.envelope import ApiError, ok
from pystacker.web.openapi import (
    BOOLEAN,
    ID,
    INTEGER,
    STRING,
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
from pystacker.web.requests import RequestModel, parse_json, parse_query, request_device

# Validated by parse_content (400/413 with GoStacker-style texts); the schema only documents it.
Content = Annotated[Any, WithJsonSchema(content_json_schema())]


class SendRequest(RequestModel):
    room_id: PositiveId
    content: Content = Field(...)
    client_msg_id: ClientMsgId | None = None
    reply_to: MessageId | None = None


class EditRequest(RequestModel):
    message_id: MessageId
    content: Content = Field(...)
    client_msg_id: ClientMsgId | None = None


class RecallRequest(RequestModel):
    message_id: MessageId
    client_msg_id: ClientMsgId | None = None


class HideRequest(RequestModel):
    message_id: MessageId


class ReactRequest(RequestModel):
    message_id: MessageId
    emoji: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    on: StrictBool = True
    client_msg_id: ClientMsgId | None = None


class ResendRequest(RequestModel):
    message_id: PositiveId


class HistoryQuery(RequestModel):
    room_id: QueryId
    after_seq: QuerySeq | None = None
    before_seq: QueryId | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    events: Annotated[int, Field(ge=0, le=1)] = 0


class ReadRequest(RequestModel):
    room_id: PositiveId
    seq: Seq


class ReadStateQuery(RequestModel):
    room_id: QueryId


class PresenceQuery(RequestModel):
    user_ids: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,18}(,[1-9][0-9]{0,18})*$", max_length=MAX_WATCHED * 20)]

    def ids(self) -> list[int]:
        ids = list(dict.fromkeys(int(part) for part in self.user_ids.split(",")))
        if len(ids) > MAX_WATCHED or max(ids) > INT64_MAX:
            raise ApiError(400, f"user_ids: at most {MAX_WATCHED} ids of users")
        return ids


class PushbackRequest(RequestModel):
    target_id: PositiveId
    forward_req: Any = Field(...)


class NotifyOnlineRequest(RequestModel):
    target_id: PositiveId


# -- answers, as OpenAPI components ------------------------------------------------------------------

SEND_ANSWER = component("SendAnswer", obj({
    "msgID": ID, "id_str": {"type": "string", "pattern": "^[1-9][0-9]*$"}, "seq": ID, "room_id": ID,
    "client_msg_id": nullable(STRING), "duplicate": BOOLEAN}))
CHAT_FRAME = component("ChatFrame", obj({
    "id": ID, "type": {"const": "chat"}, "room_id": ID, "sender_id": ID,
    "payload": {"type": "object", "description": "the content without its `type` key"},
    "seq": ID, "client_msg_id": nullable(STRING), "ts": INTEGER, "id_str": STRING, "content_type": STRING}))
HISTORY_PAGE = component("HistoryPage", {**obj({
    "room_id": ID, "last_seq": {"type": "integer", "minimum": 0}, "has_more": BOOLEAN,
    "messages": array(CHAT_FRAME), "events": array({"type": "object"})}), "required": ["room_id", "last_seq", "has_more"]})
CHANGE_ANSWER = component("MessageChange", obj({
    "message_id": ID, "message_id_str": STRING, "room_id": ID, "seq": nullable(ID), "duplicate": BOOLEAN}))
REACTION_ANSWER = component("ReactionChange", obj({
    "message_id": ID, "message_id_str": STRING, "room_id": ID, "emoji": STRING, "on": BOOLEAN, "count": INTEGER,
    "seq": nullable(ID), "duplicate": BOOLEAN}))
CHANGE_ERRORS = {403: "not allowed to change this message", 404: "message not found",
                 409: "the message was recalled, or its window has passed"}
READ_MARK = component("ReadMark", obj({"room_id": ID, "user_id": ID, "seq": {"type": "integer", "minimum": 0}}))
READ_STATE = component("RoomReadState", obj({
    "room_id": ID, "last_seq": {"type": "integer", "minimum": 0},
    "members": array(obj({"user_id": ID, "read_seq": {"type": "integer", "minimum": 0}}))}))
PRESENCE = component("Presence", obj({"users": array(obj({
    "user_id": ID, "online": BOOLEAN,
    "last_seen": {"type": ["integer", "null"], "description": "ms since the epoch when the last device left"}}))}))
TAGS_MESSAGES, TAGS_INTERNAL, TAGS_READ = ("messages",), ("internal",), ("read state",)


def send_answer(message: StoredMessage, duplicate: bool) -> dict[str, Any]:
    return {"msgID": message.msg_id, "id_str": str(message.msg_id), "seq": message.seq,
            "room_id": message.room_id, "client_msg_id": message.client_msg_id, "duplicate": duplicate}


def change_answer(change: Change) -> dict[str, Any]:
    event = change.event
    return {"message_id": change.message.msg_id, "message_id_str": str(change.message.msg_id),
            "room_id": change.message.room_id, "seq": None if event is None else event.message.seq,
            "edited_at": change.message.edited_at_ms, "duplicate": event is not None and event.duplicate}


def reaction_answer(change: Change, emoji: str, on: bool) -> dict[str, Any]:
    return {**change_answer(change), "emoji": emoji, "on": on, "count": change.count}


class SendRoutes:
    def __init__(self, service: SendService, handoff: Handoff, presence: Presence,
                 send_limiter: TokenBucketLimiter | None = None) -> None:
        self.service = service
        self.handoff = handoff
        self.presence = presence
        self.send_limiter = send_limiter

    def install(self, app: web.Application) -> None:
        # The route table: handlers and their OpenAPI description (GET /openapi.json) in one place.
        add_routes(app, [
            Route("POST", "/api/chat/send_message", self.send_message,
                  "Send a message: stored with its seq before the answer; a retry with the same client_msg_id "
                  "returns the first answer", auth=Auth.BEARER, body=SendRequest, reply=Reply(envelope(SEND_ANSWER)),
                  errors=(403, 404, 413, 429), error_text={403: "not a member of this room", 404: "room not found",
                                                           413: "content over its limits"}, tags=TAGS_MESSAGES),
            Route("POST", "/api/chat/resend_message", self.resend_message,
                  "Push a stored message of the caller's again", auth=Auth.BEARER, body=ResendRequest,
                  errors=(401, 403, 404), error_text={401: "missing or invalid token, or not the sender"},
                  tags=TAGS_MESSAGES),
            Route("POST", "/api/chat/edit_message", self.edit_message,
                  "Edit a message of the caller's (within limits.edit_window_s): a room event with its own seq, "
                  "pushed to every member's devices as an `edit` frame", auth=Auth.BEARER, body=EditRequest,
                  reply=Reply(envelope(CHANGE_ANSWER)), errors=(403, 404, 409, 413), error_text=CHANGE_ERRORS,
                  tags=TAGS_MESSAGES),
            Route("POST", "/api/chat/recall_message", self.recall_message,
                  "Recall a message for everyone: its sender within limits.recall_window_s, the room's owner and "
                  "admins at any time; the content is removed and a tombstone stays (a `recall` frame to everyone)",
                  auth=Auth.BEARER, body=RecallRequest, reply=Reply(envelope(CHANGE_ANSWER)), errors=(403, 404, 409),
                  error_text=CHANGE_ERRORS, tags=TAGS_MESSAGES),
            Route("POST", "/api/chat/hide_message", self.hide_message,
                  "Delete a message for the caller only: left out of his history on every device; nobody is told",
                  auth=Auth.BEARER, body=HideRequest, reply=Reply(envelope(CHANGE_ANSWER)), errors=(403, 404),
                  error_text=CHANGE_ERRORS, tags=TAGS_MESSAGES),
            Route("POST", "/api/chat/react", self.react,
                  "Add (on) or remove a reaction of the caller's: a `reaction` room event when it changes something "
                  "(at most 20 distinct emoji per message, each at most 32 bytes)", auth=Auth.BEARER,
                  body=ReactRequest, reply=Reply(envelope(REACTION_ANSWER)), errors=(403, 404, 409),
                  error_text={**CHANGE_ERRORS, 409: "the message was recalled, or has 20 distinct emoji"},
                  tags=TAGS_MESSAGES),
            Route("GET", "/api/chat/history", self.history,
                  "A page of a room's messages in their current state (edits, tombstones, reactions; without those "
                  "the caller hid): ascending after after_seq, else the newest before before_seq. events=1: every "
                  "entry of the room's log (messages and room events) as frames, by seq",
                  auth=Auth.BEARER, params=HistoryQuery, reply=Reply(envelope(HISTORY_PAGE)), errors=(403, 404),
                  tags=TAGS_MESSAGES),
            Route("POST", "/api/chat/read", self.read,
                  "The caller has read the room up to seq: his read mark moves forward (a seq past the room's end "
                  "counts as its end) and his sockets and the other members get a `read` frame",
                  auth=Auth.BEARER, body=ReadRequest, reply=Reply(envelope(READ_MARK)), errors=(403, 404),
                  error_text={403: "not a member of this room", 404: "room not found"}, tags=TAGS_READ),
            Route("GET", "/api/chat/read_state", self.read_state, "Every member's read seq of a room (members only)",
                  auth=Auth.BEARER, params=ReadStateQuery, reply=Reply(envelope(READ_STATE)), errors=(403, 404),
                  error_text={403: "not a member of this room", 404: "room not found"}, tags=TAGS_READ),
            Route("GET", "/api/presence", self.presence_of,
                  f"Whether each user is online (any device, any gateway) and his last_seen (at most {MAX_WATCHED} "
                  "ids, comma-separated; any signed-in user)", auth=Auth.BEARER, params=PresenceQuery,
                  reply=Reply(envelope(PRESENCE)), tags=("presence",)),
            Route("POST", "/internal/pushback", self.pushback,
                  "GoStacker's pushback: hand a frame that missed its user to his current gateway",
                  auth=Auth.INTERNAL, body=PushbackRequest, tags=TAGS_INTERNAL),
            Route("POST", "/internal/push/notify_online", self.notify_online,
                  "Run the user's catch-up on his gateway now", auth=Auth.INTERNAL, body=NotifyOnlineRequest,
                  reply=Reply(status=202, description="Accepted"), tags=TAGS_INTERNAL),
        ])

    async def send_message(self, request: web.Request) -> web.Response:
        body = await parse_json(request, SendRequest)
        if self.send_limiter is not None:  # after parsing: a malformed request is a 400 and costs nothing
            self.send_limiter.check(identity(request).user_id, "messages")
        appended = await self.service.send(identity(request).user_id, body.room_id, body.content, body.client_msg_id,
                                           request_device(request), reply_to=body.reply_to)
        return ok("success", send_answer(appended.message, appended.duplicate))

    async def edit_message(self, request: web.Request) -> web.Response:
        body = await parse_json(request, EditRequest)
        change = await self.service.changes.edit(identity(request).user_id, body.message_id, body.content,
                                                 body.client_msg_id, request_device(request))
        return ok("success", change_answer(change))

    async def recall_message(self, request: web.Request) -> web.Response:
        body = await parse_json(request, RecallRequest)
        change = await self.service.changes.recall(identity(request).user_id, body.message_id, body.client_msg_id,
                                                   request_device(request))
        return ok("success", change_answer(change))

    async def hide_message(self, request: web.Request) -> web.Response:
        body = await parse_json(request, HideRequest)
        hidden = await self.service.changes.hide(identity(request).user_id, body.message_id)
        return ok("success", {"message_id": hidden.msg_id, "message_id_str": str(hidden.msg_id),
                              "room_id": hidden.room_id})

    async def react(self, request: web.Request) -> web.Response:
        body = await parse_json(request, ReactRequest)
        change = await self.service.changes.react(identity(request).user_id, body.message_id, body.emoji, body.on,
                                                  body.client_msg_id, request_device(request))
        return ok("success", reaction_answer(change, body.emoji, body.on))

    async def resend_message(self, request: web.Request) -> web.Response:
        body = await parse_json(request, ResendRequest)
        await self.service.resend(identity(request).user_id, body.message_id)
        return ok("success")

    async def history(self, request: web.Request) -> web.Response:
        query = parse_query(request, HistoryQuery)
        page = await self.service.room_history(
            identity(request).user_id, query.room_id, after_seq=query.after_seq, before_seq=query.before_seq,
            limit=query.limit, events=bool(query.events))
        entries, last_seq = page.entries, page.last_seq
        first = entries[0].seq if entries else None
        has_more = (entries[-1].seq < last_seq) if query.after_seq is not None and entries else (
            first is not None and first > 1)
        return ok("ok", {"room_id": query.room_id, "last_seq": last_seq, "has_more": has_more,
                         "events" if query.events else "messages": page.frames})

    async def read(self, request: web.Request) -> web.Response:
        body = await parse_json(request, ReadRequest)
        reader = identity(request).user_id
        mark = await self.service.mark_read(reader, body.room_id, body.seq)
        return ok("ok", {"room_id": body.room_id, "user_id": reader, "seq": mark})

    async def read_state(self, request: web.Request) -> web.Response:
        query = parse_query(request, ReadStateQuery)
        last_seq, marks = await self.service.read_state(identity(request).user_id, query.room_id)
        return ok("ok", {"room_id": query.room_id, "last_seq": last_seq,
                         "members": [{"user_id": user, "read_seq": seq} for user, seq in sorted(marks.items())]})

    async def presence_of(self, request: web.Request) -> web.Response:
        ids = parse_query(request, PresenceQuery).ids()
        states = await self.presence.states(ids)
        return ok("ok", {"users": [states[user].to_json(user) for user in ids]})

    async def pushback(self, request: web.Request) -> web.Response:
        body = await parse_json(request, PushbackRequest)
        await self.handoff.pushback(body.target_id, body.forward_req)
        return ok("Pushback success")

    async def notify_online(self, request: web.Request) -> web.Response:
        body = await parse_json(request, NotifyOnlineRequest)
        await self.handoff.catch_up(body.target_id)
        return ok("Accepted", status=202)
