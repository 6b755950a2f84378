"""The SQL of devices on every database kind: one key per (user, device id), case-sensitive ids,
cursors that only move forward, and forgetting the devices not seen for the TTL with their cursors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from pystacker.db.engine import create_engine
from pystacker.db.migrate import upgrade
from pystacker.db.schema import devices
from pystacker.db.sqlutil import utcnow
from pystacker.messaging.devices import DeviceStore


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[DeviceStore]:
    engine = create_engine(database_url)
    await upgrade(engine)
    yield DeviceStore(engine)
    await engine.dispose()


def new_user() -> int:
    return uuid.uuid4().int % 2**40 + 1


async def test_one_key_per_device_case_sensitive_and_cursors_forward_only(store: DeviceStore) -> None:
    user = new_user()
    phone, new = await store.attach(user, "Phone")
    assert new
    assert await store.attach(user, "Phone") == (phone, False)
    lower, _ = await store.attach(user, "phone")
    other_user, _ = await store.attach(user + 1, "Phone")
    assert len({phone, lower, other_user}) == 3
    assert sorted(await store.keys_of([user])) == sorted([phone, lower])

    await store.save_cursors([(phone, 7, 5), (phone, 8, 2)])
    await store.save_cursors([(phone, 7, 3), (phone, 8, 4)])  # 7 stays at 5
    assert await store.load_cursors(phone, [7, 8, 9]) == {7: 5, 8: 4}


async def test_devices_unseen_for_the_ttl_are_forgotten_with_their_cursors(store: DeviceStore) -> None:
    user = new_user()
    old, _ = await store.attach(user, "old")
    recent, _ = await store.attach(user, "recent")
    await store.save_cursors([(old, 1, 9), (recent, 1, 9)])
    async with store.engine.begin() as conn:
        await conn.execute(update(devices).where(devices.c.device_key == old)
                           .values(last_seen_at=utcnow() - timedelta(days=31)))
    assert await store.forget_unseen(30 * 86400) == [old]
    assert await store.load_cursors(old, [1]) == {}
    assert await store.load_cursors(recent, [1]) == {1: 9}
    again, new = await store.attach(user, "old")
    assert new and again != old
