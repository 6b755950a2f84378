"""PyStacker's asyncio client SDK.

    client = PyStackerClient("http://127.0.0.1:8082", "http://127.0.0.1:8081", "http://127.0.0.1:8083")
    await client.login("alice", "secret-1")
    session = await client.connect()
    await session.send(room_id, "hello")
    async for message in session:
        print(message.room_id, message.seq, message.text)

`api.py` is the HTTP side (accounts, rooms, history, send, edit, recall, hide, react), `session.py`
the live WebSocket with reconnect and catch-up, `inbox.py` the pure ordering/dedup core, `backoff.py` the reconnect delays.
"""

from pystacker.client.api import PyStackerClient, new_client_msg_id, user_id_from_token
from pystacker.client.backoff import Backoff
from pystacker.client.errors import PyStackerError, SessionClosed, SessionFailed
from pystacker.client.inbox import InOrderInbox, Offer
from pystacker.client.models import (
                                     ChatMessage,
                                     Delivered,
                                     EditEvent,
                                     EditResult,
                                     Gateway,
                                     HistoryPage,
                                     Member,
                                     PresenceEvent,
                                     Quote,
                                     Reaction,
                                     ReactionEvent,
                                     ReactResult,
                                     ReadEvent,
                                     RecallEvent,
                                     RecallResult,
                                     RoomEntry,
                                     RoomEvent,
                                     RoomInfo,
                                     RoomState,
                                     SendResult,
                                     TypingEvent,
                                     text_content,
)
from pystacker.client.session import Session

Connection = Session  # the name some callers expect

__all__ = [
    "Backoff", "ChatMessage", "Connection", "Delivered", "EditEvent", "EditResult", "Gateway", "HistoryPage",
    "InOrderInbox", "Member", "Offer", "PresenceEvent", "PyStackerClient", "PyStackerError", "Quote", "Reaction",
    "ReactionEvent", "ReactResult", "ReadEvent", "RecallEvent", "RecallResult", "RoomEntry", "RoomEvent", "RoomInfo",
    "RoomState", "SendResult", "Session", "SessionClosed", "SessionFailed", "TypingEvent", "new_client_msg_id",
    "text_content", "user_id_from_token",
]
