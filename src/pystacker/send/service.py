"""Sending: check the sender, store the message with its seq, then push it.

GoStacker answered 200 before the message was stored anywhere durable and let any user post to any
room. Here the sender must be a member (403), the message is in the log with its seq before the
answer, and a retry carrying the same client_msg_id returns the first answer and sends nothing twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pystacker.engine.base import Appended, Engine
from pystacker.messaging.content import parse_content
from pystacker.messaging.events import is_event
from pystacker.messaging.frames import chat_frame, entry_frame
from pystacker.messaging.history import History, quote
from pystacker.messaging.ids import Snowflake
from pystacker.messaging.lifecycle import MessageChanges
from pystacker.messaging.membership import MembershipCache
from pystacker.messaging.model import DEFAULT_DEVICE, NewMessage, StoredMessage
from pystacker.messaging.readstate import ReadState
from pystacker.messaging.rosters import RosterBook
from pystacker.messaging.store import MessageStore
from pystacker.observability import metrics, tracing
from pystacker.observability.monitor import monitored
from pystacker.send.fanout import Fanout
from pystacker.web.envelope import ApiError, forbidden, not_found

log = logging.getLogger("pystacker.send")

MAX_HISTORY_PAGE = 200


class SendService:
    def __init__(self, engine: Engine, store: MessageStore, members: MembershipCache, fanout: Fanout,
                 ids: Snowflake, *, reading: ReadState, rosters: RosterBook, history: History, edit_window_s: int = 172_800,
                 recall_window_s: int = 120) -> None:
        self.engine = engine
        self.store = store
        self.members = members
        self.fanout = fanout
        self.ids = ids
        self.reading = reading
        self.history = history  # the process's one reader of the log (identical reads share a query)
        self.changes = MessageChanges(engine, self.history, store, rosters, ids, require_member=self.require_member,
                                      push=self._push_event, edit_window_s=edit_window_s,
                                      recall_window_s=recall_window_s)

    async def require_member(self, user_id: int, room_id: int) -> frozenset[int]:
        """The room's members, if `user_id` is one of them (404: no such room, 403: not a member)."""
        members = await self.members.members(room_id)
        if user_id not in members:
            if not members:
                raise not_found("room not found")
            raise forbidden("not a member of this room")
        return members

    @monitored("send")
    async def send(self, sender_id: int, room_id: int, content: Any, client_msg_id: str | None,
                   device_id: str = DEFAULT_DEVICE, reply_to: int | None = None) -> Appended:
        """Accept a message from `device_id` of the sender (that device gets the `ack`; every device of
        every member, the sender's included, gets the message)."""
        # The root of the message's trace, which the fan-out continues (observability/tracing.py).
        # Started and ended by hand: with tracing off this costs one flag test, not a context manager.
        span = tracing.start_span("send", attributes={"room_id": room_id, "sender_id": sender_id}) \
            if tracing.enabled else None
        try:
            kind, payload = parse_content(content)
            members = await self.require_member(sender_id, room_id)
            quote = None if reply_to is None else await self._quote(room_id, reply_to)
            # The members' routes come with the append, read after it (one round trip where the
            # engine can): the fan-out needs them, and a later reader would cost a round trip more.
            appended, routes = await self.engine.append_and_route(NewMessage(
                msg_id=self.ids.next_id(), room_id=room_id, sender_id=sender_id, type=kind, content=payload,
                created_at_ms=time.time_ns() // 1_000_000, client_msg_id=client_msg_id, reply_to=reply_to),
                list(members))
            (metrics.MESSAGES_DUPLICATE if appended.duplicate else metrics.MESSAGES_ACCEPTED).inc()
            if span is not None:
                span.set_attributes({**tracing.message_attributes(appended.message), "duplicate": appended.duplicate})
            # A duplicate is pushed again too: the first attempt may have died before its push (gateways
            # drop what a client already has, by seq).
            await self.fanout.submit(appended.message, members, routes=routes, trace=span, ack_device=device_id,
                                     new=not appended.duplicate, quote=quote)
        except BaseException as exc:
            if span is not None:
                tracing.end_span(span, exc)
            raise
        if span is not None:
            tracing.end_span(span)
        if log.isEnabledFor(logging.DEBUG):  # the extra dict is built only when the line is written
            log.debug("accepted", extra={"msg_id": appended.message.msg_id, "room_id": room_id,
                                         "seq": appended.message.seq, "duplicate": appended.duplicate,
                                         "sender_id": sender_id})
        return appended

    async def _quote(self, room_id: int, reply_to: int) -> dict[str, Any]:
        """The quote of the message a new one answers, which must be a message of the same room."""
        answered = await self.history.find(reply_to)
        if answered is None or answered.room_id != room_id or is_event(answered):
            raise ApiError(400, "reply_to: no such message in this room")
        return quote(answered)

    async def _push_event(self, event: StoredMessage, members: frozenset[int], device_id: str) -> None:
        await self.fanout.submit(event, members, ack_device=device_id)

    async def resend(self, caller: int, message_id: int) -> StoredMessage:
        """Push a stored message again to the room's members (GoStacker's route, which always failed).

        The engine is asked first: a message sent a moment ago is there until the flusher confirmed it
        in SQL, and from then on SQL has it, so one of the two always answers for an existing message."""
        message = await self.history.find(message_id)
        if message is None or is_event(message):
            raise not_found("message not found")
        if message.sender_id != caller:
            raise ApiError(401, "Unauthorized")
        members = await self.require_member(caller, message.room_id)
        quotes = await self.history.quotes([message])
        await self.fanout.submit(message, members, quote=quotes.get(message.reply_to or 0))
        return message

    async def mark_read(self, reader: int, room_id: int, seq: int) -> int:
        """The reader (a member) has read the room up to `seq`: his read mark now (see readstate.py)."""
        members = await self.require_member(reader, room_id)
        return await self.reading.mark(reader, room_id, seq, members)

    async def read_state(self, caller: int, room_id: int) -> tuple[int, dict[int, int]]:
        """The room's last seq and every member's read seq, for a member."""
        members = await self.require_member(caller, room_id)
        return await self.reading.of_members(room_id, members)

    async def room_history(self, caller: int, room_id: int, *, after_seq: int | None, before_seq: int | None,
                           limit: int, events: bool = False) -> HistoryPage:
        """A page of a room's log and the room's last seq. With after_seq: ascending from there; else
        the newest before before_seq (or the newest of all). `events`: every entry as a frame, for
        clients that apply the events themselves; else the page's messages in their current state
        (the events are in them already), with their reactions, without those the caller hid."""
        await self.require_member(caller, room_id)
        last_seq = (await self.engine.messages.last_seqs([room_id])).get(room_id, 0)
        limit = max(1, min(limit, MAX_HISTORY_PAGE))
        if after_seq is not None:
            entries = await self.history.after(room_id, after_seq, limit)
        else:
            upper = last_seq + 1 if before_seq is None else min(before_seq, last_seq + 1)
            entries = await self.history.before(room_id, upper, limit)
        quotes = await self.history.quotes(entries)
        if events:
            frames = [entry_frame(e, events=True, quotes=quotes) for e in entries]
            return HistoryPage(entries, [f for f in frames if f is not None], last_seq)
        messages = [m for m in entries if not is_event(m)]
        hidden = await self.store.hidden_among(caller, [m.msg_id for m in messages])
        messages = [m for m in messages if m.msg_id not in hidden]
        reactions = await self.store.reactions_of([m.msg_id for m in messages if m.recalled_by is None], caller)
        return HistoryPage(entries, [{**chat_frame(m, quotes.get(m.reply_to or 0)),
                                      "reactions": reactions.get(m.msg_id, [])} for m in messages], last_seq)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[StoredMessage]  # the log entries read (their seqs page the history)
    frames: list[dict[str, Any]]  # what the caller gets of them
    last_seq: int
