"""The rules of the meta service: who may do what to users, rooms and memberships.

GoStacker bugs fixed here on purpose (compatibility.md, 'Bugs fixed on purpose'): the creator is owner (0) and everyone else a
member (2); remove_member needs owner/admin rights over the target and never removes the owner; role
and nickname changes persist; member ids must exist; a private room has exactly two members; a second
pending join request is refused; permission errors are 403 (GoStacker: 500), unknown things 404.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import bcrypt

from pystacker.db.schema import ROLE_ADMIN, ROLE_MEMBER, ROLE_OWNER
from pystacker.engine.base import Roster, RosterEntry
from pystacker.messaging.cursors import CursorBook
from pystacker.messaging.rosters import MembershipBusy, RosterBook, RosterChange, from_unix
from pystacker.meta.store import DuplicateError, JoinRequest, Member, MetaStore, Room, User
from pystacker.web.auth import TokenService
from pystacker.web.envelope import ApiError, bad_request, conflict, forbidden, not_found

Result = TypeVar("Result")

BCRYPT_COST = 10  # GoStacker's (Go DefaultCost); its `$2a$10$` hashes verify unchanged

# Called after a room's membership changed, with the users who joined (empty when someone left):
# caches drop the room, and new members get a delivery cursor at the room's current end.
MembershipListener = Callable[[int, Sequence[int]], Awaitable[None]]


def _role_in(roster: Roster, user_id: int, allowed: set[int]) -> int:
    """The user's role if it is one of `allowed`; 403 otherwise."""
    entry = roster.members.get(user_id)
    if entry is None:
        raise forbidden("permission denied: not a member of this room")
    if entry.role not in allowed:
        raise forbidden("permission denied")
    return entry.role


def _hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def _check_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), password_hash.encode())
    except ValueError:  # a malformed stored hash is a wrong password, not a crash
        return False


class MetaService:
    def __init__(self, store: MetaStore, tokens: TokenService, rosters: RosterBook, cursors: CursorBook) -> None:
        self.store = store
        self.tokens = tokens
        self.rosters = rosters
        self.cursors = cursors
        self._listeners: list[MembershipListener] = []
        # Compared against when the username is unknown, so both answers take one bcrypt check.
        self._decoy_hash = _hash_password("decoy-password-for-timing")

    def on_membership_change(self, listener: MembershipListener) -> None:
        self._listeners.append(listener)

    async def _membership_changed(self, room_id: int, joined: Sequence[int] = ()) -> None:
        for listener in self._listeners:
            await listener(room_id, joined)

    # -- users -----------------------------------------------------------------------------------

    async def register(self, username: str, password: str, nickname: str) -> int:
        # bcrypt is CPU-bound for ~50 ms: keep it off the event loop.
        password_hash = await asyncio.to_thread(_hash_password, password)
        try:
            return await self.store.create_user(username, password_hash, nickname)
        except DuplicateError:
            raise conflict("username already exists") from None

    async def login(self, username: str, password: str) -> tuple[str, User]:
        user = await self.store.user_by_name(username)
        stored = user.password_hash if user else self._decoy_hash
        matches = await asyncio.to_thread(_check_password, password, stored)
        if user is None or not matches:
            raise ApiError(401, "Invalid username or password")
        await self.store.touch_login(user.id)
        return self.tokens.issue(user.id, user.username), user

    async def profile(self, user_id: int) -> User:
        user = await self.store.user_by_id(user_id)
        if user is None:
            raise not_found("user not found")
        return user

    # -- rooms -----------------------------------------------------------------------------------

    async def create_room(self, caller: int, name: str, is_group: bool, member_ids: Sequence[int]) -> int:
        others = [uid for uid in dict.fromkeys(member_ids) if uid != caller]
        if not is_group and len(others) != 1:
            raise bad_request("a private chat has exactly two members: you and one member_id")
        await self._require_caller_exists(caller)
        await self._require_users_exist(others)
        roles = {caller: ROLE_OWNER, **{uid: ROLE_MEMBER for uid in others}}
        room_id = await self.store.create_room(name, is_group, caller, roles)
        await self._membership_changed(room_id, list(roles))
        return room_id

    async def room_for_member(self, caller: int, room_id: int) -> Room:
        """The room, if the caller may see it: a member, or anyone for a (searchable) group."""
        room = await self._room(room_id)
        if not room.is_group and await self.rosters.role_of(room_id, caller) is None:
            raise forbidden("not a member of this room")
        return room

    async def search(self, text: str, limit: int) -> list[Room]:
        return await self.store.search_groups(text, limit)

    # -- membership ------------------------------------------------------------------------------
    # Every change is a decision on the roster as read, applied only to that version (RosterBook.change
    # decides again if another change came first): permission checks and the change cannot interleave.

    async def add_members(self, caller: int, room_id: int, member_ids: Sequence[int]) -> list[int]:
        room = await self._room(room_id)
        if not room.is_group:
            raise bad_request("cannot add members to a private chat")
        await self._require_role(room_id, caller, {ROLE_OWNER, ROLE_ADMIN})
        await self._require_users_exist(member_ids)
        joined_at = time.time()

        def decide(roster: Roster) -> RosterChange[list[int]]:
            _role_in(roster, caller, {ROLE_OWNER, ROLE_ADMIN})
            fresh = [uid for uid in dict.fromkeys(member_ids) if uid not in roster.members]
            return RosterChange(fresh, put={uid: RosterEntry(ROLE_MEMBER, None, joined_at) for uid in fresh})

        added = await self._change(room_id, decide)
        if added:
            await self._membership_changed(room_id, added)
        return added

    async def remove_member(self, caller: int, room_id: int, target: int) -> None:
        await self._room(room_id)

        def decide(roster: Roster) -> RosterChange[None]:
            caller_role = _role_in(roster, caller, {ROLE_OWNER, ROLE_ADMIN})
            entry = roster.members.get(target)
            if entry is None:
                raise not_found("user is not a member of this room")
            if entry.role == ROLE_OWNER:
                raise forbidden("the owner cannot be removed")
            if target != caller and caller_role >= entry.role:
                raise forbidden("permission denied: an admin can only remove members")
            return RosterChange(None, remove=[target])

        await self._change(room_id, decide)
        await self._membership_changed(room_id)

    async def leave(self, caller: int, room_id: int) -> None:
        await self._room(room_id)

        def decide(roster: Roster) -> RosterChange[None]:
            entry = roster.members.get(caller)
            if entry is None:
                raise not_found("not a member of this room")
            if entry.role == ROLE_OWNER and len(roster.members) > 1:
                raise bad_request("the owner cannot leave while other members remain; hand the ownership "
                                  "over first (change_member_role with new_role 0)")
            return RosterChange(None, remove=[caller])

        await self._change(room_id, decide)
        await self._membership_changed(room_id)

    async def join(self, caller: int, room_id: int) -> None:
        room = await self._room(room_id)
        if not room.is_group:
            raise bad_request("cannot join a private chat")
        await self._require_caller_exists(caller)
        if await self._add_one(room_id, caller):
            await self._membership_changed(room_id, [caller])

    async def _add_one(self, room_id: int, user_id: int) -> bool:
        """Add as a member unless already in (then role and nickname stay). True if added."""
        joined_at = time.time()

        def decide(roster: Roster) -> RosterChange[bool]:
            if user_id in roster.members:
                return RosterChange(False)
            return RosterChange(True, put={user_id: RosterEntry(ROLE_MEMBER, None, joined_at)})

        return await self._change(room_id, decide)

    async def change_nickname(self, caller: int, room_id: int, nickname: str) -> None:
        await self._room(room_id)

        def decide(roster: Roster) -> RosterChange[None]:
            entry = roster.members.get(caller)
            if entry is None:
                raise forbidden("not a member of this room")
            return RosterChange(None, put={caller: dataclasses.replace(entry, nickname=nickname)})

        await self._change(room_id, decide)

    async def change_role(self, caller: int, room_id: int, target: int, new_role: int) -> None:
        """Owner only. new_role 1 or 2 sets admin/member; 0 hands the ownership over (the old owner
        becomes admin, in the same change), so a group never has to be left without an owner."""
        if new_role not in (ROLE_OWNER, ROLE_ADMIN, ROLE_MEMBER):
            raise bad_request("new_role must be 0 (transfer ownership), 1 (admin) or 2 (member)")
        await self._room(room_id)

        def decide(roster: Roster) -> RosterChange[None]:
            _role_in(roster, caller, {ROLE_OWNER})
            entry = roster.members.get(target)
            if entry is None:
                raise not_found("user is not a member of this room")
            if entry.role == ROLE_OWNER:
                raise bad_request("the owner's role cannot be changed")
            put = {target: dataclasses.replace(entry, role=new_role)}
            if new_role == ROLE_OWNER:
                put[caller] = dataclasses.replace(roster.members[caller], role=ROLE_ADMIN)
            return RosterChange(None, put=put)

        await self._change(room_id, decide)
        await self._membership_changed(room_id)

    async def members(self, caller: int, room_id: int) -> list[Member]:
        await self._room(room_id)
        roster = await self._roster(room_id)
        if caller not in roster.members:
            raise forbidden("not a member of this room")
        names = await self.store.usernames(list(roster.members))
        members = [Member(uid, names.get(uid, ""), entry.role, entry.nickname, from_unix(entry.joined_at))
                   for uid, entry in roster.members.items()]
        return sorted(members, key=lambda m: (m.role, m.user_id))

    async def member_count(self, room_id: int) -> int:
        return len((await self._roster(room_id)).members)

    async def joined_rooms(self, caller: int) -> list[int]:
        return await self.cursors.rooms_of(caller)

    async def _roster(self, room_id: int) -> Roster:
        roster = await self.rosters.roster(room_id)
        if roster is None:
            raise not_found("room not found")
        return roster

    async def _change(self, room_id: int, decide: Callable[[Roster], RosterChange[Result]]) -> Result:
        try:
            return await self.rosters.change(room_id, decide)
        except LookupError:
            raise not_found("room not found") from None
        except MembershipBusy:
            raise ApiError(503, "the room's membership is changing too fast; try again") from None

    # -- join requests ---------------------------------------------------------------------------

    async def request_join(self, caller: int, room_id: int, message: str | None) -> int:
        room = await self._room(room_id)
        if not room.is_group:
            raise bad_request("cannot request to join a private chat")
        if await self.rosters.role_of(room_id, caller) is not None:
            raise conflict("already a member of this room")
        await self._require_caller_exists(caller)
        try:
            return await self.store.create_join_request(room_id, caller, message)
        except DuplicateError:
            raise conflict("a join request for this room is already pending") from None

    async def join_requests(self, caller: int, room_id: int) -> list[JoinRequest]:
        await self._room(room_id)
        await self._require_role(room_id, caller, {ROLE_OWNER, ROLE_ADMIN})
        return await self.store.join_requests_of(room_id)

    async def respond(self, caller: int, request_id: int, approve: bool) -> None:
        request = await self.store.join_request(request_id)
        if request is None:
            raise not_found("join request not found")
        await self._require_role(request.room_id, caller, {ROLE_OWNER, ROLE_ADMIN})
        # The request goes first: of two answers only one finds it. Adding after the delete can fail
        # (the cache is down), and the request is then put back so that it can be answered again.
        if not await self.store.delete_join_request(request.id):
            raise not_found("join request not found")
        if not approve:
            return
        try:
            added = await self._add_one(request.room_id, request.user_id)
        except BaseException:
            await self.store.restore_join_request(request)
            raise
        if added:
            await self._membership_changed(request.room_id, [request.user_id])

    # -- shared checks ---------------------------------------------------------------------------

    async def _room(self, room_id: int) -> Room:
        room = await self.store.room(room_id)
        if room is None:
            raise not_found("room not found")
        return room

    async def _require_role(self, room_id: int, user_id: int, allowed: set[int]) -> int:
        return _role_in(await self._roster(room_id), user_id, allowed)

    async def _require_caller_exists(self, caller: int) -> None:
        """A correctly signed token can outlive its user (database reset, secret kept): refuse it as
        a bad token before an insert, instead of letting the foreign key answer 500."""
        if not await self.store.existing_user_ids([caller]):
            raise ApiError(401, "Invalid token: user no longer exists")

    async def _require_users_exist(self, user_ids: Sequence[int]) -> None:
        missing = set(user_ids) - await self.store.existing_user_ids(user_ids)
        if missing:
            shown = ", ".join(str(uid) for uid in sorted(missing)[:10])
            raise not_found(f"unknown user id(s): {shown}")
