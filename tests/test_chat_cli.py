"""`pystacker chat` as a real subprocess against the embedded system (the `system` fixture): two people
in two "terminals", stdin lines in, stdout lines checked. Waits poll the output with a deadline."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pystacker.client import PyStackerClient

PYSTACKER = Path(sys.executable).parent / "pystacker"
TIMEOUT = 20.0  # a subprocess starts Python, imports, hashes a password: generous, never slept
PASSWORD = "password-1"


class Terminal:
    """One `pystacker chat` process; every stdout line is kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.stderr = ""
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().rstrip("\n"))
            self._new_line.set()
        self._new_line.set()

    async def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, pattern: str, *, start: int = 0, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line from index `start` on that matches `pattern` (a regex), waiting for it."""
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            for line in self.lines[seen:]:
                if match := re.search(pattern, line):
                    return match
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._reader.done() and seen == len(self.lines)):
                raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.lines)
                                     + (f"\nstderr:\n{self.stderr}" if self.stderr else ""))
            self._new_line.clear()
            try:
                await asyncio.wait_for(self._new_line.wait(), remaining)
            except TimeoutError:
                pass

    async def finish(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to end; its exit code."""
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        assert self.proc.stderr is not None
        self.stderr = (await self.proc.stderr.read()).decode()
        return code


@pytest.fixture
async def open_terminal(system: Any) -> AsyncIterator[Callable[..., Any]]:
    urls = system.urls
    terminals: list[Terminal] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSTACKER_")}

    async def start(username: str, *extra: str, password: str = PASSWORD) -> Terminal:
        proc = await asyncio.create_subprocess_exec(
            str(PYSTACKER), "chat", "--meta", urls["meta"], "--send", urls["send"], "--registry", urls["registry"],
            "--user", username, "--password", password, *extra,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        terminal = Terminal(proc)
        terminals.append(terminal)
        return terminal

    yield start
    for terminal in terminals:
        if terminal.proc.returncode is None:
            terminal.proc.kill()
            await terminal.proc.wait()
        terminal._reader.cancel()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def test_two_people_chat_in_two_terminals(open_terminal: Any) -> None:
    alice_name, bob_name = unique("alice"), unique("bob")
    alice = await open_terminal(alice_name, "--register")
    bob = await open_terminal(bob_name, "--register")
    alice_id = int((await alice.expect(r"registered \S+ \(user (\d+)\)"))[1])
    bob_id = int((await bob.expect(r"registered \S+ \(user (\d+)\)"))[1])
    await alice.expect(r"^\* connected as user")
    await bob.expect(r"^\* connected as user")

    await alice.say(f"/create lobby {bob_id}")
    room = int((await alice.expect(r"created room (\d+) \(lobby\)"))[1])
    await alice.expect(rf"current room: {room}$")
    await alice.say("hello bob, this is alice")
    # Bob had no room selected: the first message selects it.
    await bob.expect(rf"^\[room {room} #1\] {alice_name}\({alice_id}\): hello bob, this is alice$")
    await bob.expect(rf"current room: {room}$")

    await bob.say("hi alice")
    await alice.expect(rf"^\[room {room} #2\] {bob_name}\({bob_id}\): hi alice$")

    mark = len(bob.lines)
    await bob.say("/history 5")
    await bob.expect(rf"^\[room {room} #1\] {alice_name}\({alice_id}\): hello bob", start=mark)
    await bob.expect(rf"^\[room {room} #2\] {bob_name}\({bob_id}\): hi alice", start=mark)
    # A second room, not bob's current one: what arrives there stays unread; what the current room
    # showed is read.
    await alice.say(f"/create side {bob_id}")
    side = int((await alice.expect(r"created room (\d+) \(side\)"))[1])
    await alice.expect(rf"current room: {side}$")
    await alice.say("one")
    await alice.say("two")
    await bob.expect(rf"^\[room {side} #2\] {alice_name}\({alice_id}\): two$")
    await bob.say("/rooms")
    await bob.expect(rf"^  {room}  lobby  \[group, 2 members, 0 unread\] \(current\)$")
    await bob.expect(rf"^  {side}  side  \[group, 2 members, 2 unread\]$")
    await bob.say("/members")
    await bob.expect(rf"^  {alice_id}  {alice_name}  online$")  # with their presence

    await alice.say("/quit")
    assert await alice.finish() == 0
    bob.proc.stdin.close()  # type: ignore[union-attr]  # end of input ends the chat too
    assert await bob.finish() == 0
    # Each saw each message exactly once (own messages come back as the server's echo).
    for terminal in (alice, bob):
        assert sum(line.startswith(f"[room {room} #1]") for line in terminal.lines) == (2 if terminal is bob else 1)
        assert sum(line.startswith(f"[room {room} #2]") for line in terminal.lines) == (2 if terminal is bob else 1)


async def test_join_select_and_errors(open_terminal: Any) -> None:
    owner = await open_terminal(unique("owner"), "--register")
    await owner.expect(r"^\* connected as user")
    await owner.say("no room yet")
    await owner.expect(r"^! no room selected")
    await owner.say("/create plaza")
    room = int((await owner.expect(r"created room (\d+) \(plaza\)"))[1])

    guest_name = unique("guest")
    guest = await open_terminal(guest_name, "--register")
    guest_id = int((await guest.expect(r"\(user (\d+)\)"))[1])
    await guest.expect(r"^\* connected as user")
    await guest.say(f"/room {room}")
    await guest.expect(rf"^! you are not in room {room}")
    await guest.say(f"/join {room}")
    await guest.expect(rf"^\* joined room {room}$")
    await guest.say("/frobnicate")
    await guest.expect(r"^! unknown command /frobnicate")
    await guest.say("/create")
    await guest.expect(r"^! usage: /create NAME")
    await guest.say("knock knock")
    await owner.expect(rf"^\[room {room} #1\] {guest_name}\({guest_id}\): knock knock$")
    await guest.say("/quit")
    await owner.say("/quit")
    assert await guest.finish() == 0 and await owner.finish() == 0


async def test_login_errors_and_existing_account(open_terminal: Any) -> None:
    name = unique("carol")
    first = await open_terminal(name, "--register")
    await first.expect(r"^\* connected as user")
    await first.say("/quit")
    assert await first.finish() == 0

    again = await open_terminal(name, "--register")  # the account exists: just log in
    await again.expect(r"already exists; logging in")
    await again.expect(r"^\* connected as user")
    await again.say("/quit")
    assert await again.finish() == 0

    wrong = await open_terminal(name, password="not-the-password")
    assert await wrong.finish() == 1
    assert "Invalid username or password (401)" in wrong.stderr


async def test_reply_edit_react_recall_hide_typing_and_presence(open_terminal: Any, system: Any) -> None:
    """The message lifecycle in two terminals: /reply, /edit, /react, /unreact, /recall and /hide
    name a message by the #N its line shows; every change prints in both as it arrives, in the room's
    seq order. Who is typing (here alice's second device, an SDK session) and the presence of the
    current room's members print too."""
    alice_name, bob_name = unique("alice"), unique("bob")
    alice = await open_terminal(alice_name, "--register")
    bob = await open_terminal(bob_name, "--register")
    alice_id = int((await alice.expect(r"registered \S+ \(user (\d+)\)"))[1])
    bob_id = int((await bob.expect(r"registered \S+ \(user (\d+)\)"))[1])
    await bob.expect(r"^\* connected as user")
    await alice.expect(r"^\* connected as user")
    await alice.say(f"/create lifecycle {bob_id}")
    room = int((await alice.expect(r"created room (\d+) \(lifecycle\)"))[1])
    await alice.expect(rf"^\* {bob_name}\({bob_id}\) is online$")  # the current room's members are watched

    await alice.say("hello bob")
    await bob.expect(rf"^\[room {room} #1\] {alice_name}\({alice_id}\): hello bob$")
    await bob.say("/reply 1 hi alice")
    reply = rf"^\[room {room} #2\] {bob_name}\({bob_id}\) \(reply to #1 {alice_name}: \"hello bob\"\): hi alice$"
    for terminal in (alice, bob):
        await terminal.expect(reply)
    await alice.say("/edit 1 hello bob, edited")
    await alice.say("/react 1 \U0001f44d")
    for terminal in (alice, bob):
        await terminal.expect(rf"^\[room {room} #3\] {alice_name}\({alice_id}\) edited #1: hello bob, edited$")
        await terminal.expect(rf"^\[room {room} #4\] {alice_name}\({alice_id}\) reacted \U0001f44d to #1 \(1\)$")
    await bob.say("/react 2 \u2764")
    await alice.expect(rf"^\[room {room} #5\] {bob_name}\({bob_id}\) reacted \u2764 to #2 \(1\)$")
    await bob.say("/unreact 2 \u2764")
    await alice.expect(rf"^\[room {room} #6\] {bob_name}\({bob_id}\) took back \u2764 from #2 \(0\)$")
    await alice.say("/recall 2")  # alice owns the room: she may recall bob's message
    for terminal in (alice, bob):
        await terminal.expect(rf"^\[room {room} #7\] {alice_name}\({alice_id}\) recalled #2$")

    mark = len(bob.lines)
    await bob.say("/edit 1 not mine")
    await bob.expect(r"^! .*\(403\)$", start=mark)
    mark = len(bob.lines)
    await bob.say("/edit 2 mine, but recalled")
    await bob.expect(r"^! .*\(409\)$", start=mark)
    mark = len(bob.lines)
    await bob.say("/edit x")
    await bob.expect(r"^! usage: /edit N TEXT", start=mark)
    await bob.say("/reply 3 that is an edit, not a message")
    await bob.expect(rf"^! no message #3 in room {room}$", start=mark)

    mark = len(bob.lines)
    await bob.say("/history")
    await bob.expect(rf"^\[room {room} #1\] {alice_name}\({alice_id}\): hello bob, edited \(edited\)  "
                     rf"\[\U0001f44d 1\]$", start=mark)
    await bob.expect(rf"^\[room {room} #2\] {bob_name}\({bob_id}\) \(reply to #1 {alice_name}: .*\): "
                     rf"\[message recalled\]", start=mark)
    await bob.say("/hide 1")
    await bob.expect(r"^\* #1 hidden from your history$", start=mark)
    mark = len(bob.lines)
    await bob.say("/history")
    await bob.expect(rf"^\[room {room} #2\] ", start=mark)
    assert not any(line.startswith(f"[room {room} #1]") for line in bob.lines[mark:])

    # Typing: alice's other device (the terminal reads whole lines and sends none).
    urls = system.urls
    async with PyStackerClient(urls["meta"], urls["send"], urls["registry"], device_id="sdk-device") as device:
        await device.login(alice_name, PASSWORD)
        async with await device.connect() as session:
            await session.typing(room)
            await bob.expect(rf"^\* {alice_name}\({alice_id}\) is typing in room {room}$")

    mark = len(alice.lines)
    await alice.say("/members")
    await alice.expect(rf"^  {bob_id}  {bob_name}  online$", start=mark)
    await bob.say("/quit")
    assert await bob.finish() == 0
    await alice.expect(rf"^\* {bob_name}\({bob_id}\) is offline \(last seen \d{{4}}-\d\d-\d\d [\d:]+\)$",
                       start=mark)
    mark = len(alice.lines)
    await alice.say("/react 1 \U0001f44d")  # again: nothing changes, and no event comes
    await alice.expect(r"^\* #1 already has your \U0001f44d \(1\)$", start=mark)
    await alice.say("/quit")
    assert await alice.finish() == 0
    # Each change printed once per terminal.
    for line in (rf"[room {room} #3]", rf"[room {room} #7]"):
        assert sum(text.startswith(line) for text in alice.lines) == 1
