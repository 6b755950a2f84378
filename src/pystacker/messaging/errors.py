"""What the messaging rules refuse, as domain exceptions: web/ gives each kind its HTTP status (and
the gateway its `error` frame code), so these modules know nothing of HTTP."""

from __future__ import annotations


class Refused(Exception):
    """A request the rules refuse; `msg` says why, for the caller."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class Invalid(Refused):
    """Malformed or out-of-range input."""


class TooLarge(Refused):
    """Content over its limits."""


class NotAllowed(Refused):
    """The caller may not do this (not a member, not the sender, not a moderator)."""


class NotFound(Refused):
    """No such message or room."""


class Conflict(Refused):
    """The target's state does not allow it (recalled, past a window, too many reactions)."""
