"""Inbox acknowledgement tracking, keyed by stream entry id (GoStacker keyed it by msgID: compatibility.md #12).

Pure logic, no I/O. An entry names several local users; it may be acknowledged once each of them was
written to its socket, found a duplicate, or handed on (the user is not here, or disconnected: the
catch-up from the cursor serves him). Completed ids are collected for one batched XACK.
"""

from __future__ import annotations


class EntryTracker:
    __slots__ = ("_remaining", "_completed")

    def __init__(self) -> None:
        self._remaining: dict[str, int] = {}
        self._completed: list[str] = []

    def open(self, entry_id: str, count: int) -> None:
        """Track an entry awaiting `count` outcomes (re-opening a known id adds to its count)."""
        if count <= 0:
            if entry_id not in self._remaining:
                self._completed.append(entry_id)
            return
        self._remaining[entry_id] = self._remaining.get(entry_id, 0) + count

    def settle(self, entry_id: str, count: int = 1) -> None:
        """`count` of the entry's targets are served (written, duplicate or handed on)."""
        left = self._remaining.get(entry_id)
        if left is None:
            return
        left -= count
        if left > 0:
            self._remaining[entry_id] = left
        else:
            del self._remaining[entry_id]
            self._completed.append(entry_id)

    def take_completed(self) -> list[str]:
        done, self._completed = self._completed, []
        return done

    @property
    def in_flight(self) -> int:
        return len(self._remaining)
