"""Fan-out planning: which gateway inbox gets which members of a room. Pure logic, no I/O.

One inbox entry per gateway per message, not per user. A user is online only if his route is
`connected` and names a live gateway in the same epoch: a route left by a gateway that died or
restarted is stale (GoStacker used such routes and lost the messages: spec 13.2 #15). Offline users
need nothing here: the message log and their cursor bring it to them on connect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pystacker.engine.base import GatewayInfo, UserRoute


@dataclass
class FanoutPlan:
    by_gateway: dict[str, list[int]] = field(default_factory=dict)
    offline: list[int] = field(default_factory=list)


def route_is_live(route: UserRoute | None, live: Mapping[str, GatewayInfo]) -> bool:
    if route is None or route.status != "connected":
        return False
    gateway = live.get(route.gateway_id)
    if gateway is None:
        return False
    return not route.epoch or not gateway.epoch or route.epoch == gateway.epoch


def plan_fanout(targets: Iterable[int], routes: Mapping[int, UserRoute], live: Mapping[str, GatewayInfo]) -> FanoutPlan:
    plan = FanoutPlan()
    for user_id in targets:
        route = routes.get(user_id)
        if route_is_live(route, live):
            plan.by_gateway.setdefault(route.gateway_id, []).append(user_id)  # type: ignore[union-attr]
        else:
            plan.offline.append(user_id)
    return plan
