"""Registry: gateways and send instances with heartbeat TTLs, user routes with an optional TTL."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from pystacker.engine.base import Engine, GatewayInfo, SendInfo, UserRoute
from tests.engine.support import unique_int, unique_name, until


def _gateway(gateway_id: str | None = None) -> GatewayInfo:
    return GatewayInfo(gateway_id=gateway_id or unique_name("gw"), address="10.0.0.4", port=8084, capacity=1000,
                       load=0.25, connected_users=250, last_heartbeat=1_700_000_000.5, epoch="e1")


def _send() -> SendInfo:
    return SendInfo(instance_id=unique_name("send"), address="10.0.0.5", port=8081, last_heartbeat=1_700_000_000.5)


def _route(user_id: int, gateway_id: str = "gw-a", status: str = "connected") -> UserRoute:
    return UserRoute(user_id=user_id, gateway_id=gateway_id, address="10.0.0.4:8084",
                     connected_at=1_700_000_000.25, status=status, epoch="e1")


# -- gateways and send instances ------------------------------------------------------------------------


async def test_a_gateway_is_stored_listed_and_removed(engine: Engine) -> None:
    info = _gateway()
    await engine.registry.put_gateway(info, 60)
    assert await engine.registry.get_gateway(info.gateway_id) == info
    assert info in await engine.registry.list_gateways()

    info.load = 0.5  # a heartbeat overwrites the record
    await engine.registry.put_gateway(info, 60)
    assert (await engine.registry.get_gateway(info.gateway_id)) == info

    await engine.registry.remove_gateway(info.gateway_id)
    assert await engine.registry.get_gateway(info.gateway_id) is None
    assert info.gateway_id not in {g.gateway_id for g in await engine.registry.list_gateways()}


async def test_a_stored_gateway_does_not_change_with_the_callers_object(engine: Engine) -> None:
    info = _gateway()
    await engine.registry.put_gateway(info, 60)
    info.connected_users = 999
    stored = await engine.registry.get_gateway(info.gateway_id)
    assert stored is not None and stored.connected_users == 250
    stored.connected_users = 998
    assert (await engine.registry.get_gateway(info.gateway_id)) == _gateway(info.gateway_id)


async def test_a_gateway_without_heartbeat_expires(engine: Engine) -> None:
    silent, beating = _gateway(), _gateway()
    await engine.registry.put_gateway(silent, 1)
    await engine.registry.put_gateway(beating, 1)
    await engine.registry.put_gateway(beating, 60)  # a heartbeat sets a fresh TTL

    await until(lambda: engine.registry.get_gateway(silent.gateway_id), lambda found: found is None)
    listed = {g.gateway_id for g in await engine.registry.list_gateways()}
    assert silent.gateway_id not in listed
    assert beating.gateway_id in listed
    await engine.registry.put_gateway(silent, 60)  # it comes back with its next registration
    assert await engine.registry.get_gateway(silent.gateway_id) == silent


async def test_a_send_instance_is_stored_listed_removed_and_expires(engine: Engine) -> None:
    kept, silent = _send(), _send()
    await engine.registry.put_send(kept, 60)
    await engine.registry.put_send(silent, 1)
    assert await engine.registry.get_send(kept.instance_id) == kept
    listed = {s.instance_id for s in await engine.registry.list_send()}
    assert {kept.instance_id, silent.instance_id} <= listed

    await until(lambda: engine.registry.get_send(silent.instance_id), lambda found: found is None)
    listed = {s.instance_id for s in await engine.registry.list_send()}
    assert silent.instance_id not in listed and kept.instance_id in listed

    await engine.registry.remove_send(kept.instance_id)
    assert await engine.registry.get_send(kept.instance_id) is None
    assert kept.instance_id not in {s.instance_id for s in await engine.registry.list_send()}


# -- routes ---------------------------------------------------------------------------------------------


async def test_routes_are_stored_replaced_and_looked_up_in_bulk(engine: Engine) -> None:
    alice, bob, nobody = unique_int(), unique_int(), unique_int()
    await engine.registry.set_route(_route(alice), None)
    await engine.registry.set_route(_route(bob, "gw-a"), None)
    await engine.registry.set_route(_route(bob, "gw-b", status="disconnected"), 120)
    assert await engine.registry.get_routes([alice, bob, nobody]) == {
        alice: _route(alice), bob: _route(bob, "gw-b", status="disconnected")}
    assert await engine.registry.get_routes([]) == {}


async def test_a_route_with_a_ttl_expires_and_one_without_stays(engine: Engine) -> None:
    leased, connected, reconnected = unique_int(), unique_int(), unique_int()
    await engine.registry.set_route(_route(leased, status="disconnected"), 1)
    await engine.registry.set_route(_route(connected), None)
    await engine.registry.set_route(_route(reconnected, status="disconnected"), 1)
    await engine.registry.set_route(_route(reconnected), None)  # replacing the route drops its TTL

    await until(lambda: engine.registry.get_routes([leased]), lambda found: found == {})
    assert await engine.registry.get_routes([leased, connected, reconnected]) == {
        connected: _route(connected), reconnected: _route(reconnected)}
    assert not await engine.registry.delete_route_if(leased, "gw-a")


async def test_delete_route_if_only_deletes_a_route_to_that_gateway(engine: Engine) -> None:
    user, nobody = unique_int(), unique_int()
    await engine.registry.set_route(_route(user, "gw-new"), None)
    # A late disconnect from the gateway the user left must not remove his new route.
    assert not await engine.registry.delete_route_if(user, "gw-old")
    assert await engine.registry.get_routes([user]) == {user: _route(user, "gw-new")}
    assert await engine.registry.delete_route_if(user, "gw-new")
    assert await engine.registry.get_routes([user]) == {}
    assert not await engine.registry.delete_route_if(user, "gw-new")
    assert not await engine.registry.delete_route_if(nobody, "gw-new")


async def test_a_conditional_route_write_acts_only_on_the_route_it_expects(engine: Engine) -> None:
    """The reconnect lease of a connection that ended replaces its own route only: a device that
    connected again meanwhile keeps its new one (the condition is checked against the record the
    write would replace)."""
    user, nobody = unique_int(), unique_int()
    old = _device(user, "phone", "gw-a", 100.0)
    await engine.registry.set_route(old, None)
    newer = _device(user, "phone", "gw-a", 200.0)
    await engine.registry.set_route(newer, None)

    def was_old(route: UserRoute | None) -> bool:
        return route is not None and route.connected_at == old.connected_at

    lease = replace(old, status="disconnected")
    assert await engine.registry.set_route(lease, 60, only_if=was_old) == newer
    assert await engine.registry.get_routes([user]) == {user: newer}
    written = await engine.registry.set_route(replace(newer, status="disconnected"), 60,
                                              only_if=lambda route: route == newer)
    assert written is not None and written.status == "disconnected"
    assert await engine.registry.set_route(_route(nobody), 60, only_if=lambda route: route is not None) is None
    assert await engine.registry.get_routes([nobody]) == {}


# -- several devices of one user ---------------------------------------------------------------------------


def _device(user_id: int, device_id: str, gateway_id: str, connected_at: float, status: str = "connected") -> UserRoute:
    return UserRoute(user_id=user_id, gateway_id=gateway_id, address="10.0.0.4:8084", connected_at=connected_at,
                     status=status, epoch="e1", device_id=device_id)


async def test_each_device_keeps_its_own_route_and_the_newest_connected_one_leads(engine: Engine) -> None:
    user = unique_int()
    await engine.registry.set_route(_device(user, "phone", "gw-a", 10.0), 3600)
    await engine.registry.set_route(_device(user, "laptop", "gw-b", 20.0), 3600)
    record = (await engine.registry.get_routes([user]))[user]
    assert (record.device_id, record.gateway_id) == ("laptop", "gw-b")  # GoStacker's one route: the newest
    assert {(r.device_id, r.gateway_id) for r in record.devices()} == {("phone", "gw-a"), ("laptop", "gw-b")}

    # The laptop's lease: the phone, still connected, leads; the laptop's route (its lease) stays.
    await engine.registry.set_route(_device(user, "laptop", "gw-b", 20.0, "disconnected"), 60)
    record = (await engine.registry.get_routes([user]))[user]
    assert (record.device_id, record.status) == ("phone", "connected")
    assert record.device("laptop") is not None and record.device("laptop").status == "disconnected"  # type: ignore[union-attr]

    # The phone moves to another gateway: its route is replaced, not added.
    await engine.registry.set_route(_device(user, "phone", "gw-c", 30.0), 3600)
    record = (await engine.registry.get_routes([user]))[user]
    assert sorted((r.device_id, r.gateway_id) for r in record.devices()) == [("laptop", "gw-b"), ("phone", "gw-c")]


async def test_a_device_lease_ends_on_its_own_while_the_other_devices_stay(engine: Engine) -> None:
    user = unique_int()
    await engine.registry.set_route(_device(user, "phone", "gw-a", 10.0), 3600)
    await engine.registry.set_route(_device(user, "tablet", "gw-b", 5.0, "disconnected"), 1)

    async def tablet_gone() -> bool:
        record = (await engine.registry.get_routes([user]))[user]
        return record.device("tablet") is None and record.device("phone") is not None

    await until(tablet_gone, timeout=5)


async def test_concurrent_connects_of_one_users_devices_keep_them_all(engine: Engine) -> None:
    user = unique_int()
    names = [f"d{i}" for i in range(12)]
    await asyncio.gather(*(engine.registry.set_route(_device(user, name, "gw-a", float(i)), 3600)
                           for i, name in enumerate(names)))
    record = (await engine.registry.get_routes([user]))[user]
    assert sorted(r.device_id for r in record.devices()) == sorted(names)
    assert record.device_id == "d11"


async def test_last_seen_is_kept_per_user_and_expires(engine: Engine) -> None:
    seen, gone, never = unique_int(), unique_int(), unique_int()
    await engine.registry.set_last_seen(seen, 1_700_000_123.5, 3600)
    await engine.registry.set_last_seen(gone, 1_700_000_000.0, 1)
    assert (await engine.registry.last_seen([seen, never]))  == {seen: 1_700_000_123.5}
    await until(lambda: engine.registry.last_seen([gone]), lambda found: found == {}, timeout=5)
