"""The message model: what a message is on its way from a sender to every device of its room.

- `NewMessage`: what send accepted, before the room's log gave it a seq.
- `StoredMessage`: one entry of a room's log (a message, or a room event about one), with its seq.
- `PushEntry`: one inbox entry, from send to one gateway, and its wire encoding (`encode`,
  `decode_entry`).
- `EntryType`: what an inbox entry asks of the gateway.
- The shared fields of requests and frames: ids, seqs and keys, with the bounds every store holds.

Every record is built with keyword arguments only: a dozen fields of the same types (ints) read
positionally are a swapped room and sender waiting to happen.

Ids and seqs are SQL's signed 64 bits (GoStacker's int64): bounded here, a larger number is a 400 that
the OpenAPI documents say, never a 500 from the store. JSON bodies and client frames are strict (a
string is not a number); query strings are lax, since every query value arrives as a string.

Inbox entries are GoStacker's PushMessage with CamelCase keys (so a Go gateway can read ours) plus
`Seq`, `ClientMsgID`, `TS`, `ContentType`, and `TraceParent` (the W3C trace context of the message's
trace) only while tracing is on; the decoder accepts snake_case too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import BeforeValidator, Field, StrictInt, StringConstraints, WithJsonSchema

DEFAULT_DEVICE = "default"  # the device of a connection that names none (every GoStacker client)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

PositiveId = Annotated[StrictInt, Field(gt=0, le=INT64_MAX)]
Seq = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
QueryId = Annotated[int, Field(gt=0, le=INT64_MAX)]
QuerySeq = Annotated[int, Field(ge=0, le=INT64_MAX)]
# The sender's idempotency key: printable ASCII without spaces, as the unique key in SQL holds it.
ClientMsgId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]


_DECIMAL_ID = re.compile(r"[1-9][0-9]{0,18}")


def _id_from_string(value: object) -> object:
    """A decimal string is read as the number it spells; anything else is left to the int checks."""
    if isinstance(value, str) and _DECIMAL_ID.fullmatch(value):
        return int(value)
    return value


# A message id as a number or as its decimal string (`id_str`): JavaScript cannot hold 64-bit numbers.
MessageId = Annotated[PositiveId, BeforeValidator(_id_from_string), WithJsonSchema({
    "oneOf": [{"type": "integer", "minimum": 1, "maximum": INT64_MAX},
              {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"}],
    "description": "a message id, as a number or a decimal string (at most 2^63-1)"})]


def in_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


# -- messages ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMessage:
    msg_id: int  # snowflake, made by the send instance
    room_id: int
    sender_id: int
    type: str  # content type: text, image, voice, file
    content: dict[str, Any]  # the payload without its "type" key, as GoStacker stores and sends it
    created_at_ms: int
    client_msg_id: str | None = None
    reply_to: int | None = None  # the message of the same room this one answers


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """One entry of a room's log: a message, or a room event about one (its `type` is then an event
    type and `content` says what it did: messaging/lifecycle.py). A message's last four fields are its
    state after the room's events: set by the edits and the recall that changed it."""

    msg_id: int
    room_id: int
    seq: int
    sender_id: int
    type: str
    content: dict[str, Any]
    created_at_ms: int
    client_msg_id: str | None = None
    reply_to: int | None = None
    edited_at_ms: int | None = None
    recalled_by: int | None = None  # a tombstone: its content is gone
    recalled_at_ms: int | None = None
    # How many messages the room's log holds up to this entry (a room event adds none): unread
    # counts are differences of it, so that edits and reactions never count as unread.
    msg_no: int = 0


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


@dataclass(frozen=True, slots=True, kw_only=True)
class PushEntry:
    """One inbox entry: a message (or an ack) for some users of one gateway."""

    type: str  # an EntryType, or a type from GoStacker's components
    msg_id: int = 0  # 0: not about one message (a read mark, typing, a catch-up, a device to close)
    room_id: int = 0
    sender_id: int = 0
    target_ids: list[int] = field(default_factory=list)  # empty: set per gateway by the hand-off (messaging/fanout.py)
    payload: Any = None
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
        return cls(type=EntryType.CHAT, msg_id=message.msg_id, room_id=message.room_id, sender_id=message.sender_id,
                   target_ids=target_ids, payload=message.content, seq=message.seq, client_msg_id=message.client_msg_id,
                   ts=message.created_at_ms, content_type=message.type, trace_parent=trace_parent, quote=quote)

    @classmethod
    def for_ack(cls, message: StoredMessage, trace_parent: str | None = None, device_id: str = DEFAULT_DEVICE) -> PushEntry:
        """The sender's ack, for the device that sent (no key for `default`: GoStacker's entry)."""
        return cls(type=EntryType.ACK, msg_id=message.msg_id, room_id=message.room_id, sender_id=message.sender_id,
                   target_ids=[message.sender_id], seq=message.seq, client_msg_id=message.client_msg_id,
                   ts=message.created_at_ms, content_type=message.type, trace_parent=trace_parent,
                   device_id=None if device_id == DEFAULT_DEVICE else device_id)

    def stored_message(self) -> StoredMessage:
        payload = self.payload if isinstance(self.payload, dict) else {}
        reply_to = self.quote.get("message_id") if self.quote is not None else None
        return StoredMessage(msg_id=self.msg_id, room_id=self.room_id, seq=self.seq, sender_id=self.sender_id,
                             type=self.content_type, content=payload, created_at_ms=self.ts,
                             client_msg_id=self.client_msg_id, reply_to=reply_to if isinstance(reply_to, int) else None)


def _pick(data: dict[str, Any], camel: str, snake: str, default: Any) -> Any:
    if camel in data:
        return data[camel]
    return data.get(snake, default)


_INT_TYPES = frozenset({int, bool})  # bool: what isinstance(value, int) lets through


def _all_ints(values: list[Any]) -> bool:
    # Passes in C (an entry names up to hundreds of targets, and a gateway decodes every entry): a
    # generator over them was most of the decoding's cost.
    return set(map(type, values)) <= _INT_TYPES


def decode_entry(raw: bytes | str) -> PushEntry:
    """Decode an inbox entry written by PyStacker or by GoStacker's send (CamelCase or snake_case).

    Raises ValueError on anything that is not a usable entry.
    """
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("inbox entry is not an object")
    targets = _pick(data, "TargetIDs", "target_ids", [])
    if not isinstance(targets, list) or not _all_ints(targets):
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
    if not all(in_int64(value) for value in (entry.msg_id, entry.room_id, entry.sender_id, entry.seq, entry.ts)) \
            or (targets and not (INT64_MIN <= min(targets) and max(targets) <= INT64_MAX)):
        raise ValueError("inbox entry has an integer outside 64 bits")
    return entry
