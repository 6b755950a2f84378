"""Frames to clients and inbox entries between send and gateways.

Client frames keep GoStacker's five keys `{"id","type","room_id","sender_id","payload"}` so its
clients work unchanged; PyStacker adds keys they ignore: `seq`, `client_msg_id`, `ts` (ms), `id_str`
(the id as a string: snowflakes exceed JavaScript's 2^53) and `content_type`.

Inbox entries are GoStacker's PushMessage with CamelCase keys (so a Go gateway can read ours) plus
`Seq`, `ClientMsgID`, `TS`, `ContentType`, and `TraceParent` (the W3C trace context of the message's
trace) only while tracing is on; the decoder accepts snake_case too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson

from pystacker.engine.base import DEFAULT_DEVICE, StoredMessage
from pystacker.messaging.events import EDIT, EVENT_TYPES, RECALL
from pystacker.messaging.fields import in_int64

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


# -- inbox entries ---------------------------------------------------------------------------------


class EntryType(StrEnum):
    """What an inbox entry asks of the gateway. GoStacker's are `chat` and `ack`; a gateway delivers an
    entry of a type it does not know as a frame of that type (GoStacker components' frames)."""

    CHAT = "chat"  # an entry of a room's log (a message or a room event) for every device of the targets
    ACK = "ack"  # the sender's ack, for the device that sent
    CATCH_UP = "catchup"  # run the targets' catch-up now
    READ = "read"  # a read mark moved (messaging/readstate.py): a `read` frame
    TYPING = "typing"  # someone types (messaging/typing_signals.py): a `typing` frame, shed first
    CLOSE_DEVICE = "close_device"  # close this device of the target (the device limit)


@dataclass(frozen=True, slots=True)
class PushEntry:
    """One inbox entry: a message (or an ack) for some users of one gateway."""

    type: str  # an EntryType, or a type from GoStacker's components
    msg_id: int
    room_id: int
    sender_id: int
    target_ids: list[int]
    payload: Any
    seq: int = 0
    client_msg_id: str | None = None
    ts: int = 0
    content_type: str = "text"
    # W3C `traceparent` of the fan-out span (observability/tracing.py); None, and no key in the entry,
    # while tracing is off, so that entries stay byte for byte what they were.
    trace_parent: str | None = None
    # For one device of each target only (an `ack` to the device that sent, a device to close);
    # None, and no key: every device of the targets.
    device_id: str | None = None
    # A reply's quote of the message it answers (History.quotes); None, and no key, for the others.
    quote: dict[str, Any] | None = None

    def encode(self) -> bytes:
        fields = {
            "ID": self.msg_id, "Type": self.type, "RoomID": self.room_id, "SenderID": self.sender_id,
            "TargetIDs": self.target_ids, "Payload": self.payload, "Seq": self.seq,
            "ClientMsgID": self.client_msg_id, "TS": self.ts, "ContentType": self.content_type,
        }
        if self.trace_parent is not None:
            fields["TraceParent"] = self.trace_parent
        if self.device_id is not None:
            fields["DeviceID"] = self.device_id
        if self.quote is not None:
            fields["Quote"] = self.quote
        return orjson.dumps(fields)

    @classmethod
    def for_message(cls, message: StoredMessage, target_ids: list[int], trace_parent: str | None = None,
                    quote: dict[str, Any] | None = None) -> PushEntry:
        """A log entry (a message, or a room event) for those targets; `quote`: what a reply answers."""
        return cls(EntryType.CHAT, message.msg_id, message.room_id, message.sender_id, target_ids, message.content,
                   message.seq, message.client_msg_id, message.created_at_ms, message.type, trace_parent,
                   quote=quote)

    @classmethod
    def for_ack(cls, message: StoredMessage, trace_parent: str | None = None, device_id: str = DEFAULT_DEVICE) -> PushEntry:
        """The sender's ack, for the device that sent (no key for `default`: GoStacker's entry)."""
        return cls(EntryType.ACK, message.msg_id, message.room_id, message.sender_id, [message.sender_id], None,
                   message.seq, message.client_msg_id, message.created_at_ms, message.type, trace_parent,
                   None if device_id == DEFAULT_DEVICE else device_id)

    def stored_message(self) -> StoredMessage:
        payload = self.payload if isinstance(self.payload, dict) else {}
        reply_to = self.quote.get("message_id") if self.quote is not None else None
        return StoredMessage(self.msg_id, self.room_id, self.seq, self.sender_id, self.content_type, payload,
                             self.ts, self.client_msg_id, reply_to=reply_to if isinstance(reply_to, int) else None)


def _pick(data: dict[str, Any], camel: str, snake: str, default: Any) -> Any:
    if camel in data:
        return data[camel]
    return data.get(snake, default)


def decode_entry(raw: bytes | str) -> PushEntry:
    """Decode an inbox entry written by PyStacker or by GoStacker's send (CamelCase or snake_case).

    Raises ValueError on anything that is not a usable entry.
    """
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("inbox entry is not an object")
    targets = _pick(data, "TargetIDs", "target_ids", [])
    if not isinstance(targets, list) or not all(isinstance(t, int) for t in targets):
        raise ValueError("inbox entry has bad target ids")
    trace_parent = _pick(data, "TraceParent", "trace_parent", None)
    device_id = _pick(data, "DeviceID", "device_id", None)
    quote = _pick(data, "Quote", "quote", None)
    try:
        entry = PushEntry(
            type=str(_pick(data, "Type", "type", "chat")),
            msg_id=int(_pick(data, "ID", "id", 0)),
            room_id=int(_pick(data, "RoomID", "room_id", 0)),
            sender_id=int(_pick(data, "SenderID", "sender_id", 0)),
            target_ids=targets,
            payload=_pick(data, "Payload", "payload", None),
            seq=int(_pick(data, "Seq", "seq", 0) or 0),
            client_msg_id=_pick(data, "ClientMsgID", "client_msg_id", None),
            ts=int(_pick(data, "TS", "ts", 0) or 0),
            content_type=str(_pick(data, "ContentType", "content_type", "text") or "text"),
            # Not a string: ignored (the entry is still delivered, outside any trace).
            trace_parent=trace_parent if isinstance(trace_parent, str) else None,
            device_id=device_id if isinstance(device_id, str) else None,
            quote=quote if isinstance(quote, dict) else None,
        )
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int() of an infinite float
        raise ValueError(f"inbox entry has a bad field: {exc}") from None
    # Go's int64 (and SQL's BIGINT): a wider number cannot be a real entry, and it would fail later, when
    # the entry is encoded again for a socket (orjson reads such numbers as floats, and refuses them).
    if not all(in_int64(value) for value in
               (entry.msg_id, entry.room_id, entry.sender_id, entry.seq, entry.ts, *entry.target_ids)):
        raise ValueError("inbox entry has an integer outside 64 bits")
    return entry
