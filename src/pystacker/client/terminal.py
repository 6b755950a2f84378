"""`pystacker chat`: a line-based chat in a terminal, on top of the SDK.

Lines starting with `/` are commands (`/help` lists them); any other line is sent to the current room.
Incoming messages print as `[room 3 #12] alice(7): hello`; `/reply 12 ...`, `/edit 12 ...`, `/recall 12`,
`/react 12 EMOJI` name a message of the current room by that `#12`. Edits, recalls and reactions print
as they arrive (they have seqs of their own), and so do who is typing and the presence of the current
room's members. Standard input is read by a daemon thread
that hands lines to the event loop through a small bounded queue: the loop never blocks on the terminal,
and a thread still waiting for a line does not keep the process alive after `/quit`.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

from pystacker.client.api import PyStackerClient
from pystacker.client.errors import PyStackerError, SessionClosed
from pystacker.client.models import (
    ChatMessage,
    Delivered,
    EditEvent,
    PresenceEvent,
    ReactionEvent,
    ReadEvent,
    RecallEvent,
    RoomEntry,
    TypingEvent,
)
from pystacker.client.session import Session

HELP = """commands:
  /rooms                    the rooms you are in, with their unread counts
  /create NAME [ID,...]     create a group room with these user ids, and select it
  /join ROOM                join a group room, and select it
  /room ROOM                select the current room
  /members                  who is in the current room
  /history [N]              the last N messages of the current room (default 20)
  /reply N TEXT             answer message #N of the current room (the #N its line shows)
  /edit N TEXT              replace the text of your message #N
  /recall N                 take message #N back (yours; any, for the room's owner and admins)
  /react N EMOJI            put EMOJI on message #N
  /unreact N EMOJI          take your EMOJI off message #N again
  /hide N                   hide message #N from your own history (nobody is told)
  /quit                     leave (Ctrl-D too)
  /help                     this text
anything else is sent to the current room"""

NAME_REFRESH_SECONDS = 30.0
ROOM_INFO_CONCURRENCY = 8
INPUT_QUEUE_SIZE = 64
TYPING_SHOWN_SECONDS = 6.0  # a typing signal repeats every 3 s while one types: print only when it starts
KNOWN_MESSAGES = 2000  # the messages shown, remembered for /reply, /edit, ... N and for the events' #N
MAX_WATCHED = 200  # the presence of at most this many members of the current room


def describe(content_type: str, p: dict[str, Any]) -> str:
    """One line for any content type (a message's, or an edit's new content)."""
    if content_type == "text":
        return str(p.get("text", ""))
    if content_type == "image":
        return f"[image {p.get('width', 0)}x{p.get('height', 0)} {p.get('url', '')}]"
    if content_type == "voice":
        return f"[voice {p.get('duration', 0)} s {p.get('url', '')}]"
    if content_type == "file":
        return f"[file {p.get('file_name', '')} ({p.get('size', 0)} bytes) {p.get('url', '')}]"
    return f"[{content_type}]"


def describe_content(message: ChatMessage) -> str:
    return describe(message.content_type, message.payload)


def one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def format_message(message: ChatMessage, name: str, quote: str = "") -> str:
    """`[room 3 #12] alice(7): hello`, with what a history page knows of its state: ` (edited)`, the
    reactions, a tombstone; `quote` is the reply's part, `(reply to #5 bob: "hi")`, before the text."""
    if message.recalled:
        text = "[message recalled]"
    else:
        text = one_line(describe_content(message)) + (" (edited)" if message.edited_at else "")
    if message.reactions:
        text += "  [" + ", ".join(f"{r.emoji} {r.count}" for r in message.reactions) + "]"
    head = f"[room {message.room_id} #{message.seq}] {name}({message.sender_id})"
    return f"{head} {quote}: {text}" if quote else f"{head}: {text}"


def clock(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "unknown"


def parse_ids(words: list[str]) -> list[int]:
    """'2,3 4' -> [2, 3, 4]; raises ValueError on anything that is not a positive integer."""
    ids = [int(part) for word in words for part in word.split(",") if part.strip()]
    if any(i <= 0 for i in ids):
        raise ValueError("user ids are positive integers")
    return ids


def start_line_reader(loop: asyncio.AbstractEventLoop, stream: TextIO) -> asyncio.Queue[str | None]:
    """Lines of `stream` on an asyncio queue (None at end of input), read by a daemon thread."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=INPUT_QUEUE_SIZE)

    def put(item: str | None) -> bool:
        try:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            return True
        except (RuntimeError, asyncio.CancelledError):  # the loop is gone: nobody reads any more
            return False

    def read() -> None:
        while True:
            try:
                line = stream.readline()
            except (OSError, ValueError):
                line = ""
            if not line:
                put(None)
                return
            if not put(line.rstrip("\r\n")):
                return

    threading.Thread(target=read, name="stdin-reader", daemon=True).start()
    return queue


class ChatTerminal:
    def __init__(self, client: PyStackerClient, out: Callable[[str], None]) -> None:
        self.client = client
        self.out = out
        self.session: Session | None = None
        self.current_room: int | None = None
        self.names: dict[int, str] = {}
        self._names_loaded: dict[int, float] = {}  # room -> when its members were last read
        # (room, seq) -> message id, and message id -> seq, of the messages shown (newest kept).
        self._ids: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._seqs: OrderedDict[int, int] = OrderedDict()
        self._typing_shown: dict[tuple[int, int], float] = {}  # (room, user) -> when printed
        self._watched_room: int | None = None  # the room whose members' presence is watched
        self._watched: list[int] = []

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, lines: asyncio.Queue[str | None], room: int | None = None) -> int:
        """Until /quit or end of input (0), or until the connection is lost for good (1)."""
        self.session = await self.client.connect(on_state=self._on_state, typing=True, presence=True,
                                                 edits=True, recalls=True, reactions=True)
        me = self.client.user_id
        self.out(f"* connected as user {me}; /help for commands")
        if room is not None:
            await self.select(room)
        else:
            rooms = await self.client.joined_rooms()
            if len(rooms) == 1:
                await self.select(rooms[0])
            elif rooms:
                self.out(f"* your rooms: {', '.join(map(str, rooms))}; choose one with /room ID")
        printer = asyncio.create_task(self._print_incoming(), name="chat-printer")
        reader = asyncio.create_task(self._read_commands(lines), name="chat-input")
        try:
            done, _ = await asyncio.wait({printer, reader}, return_when=asyncio.FIRST_COMPLETED)
            return 1 if printer in done and reader not in done else 0
        finally:
            for task in (printer, reader):
                task.cancel()
            await asyncio.gather(printer, reader, return_exceptions=True)
            await self.session.close()

    async def _read_commands(self, lines: asyncio.Queue[str | None]) -> None:
        while True:
            line = await lines.get()
            if line is None:
                return
            try:
                if not await self.handle(line):
                    return
            except PyStackerError as exc:
                self.out(f"! {exc.msg}" + (f" ({exc.status})" if exc.status else ""))
            except ValueError as exc:
                self.out(f"! {exc}")

    async def _print_incoming(self) -> None:
        assert self.session is not None
        try:
            async for item in self.session:
                if isinstance(item, Delivered):
                    continue
                if isinstance(item, TypingEvent):
                    await self._show_typing(item)
                elif isinstance(item, PresenceEvent):
                    await self._show_presence(item)
                elif not isinstance(item, ReadEvent):  # (read events are not asked for)
                    await self._show_entry(item)
        except SessionClosed:
            return
        except PyStackerError as exc:
            self.out(f"! connection lost: {exc.msg}")

    async def _show_entry(self, item: RoomEntry) -> None:
        """A message or a room event (edit, recall, reaction): one line each, in the room's seq order."""
        if self.current_room is None:
            await self._set_current(item.room_id)
        name = await self.name_of(item.sender_id, item.room_id)
        if isinstance(item, ChatMessage):
            self._remember(item)
            await self._watch_newcomer(item)
            self.out(format_message(item, name, await self._quote(item)))
        elif isinstance(item, EditEvent):
            text = "[gone: recalled since]" if item.blanked else one_line(describe(item.content_type, item.payload))
            self.out(f"{self._head(item, name)} edited {self._ref(item.message_id)}: {text}")
        elif isinstance(item, RecallEvent):
            who = name if item.by == item.sender_id else await self.name_of(item.by, item.room_id)
            self.out(f"[room {item.room_id} #{item.seq}] {who}({item.by}) recalled {self._ref(item.message_id)}")
        elif isinstance(item, ReactionEvent):
            reactor = await self.name_of(item.user_id, item.room_id)
            did = f"reacted {item.emoji} to" if item.on else f"took back {item.emoji} from"
            self.out(f"[room {item.room_id} #{item.seq}] {reactor}({item.user_id}) {did} "
                     f"{self._ref(item.message_id)} ({item.count})")
        if item.room_id == self.current_room:
            await self._mark_read(item.room_id, item.seq)

    @staticmethod
    def _head(item: RoomEntry, name: str) -> str:
        return f"[room {item.room_id} #{item.seq}] {name}({item.sender_id})"

    def _remember(self, message: ChatMessage) -> None:
        if message.seq <= 0:
            return
        self._ids[(message.room_id, message.seq)] = message.id
        self._seqs[message.id] = message.seq
        for known in (self._ids, self._seqs):
            while len(known) > KNOWN_MESSAGES:
                known.popitem(last=False)

    def _ref(self, message_id: int) -> str:
        """`#12` for a message whose seq we know, else its id."""
        seq = self._seqs.get(message_id)
        return f"#{seq}" if seq is not None else f"message {message_id}"

    async def _quote(self, message: ChatMessage) -> str:
        quote = message.reply_to
        if quote is None:
            return ""
        name = await self.name_of(quote.sender_id, message.room_id)
        preview = "[message recalled]" if quote.recalled else f'"{one_line(quote.preview)}"'
        return f"(reply to {self._ref(quote.message_id)} {name}: {preview})"

    async def _show_typing(self, event: TypingEvent) -> None:
        """Once when someone starts typing: the signal repeats every 3 s while he types."""
        key = (event.room_id, event.user_id)
        now = time.monotonic()
        last = self._typing_shown.get(key)
        self._typing_shown[key] = now
        if last is not None and now - last < TYPING_SHOWN_SECONDS:
            return
        for stale in [k for k, t in self._typing_shown.items() if now - t >= TYPING_SHOWN_SECONDS]:
            del self._typing_shown[stale]
        name = await self.name_of(event.user_id, event.room_id)
        self.out(f"* {name}({event.user_id}) is typing in room {event.room_id}")

    async def _show_presence(self, event: PresenceEvent) -> None:
        room = self._watched_room if self._watched_room is not None else self.current_room
        name = await self.name_of(event.user_id, room) if room is not None else self.names.get(event.user_id, "user")
        state = "online" if event.online else f"offline (last seen {clock(event.last_seen)})"
        self.out(f"* {name}({event.user_id}) is {state}")

    async def _mark_read(self, room_id: int, seq: int) -> None:
        """What the current room shows on screen is read (the other rooms' lines stay unread)."""
        assert self.session is not None
        try:
            await self.session.read(room_id, seq)
        except (PyStackerError, ConnectionError):
            pass  # not connected: the next message shown marks the room again

    def _on_state(self, state: str, detail: str) -> None:
        if state in ("disconnected", "reconnecting", "failed"):
            self.out(f"* {state} ({detail})")
        elif state == "connected" and self.session is not None and self.session.connects > 1:
            self.out("* reconnected")

    # -- commands --------------------------------------------------------------------------------

    async def handle(self, line: str) -> bool:
        """One input line; False means quit."""
        if not line.strip():
            return True
        if not line.startswith("/"):
            await self.say(line)
            return True
        command, *args = line.split()
        if command in ("/quit", "/exit"):
            return False
        if command == "/help":
            self.out(HELP)
        elif command == "/rooms":
            await self.list_rooms()
        elif command == "/create":
            if not args:
                raise ValueError("usage: /create NAME [ID,...]")
            room_id = await self.client.create_room(args[0], parse_ids(args[1:]), is_group=True)
            self.out(f"* created room {room_id} ({args[0]})")
            await self.select(room_id)
        elif command == "/join":
            room_id = self._room_arg(args)
            await self.client.join(room_id)
            self.out(f"* joined room {room_id}")
            await self.select(room_id)
        elif command == "/room":
            await self.select(self._room_arg(args))
        elif command == "/members":
            await self.list_members()
        elif command == "/history":
            await self.show_history(int(args[0]) if args else 20)
        elif command in ("/reply", "/edit", "/recall", "/react", "/unreact", "/hide"):
            await self.lifecycle(command, line)
        else:
            self.out(f"! unknown command {command}; /help lists them")
        return True

    @staticmethod
    def _room_arg(args: list[str]) -> int:
        if len(args) != 1 or not args[0].isdigit() or int(args[0]) <= 0:
            raise ValueError("give one room id")
        return int(args[0])

    async def select(self, room_id: int) -> None:
        if room_id not in await self.client.joined_rooms():
            self.out(f"! you are not in room {room_id} (/join {room_id} for a group room)")
            return
        await self._set_current(room_id)

    async def _set_current(self, room_id: int) -> None:
        """Select the room, and watch its other members' presence (their states print at once)."""
        self.current_room = room_id
        self.out(f"* current room: {room_id}")
        await self._watch_members(room_id)

    async def _watch_members(self, room_id: int) -> None:
        assert self.session is not None
        if self._watched_room == room_id:
            return
        try:
            members = await self.client.members(room_id)
        except PyStackerError:
            return  # presence is a nicety: the chat works without it
        for member in members:
            self.names[member.user_id] = member.username
        self._watched_room = room_id
        self._watched = [m.user_id for m in members if m.user_id != self.client.user_id][:MAX_WATCHED]
        await self.session.watch_presence(self._watched)

    async def _watch_newcomer(self, message: ChatMessage) -> None:
        """A member who joined the current room after it was selected: watched from his first message."""
        user = message.sender_id
        if (message.room_id == self._watched_room and user != self.client.user_id and user not in self._watched
                and len(self._watched) < MAX_WATCHED and self.session is not None):
            self._watched.append(user)
            await self.session.watch_presence(self._watched)

    async def say(self, text: str, reply_to: int | None = None) -> None:
        if self.current_room is None:
            self.out("! no room selected: /rooms, /room ID, /create NAME or /join ID")
            return
        assert self.session is not None
        if self.session.closed:  # the socket is gone; HTTP still works
            await self.client.send(self.current_room, text, reply_to=reply_to)
        else:
            await self.session.send(self.current_room, text, reply_to=reply_to)

    async def lifecycle(self, command: str, line: str) -> None:
        """/reply N TEXT, /edit N TEXT, /recall N, /react N EMOJI, /unreact N EMOJI, /hide N."""
        wants_text = command in ("/reply", "/edit", "/react", "/unreact")
        parts = line.split(None, 2)
        what = {"/reply": " TEXT", "/edit": " TEXT", "/react": " EMOJI", "/unreact": " EMOJI"}.get(command, "")
        if len(parts) != (3 if wants_text else 2) or not parts[1].isdigit() or int(parts[1]) <= 0:
            raise ValueError(f"usage: {command} N{what} (N: the #N of a message of the current room)")
        if self.current_room is None:
            self.out("! no room selected")
            return
        seq, rest = int(parts[1]), parts[2].strip() if wants_text else ""
        message_id = await self._message_at(self.current_room, seq)
        if message_id is None:
            self.out(f"! no message #{seq} in room {self.current_room}")
            return
        session, live = self.session, self.session is not None and not self.session.closed
        assert session is not None
        if command == "/reply":
            await self.say(rest, reply_to=message_id)
        elif command == "/edit":
            await (session.edit(message_id, rest) if live else self.client.edit(message_id, rest))
        elif command == "/recall":
            await (session.recall(message_id) if live else self.client.recall(message_id))
        elif command in ("/react", "/unreact"):
            on = command == "/react"
            result = await (session.react(message_id, rest, on) if live else self.client.react(message_id, rest, on))
            if result.seq is None:  # nothing changed: no event will print
                self.out(f"* #{seq} already {'has' if on else 'had no'} your {rest} ({result.count})")
        elif command == "/hide":
            await self.client.hide(message_id)
            self.out(f"* #{seq} hidden from your history")

    async def _message_at(self, room_id: int, seq: int) -> int | None:
        """The id of the room's message #seq: from what was shown, else from a history page."""
        known = self._ids.get((room_id, seq))
        if known is not None:
            return known
        page = await self.client.history(room_id, after_seq=seq - 1, limit=1)
        for message in page.messages:
            if message.seq == seq:
                self._remember(message)
                return message.id
        return None  # a room event's seq, a message you hid, or none yet

    async def list_rooms(self) -> None:
        states = {state.room_id: state for state in await self.client.rooms()}
        rooms = sorted(states)
        if not rooms:
            self.out("* no rooms yet: /create NAME [ID,...] or /join ID")
            return
        limit = asyncio.Semaphore(ROOM_INFO_CONCURRENCY)

        async def line(room_id: int) -> str:
            async with limit:
                try:
                    info = await self.client.room_info(room_id)
                except PyStackerError:
                    return f"  {room_id}"
            kind = "group" if info.is_group else "private"
            mark = " (current)" if room_id == self.current_room else ""
            return (f"  {room_id}  {info.name}  [{kind}, {info.member_count} members, "
                    f"{states[room_id].unread} unread]{mark}")

        for text in await asyncio.gather(*(line(r) for r in rooms)):
            self.out(text)

    async def list_members(self) -> None:
        if self.current_room is None:
            self.out("! no room selected")
            return
        members = await self.client.members(self.current_room)
        try:
            presence = await self.client.presence([m.user_id for m in members][:MAX_WATCHED])
        except PyStackerError:
            presence = {}
        for member in members:
            self.names[member.user_id] = member.username
            nick = f" \"{member.nickname}\"" if member.nickname else ""
            state = presence.get(member.user_id)
            where = "" if state is None else "  online" if state.online else f"  last seen {clock(state.last_seen)}"
            self.out(f"  {member.user_id}  {member.username}{nick}{where}")

    async def show_history(self, count: int) -> None:
        if self.current_room is None:
            self.out("! no room selected")
            return
        page = await self.client.history(self.current_room, limit=max(1, min(count, 200)))
        if not page.messages:
            self.out("* no messages yet")
        for message in page.messages:
            self._remember(message)
        for message in page.messages:
            name = await self.name_of(message.sender_id, message.room_id)
            self.out(format_message(message, name, await self._quote(message)))

    async def name_of(self, user_id: int, room_id: int) -> str:
        """The sender's username, from the room's member list (read again at most every 30 s)."""
        if user_id not in self.names and time.monotonic() - self._names_loaded.get(room_id, -1e9) > NAME_REFRESH_SECONDS:
            self._names_loaded[room_id] = time.monotonic()
            try:
                for member in await self.client.members(room_id):
                    self.names[member.user_id] = member.username
            except PyStackerError:
                pass  # a former member's room: the id alone will do
        return self.names.get(user_id, "user")


def stdout_writer(stream: TextIO = sys.stdout) -> Callable[[str], None]:
    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()  # a pipe (or a test) sees each line as soon as it is printed

    return write


async def run_chat(urls: dict[str, str], username: str, password: str, *, register: bool = False,
                   nickname: str = "", room: int | None = None, device_id: str | None = None) -> int:
    """The whole `pystacker chat`: log in (registering first if asked), then chat until /quit."""
    out = stdout_writer()
    client = PyStackerClient(urls["meta"], urls["send"], urls["registry"], device_id=device_id)
    try:
        if register:
            try:
                user_id = await client.register(username, password, nickname)
                out(f"* registered {username} (user {user_id})")
            except PyStackerError as exc:
                if exc.status != 409:
                    raise
                out(f"* {username} already exists; logging in")
        await client.login(username, password)
        lines = start_line_reader(asyncio.get_running_loop(), sys.stdin)
        return await ChatTerminal(client, out).run(lines, room=room)
    except PyStackerError as exc:
        print(f"pystacker chat: {exc.msg}" + (f" ({exc.status})" if exc.status else ""), file=sys.stderr)
        return 1
    finally:
        await client.close()
