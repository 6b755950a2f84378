"""`pystacker chat`: a line-based chat in a terminal, on top of the SDK.

Lines starting with `/` are commands (`/help` lists them); any other line is sent to the current room.
Incoming messages print as `[room 3 #12] alice(7): hello`. Standard input is read by a daemon thread
that hands lines to the event loop through a small bounded queue: the loop never blocks on the terminal,
and a thread still waiting for a line does not keep the process alive after `/quit`.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from pystacker.client.api import PyStackerClient
from pystacker.client.errors import PyStackerError, SessionClosed
from pystacker.client.models import ChatMessage, Delivered
from pystacker.client.session import Session

HELP = """commands:
  /rooms                    the rooms you are in, with their unread counts
  /create NAME [ID,...]     create a group room with these user ids, and select it
  /join ROOM                join a group room, and select it
  /room ROOM                select the current room
  /members                  who is in the current room
  /history [N]              the last N messages of the current room (default 20)
  /quit                     leave (Ctrl-D too)
  /help                     this text
anything else is sent to the current room"""

NAME_REFRESH_SECONDS = 30.0
ROOM_INFO_CONCURRENCY = 8
INPUT_QUEUE_SIZE = 64


def describe_content(message: ChatMessage) -> str:
    """One line for any content type."""
    p = message.payload
    if message.content_type == "text":
        return str(p.get("text", ""))
    if message.content_type == "image":
        return f"[image {p.get('width', 0)}x{p.get('height', 0)} {p.get('url', '')}]"
    if message.content_type == "voice":
        return f"[voice {p.get('duration', 0)} s {p.get('url', '')}]"
    if message.content_type == "file":
        return f"[file {p.get('file_name', '')} ({p.get('size', 0)} bytes) {p.get('url', '')}]"
    return f"[{message.content_type}]"


def format_message(message: ChatMessage, name: str) -> str:
    text = describe_content(message).replace("\r", " ").replace("\n", " ")
    return f"[room {message.room_id} #{message.seq}] {name}({message.sender_id}): {text}"


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

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, lines: asyncio.Queue[str | None], room: int | None = None) -> int:
        """Until /quit or end of input (0), or until the connection is lost for good (1)."""
        self.session = await self.client.connect(on_state=self._on_state)
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
                if self.current_room is None:
                    self.current_room = item.room_id
                    self.out(f"* current room: {item.room_id}")
                self.out(format_message(item, await self.name_of(item.sender_id, item.room_id)))
                if item.room_id == self.current_room:
                    await self._mark_read(item.room_id, item.seq)
        except SessionClosed:
            return
        except PyStackerError as exc:
            self.out(f"! connection lost: {exc.msg}")

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
        self.current_room = room_id
        self.out(f"* current room: {room_id}")

    async def say(self, text: str) -> None:
        if self.current_room is None:
            self.out("! no room selected: /rooms, /room ID, /create NAME or /join ID")
            return
        assert self.session is not None
        if self.session.closed:
            await self.client.send(self.current_room, text)  # the socket is gone; HTTP still works
        else:
            await self.session.send(self.current_room, text)

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
        for member in await self.client.members(self.current_room):
            self.names[member.user_id] = member.username
            nick = f" \"{member.nickname}\"" if member.nickname else ""
            self.out(f"  {member.user_id}  {member.username}{nick}")

    async def show_history(self, count: int) -> None:
        if self.current_room is None:
            self.out("! no room selected")
            return
        page = await self.client.history(self.current_room, limit=max(1, min(count, 200)))
        if not page.messages:
            self.out("* no messages yet")
        for message in page.messages:
            self.out(format_message(message, await self.name_of(message.sender_id, message.room_id)))

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
