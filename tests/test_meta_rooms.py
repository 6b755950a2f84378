"""Meta service, rooms: every room, member, role and join-request route over a real socket.

Each test makes its own users and rooms (unique names), so the tests share the session's database
without depending on each other.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.client import Http, User, new_user, unique_name
from tests.test_meta_users import assert_error

OWNER, ADMIN, MEMBER = 0, 1, 2

CREATE = "/api/chat/group/create"
ADD_MEMBER = "/api/chat/group/add_member"
ADD_MEMBERS = "/api/chat/group/add_members"
REMOVE_MEMBER = "/api/chat/group/remove_member"
CHANGE_ROLE = "/api/chat/group/change_member_role"
CHANGE_NICKNAME = "/api/chat/group/change_nickname"
JOIN = "/api/chat/group/join"
LEAVE = "/api/chat/group/leave"
SEARCH = "/api/chat/group/search"
INFO = "/api/chat/group/info"
MEMBERS = "/api/chat/group/members"
JOINED = "/api/joined_rooms"
JOIN_REQUEST = "/api/chat/group/join/request"
JOIN_REQUESTS = "/api/chat/group/join/requests"
JOIN_RESPOND = "/api/chat/group/join/respond"

NO_SUCH_ID = 2**62  # a valid id that no row will reach in a test run


async def new_users(meta: Http, *prefixes: str) -> list[User]:
    """Several users at once: each costs two bcrypt rounds, which run in parallel threads."""
    return list(await asyncio.gather(*(new_user(meta, prefix) for prefix in prefixes)))


async def create_room(meta: Http, owner: User, *members: User, name: str | None = None,
                      is_group: bool = True) -> int:
    answer = await meta.post(CREATE, {"name": name or unique_name("room"), "is_group": is_group,
                                      "member_ids": [m.id for m in members]}, token=owner.token)
    assert answer.status == 200, answer
    return answer.data["room_id"]


async def roles_in(meta: Http, room_id: int, reader: User) -> dict[int, int]:
    """user_id -> role, read back through GET /api/chat/group/members."""
    answer = await meta.get(MEMBERS, params={"room_id": room_id}, token=reader.token)
    assert answer.status == 200, answer
    return {m["user_id"]: m["role"] for m in answer.data["members"]}


async def joined(meta: Http, user: User) -> list[int]:
    answer = await meta.get(JOINED, token=user.token)
    assert answer.status == 200, answer
    assert answer.body["code"] == 0 and answer.msg == "ok"
    return answer.data["room_ids"]


async def group_with_admin(meta: Http) -> tuple[int, User, User, User]:
    """A group with an owner, an admin and a plain member."""
    owner, admin, member = await new_users(meta, "own", "adm", "mem")
    room_id = await create_room(meta, owner, admin, member)
    promoted = await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": admin.id, "new_role": ADMIN},
                               token=owner.token)
    assert promoted.status == 200, promoted
    return room_id, owner, admin, member


def assert_ok(answer: Any, msg: str) -> None:
    assert answer.status == 200, answer
    assert answer.body["code"] == 0 and answer.body["msg"] == msg, answer


# -- create --------------------------------------------------------------------------------------


async def test_create_group_makes_the_creator_owner_and_the_others_members(meta: Http) -> None:
    owner, bob, carol = await new_users(meta, "own", "bob", "carol")
    answer = await meta.post(CREATE, {"name": "Team", "is_group": True, "member_ids": [bob.id, carol.id]},
                             token=owner.token)
    assert_ok(answer, "Chat room created successfully")
    room_id = answer.data["room_id"]
    assert isinstance(room_id, int) and room_id > 0
    assert await roles_in(meta, room_id, carol) == {owner.id: OWNER, bob.id: MEMBER, carol.id: MEMBER}
    for user in (owner, bob, carol):
        assert room_id in await joined(meta, user)


async def test_create_group_alone_and_with_self_or_duplicates_in_member_ids(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    alone = await create_room(meta, owner)
    assert await roles_in(meta, alone, owner) == {owner.id: OWNER}
    # The creator listed among the members stays owner; a repeated id is added once.
    answer = await meta.post(CREATE, {"name": "dups", "is_group": True, "member_ids": [owner.id, bob.id, bob.id]},
                             token=owner.token)
    assert answer.status == 200, answer
    assert await roles_in(meta, answer.data["room_id"], owner) == {owner.id: OWNER, bob.id: MEMBER}


async def test_create_private_room_with_exactly_one_other_member(meta: Http) -> None:
    alice, bob = await new_users(meta, "alice", "bob")
    # is_group is optional and defaults to false: GoStacker's 1:1 chat.
    answer = await meta.post(CREATE, {"name": "dm", "member_ids": [bob.id]}, token=alice.token)
    assert_ok(answer, "Chat room created successfully")
    room_id = answer.data["room_id"]
    assert await roles_in(meta, room_id, bob) == {alice.id: OWNER, bob.id: MEMBER}
    info = await meta.get(INFO, params={"room_id": room_id}, token=alice.token)
    assert info.data["is_group"] is False and info.data["member_count"] == 2


@pytest.mark.parametrize("others", [0, 2], ids=["alone", "three-people"])
async def test_create_private_room_with_other_than_two_members_is_400(meta: Http, others: int) -> None:
    alice = await new_user(meta, "alice")
    extra = await new_users(meta, *["x"] * others)
    answer = await meta.post(CREATE, {"name": "dm", "is_group": False, "member_ids": [u.id for u in extra]},
                             token=alice.token)
    assert_error(answer, 400, contains="exactly two members")
    assert await joined(meta, alice) == []


async def test_create_private_room_with_only_self_is_400(meta: Http) -> None:
    alice = await new_user(meta, "alice")
    answer = await meta.post(CREATE, {"name": "dm", "is_group": False, "member_ids": [alice.id]}, token=alice.token)
    assert_error(answer, 400, contains="exactly two members")


async def test_create_with_unknown_member_id_is_404_and_creates_nothing(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    answer = await meta.post(CREATE, {"name": "ghosts", "is_group": True, "member_ids": [bob.id, NO_SUCH_ID]},
                             token=owner.token)
    assert_error(answer, 404, contains=str(NO_SUCH_ID))
    assert await joined(meta, owner) == [] and await joined(meta, bob) == []


async def test_create_with_more_member_ids_than_the_limit_is_400(meta: Http) -> None:
    owner = await new_user(meta, "own")
    answer = await meta.post(CREATE, {"name": "huge", "is_group": True, "member_ids": list(range(1, 502))},
                             token=owner.token)
    assert_error(answer, 400, "member_ids: at most 500 ids per request")
    assert await joined(meta, owner) == []


async def test_create_accepts_a_name_of_100_characters(meta: Http) -> None:
    owner = await new_user(meta, "own")
    name = "é" * 100
    room_id = await create_room(meta, owner, name=name)
    info = await meta.get(INFO, params={"room_id": room_id}, token=owner.token)
    assert info.data["name"] == name


@pytest.mark.parametrize(("body", "fragment"), [
    ({"name": "n" * 101, "is_group": True, "member_ids": []}, "name"),
    ({"name": "", "is_group": True, "member_ids": []}, "name"),
    ({"is_group": True, "member_ids": []}, "name is required"),
    ({"name": "x", "is_group": True}, "member_ids is required"),
    ({"name": "x", "is_group": True, "member_ids": None}, "member_ids"),
    ({"name": "x", "is_group": True, "member_ids": ["7"]}, "member_ids"),
    ({"name": "x", "is_group": True, "member_ids": [0]}, "member_ids"),
    ({"name": "x", "is_group": True, "member_ids": [-4]}, "member_ids"),
    ({"name": "x", "is_group": "yes", "member_ids": []}, "is_group"),
    ({"name": "bad\x00name", "is_group": True, "member_ids": []}, "control characters"),
], ids=["name-long", "name-empty", "no-name", "no-member-ids", "member-ids-null", "member-id-string",
        "member-id-zero", "member-id-negative", "is-group-string", "name-nul"])
async def test_create_refuses_invalid_bodies(meta: Http, body: dict[str, Any], fragment: str) -> None:
    owner = await new_user(meta, "own")
    assert_error(await meta.post(CREATE, body, token=owner.token), 400, contains=fragment)
    assert await joined(meta, owner) == []


# -- add_member / add_members --------------------------------------------------------------------


async def test_owner_adds_a_member_with_role_member(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner)
    assert_ok(await meta.post(ADD_MEMBER, {"room_id": room_id, "member_id": bob.id}, token=owner.token),
              "Member added successfully")
    assert await roles_in(meta, room_id, bob) == {owner.id: OWNER, bob.id: MEMBER}
    assert room_id in await joined(meta, bob)


async def test_admin_adds_members_and_the_answer_lists_who_was_new(meta: Http) -> None:
    room_id, owner, admin, member = await group_with_admin(meta)
    dave, erin = await new_users(meta, "dave", "erin")
    answer = await meta.post(ADD_MEMBERS, {"room_id": room_id, "member_ids": [dave.id, erin.id, member.id]},
                             token=admin.token)
    assert_ok(answer, "Members added successfully")
    assert sorted(answer.data["added"]) == sorted([dave.id, erin.id])
    roles = await roles_in(meta, room_id, owner)
    assert roles == {owner.id: OWNER, admin.id: ADMIN, member.id: MEMBER, dave.id: MEMBER, erin.id: MEMBER}


async def test_re_adding_a_member_keeps_their_role(meta: Http) -> None:
    room_id, owner, admin, member = await group_with_admin(meta)
    assert_ok(await meta.post(ADD_MEMBER, {"room_id": room_id, "member_id": admin.id}, token=owner.token),
              "Member added successfully")
    again = await meta.post(ADD_MEMBERS, {"room_id": room_id, "member_ids": [admin.id, owner.id]}, token=owner.token)
    assert_ok(again, "Members added successfully")
    assert again.data["added"] == []
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER, admin.id: ADMIN, member.id: MEMBER}


async def test_add_members_with_an_empty_list_changes_nothing(meta: Http) -> None:
    owner = await new_user(meta, "own")
    room_id = await create_room(meta, owner)
    answer = await meta.post(ADD_MEMBERS, {"room_id": room_id, "member_ids": []}, token=owner.token)
    assert_ok(answer, "Members added successfully")
    assert answer.data["added"] == []
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER}


async def test_plain_member_cannot_add_members(meta: Http) -> None:
    room_id, owner, _, member = await group_with_admin(meta)
    dave = await new_user(meta, "dave")
    assert_error(await meta.post(ADD_MEMBER, {"room_id": room_id, "member_id": dave.id}, token=member.token),
                 403, "permission denied")
    assert_error(await meta.post(ADD_MEMBERS, {"room_id": room_id, "member_ids": [dave.id]}, token=member.token),
                 403, "permission denied")
    assert dave.id not in await roles_in(meta, room_id, owner)


async def test_outsider_cannot_add_members(meta: Http) -> None:
    owner, outsider = await new_users(meta, "own", "out")
    room_id = await create_room(meta, owner)
    answer = await meta.post(ADD_MEMBER, {"room_id": room_id, "member_id": outsider.id}, token=outsider.token)
    assert_error(answer, 403, contains="permission denied")
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER}


async def test_add_member_to_a_private_room_is_400(meta: Http) -> None:
    alice, bob, carol = await new_users(meta, "alice", "bob", "carol")
    room_id = await create_room(meta, alice, bob, is_group=False)
    assert_error(await meta.post(ADD_MEMBER, {"room_id": room_id, "member_id": carol.id}, token=alice.token),
                 400, "cannot add members to a private chat")
    assert_error(await meta.post(ADD_MEMBERS, {"room_id": room_id, "member_ids": [carol.id]}, token=alice.token),
                 400, "cannot add members to a private chat")
    assert set(await roles_in(meta, room_id, alice)) == {alice.id, bob.id}


async def test_add_member_to_an_unknown_room_is_404(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    assert_error(await meta.post(ADD_MEMBER, {"room_id": NO_SUCH_ID, "member_id": bob.id}, token=owner.token),
                 404, "room not found")


async def test_add_an_unknown_user_is_404_and_adds_nobody(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner)
    assert_error(await meta.post(ADD_MEMBER, {"room_id": room_id, "member_id": NO_SUCH_ID}, token=owner.token),
                 404, contains=f"unknown user id(s): {NO_SUCH_ID}")
    answer = await meta.post(ADD_MEMBERS, {"room_id": room_id, "member_ids": [bob.id, NO_SUCH_ID]}, token=owner.token)
    assert_error(answer, 404, contains=str(NO_SUCH_ID))
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER}


async def test_add_members_over_the_limit_is_400(meta: Http) -> None:
    owner = await new_user(meta, "own")
    room_id = await create_room(meta, owner)
    answer = await meta.post(ADD_MEMBERS, {"room_id": room_id, "member_ids": list(range(1, 502))}, token=owner.token)
    assert_error(answer, 400, "member_ids: at most 500 ids per request")


@pytest.mark.parametrize("body", [
    {"member_id": 5}, {"room_id": 5}, {"room_id": 0, "member_id": 5}, {"room_id": "5", "member_id": 5},
    {"room_id": 5, "member_id": 1.5}, {"room_id": True, "member_id": 5}, {"room_id": 2**63, "member_id": 5},
], ids=["no-room", "no-member", "room-zero", "room-string", "member-float", "room-bool", "room-too-big"])
async def test_add_member_refuses_invalid_bodies(meta: Http, body: dict[str, Any]) -> None:
    owner = await new_user(meta, "own")
    assert_error(await meta.post(ADD_MEMBER, body, token=owner.token), 400)


# -- remove_member -------------------------------------------------------------------------------


async def test_plain_member_cannot_remove_anyone(meta: Http) -> None:
    """GoStacker let any authenticated user remove anyone from any room (spec 13.4, bug 32)."""
    room_id, owner, admin, member = await group_with_admin(meta)
    other = await new_user(meta, "other")
    assert (await meta.post(ADD_MEMBER, {"room_id": room_id, "member_id": other.id}, token=owner.token)).status == 200
    for target in (other, admin, owner):
        answer = await meta.post(REMOVE_MEMBER, {"room_id": room_id, "target_user_id": target.id}, token=member.token)
        assert_error(answer, 403, "permission denied")
    assert set(await roles_in(meta, room_id, owner)) == {owner.id, admin.id, member.id, other.id}


async def test_outsider_cannot_remove_anyone(meta: Http) -> None:
    room_id, owner, admin, member = await group_with_admin(meta)
    outsider = await new_user(meta, "out")
    answer = await meta.post(REMOVE_MEMBER, {"room_id": room_id, "target_user_id": member.id}, token=outsider.token)
    assert_error(answer, 403, contains="permission denied")
    assert member.id in await roles_in(meta, room_id, owner)


async def test_admin_removes_a_member(meta: Http) -> None:
    room_id, owner, admin, member = await group_with_admin(meta)
    answer = await meta.post(REMOVE_MEMBER, {"room_id": room_id, "target_user_id": member.id}, token=admin.token)
    assert_ok(answer, "Member removed successfully")
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER, admin.id: ADMIN}
    assert room_id not in await joined(meta, member)


async def test_admin_cannot_remove_another_admin_or_the_owner(meta: Http) -> None:
    room_id, owner, admin, member = await group_with_admin(meta)
    assert (await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": member.id, "new_role": ADMIN},
                            token=owner.token)).status == 200
    answer = await meta.post(REMOVE_MEMBER, {"room_id": room_id, "target_user_id": member.id}, token=admin.token)
    assert_error(answer, 403, "permission denied: an admin can only remove members")
    answer = await meta.post(REMOVE_MEMBER, {"room_id": room_id, "target_user_id": owner.id}, token=admin.token)
    assert_error(answer, 403, "the owner cannot be removed")
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER, admin.id: ADMIN, member.id: ADMIN}


async def test_owner_removes_an_admin_but_cannot_be_removed(meta: Http) -> None:
    room_id, owner, admin, member = await group_with_admin(meta)
    assert_ok(await meta.post(REMOVE_MEMBER, {"room_id": room_id, "target_user_id": admin.id}, token=owner.token),
              "Member removed successfully")
    answer = await meta.post(REMOVE_MEMBER, {"room_id": room_id, "target_user_id": owner.id}, token=owner.token)
    assert_error(answer, 403, "the owner cannot be removed")
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER, member.id: MEMBER}


async def test_remove_a_non_member_is_404(meta: Http) -> None:
    room_id, owner, _, _ = await group_with_admin(meta)
    stranger = await new_user(meta, "str")
    answer = await meta.post(REMOVE_MEMBER, {"room_id": room_id, "target_user_id": stranger.id}, token=owner.token)
    assert_error(answer, 404, "user is not a member of this room")


async def test_remove_from_an_unknown_room_is_404(meta: Http) -> None:
    owner = await new_user(meta, "own")
    answer = await meta.post(REMOVE_MEMBER, {"room_id": NO_SUCH_ID, "target_user_id": owner.id}, token=owner.token)
    assert_error(answer, 404, "room not found")


# -- change_member_role --------------------------------------------------------------------------


async def test_owner_changes_a_role_and_it_persists(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner, bob)
    answer = await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": bob.id, "new_role": ADMIN},
                             token=owner.token)
    assert_ok(answer, "Member role changed successfully")
    assert (await roles_in(meta, room_id, bob))[bob.id] == ADMIN
    assert_ok(await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": bob.id, "new_role": MEMBER},
                              token=owner.token), "Member role changed successfully")
    assert (await roles_in(meta, room_id, owner))[bob.id] == MEMBER


async def test_only_the_owner_changes_roles(meta: Http) -> None:
    room_id, owner, admin, member = await group_with_admin(meta)
    for caller, target in ((admin, member), (member, member), (member, admin)):
        answer = await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": target.id, "new_role": ADMIN},
                                 token=caller.token)
        assert_error(answer, 403, "permission denied")
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER, admin.id: ADMIN, member.id: MEMBER}


@pytest.mark.parametrize("new_role", [3, -1, 99])
async def test_change_role_to_an_unknown_role_is_400(meta: Http, new_role: int) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner, bob)
    answer = await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": bob.id, "new_role": new_role},
                             token=owner.token)
    assert_error(answer, 400, "new_role must be 0 (transfer ownership), 1 (admin) or 2 (member)")
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER, bob.id: MEMBER}


async def test_change_role_refuses_string_role_non_member_and_the_owner_itself(meta: Http) -> None:
    owner, bob, stranger = await new_users(meta, "own", "bob", "str")
    room_id = await create_room(meta, owner, bob)
    answer = await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": bob.id, "new_role": "1"},
                             token=owner.token)
    assert_error(answer, 400, contains="new_role")
    answer = await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": stranger.id, "new_role": ADMIN},
                             token=owner.token)
    assert_error(answer, 404, "user is not a member of this room")
    answer = await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": owner.id, "new_role": MEMBER},
                             token=owner.token)
    assert_error(answer, 400, "the owner's role cannot be changed")
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER, bob.id: MEMBER}


# -- change_nickname -----------------------------------------------------------------------------


async def test_change_nickname_persists(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner, bob)
    answer = await meta.post(CHANGE_NICKNAME, {"room_id": room_id, "nickname": "Bobby 🚀"}, token=bob.token)
    assert_ok(answer, "Nickname changed successfully")
    listing = await meta.get(MEMBERS, params={"room_id": room_id}, token=owner.token)
    nicknames = {m["user_id"]: m["nickname"] for m in listing.data["members"]}
    assert nicknames[bob.id] == "Bobby 🚀"
    assert nicknames[owner.id] in (None, "")


async def test_change_nickname_by_a_non_member_is_403(meta: Http) -> None:
    owner, stranger = await new_users(meta, "own", "str")
    room_id = await create_room(meta, owner)
    answer = await meta.post(CHANGE_NICKNAME, {"room_id": room_id, "nickname": "intruder"}, token=stranger.token)
    assert_error(answer, 403, "not a member of this room")
    assert set(await roles_in(meta, room_id, owner)) == {owner.id}


@pytest.mark.parametrize("nickname", ["", "n" * 101, "a\nb"], ids=["empty", "too-long", "newline"])
async def test_change_nickname_refuses_invalid_nicknames(meta: Http, nickname: str) -> None:
    owner = await new_user(meta, "own")
    room_id = await create_room(meta, owner)
    answer = await meta.post(CHANGE_NICKNAME, {"room_id": room_id, "nickname": nickname}, token=owner.token)
    assert_error(answer, 400, contains="nickname")


async def test_change_nickname_in_an_unknown_room_is_404(meta: Http) -> None:
    owner = await new_user(meta, "own")
    answer = await meta.post(CHANGE_NICKNAME, {"room_id": NO_SUCH_ID, "nickname": "x"}, token=owner.token)
    assert_error(answer, 404, "room not found")


# -- join / leave --------------------------------------------------------------------------------


async def test_join_a_group_as_member_and_again_is_idempotent(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner)
    assert_ok(await meta.post(JOIN, {"room_id": room_id}, token=bob.token), "Joined room successfully")
    assert_ok(await meta.post(JOIN, {"room_id": room_id}, token=bob.token), "Joined room successfully")
    # The owner "joining" its own room stays owner.
    assert_ok(await meta.post(JOIN, {"room_id": room_id}, token=owner.token), "Joined room successfully")
    assert await roles_in(meta, room_id, bob) == {owner.id: OWNER, bob.id: MEMBER}
    assert await joined(meta, bob) == [room_id]


async def test_join_keeps_an_admins_role(meta: Http) -> None:
    room_id, owner, admin, _ = await group_with_admin(meta)
    assert_ok(await meta.post(JOIN, {"room_id": room_id}, token=admin.token), "Joined room successfully")
    assert (await roles_in(meta, room_id, owner))[admin.id] == ADMIN


async def test_join_a_private_room_is_400(meta: Http) -> None:
    alice, bob, eve = await new_users(meta, "alice", "bob", "eve")
    room_id = await create_room(meta, alice, bob, is_group=False)
    assert_error(await meta.post(JOIN, {"room_id": room_id}, token=eve.token), 400, "cannot join a private chat")
    assert await joined(meta, eve) == []


async def test_join_an_unknown_room_is_404(meta: Http) -> None:
    bob = await new_user(meta, "bob")
    assert_error(await meta.post(JOIN, {"room_id": NO_SUCH_ID}, token=bob.token), 404, "room not found")
    assert_error(await meta.post(JOIN, {"room_id": 0}, token=bob.token), 400, contains="room_id")


async def test_a_member_leaves(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner, bob)
    assert_ok(await meta.post(LEAVE, {"room_id": room_id}, token=bob.token), "Left room successfully")
    assert await roles_in(meta, room_id, owner) == {owner.id: OWNER}
    assert await joined(meta, bob) == []
    # Leaving twice: no longer a member.
    assert_error(await meta.post(LEAVE, {"room_id": room_id}, token=bob.token), 404, "not a member of this room")


async def test_the_owner_cannot_leave_while_others_remain(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner, bob)
    answer = await meta.post(LEAVE, {"room_id": room_id}, token=owner.token)
    assert_error(answer, 400, contains="owner cannot leave")
    assert await roles_in(meta, room_id, bob) == {owner.id: OWNER, bob.id: MEMBER}


async def test_the_owner_hands_ownership_over_then_leaves(meta: Http) -> None:
    owner, bob, carol = await new_users(meta, "own", "bob", "car")
    room_id = await create_room(meta, owner, bob, carol)
    # Only the owner may hand it over.
    answer = await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": carol.id, "new_role": OWNER},
                             token=bob.token)
    assert_error(answer, 403, "permission denied")
    assert_ok(await meta.post(CHANGE_ROLE, {"room_id": room_id, "target_user_id": bob.id, "new_role": OWNER},
                              token=owner.token), "Member role changed successfully")
    assert await roles_in(meta, room_id, bob) == {owner.id: ADMIN, bob.id: OWNER, carol.id: MEMBER}
    assert_ok(await meta.post(LEAVE, {"room_id": room_id}, token=owner.token), "Left room successfully")
    assert await roles_in(meta, room_id, bob) == {bob.id: OWNER, carol.id: MEMBER}


async def test_leave_an_unknown_room_is_404(meta: Http) -> None:
    bob = await new_user(meta, "bob")
    assert_error(await meta.post(LEAVE, {"room_id": NO_SUCH_ID}, token=bob.token), 404, "room not found")


# -- search --------------------------------------------------------------------------------------


async def make_groups(meta: Http, owner: User, names: list[str]) -> list[int]:
    return list(await asyncio.gather(*(create_room(meta, owner, name=name) for name in names)))


async def search(meta: Http, user: User, **params: Any) -> list[dict[str, Any]]:
    answer = await meta.get(SEARCH, params=params, token=user.token)
    assert answer.status == 200, answer
    assert answer.body["code"] == 0 and answer.msg == "ok"
    return answer.data["rooms"]


async def test_search_finds_groups_by_name_with_gostackers_fields(meta: Http) -> None:
    owner, searcher = await new_users(meta, "own", "find")
    tag = unique_name("srch")
    before = datetime.now(UTC)
    room_id = await create_room(meta, owner, name=f"The {tag} club")
    rooms = await search(meta, searcher, q=tag)
    assert len(rooms) == 1
    room = rooms[0]
    assert set(room) == {"id", "name", "creator_id", "created_at"}
    assert room["id"] == room_id and room["name"] == f"The {tag} club" and room["creator_id"] == owner.id
    created = datetime.fromisoformat(room["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo is not None  # RFC 3339 carries its offset
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)


async def test_search_is_case_insensitive(meta: Http) -> None:
    """MySQL and SQLite compare names case-insensitively; PostgreSQL must answer the same."""
    owner = await new_user(meta, "own")
    tag = unique_name("case")
    room_id = await create_room(meta, owner, name=f"Big {tag.upper()} Room")
    assert [r["id"] for r in await search(meta, owner, q=f"big {tag.lower()}")] == [room_id]


async def test_search_never_lists_private_rooms(meta: Http) -> None:
    alice, bob = await new_users(meta, "alice", "bob")
    tag = unique_name("priv")
    await create_room(meta, alice, bob, name=f"{tag} secret", is_group=False)
    assert await search(meta, alice, q=tag) == []
    group_id = await create_room(meta, alice, name=f"{tag} open")
    assert [r["id"] for r in await search(meta, bob, q=tag)] == [group_id]


async def test_search_limit_defaults_to_20(meta: Http) -> None:
    owner = await new_user(meta, "own")
    tag = unique_name("lim")
    await make_groups(meta, owner, [f"{tag}-{i}" for i in range(25)])
    assert len(await search(meta, owner, q=tag)) == 20
    assert len(await search(meta, owner, q=tag, limit=5)) == 5
    # GoStacker's rule: a non-numeric or non-positive limit means the default.
    for bad in ("abc", "0", "-3", ""):
        assert len(await search(meta, owner, q=tag, limit=bad)) == 20, bad
    assert len(await search(meta, owner, q=tag, limit=25)) == 25


async def test_search_limit_is_capped_at_100(meta: Http) -> None:
    owner = await new_user(meta, "own")
    tag = unique_name("cap")
    await make_groups(meta, owner, [f"{tag}-{i}" for i in range(105)])
    assert len(await search(meta, owner, q=tag, limit=1000)) == 100
    assert len(await search(meta, owner, q=tag, limit=10**30)) == 100


@pytest.mark.parametrize(("wanted", "decoy"), [
    ("100%", "1000"),
    ("a_b", "axb"),
    ("back\\slash", "backslash"),
], ids=["percent", "underscore", "backslash"])
async def test_search_matches_like_wildcards_literally(meta: Http, wanted: str, decoy: str) -> None:
    owner = await new_user(meta, "own")
    tag = unique_name("wild")
    wanted_id, _ = await make_groups(meta, owner, [f"{tag} {wanted}", f"{tag} {decoy}"])
    assert [r["id"] for r in await search(meta, owner, q=f"{tag} {wanted}")] == [wanted_id]
    both = await search(meta, owner, q=tag)
    assert len(both) == 2


async def test_search_query_too_long_is_400(meta: Http) -> None:
    owner = await new_user(meta, "own")
    answer = await meta.get(SEARCH, params={"q": "q" * 101}, token=owner.token)
    assert_error(answer, 400, "q: at most 100 characters")


async def test_search_with_a_nul_character_is_a_client_error_not_500(meta: Http) -> None:
    owner = await new_user(meta, "own")
    answer = await meta.get(SEARCH, params={"q": "a\x00b"}, token=owner.token)
    assert_error(answer, 400, contains="q")


# -- info, members, joined_rooms -----------------------------------------------------------------


async def test_info_of_a_group_is_visible_to_anyone(meta: Http) -> None:
    owner, bob, outsider = await new_users(meta, "own", "bob", "out")
    room_id = await create_room(meta, owner, bob, name="Info Room")
    answer = await meta.get(INFO, params={"room_id": room_id}, token=outsider.token)
    assert_ok(answer, "ok")
    assert answer.data["id"] == room_id and answer.data["name"] == "Info Room"
    assert answer.data["creator_id"] == owner.id and answer.data["is_group"] is True
    assert answer.data["member_count"] == 2
    assert answer.data["created_at"].endswith("Z")


async def test_info_and_members_of_a_private_room_only_for_its_members(meta: Http) -> None:
    alice, bob, eve = await new_users(meta, "alice", "bob", "eve")
    room_id = await create_room(meta, alice, bob, is_group=False)
    assert_error(await meta.get(INFO, params={"room_id": room_id}, token=eve.token), 403, "not a member of this room")
    assert_error(await meta.get(MEMBERS, params={"room_id": room_id}, token=eve.token), 403,
                 "not a member of this room")
    assert_ok(await meta.get(INFO, params={"room_id": room_id}, token=bob.token), "ok")
    assert set(await roles_in(meta, room_id, bob)) == {alice.id, bob.id}


async def test_members_lists_each_member_with_its_details(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner, bob)
    answer = await meta.get(MEMBERS, params={"room_id": room_id}, token=bob.token)
    assert_ok(answer, "ok")
    by_id = {m["user_id"]: m for m in answer.data["members"]}
    assert set(by_id) == {owner.id, bob.id}
    assert by_id[bob.id]["username"] == bob.username and by_id[bob.id]["role"] == MEMBER
    assert by_id[owner.id]["username"] == owner.username and by_id[owner.id]["role"] == OWNER
    assert all(m["joined_at"].endswith("Z") for m in answer.data["members"])


async def test_members_of_a_group_need_membership(meta: Http) -> None:
    owner, outsider = await new_users(meta, "own", "out")
    room_id = await create_room(meta, owner)
    assert_error(await meta.get(MEMBERS, params={"room_id": room_id}, token=outsider.token), 403,
                 "not a member of this room")


@pytest.mark.parametrize("path", [INFO, MEMBERS])
async def test_info_and_members_refuse_missing_bad_or_unknown_room_ids(meta: Http, path: str) -> None:
    user = await new_user(meta, "u")
    assert_error(await meta.get(path, token=user.token), 400, "room_id is required")
    assert_error(await meta.get(path, params={"room_id": "abc"}, token=user.token), 400, contains="room_id")
    assert_error(await meta.get(path, params={"room_id": "0"}, token=user.token), 400, contains="room_id")
    assert_error(await meta.get(path, params={"room_id": str(NO_SUCH_ID)}, token=user.token), 404, "room not found")


async def test_joined_rooms_lists_the_callers_rooms_in_order(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    assert await joined(meta, bob) == []
    first = await create_room(meta, owner, bob)
    second = await create_room(meta, bob)
    third = await create_room(meta, owner)
    assert_ok(await meta.post(JOIN, {"room_id": third}, token=bob.token), "Joined room successfully")
    assert await joined(meta, bob) == sorted([first, second, third])
    assert_ok(await meta.post(LEAVE, {"room_id": first}, token=bob.token), "Left room successfully")
    assert await joined(meta, bob) == sorted([second, third])


# -- join requests -------------------------------------------------------------------------------


async def request_join(meta: Http, user: User, room_id: int, message: str | None = None) -> int:
    body: dict[str, Any] = {"room_id": room_id}
    if message is not None:
        body["message"] = message
    answer = await meta.post(JOIN_REQUEST, body, token=user.token)
    assert_ok(answer, "request created")
    return answer.data["request_id"]


async def pending(meta: Http, room_id: int, reader: User) -> list[dict[str, Any]]:
    answer = await meta.get(JOIN_REQUESTS, params={"room_id": room_id}, token=reader.token)
    assert_ok(answer, "ok")
    return answer.data["requests"]


async def test_join_request_is_listed_for_the_owner(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner)
    request_id = await request_join(meta, bob, room_id, "let me in")
    assert isinstance(request_id, int) and request_id > 0
    [listed] = await pending(meta, room_id, owner)
    assert listed["id"] == request_id and listed["room_id"] == room_id and listed["user_id"] == bob.id
    assert listed["message"] == "let me in" and listed["created_at"].endswith("Z")
    # A request is not membership.
    assert bob.id not in await roles_in(meta, room_id, owner)


async def test_join_requests_are_ordered_oldest_first_and_visible_to_admins(meta: Http) -> None:
    room_id, owner, admin, member = await group_with_admin(meta)
    applicants = await new_users(meta, "ap0", "ap1", "ap2")
    ids = [await request_join(meta, user, room_id) for user in applicants]
    listed = await pending(meta, room_id, admin)
    assert [r["id"] for r in listed] == ids
    assert [r["user_id"] for r in listed] == [u.id for u in applicants]
    assert all(r["message"] == "" for r in listed)


async def test_join_request_refusals(meta: Http) -> None:
    owner, bob, carol = await new_users(meta, "own", "bob", "carol")
    group = await create_room(meta, owner, carol)
    private = await create_room(meta, owner, carol, is_group=False)
    assert_error(await meta.post(JOIN_REQUEST, {"room_id": private}, token=bob.token), 400,
                 "cannot request to join a private chat")
    assert_error(await meta.post(JOIN_REQUEST, {"room_id": group}, token=carol.token), 409,
                 "already a member of this room")
    assert_error(await meta.post(JOIN_REQUEST, {"room_id": NO_SUCH_ID}, token=bob.token), 404, "room not found")
    assert_error(await meta.post(JOIN_REQUEST, {"room_id": group, "message": "m" * 501}, token=bob.token), 400,
                 contains="message")
    assert await pending(meta, group, owner) == []


async def test_a_second_pending_request_is_409(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner)
    first = await request_join(meta, bob, room_id, "first")
    answer = await meta.post(JOIN_REQUEST, {"room_id": room_id, "message": "second"}, token=bob.token)
    assert_error(answer, 409, "a join request for this room is already pending")
    assert [(r["id"], r["message"]) for r in await pending(meta, room_id, owner)] == [(first, "first")]


async def test_join_request_message_with_nul_is_a_client_error_not_500(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner)
    answer = await meta.post(JOIN_REQUEST, {"room_id": room_id, "message": "hi\x00there"}, token=bob.token)
    assert_error(answer, 400, contains="message")
    # A multi-line message is fine.
    await request_join(meta, bob, room_id, "line one\nline two")


async def test_join_requests_listing_checks_its_room_id(meta: Http) -> None:
    owner = await new_user(meta, "own")
    assert_error(await meta.get(JOIN_REQUESTS, token=owner.token), 400, "room_id required")
    assert_error(await meta.get(JOIN_REQUESTS, params={"room_id": ""}, token=owner.token), 400, "room_id required")
    for bad in ("abc", "1.5", "0", "-2", str(2**63)):
        answer = await meta.get(JOIN_REQUESTS, params={"room_id": bad}, token=owner.token)
        assert_error(answer, 400, "invalid room_id")
    answer = await meta.get(JOIN_REQUESTS, params={"room_id": str(NO_SUCH_ID)}, token=owner.token)
    assert_error(answer, 404, "room not found")


async def test_join_requests_listing_is_for_owner_and_admins_only(meta: Http) -> None:
    room_id, owner, admin, member = await group_with_admin(meta)
    outsider = await new_user(meta, "out")
    await request_join(meta, outsider, room_id)
    assert_error(await meta.get(JOIN_REQUESTS, params={"room_id": room_id}, token=member.token), 403,
                 "permission denied")
    assert_error(await meta.get(JOIN_REQUESTS, params={"room_id": room_id}, token=outsider.token), 403,
                 contains="permission denied")
    assert len(await pending(meta, room_id, owner)) == 1


async def test_approving_a_request_adds_the_member_with_role_member(meta: Http) -> None:
    room_id, owner, admin, _ = await group_with_admin(meta)
    bob = await new_user(meta, "bob")
    request_id = await request_join(meta, bob, room_id)
    assert_ok(await meta.post(JOIN_RESPOND, {"request_id": request_id, "approve": True}, token=admin.token), "ok")
    assert (await roles_in(meta, room_id, owner))[bob.id] == MEMBER
    assert room_id in await joined(meta, bob)
    assert await pending(meta, room_id, owner) == []


async def test_rejecting_a_request_adds_nobody_and_allows_a_new_request(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner)
    request_id = await request_join(meta, bob, room_id)
    assert_ok(await meta.post(JOIN_RESPOND, {"request_id": request_id, "approve": False}, token=owner.token), "ok")
    assert bob.id not in await roles_in(meta, room_id, owner)
    assert await pending(meta, room_id, owner) == []
    again = await request_join(meta, bob, room_id, "please")
    assert [(r["id"], r["message"]) for r in await pending(meta, room_id, owner)] == [(again, "please")]


async def test_approve_defaults_to_false_when_absent(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner)
    request_id = await request_join(meta, bob, room_id)
    assert_ok(await meta.post(JOIN_RESPOND, {"request_id": request_id}, token=owner.token), "ok")
    assert bob.id not in await roles_in(meta, room_id, owner)


async def test_answering_a_request_twice_is_404(meta: Http) -> None:
    owner, bob = await new_users(meta, "own", "bob")
    room_id = await create_room(meta, owner)
    request_id = await request_join(meta, bob, room_id)
    assert_ok(await meta.post(JOIN_RESPOND, {"request_id": request_id, "approve": True}, token=owner.token), "ok")
    for approve in (True, False):
        answer = await meta.post(JOIN_RESPOND, {"request_id": request_id, "approve": approve}, token=owner.token)
        assert_error(answer, 404, "join request not found")
    assert (await roles_in(meta, room_id, owner))[bob.id] == MEMBER


async def test_answering_an_unknown_request_is_404(meta: Http) -> None:
    owner = await new_user(meta, "own")
    answer = await meta.post(JOIN_RESPOND, {"request_id": NO_SUCH_ID, "approve": True}, token=owner.token)
    assert_error(answer, 404, "join request not found")


async def test_a_plain_member_or_outsider_cannot_answer_a_request(meta: Http) -> None:
    room_id, owner, _, member = await group_with_admin(meta)
    bob = await new_user(meta, "bob")
    request_id = await request_join(meta, bob, room_id)
    assert_error(await meta.post(JOIN_RESPOND, {"request_id": request_id, "approve": True}, token=member.token),
                 403, "permission denied")
    # The applicant cannot approve itself either.
    assert_error(await meta.post(JOIN_RESPOND, {"request_id": request_id, "approve": True}, token=bob.token),
                 403, contains="permission denied")
    assert [r["id"] for r in await pending(meta, room_id, owner)] == [request_id]
    assert bob.id not in await roles_in(meta, room_id, owner)


async def test_concurrent_answers_to_one_request_succeed_once(meta: Http) -> None:
    room_id, owner, admin, _ = await group_with_admin(meta)
    bob = await new_user(meta, "bob")
    request_id = await request_join(meta, bob, room_id)
    answers = await asyncio.gather(*(
        meta.post(JOIN_RESPOND, {"request_id": request_id, "approve": True}, token=who.token)
        for who in (owner, admin, owner, admin)))
    assert sorted(a.status for a in answers) == [200, 404, 404, 404], answers
    assert (await roles_in(meta, room_id, owner))[bob.id] == MEMBER


# -- routing and limits --------------------------------------------------------------------------


async def test_unknown_route_is_a_404_envelope(meta: Http) -> None:
    assert_error(await meta.get("/no/such/route"), 404, "not found")
    assert_error(await meta.post("/registerx", {}), 404, "not found")
    user = await new_user(meta, "u")
    assert_error(await meta.get("/api/no/such/route", token=user.token), 404, "not found")


async def test_wrong_method_is_a_405_envelope(meta: Http) -> None:
    answer = await meta.get("/register")
    assert_error(answer, 405, "method not allowed")
    user = await new_user(meta, "u")
    assert_error(await meta.get(CREATE, token=user.token), 405, "method not allowed")
    assert_error(await meta.post(SEARCH, {}, token=user.token), 405, "method not allowed")


async def test_wrong_method_names_the_allowed_one(meta: Http) -> None:
    async with meta.session.get(meta.base_url + "/login") as response:
        assert response.status == 405
        assert response.headers.get("Allow") == "POST"


async def test_body_over_the_limit_is_a_413_envelope(meta: Http) -> None:
    user = await new_user(meta, "u")
    limit = 1 << 20  # limits.max_body_bytes default
    padding = "x" * limit
    answer = await meta.post("/register", {"username": "big", "password": "secret-pw", "pad": padding})
    assert_error(answer, 413, "request body too large")
    answer = await meta.post(CREATE, {"name": "big", "is_group": True, "member_ids": [], "pad": padding},
                             token=user.token)
    assert_error(answer, 413, "request body too large")
    assert await joined(meta, user) == []


async def test_ping_answers_pong(meta: Http) -> None:
    answer = await meta.get("/ping")
    assert answer.status == 200 and answer.body == {"code": 0, "msg": "pong"}
