"""The text of a bench message: who sent it, when, and as which number.

Receivers learn everything they need from the message itself, so they can run in another process
than the sender: `time.monotonic_ns()` reads CLOCK_MONOTONIC, which on Linux is one clock for the
whole machine, so a send time taken in one process and an arrival time taken in another subtract.
Only the `text` field is used: it is the one field every GoStacker-compatible server passes through.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "bench"


@dataclass(frozen=True, slots=True)
class Tag:
    run: str  # random per run: a message from an earlier run on the same server is recognised
    step: int  # which measured step (offered rate) the message belongs to
    sender: int  # the sender's user index in the run (not the server's user id)
    n: int  # the sender's message number, 1, 2, 3, ... (per-sender order)
    sent_ns: int  # time.monotonic_ns() just before the send started


def make_text(tag: Tag, size: int = 0) -> str:
    text = f"{PREFIX}:{tag.run}:{tag.step}:{tag.sender}:{tag.n}:{tag.sent_ns}"
    if len(text) < size:
        text += " " + "x" * (size - len(text) - 1)  # padding to the requested message size
    return text


def parse_text(text: object) -> Tag | None:
    """The tag of a bench message, or None for any other text."""
    if not isinstance(text, str) or not text.startswith(PREFIX + ":"):
        return None
    parts = text.split(" ", 1)[0].split(":")
    if len(parts) != 6:
        return None
    try:
        return Tag(parts[1], int(parts[2]), int(parts[3]), int(parts[4]), int(parts[5]))
    except ValueError:
        return None
