"""Frames to clients, and the close codes of their sockets.

Client frames keep GoStacker's five keys `{"id","type","room_id","sender_id","payload"}` so its
clients work unchanged; PyStacker adds keys they ignore: `seq`, `client_msg_id`, `ts` (ms), `id_str`
(the id as a string: snowflakes exceed JavaScript's 2^53) and `content_type`. Inbox entries, the
frames between send and gateways, are in messaging/model.py.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import orjson

from pystacker.messaging.events import EDIT, EVENT_TYPES, RECALL
from pystacker.messaging.model import StoredMessage

WELCOME_TEXT = "Connected to WebSocket server"

class CloseCode(IntEnum):
    """Every close code a gateway sends (4000-4999 are the application's; docs/architecture.md says
    what a client does after each)."""

    SHUTDOWN = 1001  # going away: the gateway drains for a restart
    FRAME_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # the socket's writer failed
    STORE_LOST = 1012  # the shared store lost its state (a Redis restarted empty): reconnect, catch up
    SLOW_CONSUMER = 4008  # its queue bound was hit; catch up after reconnecting
    REPLACED = 4009  # the same device connected again; this older socket is closed
    DEVICE_LIMIT = 4011  # the user has limits.devices_per_user devices online: his longest-connected one goes


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def chat_frame(message: StoredMessage, quote: dict[str, Any] | None = None) -> dict[str, Any]:
    """A message in its current state; `quote`: what it answers (History.quotes)."""
    frame = {
        "id": message.msg_id,
        "type": "chat",
        "room_id": message.room_id,
        "sender_id": message.sender_id,
        "payload": message.content,
        "seq": message.seq,
        "client_msg_id": message.client_msg_id,
        "ts": message.created_at_ms,
        "id_str": str(message.msg_id),
        "content_type": message.type,
    }
    if message.reply_to is not None:
        frame["reply_to"] = quote or {"message_id": message.reply_to, "message_id_str": str(message.reply_to),
                                      "sender_id": None, "preview": "", "recalled": False}
    if message.edited_at_ms is not None:
        frame["edited_at"] = message.edited_at_ms
    if message.recalled_by is not None:
        frame.update(recalled=True, recalled_by=message.recalled_by, recalled_at=message.recalled_at_ms)
    return frame


def event_frame(event: StoredMessage) -> dict[str, Any]:
    """A room event (messaging/events.py) for clients that know events (`?events=1`)."""
    body = event.content
    target = int(body["message_id"])
    frame: dict[str, Any] = {"id": event.msg_id, "id_str": str(event.msg_id), "type": event.type,
                             "room_id": event.room_id, "sender_id": event.sender_id, "payload": None,
                             "seq": event.seq, "ts": event.created_at_ms, "client_msg_id": event.client_msg_id,
                             "message_id": target, "message_id_str": str(target)}
    if event.type == EDIT:
        frame.update(content=body.get("content"), edited_at=event.created_at_ms)
    elif event.type == RECALL:
        frame.update(by=event.sender_id, recalled_at=event.created_at_ms)
    else:
        frame.update(user_id=event.sender_id, emoji=body.get("emoji"), on=bool(body.get("on")),
                     count=int(body.get("count", 0)))
    return frame


RECALLED_TEXT = "[message recalled]"


def gostacker_event_frame(event: StoredMessage) -> dict[str, Any] | None:
    """A room event as a GoStacker client can show it (it parses `chat` frames only): an edit or a
    recall is a `chat` frame whose payload says which message it changed; a reaction is not sent."""
    target = int(event.content["message_id"])
    if event.type == EDIT:
        new = dict(event.content.get("content") or {"type": "text", "text": RECALLED_TEXT})  # None: recalled since
        kind = str(new.pop("type", "text"))
        payload: dict[str, Any] = {**new, "edit_of": target}
    elif event.type == RECALL:
        kind, payload = "text", {"text": RECALLED_TEXT, "recall_of": target}
    else:
        return None
    return {"id": event.msg_id, "type": "chat", "room_id": event.room_id, "sender_id": event.sender_id,
            "payload": payload, "seq": event.seq, "client_msg_id": event.client_msg_id, "ts": event.created_at_ms,
            "id_str": str(event.msg_id), "content_type": kind}


def entry_frame(entry: StoredMessage, *, events: bool, quotes: dict[int, dict[str, Any]] | None = None
                ) -> dict[str, Any] | None:
    """The frame of one log entry for a socket that knows events or not (None: nothing to send)."""
    if entry.type in EVENT_TYPES:
        return event_frame(entry) if events else gostacker_event_frame(entry)
    frame = chat_frame(entry, None if entry.reply_to is None or quotes is None else quotes.get(entry.reply_to))
    if not events and entry.recalled_by is not None:  # a tombstone, as GoStacker's clients can show one
        frame.update(payload={"text": RECALLED_TEXT}, content_type="text")
    return frame


def system_frame(text: str = WELCOME_TEXT, **extra: Any) -> dict[str, Any]:
    return {"id": -1, "type": "system", "room_id": -1, "sender_id": -1, "payload": text, **extra}


def ack_frame(msg_id: int, room_id: int, seq: int, client_msg_id: str | None) -> dict[str, Any]:
    # GoStacker's ack has room_id 0 and payload null; the extra keys tell new clients which message.
    return {"id": msg_id, "type": "ack", "room_id": 0, "sender_id": 0, "payload": None,
            "seq": seq, "ack_room_id": room_id, "client_msg_id": client_msg_id, "id_str": str(msg_id)}


def read_frame(room_id: int, user_id: int, seq: int) -> dict[str, Any]:
    """`user_id` has read `room_id` up to `seq`: to his own sockets (clear the badge) and, as a read
    receipt, to the other members. GoStacker's frame keys are there too, for its clients' parsers."""
    return {"id": -1, "type": "read", "room_id": room_id, "sender_id": user_id, "payload": None,
            "user_id": user_id, "seq": seq}


def typing_frame(room_id: int, user_id: int) -> dict[str, Any]:
    """`user_id` is typing in `room_id` (never stored: messaging/typing_signals.py); GoStacker's keys too."""
    return {"id": -1, "type": "typing", "room_id": room_id, "sender_id": user_id, "payload": None, "user_id": user_id}


def batch_frame(chats: list[dict[str, Any]], *, room_id: int | None = None, has_more: bool | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"id": -1, "type": "batch", "room_id": 0, "sender_id": 0, "payload": chats}
    if room_id is not None:  # an answer to a `sync` request says which room and whether more follow
        frame["sync_room_id"] = room_id
        frame["has_more"] = bool(has_more)
    return frame


def error_frame(code: int, msg: str, *, ref: Any = None) -> dict[str, Any]:
    """An answer to a client frame that could not be served; `ref` echoes the client's request id."""
    return {"id": -1, "type": "error", "room_id": 0, "sender_id": 0, "payload": {"code": code, "msg": msg, "ref": ref}}


def send_result_frame(message: StoredMessage, *, duplicate: bool, ref: Any = None) -> dict[str, Any]:
    """The answer to a client `send` frame: the same facts as the HTTP route's `data`."""
    return {"id": message.msg_id, "type": "send_ok", "room_id": message.room_id, "sender_id": message.sender_id,
            "payload": {"msgID": message.msg_id, "id_str": str(message.msg_id), "seq": message.seq,
                        "client_msg_id": message.client_msg_id, "duplicate": duplicate, "ref": ref}}
