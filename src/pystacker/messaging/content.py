"""Message content rules: the four content types and their fields, with limits.

GoStacker lets missing sub-fields default to ""/0 and accepts any size; we keep the defaults (its
clients rely on them) but refuse wrong types and oversized content with a clear 400/413.
"""

from __future__ import annotations

from typing import Any

import orjson

from pystacker.messaging.errors import Invalid, TooLarge
from pystacker.messaging.model import INT64_MAX, StoredMessage

MAX_CONTENT_BYTES = 16 * 1024  # the encoded payload; larger content is a file to upload, not a message
MAX_TEXT_CHARS = 8000
MAX_URL_CHARS = 2048
MAX_NAME_CHARS = 255

# type -> {field: (python type, default)}
CONTENT_FIELDS: dict[str, dict[str, tuple[type, Any]]] = {
    "text": {"text": (str, "")},
    "image": {"url": (str, ""), "width": (int, 0), "height": (int, 0)},
    "voice": {"url": (str, ""), "duration": (int, 0)},
    "file": {"url": (str, ""), "file_name": (str, ""), "size": (int, 0)},
}
_STRING_LIMITS = {"text": MAX_TEXT_CHARS, "url": MAX_URL_CHARS, "file_name": MAX_NAME_CHARS}


def content_json_schema() -> dict[str, Any]:
    """The accepted `content` objects as JSON Schema (for the OpenAPI documents), derived from the same
    table that parse_content enforces. Not expressible here, and checked by parse_content: a text must
    not be blank, and the encoded payload must fit MAX_CONTENT_BYTES (413)."""
    variants = []
    for kind, fields in CONTENT_FIELDS.items():
        properties: dict[str, Any] = {"type": {"const": kind}}
        for name, (expected, _default) in fields.items():
            if expected is int:
                properties[name] = {"type": ["integer", "null"], "minimum": 0, "maximum": INT64_MAX}
            else:
                properties[name] = {"type": ["string", "null"], "maxLength": _STRING_LIMITS[name]}
        required = ["type"]
        if kind == "text":  # a missing, null or blank text is refused: it is the message itself
            properties["text"] = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": r"\S"}
            required.append("text")
        variants.append({"type": "object", "title": f"{kind} content", "properties": properties, "required": required})
    return {"oneOf": variants, "description": "Missing or null fields default to \"\" or 0, as in GoStacker "
                                              "(a text must not be blank)."}


def parse_content(content: Any) -> tuple[str, dict[str, Any]]:
    """Validate a `content` object; return (type, payload without the type key)."""
    if not isinstance(content, dict):
        raise Invalid("Invalid content: content must be a JSON object")
    kind = content.get("type")
    if not isinstance(kind, str) or kind not in CONTENT_FIELDS:
        raise Invalid(f"Invalid content: unknown content type: {kind if isinstance(kind, str) else ''}")
    payload: dict[str, Any] = {}
    for name, (expected, default) in CONTENT_FIELDS[kind].items():
        value = content.get(name, default)
        if value is None:
            value = default
        if expected is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise Invalid(f"Invalid content: {name} must be an integer")
        if expected is int and not 0 <= value <= INT64_MAX:
            raise Invalid(f"Invalid content: {name} must be between 0 and 2^63-1")
        if expected is str and not isinstance(value, str):
            raise Invalid(f"Invalid content: {name} must be a string")
        if expected is str and len(value) > _STRING_LIMITS[name]:
            raise TooLarge(f"Invalid content: {name} is longer than {_STRING_LIMITS[name]} characters")
        payload[name] = value
    if kind == "text" and not payload["text"].strip():
        raise Invalid("Invalid content: text must not be empty")
    if len(orjson.dumps(payload)) > MAX_CONTENT_BYTES:
        raise TooLarge(f"Invalid content: larger than {MAX_CONTENT_BYTES} bytes")
    return kind, payload


PREVIEW_CHARS = 80
RECALLED_PREVIEW = "[message recalled]"


def preview(message: StoredMessage) -> str:
    """A short text for room lists, notifications and reply quotes: the start of a text, else the
    kind of content in brackets."""
    if message.recalled_by is not None:
        return RECALLED_PREVIEW
    text = message.content.get("text") if isinstance(message.content, dict) else None
    if isinstance(text, str) and text:
        return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "\u2026"
    return f"[{message.type}]"
