"""Frames a client may send (GoStacker defines none and discards everything).

- `{"type":"send","room_id","content","client_msg_id"?,"ref"?}`: same effect and answer as
  POST /api/chat/send_message; answered by `send_ok` (or `error`).
- `{"type":"ack","room_id","seq"}`: cumulative: the client has the room up to seq. A client that acks
  moves its own cursor, so a message written to a socket that died unread is sent again.
- `{"type":"sync","room_id","after_seq","limit"?,"ref"?}`: the room's messages after a seq, answered
  by a `batch` frame with `sync_room_id` and `has_more`.
- `{"type":"read","room_id","seq"}`: the user has read the room up to seq (POST /api/chat/read's
  effect); every socket of his, this one included, and the other members get a `read` frame.
- `{"type":"typing","room_id"}`: the user is typing; the room's other members get a `typing` frame
  (messaging/typing_signals.py: at most one per user and room per 3 s; no answer).
- `{"type":"presence_subscribe","user_ids":[...]}` (at most 200; replaces the previous list): a
  `presence` frame for each now, and again when one changes (gateway/presence_watch.py).
- `{"type":"edit","message_id","content","client_msg_id"?,"ref"?}`, `{"type":"recall","message_id",...}` and
  `{"type":"react","message_id","emoji","on",...}`: as POST /api/chat/edit_message, recall_message and
  react (messaging/lifecycle.py), answered by `edit_ok`, `recall_ok` and `react_ok` with that route's
  `data` (and `ref`) as payload. `send` takes `reply_to` too.
- `{"type":"ping"}`: answered by `pong`.
Anything else gets an `error` frame; the connection stays open. A `send` over the user's rate limit
gets `error` with code 429 and `retry_after` (seconds) in its payload. `ref` (echoed in the answer) must
be a string of at most 128 characters, a number, a boolean or null; any other gets an `error` frame.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import Field, StrictInt, ValidationError

from pystacker.gateway.connection import Connection, RawFrame
from pystacker.gateway.presence_watch import PresenceWatch
from pystacker.messaging.errors import Refused
from pystacker.messaging.frames import batch_frame, encode, entry_frame, error_frame, send_result_frame
from pystacker.messaging.history import History
from pystacker.messaging.membership import MembershipCache
from pystacker.messaging.model import INT64_MIN, PositiveId, Seq
from pystacker.messaging.typing_signals import TypingSignals
from pystacker.messaging.user_presence import MAX_WATCHED
from pystacker.send.routes import EditRequest, ReactRequest, RecallRequest, SendRequest, change_answer, reaction_answer
from pystacker.send.service import SendService
from pystacker.web.envelope import ApiError, refusal_status
from pystacker.web.ratelimit import RateLimited, TokenBucketLimiter
from pystacker.web.requests import RequestModel, describe

MAX_SYNC_LIMIT = 200
KNOWN_FRAME_TYPES = frozenset({"send", "ack", "sync", "read", "typing", "presence_subscribe", "ping", "edit", "recall",
                               "react"})  # the frame-in metric's `type` values
MAX_REF_CHARS = 128
MAX_SHOWN_TYPE_CHARS = 32
REF_RULE = f"ref must be a string of at most {MAX_REF_CHARS} characters, a number, a boolean or null"


def echoable_ref(ref: Any) -> bool:
    """A `ref` the answers can carry back: a scalar that encodes to a few bytes."""
    if isinstance(ref, str):
        return len(ref) <= MAX_REF_CHARS
    if isinstance(ref, int) and not isinstance(ref, bool):
        return INT64_MIN <= ref < 2**64  # what orjson encodes (it reads wider numbers as floats)
    return ref is None or isinstance(ref, (bool, float))


class SendFrame(SendRequest):
    ref: Any = None


class EditFrame(EditRequest):
    ref: Any = None


class RecallFrame(RecallRequest):
    ref: Any = None


class ReactFrame(ReactRequest):
    ref: Any = None


class AckFrame(RequestModel):
    room_id: PositiveId
    seq: Seq


class ReadFrame(RequestModel):
    room_id: PositiveId
    seq: Seq


class TypingFrame(RequestModel):
    room_id: PositiveId


class PresenceSubscribeFrame(RequestModel):
    user_ids: Annotated[list[PositiveId], Field(max_length=MAX_WATCHED)]


class SyncFrame(RequestModel):
    room_id: PositiveId
    after_seq: Seq = 0
    limit: Annotated[StrictInt, Field(ge=1, le=MAX_SYNC_LIMIT)] = 50
    ref: Any = None


class ClientFrames:
    def __init__(self, sender: SendService, history: History, members: MembershipCache, typing: TypingSignals,
                 watch: PresenceWatch, send_limiter: TokenBucketLimiter | None = None) -> None:
        self.watch = watch
        self.sender = sender
        self.history = history
        self.members = members
        self.typing = typing
        self.send_limiter = send_limiter  # the same bucket as POST /api/chat/send_message (runtime's)

    async def handle(self, conn: Connection, text: str) -> None:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            conn.metrics.frame_in("invalid")
            self._reply(conn, error_frame(400, "invalid JSON frame"))
            return
        if not isinstance(data, dict):
            conn.metrics.frame_in("invalid")
            self._reply(conn, error_frame(400, "a frame must be a JSON object"))
            return
        kind = data.get("type")
        ref = data.get("ref")
        conn.metrics.frame_in(kind if isinstance(kind, str) and kind in KNOWN_FRAME_TYPES else "invalid")
        if not echoable_ref(ref):
            # Every answer echoes `ref`: a nested one deeper than orjson encodes (255) crashed the
            # connection's handler (1011), and a big one made every answer big. Refused, not echoed.
            self._reply(conn, error_frame(400, REF_RULE))
            return
        try:
            if kind == "send":
                await self._send(conn, SendFrame.model_validate(data))
            elif kind == "ack":
                ack = AckFrame.model_validate(data)
                conn.client_acked(ack.room_id, ack.seq)
                conn.metrics.client_acks.inc()
            elif kind == "sync":
                await self._sync(conn, SyncFrame.model_validate(data))
            elif kind == "read":
                read = ReadFrame.model_validate(data)
                await self.sender.mark_read(conn.user_id, read.room_id, read.seq)
            elif kind == "typing":
                await self._typing(conn, TypingFrame.model_validate(data))
            elif kind == "presence_subscribe":
                await self.watch.subscribe(conn, PresenceSubscribeFrame.model_validate(data).user_ids)
            elif kind == "edit":
                edit = EditFrame.model_validate(data)
                change = await self.sender.changes.edit(conn.user_id, edit.message_id, edit.content,
                                                        edit.client_msg_id, conn.device_id)
                self._answer(conn, "edit_ok", change_answer(change), edit.ref)
            elif kind == "recall":
                recall = RecallFrame.model_validate(data)
                change = await self.sender.changes.recall(conn.user_id, recall.message_id, recall.client_msg_id,
                                                          conn.device_id)
                self._answer(conn, "recall_ok", change_answer(change), recall.ref)
            elif kind == "react":
                react = ReactFrame.model_validate(data)
                change = await self.sender.changes.react(conn.user_id, react.message_id, react.emoji, react.on,
                                                         react.client_msg_id, conn.device_id)
                self._answer(conn, "react_ok", reaction_answer(change, react.emoji, react.on), react.ref)
            elif kind == "ping":
                self._reply(conn, {"id": -1, "type": "pong", "room_id": 0, "sender_id": 0, "payload": ref})
            elif isinstance(kind, str):  # shown cut short: the answer must not grow with the input
                self._reply(conn, error_frame(400, f"unknown frame type: {kind[:MAX_SHOWN_TYPE_CHARS]!r}", ref=ref))
            else:  # repr() of a deep list hit Python's recursion limit: name the rule instead
                self._reply(conn, error_frame(400, "a frame needs a string `type`: send, ack, sync, read, typing, "
                                              "presence_subscribe, edit, recall, react or ping", ref=ref))
        except ValidationError as exc:
            self._reply(conn, error_frame(400, describe(exc), ref=ref))
        except RateLimited as exc:
            # The connection stays open; `retry_after` (seconds) is HTTP's Retry-After.
            limited = error_frame(exc.status, exc.msg, ref=ref)
            limited["payload"]["retry_after"] = exc.retry_after
            self._reply(conn, limited)
        except ApiError as exc:
            self._reply(conn, error_frame(exc.status, exc.msg, ref=ref))
        except Refused as exc:
            self._reply(conn, error_frame(refusal_status(exc), exc.msg, ref=ref))

    async def _typing(self, conn: Connection, frame: TypingFrame) -> None:
        members = await self.sender.require_member(conn.user_id, frame.room_id)
        await self.typing.typing(conn.user_id, frame.room_id, members)

    async def _send(self, conn: Connection, frame: SendFrame) -> None:
        if self.send_limiter is not None:
            self.send_limiter.check(conn.user_id, "messages")
        appended = await self.sender.send(conn.user_id, frame.room_id, frame.content, frame.client_msg_id,
                                          conn.device_id, reply_to=frame.reply_to)
        self._reply(conn, send_result_frame(appended.message, duplicate=appended.duplicate, ref=frame.ref))

    async def _sync(self, conn: Connection, frame: SyncFrame) -> None:
        if conn.user_id not in await self.members.members(frame.room_id):
            raise ApiError(403, "not a member of this room")
        messages = await self.history.after(frame.room_id, frame.after_seq, frame.limit + 1)
        has_more = len(messages) > frame.limit
        page = messages[: frame.limit]
        quotes = await self.history.quotes(page)
        chats = [f for m in page if (f := entry_frame(m, events=conn.events, quotes=quotes)) is not None]
        self._reply(conn, {**batch_frame(chats, room_id=frame.room_id, has_more=has_more), "ref": frame.ref})

    @classmethod
    def _answer(cls, conn: Connection, kind: str, data: dict[str, Any], ref: Any) -> None:
        cls._reply(conn, {"id": -1, "type": kind, "room_id": data["room_id"], "sender_id": conn.user_id,
                          "payload": {**data, "ref": ref}})

    @staticmethod
    def _reply(conn: Connection, frame: dict[str, Any]) -> None:
        conn.offer(RawFrame(encode(frame)))
