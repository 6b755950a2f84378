"""The Redis registry decodes each distinct route record once (engine/redis_registry.DecodedRoutes)."""

from dataclasses import replace

import orjson

from pystacker.engine.base import UserRoute
from pystacker.engine.redis_registry import DecodedRoutes


def _record(route: UserRoute) -> bytes:
    return orjson.dumps(route.to_json())


def test_a_record_is_decoded_once_and_a_changed_one_again() -> None:
    decoded = DecodedRoutes()
    first = _record(UserRoute(user_id=7, gateway_id="gw-1", address="a:1", connected_at=100.0, epoch="e1"))
    route = decoded.decode(first, "route:user:7", now=1000.0)
    assert route is not None and route.gateway_id == "gw-1"
    # The same value read again (a new bytes object, as every MGET returns) is the same route.
    assert decoded.decode(bytes(bytearray(first)), "route:user:7", now=2000.0) is route
    moved = _record(UserRoute(user_id=7, gateway_id="gw-2", address="b:1", connected_at=300.0, epoch="e2"))
    again = decoded.decode(moved, "route:user:7", now=2000.0)
    assert again is not None and again.gateway_id == "gw-2"


def test_a_device_whose_lease_ended_drops_out_of_the_record() -> None:
    decoded = DecodedRoutes()
    phone = UserRoute(user_id=7, gateway_id="gw-1", address="a:1", connected_at=200.0, epoch="e1", device_id="phone")
    laptop = UserRoute(user_id=7, gateway_id="gw-2", address="b:1", connected_at=100.0, epoch="e2",
                       device_id="laptop", status="disconnected", expires_at=1500.0)
    raw = _record(replace(phone, others=(laptop,)))
    before = decoded.decode(raw, "route:user:7", now=1000.0)
    assert before is not None and {r.device_id for r in before.devices()} == {"phone", "laptop"}
    assert decoded.decode(raw, "route:user:7", now=1400.0) is before
    after = decoded.decode(raw, "route:user:7", now=1600.0)  # the laptop's lease ended at 1500
    assert after is not None and [r.device_id for r in after.devices()] == ["phone"]


def test_an_unreadable_record_is_no_route_and_the_memo_stays_bounded() -> None:
    decoded = DecodedRoutes(max_records=4)
    assert decoded.decode(b"{not json", "route:user:1", now=0.0) is None
    for user_id in range(1, 20):
        raw = _record(UserRoute(user_id=user_id, gateway_id="gw-1", address="a:1", connected_at=1.0))
        route = decoded.decode(raw, f"route:user:{user_id}", now=0.0)
        assert route is not None and route.user_id == user_id
    assert len(decoded) <= 4
