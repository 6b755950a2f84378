"""Send HTTP routes (spec 2.3): send_message, resend_message, internal pushback and notify, plus history."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, StrictInt, StringConstraints

from pystacker.engine.base import StoredMessage
from pystacker.messaging.frames import chat_frame
from pystacker.send.service import SendService
from pystacker.web.auth import identity
from pystacker.web.envelope import ok
from pystacker.web.ratelimit import TokenBucketLimiter
from pystacker.web.requests import RequestModel, parse_json, parse_query

PositiveId = Annotated[StrictInt, Field(gt=0, le=2**63 - 1)]
ClientMsgId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]


class SendRequest(RequestModel):
    room_id: PositiveId
    content: Any = Field(...)
    client_msg_id: ClientMsgId | None = None


class ResendRequest(RequestModel):
    message_id: Annotated[StrictInt, Field(gt=0)]


class HistoryQuery(RequestModel):
    room_id: Annotated[int, Field(gt=0, le=2**63 - 1)]
    after_seq: Annotated[int, Field(ge=0)] | None = None
    before_seq: Annotated[int, Field(gt=0)] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class PushbackRequest(RequestModel):
    target_id: PositiveId
    forward_req: Any = Field(...)


class NotifyOnlineRequest(RequestModel):
    target_id: PositiveId


def send_answer(message: StoredMessage, duplicate: bool) -> dict[str, Any]:
    return {"msgID": message.msg_id, "id_str": str(message.msg_id), "seq": message.seq,
            "room_id": message.room_id, "client_msg_id": message.client_msg_id, "duplicate": duplicate}


class SendRoutes:
    def __init__(self, service: SendService, handoff, send_limiter: TokenBucketLimiter | None = None) -> None:  # type: ignore[no-untyped-def]
        self.service = service
        self.handoff = handoff
        self.send_limiter = send_limiter

    def install(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/api/chat/send_message", self.send_message)
        r.add_post("/api/chat/resend_message", self.resend_message)
        r.add_get("/api/chat/history", self.history)
        r.add_post("/internal/pushback", self.pushback)
        r.add_post("/internal/push/notify_online", self.notify_online)

    async def send_message(self, request: web.Request) -> web.Response:
        body = await parse_json(request, SendRequest)
        if self.send_limiter is not None:  # after parsing: a malformed request is a 400 and costs nothing
            self.send_limiter.check(identity(request).user_id, "messages")
        appended = await self.service.send(identity(request).user_id, body.room_id, body.content, body.client_msg_id)
        return ok("success", send_answer(appended.message, appended.duplicate))

    async def resend_message(self, request: web.Request) -> web.Response:
        body = await parse_json(request, ResendRequest)
        await self.service.resend(identity(request).user_id, body.message_id)
        return ok("success")

    async def history(self, request: web.Request) -> web.Response:
        query = parse_query(request, HistoryQuery)
        messages, last_seq = await self.service.room_history(
            identity(request).user_id, query.room_id, after_seq=query.after_seq, before_seq=query.before_seq,
            limit=query.limit)
        first = messages[0].seq if messages else None
        has_more = (messages[-1].seq < last_seq) if query.after_seq is not None and messages else (
            first is not None and first > 1)
        return ok("ok", {"room_id": query.room_id, "last_seq": last_seq, "has_more": has_more,
                         "messages": [chat_frame(m) for m in messages]})

    async def pushback(self, request: web.Request) -> web.Response:
        body = await parse_json(request, PushbackRequest)
        await self.handoff.pushback(body.target_id, body.forward_req)
        return ok("Pushback success")

    async def notify_online(self, request: web.Request) -> web.Response:
        body = await parse_json(request, NotifyOnlineRequest)
        await self.handoff.catch_up(body.target_id)
        return ok("Accepted", status=202)
