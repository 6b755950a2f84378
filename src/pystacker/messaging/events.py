"""Room events: entries of a room's log that change one of its messages (edit, recall, reaction).

An event has its own seq, so it reaches every device in order with the messages, live and in the
catch-up, and history replays it (Tinode's `replace`, Matrix's `m.replace` and redactions). Its
`content` names its message (`message_id`, and `target_seq`, where that message is in the log) and
says what it did:
- edit: `content`, the message's new content (its `type` included); the edit's time is its own
  `created_at_ms`. A recall blanks it (`content` null), as it does the message.
- recall: `by`, who recalled it. The message becomes a tombstone.
- reaction: `emoji`, `on` (added or removed) and `count` (that emoji's count after it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pystacker.messaging.model import StoredMessage

EDIT, RECALL, REACTION = "edit", "recall", "reaction"
EVENT_TYPES = frozenset({EDIT, RECALL, REACTION})


def is_event(entry: StoredMessage) -> bool:
    return entry.type in EVENT_TYPES


def event_target(event: StoredMessage) -> int:
    return int(event.content["message_id"])


def edit_content(target: StoredMessage, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"message_id": target.msg_id, "target_seq": target.seq, "content": {"type": kind, **payload}}


def recall_content(target: StoredMessage, by: int) -> dict[str, Any]:
    return {"message_id": target.msg_id, "target_seq": target.seq, "by": by}


def reaction_content(target: StoredMessage, emoji: str, on: bool, count: int) -> dict[str, Any]:
    return {"message_id": target.msg_id, "target_seq": target.seq, "emoji": emoji, "on": on, "count": count}


def blank_edit(edit: StoredMessage) -> StoredMessage:
    """An edit of a recalled message: what it said is gone with the message."""
    return replace(edit, content={**edit.content, "content": None})


def edited(target: StoredMessage, edit: StoredMessage) -> StoredMessage:
    """The message as the edit leaves it."""
    new = dict(edit.content["content"])
    kind = str(new.pop("type"))
    return replace(target, type=kind, content=new, edited_at_ms=edit.created_at_ms)


def tombstone(target: StoredMessage, by: int, at_ms: int) -> StoredMessage:
    return replace(target, content={}, recalled_by=by, recalled_at_ms=at_ms)
