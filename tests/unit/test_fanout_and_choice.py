import random
from dataclasses import replace

from pystacker.engine.base import GatewayInfo, UserRoute
from pystacker.messaging.fanout import plan_fanout, route_is_live
from pystacker.registry.choice import choose_gateway


def gateway(gid: str, users: int = 0, capacity: int = 100, epoch: str = "e1") -> GatewayInfo:
    return GatewayInfo(gid, "127.0.0.1", 8084, capacity, connected_users=users, epoch=epoch)


def route(uid: int, gid: str, status: str = "connected", epoch: str = "e1") -> UserRoute:
    return UserRoute(uid, gid, "127.0.0.1:8084", 0.0, status, epoch)


def test_plan_groups_targets_by_live_gateway_and_leaves_the_rest_offline() -> None:
    live = {"g1": gateway("g1"), "g2": gateway("g2")}
    routes = {1: route(1, "g1"), 2: route(2, "g2"), 3: route(3, "g1"), 4: route(4, "dead"),
              5: route(5, "g1", status="disconnected"), 6: route(6, "g2", epoch="old")}
    plan = plan_fanout([1, 2, 3, 4, 5, 6, 7], routes, live)
    assert plan.by_gateway == {"g1": [1, 3], "g2": [2]}
    assert plan.offline == [4, 5, 6, 7]


def test_a_route_without_epoch_is_trusted_while_its_gateway_lives() -> None:
    assert route_is_live(route(1, "g1", epoch=""), {"g1": gateway("g1")})
    assert not route_is_live(None, {"g1": gateway("g1")})


def test_lease_wins_when_its_gateway_lives_and_has_room() -> None:
    live = [gateway("a", users=0), gateway("b", users=90)]
    assert choose_gateway(live, route(1, "b")).gateway_id == "b"
    full = [gateway("a"), gateway("b", users=100)]
    assert choose_gateway(full, route(1, "b")).gateway_id == "a"
    assert choose_gateway(live, route(1, "gone")).gateway_id == "a"


def test_least_load_spreads_ties_and_skips_full_gateways() -> None:
    rng = random.Random(7)
    live = [gateway("a", users=10), gateway("b", users=11), gateway("c", users=60)]
    picks = {choose_gateway(live, rng=rng).gateway_id for _ in range(50)}
    assert picks == {"a", "b"}  # both within the slack of the lowest load, never the busy one
    assert choose_gateway([gateway("a", users=100)]) is None
    assert choose_gateway([]) is None


def test_an_avoided_gateway_is_chosen_only_when_no_other_can_take_the_user() -> None:
    live = [gateway("a", users=0), gateway("b", users=50)]
    # the lease names the avoided gateway: the client could not reach it, so the lease does not hold
    assert choose_gateway(live, route(1, "a"), avoid={"a"}).gateway_id == "b"
    assert choose_gateway(live, avoid={"a"}).gateway_id == "b"  # even though it is the least loaded
    # nothing else with room: the avoided one rather than none (a single gateway that restarted)
    assert choose_gateway([gateway("a"), gateway("b", users=100)], avoid={"a"}).gateway_id == "a"
    assert choose_gateway([gateway("a")], route(1, "a"), avoid={"a", "b"}).gateway_id == "a"


def test_a_user_is_a_target_on_every_gateway_of_his_live_devices_once() -> None:
    live = {"g1": gateway("g1"), "g2": gateway("g2")}
    phone, laptop, tablet = (replace(route(1, gid), device_id=name)
                             for gid, name in (("g1", "phone"), ("g2", "laptop"), ("g1", "tablet")))
    dead = replace(route(1, "gone"), device_id="old")
    routes = {1: replace(phone, others=(laptop, tablet, dead)),
              2: replace(route(2, "gone"), others=(replace(route(2, "g2", status="disconnected"), device_id="x"),))}
    plan = plan_fanout([1, 2], routes, live)
    assert plan.by_gateway == {"g1": [1], "g2": [1]}
    assert plan.offline == [2]
