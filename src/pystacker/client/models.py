"""What the client hands to its callers: plain frozen records built from the server's JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def text_content(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def as_content(content: str | dict[str, Any]) -> dict[str, Any]:
    """A str is a text message; a dict is sent as it is (it must carry `type`)."""
    return text_content(content) if isinstance(content, str) else content


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One room message. `payload` is the content without its `type` key (GoStacker's frame shape);
    `content_type` says which type it was. `seq` is the room's dense sequence number (0 only for
    frames from GoStacker components, which have none)."""

    id: int
    room_id: int
    seq: int
    sender_id: int
    content_type: str
    payload: dict[str, Any] = field(compare=False)
    client_msg_id: str | None = None
    ts: int = 0  # milliseconds since the epoch

    @property
    def text(self) -> str | None:
        value = self.payload.get("text") if self.content_type == "text" else None
        return value if isinstance(value, str) else None

    @property
    def content(self) -> dict[str, Any]:
        return {"type": self.content_type, **self.payload}

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> ChatMessage:
        payload = frame.get("payload")
        ident = frame.get("id_str") or frame.get("id")
        client_msg_id = frame.get("client_msg_id")
        return cls(
            id=_int(ident), room_id=_int(frame.get("room_id")), seq=_int(frame.get("seq")),
            sender_id=_int(frame.get("sender_id")), content_type=str(frame.get("content_type") or "text"),
            payload=payload if isinstance(payload, dict) else {},
            client_msg_id=client_msg_id if isinstance(client_msg_id, str) else None, ts=_int(frame.get("ts")))


@dataclass(frozen=True, slots=True)
class Delivered:
    """The server handed one of our own messages to every recipient (GoStacker's `ack` frame)."""

    msg_id: int
    room_id: int
    seq: int
    client_msg_id: str | None

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Delivered:
        client_msg_id = frame.get("client_msg_id")
        return cls(_int(frame.get("id_str") or frame.get("id")), _int(frame.get("ack_room_id")),
                   _int(frame.get("seq")), client_msg_id if isinstance(client_msg_id, str) else None)


@dataclass(frozen=True, slots=True)
class ReadEvent:
    """`user_id` has read `room_id` up to `seq` (a `read` frame): yourself on this or another of your
    connections (clear the room's badge), or another member (a read receipt)."""

    room_id: int
    user_id: int
    seq: int

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> ReadEvent:
        return cls(_int(frame.get("room_id")), _int(frame.get("user_id")), _int(frame.get("seq")))


@dataclass(frozen=True, slots=True)
class TypingEvent:
    """`user_id`, another member, is typing in `room_id` (a `typing` frame; they come again every few
    seconds while he types: show it for about 5 s after the last one)."""

    room_id: int
    user_id: int

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> TypingEvent:
        return cls(_int(frame.get("room_id")), _int(frame.get("user_id")))


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A user's presence: `online` while any of his devices is connected; else `last_seen` (ms since
    the epoch when his last device left; None when unknown). From `client.presence()`, or as a change
    of a user the session watches (`session.watch_presence()`, with `presence=True`)."""

    user_id: int
    online: bool
    last_seen: int | None

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> PresenceEvent:
        seen = frame.get("last_seen")
        return cls(_int(frame.get("user_id")), bool(frame.get("online")), seen if isinstance(seen, int) else None)


@dataclass(frozen=True, slots=True)
class RoomState:
    """One of your rooms as a room list shows it (`GET /api/joined_rooms`, `data.rooms`)."""

    room_id: int
    last_seq: int
    read_seq: int
    unread: int  # messages after read_seq; your own are never unread
    last_message: dict[str, Any] | None = field(default=None, compare=False)  # id, seq, sender_id, preview, ...

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoomState:
        last = data.get("last_message")
        return cls(_int(data.get("room_id")), _int(data.get("last_seq")), _int(data.get("read_seq")),
                   _int(data.get("unread")), last if isinstance(last, dict) else None)


@dataclass(frozen=True, slots=True)
class SendResult:
    """The answer to a send: `duplicate` is True when a retry with the same client_msg_id found the
    first send's message (same id and seq; nothing was posted twice)."""

    msg_id: int
    room_id: int
    seq: int
    client_msg_id: str | None
    duplicate: bool

    @classmethod
    def from_answer(cls, data: dict[str, Any], room_id: int) -> SendResult:
        return cls(_int(data.get("id_str") or data.get("msgID")), _int(data.get("room_id"), room_id),
                   _int(data.get("seq")), data.get("client_msg_id"), bool(data.get("duplicate", False)))


@dataclass(frozen=True, slots=True)
class HistoryPage:
    room_id: int
    last_seq: int  # the room's newest seq when the page was read
    has_more: bool
    messages: list[ChatMessage]


@dataclass(frozen=True, slots=True)
class Member:
    user_id: int
    username: str
    nickname: str
    role: int


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room_id: int
    name: str
    is_group: bool
    member_count: int


@dataclass(frozen=True, slots=True)
class Gateway:
    gateway_id: str
    address: str
    port: int
