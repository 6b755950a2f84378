"""Users and rooms for a run, created through meta (with the SDK) with bounded concurrency.

New users are named `<prefix>_<run>_<index>`, so runs never see each other's rooms. Registering and
logging in cost one bcrypt check each on the server (about 50-120 ms of CPU on this machine), which
makes setup the slow part for thousands of users: --users-file keeps the users (name, password, id,
token) of a run for the next runs against the same server, which then only create their rooms (and
log in again the users whose token is about to expire). Progress is printed every second.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
import orjson

from pystacker.client import PyStackerClient, PyStackerError
from pystacker_tools.bench.safety import BenchError
from pystacker_tools.bench.targets import Targets

PASSWORD = "bench-password-0"
RETRIES = 4  # per call, for connection errors and 5xx only
TOKEN_MARGIN = 3600.0  # seconds: a stored token expiring sooner is renewed (a run must not outlive it)
MEMBERS_PER_REQUEST = 500  # PyStacker's limit; GoStacker has none
T = TypeVar("T")


@dataclass(frozen=True)
class User:
    index: int  # position in the run (0 ... users-1): what workloads and tags use
    user_id: int
    token: str


@dataclass(frozen=True)
class Room:
    room_id: int
    members: tuple[int, ...]  # user indexes; members[0] created the room


@dataclass
class Population:
    users: list[User] = field(default_factory=list)
    rooms: list[Room] = field(default_factory=list)


@dataclass
class Account:
    """A user as kept in --users-file."""

    username: str
    password: str
    user_id: int
    token: str


def load_accounts(path: Path | None) -> list[Account]:
    if path is None or not path.exists():
        return []
    try:
        data = orjson.loads(path.read_bytes())
        return [Account(**entry) for entry in data["users"]]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BenchError(f"--users-file {path}: not a bench users file ({exc})") from None


def save_accounts(path: Path | None, accounts: list[Account]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(orjson.dumps({"users": [asdict(a) for a in accounts]}))
    os.replace(temporary, path)  # never leave a half-written file behind


def _token_expires(token: str) -> float:
    """The `exp` claim (unix seconds), 0 if unreadable: then the token is renewed."""
    try:
        payload = token.split(".")[1]
        return float(orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("exp", 0))
    except (IndexError, ValueError, TypeError, orjson.JSONDecodeError):
        return 0.0


async def _retrying(call: Callable[[], Awaitable[T]], what: str, deadline: float) -> T:
    """Retry transient failures (no answer, 5xx) with backoff, within the setup deadline.

    A 4xx is the server's answer, not a hiccup: it is raised as it is (PyStackerError)."""
    delay = 0.2
    for attempt in range(RETRIES + 1):
        try:
            return await call()
        except PyStackerError as exc:
            if 0 < exc.status < 500:
                raise
            if attempt == RETRIES or time.monotonic() + delay > deadline:
                raise BenchError(f"setup: {what}: {exc}") from None
        await asyncio.sleep(delay)  # back off before the retry
        delay *= 2
    raise AssertionError("unreachable")


class _Progress:
    """One line per second while setup runs: it can take minutes for thousands of users."""

    def __init__(self, enabled: bool, started: float) -> None:
        self.enabled = enabled
        self.users = self.rooms = 0
        self.users_total = self.rooms_total = 0
        self.started = started

    async def run(self) -> None:
        while self.enabled:
            await asyncio.sleep(1.0)
            print(f"[{time.monotonic() - self.started:6.1f}s] setup: users {self.users}/{self.users_total}, "
                  f"rooms {self.rooms}/{self.rooms_total}", file=sys.stderr, flush=True)


async def create_room(owner: PyStackerClient, name: str, is_group: bool, member_ids: list[int]) -> int:
    """A room with any number of members: the first MEMBERS_PER_REQUEST with it, the rest added."""
    first, rest = member_ids[:MEMBERS_PER_REQUEST], member_ids[MEMBERS_PER_REQUEST:]
    room_id = await owner.create_room(name, first, is_group=is_group)
    for start in range(0, len(rest), MEMBERS_PER_REQUEST):
        chunk = rest[start:start + MEMBERS_PER_REQUEST]
        try:
            await owner.add_members(room_id, chunk)
        except PyStackerError as exc:
            if exc.status != 404:
                raise
            for member_id in chunk:  # GoStacker has only the one-by-one route
                await owner.add_member(room_id, member_id)
    return room_id


async def create_population(targets: Targets, http: aiohttp.ClientSession, *, run: str, prefix: str, users: int,
                            groups: list[list[int]], pairs: list[tuple[int, int]], concurrency: int,
                            timeout: float, progress: bool = True, started: float | None = None,
                            users_file: Path | None = None) -> Population:
    """Get `users` users (from --users-file first, then new ones), then create the groups and the
    private rooms (members given by user index)."""
    deadline = time.monotonic() + timeout
    limit = asyncio.Semaphore(concurrency)
    report = _Progress(progress, time.monotonic() if started is None else started)
    report.users_total, report.rooms_total = users, len(groups) + len(pairs)
    ticker = asyncio.create_task(report.run())
    accounts = load_accounts(users_file)
    try:
        if accounts and users:
            await _check_accounts_belong_here(targets.client(http, token=accounts[0].token), users_file)

        async def login(name: str, password: str) -> Account:
            client = targets.client(http)
            try:
                token = await _retrying(lambda: client.login(name, password), f"login {name}", deadline)
            except PyStackerError as exc:
                raise BenchError(f"setup: login {name}: {exc}") from None
            if client.user_id is None:
                raise BenchError("login answer has no user id and the token has no user_id claim")
            return Account(name, password, client.user_id, token)

        async def one_user(index: int) -> Account:
            async with limit:
                if index < len(accounts):
                    account = accounts[index]
                    if _token_expires(account.token) < time.time() + TOKEN_MARGIN:
                        account = await login(account.username, account.password)
                else:
                    name = f"{prefix}_{run}_{index}"
                    anonymous = targets.client(http)
                    try:
                        await _retrying(lambda: anonymous.register(name, PASSWORD), f"register {name}", deadline)
                    except PyStackerError as exc:
                        if exc.status != 409:  # 409: already there (the same run id again): log in
                            raise BenchError(f"setup: register {name}: {exc}") from None
                    account = await login(name, PASSWORD)
            report.users += 1
            return account

        got = await _bounded_gather([one_user(i) for i in range(users)], deadline, "registering users")
        if users_file is not None:
            save_accounts(users_file, got + accounts[len(got):])
        people = [User(i, account.user_id, account.token) for i, account in enumerate(got)]

        async def one_room(name: str, members: list[int], is_group: bool) -> Room:
            owner = targets.client(http, token=people[members[0]].token, user_id=people[members[0]].user_id)
            ids = [people[i].user_id for i in members[1:]]
            async with limit:
                try:
                    room_id = await _retrying(lambda: create_room(owner, name, is_group, ids),
                                              f"create room {name}", deadline)
                except PyStackerError as exc:
                    raise BenchError(f"setup: create room {name}: {exc}") from None
            report.rooms += 1
            return Room(room_id, tuple(members))

        rooms = [one_room(f"{prefix}-{run}-group-{g}", members, True) for g, members in enumerate(groups)]
        rooms += [one_room(f"{prefix}-{run}-pair-{p}", [a, b], False) for p, (a, b) in enumerate(pairs)]
        created = await _bounded_gather(rooms, deadline, "creating rooms")
        return Population(people, created)
    finally:
        report.enabled = False
        ticker.cancel()


async def _check_accounts_belong_here(client: PyStackerClient, users_file: Path | None) -> None:
    """A users file made against another server (or a wiped one) must not be used silently: `client`
    has the file's first token."""
    try:
        await client.joined_rooms()
    except PyStackerError as exc:
        if exc.status == 401 and _token_expires(client.token or "") > time.time():
            raise BenchError(f"--users-file {users_file}: its tokens are refused by this server (401); "
                             "it was made for another server or a wiped one: delete it") from None
        if exc.status != 401:
            raise BenchError(f"setup: checking --users-file: {exc}") from None


async def _bounded_gather(calls: Sequence[Awaitable[T]], deadline: float, what: str) -> list[T]:
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.wait_for(asyncio.gather(*tasks), max(deadline - time.monotonic(), 0.1)))
    except TimeoutError:
        raise BenchError(f"setup: {what} did not finish within --setup-timeout") from None
    finally:
        for task in tasks:
            task.cancel()
