from tests.client import Http, new_user


async def test_register_login_create_room(meta: Http) -> None:
    alice = await new_user(meta, "alice")
    bob = await new_user(meta, "bob")
    created = await meta.post("/api/chat/group/create", {"name": "team", "is_group": True, "member_ids": [bob.id]},
                              token=alice.token)
    assert created.status == 200 and created.msg == "Chat room created successfully"
    room_id = created.data["room_id"]
    members = await meta.get("/api/chat/group/members", params={"room_id": room_id}, token=bob.token)
    assert {(m["user_id"], m["role"]) for m in members.data["members"]} == {(alice.id, 0), (bob.id, 2)}
    joined = await meta.get("/api/joined_rooms", token=bob.token)
    assert joined.data["room_ids"] == [room_id]
    assert [r["room_id"] for r in joined.data["rooms"]] == [room_id]
