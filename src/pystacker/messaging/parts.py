"""The messaging pieces one process shares between its services."""

from __future__ import annotations

from dataclasses import dataclass

from pystacker.engine.base import Engine
from pystacker.messaging.cursors import CursorBook
from pystacker.messaging.devices import Devices, DeviceStore
from pystacker.messaging.handoff import Handoff, LiveGateways
from pystacker.messaging.history import History
from pystacker.messaging.membership import MembershipCache
from pystacker.messaging.readstate import ReadMarks, ReadNotifier, ReadState, RoomKinds
from pystacker.messaging.rosters import RosterBook, RosterSQL
from pystacker.messaging.store import MessageStore
from pystacker.messaging.user_presence import Presence


@dataclass
class MessagingParts:
    store: MessageStore
    history: History
    rosters: RosterBook
    members: MembershipCache
    cursors: CursorBook
    live: LiveGateways
    handoff: Handoff
    reading: ReadState
    devices: Devices
    presence: Presence

    @classmethod
    def build(cls, engine: Engine, store: MessageStore, *, read_receipt_interval: float = 1.0,
              device_backlog: int = 50) -> MessagingParts:
        live = LiveGateways(engine)
        rosters = RosterBook(engine, RosterSQL(store.engine))
        members = MembershipCache(rosters)
        handoff = Handoff(engine, live)
        cursors = CursorBook(engine, store, members)
        history = History(engine.messages, store)
        reading = ReadState(engine.messages, ReadMarks(engine, store),
                            ReadNotifier(handoff, interval=read_receipt_interval), RoomKinds(store), history)
        return cls(store=store, history=history, rosters=rosters, members=members,
                   cursors=cursors, live=live, handoff=handoff, reading=reading,
                   devices=Devices(cursors, DeviceStore(store.engine), engine, reading, backlog=device_backlog),
                   presence=Presence(engine, live))
