"""Editing, recalling, reacting to and hiding messages: who may, and the room events that do it.

Each change reads the message in its current state and its revision record (the engine's, kept
with the log: base.TargetChange), checks the rules, then appends its event under the condition that
the record did not change meanwhile; when it did (a concurrent edit or recall), it reads again.
So an edit never lands after a recall, and a recall blanks every edit before it.

A request that is refused on the message's state (recalled, past a window) may be the retry of one
that did it: with a client_msg_id, the engine is asked for the first answer before refusing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from pystacker.db.schema import ROLE_ADMIN, ROLE_OWNER
from pystacker.engine.base import Appended, Engine, TargetChange
from pystacker.messaging.content import parse_content
from pystacker.messaging.errors import Conflict, Invalid, NotAllowed, NotFound, Refused
from pystacker.messaging.events import (
    EDIT,
    REACTION,
    RECALL,
    blank_edit,
    edit_content,
    event_target,
    is_event,
    reaction_content,
    recall_content,
    tombstone,
)
from pystacker.messaging.history import History
from pystacker.messaging.ids import Snowflake
from pystacker.messaging.model import NewMessage, StoredMessage
from pystacker.messaging.rosters import RosterBook
from pystacker.messaging.store import MessageStore, TooManyReactions

MAX_EMOJI_BYTES = 32
MAX_EMOJI_PER_MESSAGE = 20
CHANGE_ATTEMPTS = 5
NEVER = "-"  # a revision record no message has: the append can only answer a duplicate


@dataclass(frozen=True, slots=True)
class Revision:
    """What the events so far did to a message: the seqs of its edits, and whether it was recalled."""

    edits: tuple[int, ...] = ()
    recalled: bool = False

    def encode(self, *, new_edit: bool = False) -> str:
        seqs = [str(seq) for seq in self.edits] + (["$seq"] if new_edit else [])
        return ("R:" if self.recalled else "E:") + ",".join(seqs)

    @classmethod
    def decode(cls, record: str | None, message: StoredMessage) -> Revision:
        """The record read from the engine; without one (never changed, or long ago) SQL's state."""
        if record is None:
            return cls(recalled=message.recalled_by is not None)
        flag, _, seqs = record.partition(":")
        return cls(tuple(int(seq) for seq in seqs.split(",") if seq), flag == "R")


@dataclass(frozen=True, slots=True)
class Change:
    """A change made: the event (None: nothing changed) and the message as it is now."""

    event: Appended | None
    message: StoredMessage
    count: int = 0  # a reaction's: how many have that emoji now


Push = Callable[[StoredMessage, frozenset[int], str], Awaitable[None]]
MemberCheck = Callable[[int, int], Awaitable[frozenset[int]]]


class MessageChanges:
    """The lifecycle operations of the send service. `push` hands an appended event to the fan-out
    (every device of every member); `require_member` gives a room's members if the caller is one."""

    def __init__(self, engine: Engine, history: History, store: MessageStore, rosters: RosterBook, ids: Snowflake,
                 *, require_member: MemberCheck, push: Push, edit_window_s: int, recall_window_s: int) -> None:
        self.engine = engine
        self.history = history
        self.store = store
        self.rosters = rosters
        self.ids = ids
        self.require_member = require_member
        self.push = push
        self.edit_window_s = edit_window_s
        self.recall_window_s = recall_window_s

    async def message(self, caller: int, message_id: int) -> tuple[StoredMessage, frozenset[int]]:
        """A message (not an event) in its current state, and its room's members, for a member."""
        found = await self.history.find(message_id)
        if found is None or is_event(found):
            raise NotFound("message not found")
        return found, await self.require_member(caller, found.room_id)

    async def edit(self, caller: int, message_id: int, content: Any, client_msg_id: str | None,
                   device_id: str) -> Change:
        kind, payload = parse_content(content)
        for _ in range(CHANGE_ATTEMPTS):
            target, members = await self.message(caller, message_id)
            if target.sender_id != caller:
                raise NotAllowed("only its sender may edit a message")
            record = await self.engine.messages.revision(target.room_id, target.msg_id)
            revision = Revision.decode(record, target)
            event = self._event(caller, target, EDIT, edit_content(target, kind, payload), client_msg_id)
            if revision.recalled:
                return await self._refuse(event, Conflict("the message was recalled"))
            if _past(target, self.edit_window_s):
                return await self._refuse(event, Conflict(f"the edit window ({self.edit_window_s} s) has passed"))
            edited = replace(target, type=kind, content=payload, edited_at_ms=event.created_at_ms)
            appended = await self.engine.messages.append_event(event, TargetChange(
                target.msg_id, record, revision.encode(new_edit=True), patches=(edited,)))
            if appended is not None:
                await self.push(appended.message, members, device_id)
                return Change(appended, edited)
        raise _changing()

    async def recall(self, caller: int, message_id: int, client_msg_id: str | None, device_id: str) -> Change:
        for _ in range(CHANGE_ATTEMPTS):
            target, members = await self.message(caller, message_id)
            moderator = await self._moderates(caller, target.room_id)
            if target.sender_id != caller and not moderator:
                raise NotAllowed("only its sender, or the room's owner and admins, may recall a message")
            record = await self.engine.messages.revision(target.room_id, target.msg_id)
            revision = Revision.decode(record, target)
            event = self._event(caller, target, RECALL, recall_content(target, caller), client_msg_id)
            if revision.recalled:
                return await self._refuse(event, Conflict("the message was recalled already"))
            if not moderator and _past(target, self.recall_window_s):
                return await self._refuse(event, Conflict(
                    f"the recall window ({self.recall_window_s} s) has passed"))
            gone = tombstone(target, caller, event.created_at_ms)
            patches = (gone, *[blank_edit(edit) for edit in await self._edits_held(target, revision, record)])
            appended = await self.engine.messages.append_event(event, TargetChange(
                target.msg_id, record, Revision(revision.edits, recalled=True).encode(), patches=patches))
            if appended is not None:
                await self.store.clear_reactions(target.msg_id)
                await self.push(appended.message, members, device_id)
                return Change(appended, gone)
        raise _changing()

    async def react(self, caller: int, message_id: int, emoji: str, on: bool, client_msg_id: str | None,
                    device_id: str) -> Change:
        check_emoji(emoji)
        target, members = await self.message(caller, message_id)
        record = await self.engine.messages.revision(target.room_id, target.msg_id)
        if Revision.decode(record, target).recalled:
            probe = self._event(caller, target, REACTION, reaction_content(target, emoji, on, 0), client_msg_id)
            return await self._refuse(probe, Conflict("the message was recalled"))
        # The row is written once; only the event's append is tried again below.
        try:
            changed, count = await self.store.set_reaction(target.msg_id, target.room_id, caller, emoji, on,
                                                           max_emoji=MAX_EMOJI_PER_MESSAGE)
        except TooManyReactions:
            raise Conflict(f"a message has at most {MAX_EMOJI_PER_MESSAGE} different reactions") from None
        event = self._event(caller, target, REACTION, reaction_content(target, emoji, on, count), client_msg_id)
        if not changed:
            # Already so: nobody needs telling, unless this is the retry of a request that made
            # the change (then its first answer).
            first = None if client_msg_id is None else await self.engine.messages.append_event(
                event, TargetChange(target.msg_id, NEVER, NEVER))
            return Change(first, target, count)
        for attempt in range(CHANGE_ATTEMPTS):
            if attempt:
                record = await self.engine.messages.revision(target.room_id, target.msg_id)
                if Revision.decode(record, target).recalled:
                    # Recalled meanwhile: its reactions go with it, this one too.
                    await self.store.clear_reactions(target.msg_id)
                    raise Conflict("the message was recalled")
            # The record stays as it was: reactions do not conflict with each other, only with a
            # recall or an edit that came between the read and the append.
            appended = await self.engine.messages.append_event(event, TargetChange(
                target.msg_id, record, record or Revision().encode()))
            if appended is not None:
                await self.push(appended.message, members, device_id)
                return Change(appended, target, int(appended.message.content.get("count", count)))
        raise _changing()

    async def hide(self, caller: int, message_id: int) -> StoredMessage:
        """Leave the message out of the caller's history, on every device; nobody else is told."""
        target, _ = await self.message(caller, message_id)
        await self.store.hide(caller, target.msg_id, target.room_id)
        return target

    # -- helpers -------------------------------------------------------------------------------------

    def _event(self, caller: int, target: StoredMessage, kind: str, content: dict[str, Any],
               client_msg_id: str | None) -> NewMessage:
        return NewMessage(msg_id=self.ids.next_id(), room_id=target.room_id, sender_id=caller, type=kind,
                          content=content, created_at_ms=time.time_ns() // 1_000_000, client_msg_id=client_msg_id)

    async def _refuse(self, event: NewMessage, refusal: Refused) -> Change:
        """Refuse, unless the request is the retry of one that was done (then its first answer)."""
        if event.client_msg_id is not None:
            first = await self.engine.messages.append_event(event, TargetChange(event_target_id(event), NEVER, NEVER))
            if first is not None and first.duplicate:
                return Change(first, await self._target_of(first.message))
        raise refusal

    async def _target_of(self, event: StoredMessage) -> StoredMessage:
        found = await self.history.find(event_target(event))
        if found is None:
            raise NotFound("message not found")
        return found

    async def _moderates(self, user_id: int, room_id: int) -> bool:
        roster = await self.rosters.roster(room_id)
        entry = roster.members.get(user_id) if roster is not None else None
        return entry is not None and entry.role in (ROLE_OWNER, ROLE_ADMIN)

    async def _edits_held(self, target: StoredMessage, revision: Revision, record: str | None) -> list[StoredMessage]:
        """The target's edit events that the window still holds (a recall blanks them there)."""
        if record is None and target.edited_at_ms is None:
            return []
        held: list[StoredMessage | None]
        if record is not None:
            held = [await self.history.at(target.room_id, seq) for seq in revision.edits]
        else:  # edited longer ago than the record lives: look through what the window holds
            held = [*await self.engine.messages.read(target.room_id, target.seq, 1_000_000)]
        return [e for e in held if e is not None and e.type == EDIT and event_target(e) == target.msg_id]


def event_target_id(event: NewMessage) -> int:
    return int(event.content["message_id"])


def check_emoji(emoji: str) -> None:
    if not emoji.strip() or len(emoji.encode()) > MAX_EMOJI_BYTES:
        raise Invalid(f"emoji: 1 to {MAX_EMOJI_BYTES} bytes of UTF-8, not blank")


def _past(message: StoredMessage, window_s: int) -> bool:
    return window_s > 0 and time.time() * 1000 - message.created_at_ms > window_s * 1000


def _changing() -> Conflict:
    return Conflict("the message keeps changing; try again")
