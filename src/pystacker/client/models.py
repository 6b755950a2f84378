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


def _opt_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _id(frame: dict[str, Any], key: str) -> int:
    """A 64-bit id: its string twin (`id_str`, `message_id_str`) first, as JavaScript must read it."""
    twin = "id_str" if key == "id" else f"{key}_str"
    return _int(frame.get(twin) or frame.get(key))


def _text(content_type: str, payload: dict[str, Any]) -> str | None:
    """A text content's words (None for other content types)."""
    value = payload.get("text") if content_type == "text" else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Quote:
    """What a reply quotes (a `chat` frame's `reply_to`): the original's id and sender and a short
    `preview` of its text ("[message recalled]" once it is recalled, and `recalled` is then True)."""

    message_id: int
    sender_id: int
    preview: str
    recalled: bool = False

    @classmethod
    def from_json(cls, data: Any) -> Quote | None:
        if not isinstance(data, dict):
            return None
        preview = data.get("preview")
        return cls(_id(data, "message_id"), _int(data.get("sender_id")), preview if isinstance(preview, str) else "",
                   bool(data.get("recalled", False)))


@dataclass(frozen=True, slots=True)
class Reaction:
    """One emoji on a message in a history page: how many reacted with it, and whether you did."""

    emoji: str
    count: int
    me: bool = False


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One room message. `payload` is the content without its `type` key (GoStacker's frame shape);
    `content_type` says which type it was. `seq` is the room's dense sequence number (0 only for
    frames from GoStacker components, which have none).

    Its state: `reply_to` (the Quote of the message it answers), `edited_at` (ms, when the content
    shown is an edit), `recalled` with `recalled_by` / `recalled_at` (a tombstone: the payload is
    empty), and in a history page `reactions` (by emoji). A live or caught-up message is as it was
    sent; what happens to it later comes as EditEvent, RecallEvent and ReactionEvent."""

    id: int
    room_id: int
    seq: int
    sender_id: int
    content_type: str
    payload: dict[str, Any] = field(compare=False)
    client_msg_id: str | None = None
    ts: int = 0  # milliseconds since the epoch
    reply_to: Quote | None = None
    edited_at: int | None = None
    recalled: bool = False
    recalled_by: int | None = None
    recalled_at: int | None = None
    reactions: tuple[Reaction, ...] = ()

    @property
    def text(self) -> str | None:
        return _text(self.content_type, self.payload)

    @property
    def content(self) -> dict[str, Any]:
        return {"type": self.content_type, **self.payload}

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> ChatMessage:
        payload = frame.get("payload")
        client_msg_id = frame.get("client_msg_id")
        reactions = frame.get("reactions")
        return cls(
            id=_id(frame, "id"), room_id=_int(frame.get("room_id")), seq=_int(frame.get("seq")),
            sender_id=_int(frame.get("sender_id")), content_type=str(frame.get("content_type") or "text"),
            payload=payload if isinstance(payload, dict) else {},
            client_msg_id=client_msg_id if isinstance(client_msg_id, str) else None, ts=_int(frame.get("ts")),
            reply_to=Quote.from_json(frame.get("reply_to")), edited_at=_opt_int(frame.get("edited_at")),
            recalled=frame.get("recalled") is True, recalled_by=_opt_int(frame.get("recalled_by")),
            recalled_at=_opt_int(frame.get("recalled_at")),
            reactions=tuple(Reaction(str(r.get("emoji", "")), _int(r.get("count")), bool(r.get("me", False)))
                            for r in reactions if isinstance(r, dict)) if isinstance(reactions, list) else ())


@dataclass(frozen=True, slots=True)
class EditEvent:
    """`sender_id` edited message `message_id` of `room_id`: its content is now `content` (an `edit`
    frame). A room event with its own `seq`, yielded in seq order with the messages."""

    id: int
    room_id: int
    seq: int
    sender_id: int  # the editor (only a message's sender may edit it)
    message_id: int
    content_type: str
    payload: dict[str, Any] = field(compare=False)  # the new content without its `type` key
    edited_at: int = 0  # ms since the epoch
    # The message was recalled since: what the edit said is gone with it (the frame's `content` is
    # null; a catch-up or sync can bring such an edit). Nothing to apply: the recall event follows.
    blanked: bool = False

    @property
    def text(self) -> str | None:
        return _text(self.content_type, self.payload)

    @property
    def content(self) -> dict[str, Any]:
        return {"type": self.content_type, **self.payload}

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> EditEvent:
        raw = frame.get("content")
        content = raw if isinstance(raw, dict) else {}
        payload = {k: v for k, v in content.items() if k != "type"}
        return cls(_id(frame, "id"), _int(frame.get("room_id")), _int(frame.get("seq")), _int(frame.get("sender_id")),
                   _id(frame, "message_id"), str(content.get("type") or "text"), payload, _int(frame.get("edited_at")),
                   blanked=not isinstance(raw, dict))


@dataclass(frozen=True, slots=True)
class RecallEvent:
    """Message `message_id` of `room_id` was recalled by `by` (its sender, or the room's owner or an
    admin) at `recalled_at` (ms): show a tombstone instead (a `recall` frame; a room event with its own
    `seq`, yielded in seq order with the messages)."""

    id: int
    room_id: int
    seq: int
    sender_id: int
    message_id: int
    by: int
    recalled_at: int = 0

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> RecallEvent:
        return cls(_id(frame, "id"), _int(frame.get("room_id")), _int(frame.get("seq")), _int(frame.get("sender_id")),
                   _id(frame, "message_id"), _int(frame.get("by") or frame.get("sender_id")),
                   _int(frame.get("recalled_at")))


@dataclass(frozen=True, slots=True)
class ReactionEvent:
    """`user_id` put (`on`) or took back (not `on`) `emoji` on message `message_id`; `count` is how
    many have that emoji on it now (a `reaction` frame; a room event with its own `seq`, yielded in
    seq order with the messages)."""

    id: int
    room_id: int
    seq: int
    sender_id: int
    message_id: int
    user_id: int
    emoji: str
    on: bool
    count: int

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> ReactionEvent:
        return cls(_id(frame, "id"), _int(frame.get("room_id")), _int(frame.get("seq")), _int(frame.get("sender_id")),
                   _id(frame, "message_id"), _int(frame.get("user_id") or frame.get("sender_id")),
                   str(frame.get("emoji") or ""), frame.get("on") is not False, _int(frame.get("count")))


RoomEvent = EditEvent | RecallEvent | ReactionEvent
# What a room's log holds, each entry with its own seq: what the inbox orders.
RoomEntry = ChatMessage | EditEvent | RecallEvent | ReactionEvent
ROOM_EVENT_FRAMES: dict[str, type[EditEvent] | type[RecallEvent] | type[ReactionEvent]] = {
    "edit": EditEvent, "recall": RecallEvent, "reaction": ReactionEvent}


def room_entry_from_frame(frame: dict[str, Any]) -> RoomEntry | None:
    """A chat frame or a room event frame (as live pushes, batches, sync answers and history with
    `events=1` carry them); None for any other type."""
    kind = frame.get("type", "chat")
    if kind == "chat":
        return ChatMessage.from_frame(frame)
    event_type = ROOM_EVENT_FRAMES.get(kind) if isinstance(kind, str) else None
    return event_type.from_frame(frame) if event_type is not None else None


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
class EditResult:
    """The answer to an edit: the edit event's `seq`; `duplicate` when a retry with the same
    client_msg_id found the first edit (nothing was changed twice)."""

    message_id: int
    room_id: int
    seq: int
    edited_at: int
    client_msg_id: str | None
    duplicate: bool

    @classmethod
    def from_answer(cls, data: dict[str, Any], client_msg_id: str | None) -> EditResult:
        return cls(_id(data, "message_id"), _int(data.get("room_id")), _int(data.get("seq")),
                   _int(data.get("edited_at")), client_msg_id, bool(data.get("duplicate", False)))


@dataclass(frozen=True, slots=True)
class RecallResult:
    """The answer to a recall: the recall event's `seq`; `duplicate` as for an edit."""

    message_id: int
    room_id: int
    seq: int
    client_msg_id: str | None
    duplicate: bool

    @classmethod
    def from_answer(cls, data: dict[str, Any], client_msg_id: str | None) -> RecallResult:
        return cls(_id(data, "message_id"), _int(data.get("room_id")), _int(data.get("seq")), client_msg_id,
                   bool(data.get("duplicate", False)))


@dataclass(frozen=True, slots=True)
class ReactResult:
    """The answer to a reaction: that emoji's `count` now; `seq` is None when nothing changed (you
    had already put it, or had none to take back); `duplicate` as for an edit."""

    message_id: int
    room_id: int
    emoji: str
    on: bool
    count: int
    seq: int | None
    client_msg_id: str | None
    duplicate: bool

    @classmethod
    def from_answer(cls, data: dict[str, Any], client_msg_id: str | None) -> ReactResult:
        return cls(_id(data, "message_id"), _int(data.get("room_id")), str(data.get("emoji", "")),
                   bool(data.get("on", True)), _int(data.get("count")), _opt_int(data.get("seq")), client_msg_id,
                   bool(data.get("duplicate", False)))


@dataclass(frozen=True, slots=True)
class HistoryPage:
    room_id: int
    last_seq: int  # the room's newest seq when the page was read
    has_more: bool
    messages: list[ChatMessage]
    # Every entry of the page by seq, messages and room events (EditEvent, RecallEvent,
    # ReactionEvent): `history(..., events=True)` and `session.sync()`; empty otherwise.
    events: list[RoomEntry] = field(default_factory=list)


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
