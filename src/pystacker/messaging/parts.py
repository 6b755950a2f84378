"""The messaging pieces one process shares between its services."""

from __future__ import annotations

from dataclasses import dataclass

from pystacker.engine.base import Engine
from pystacker.messaging.cursors import CursorBook
from pystacker.messaging.handoff import Handoff, LiveGateways
from pystacker.messaging.history import History
from pystacker.messaging.membership import MembershipCache
from pystacker.messaging.store import MessageStore


@dataclass
class MessagingParts:
    store: MessageStore
    history: History
    members: MembershipCache
    cursors: CursorBook
    live: LiveGateways
    handoff: Handoff

    @classmethod
    def build(cls, engine: Engine, store: MessageStore) -> MessagingParts:
        live = LiveGateways(engine)
        return cls(store=store, history=History(engine.messages, store), members=MembershipCache(store),
                   cursors=CursorBook(engine, store), live=live, handoff=Handoff(engine, live))
