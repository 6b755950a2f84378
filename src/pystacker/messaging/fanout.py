"""Fan-out planning: which gateway inbox gets which members of a room. Pure logic, no I/O.

One inbox entry per gateway per message, not per user. A device is online only if its route is
`connected` and names a live gateway in the same epoch: a route left by a gateway that died or
restarted is stale (GoStacker used such routes and lost the messages: compatibility.md #15). A user is
online on every gateway that holds one of his online devices. Offline users need nothing here: the
message log and their cursors bring it to them on connect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pystacker.engine.base import GatewayInfo, UserRoute
from pystacker.messaging.model import PushEntry


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
    """A user goes to every gateway that holds one of his devices, once per gateway (the gateway
    delivers to each of his devices there)."""
    plan = FanoutPlan()
    by_gateway = plan.by_gateway
    for user_id in targets:
        route = routes.get(user_id)
        if route is not None and route.others:
            gateways = {r.gateway_id for r in route.devices() if route_is_live(r, live)}
            for gateway_id in gateways:
                by_gateway.setdefault(gateway_id, []).append(user_id)
            if not gateways:
                plan.offline.append(user_id)
        elif route is not None and route_is_live(route, live):
            by_gateway.setdefault(route.gateway_id, []).append(user_id)
        else:
            plan.offline.append(user_id)
    return plan


def inbox_entries(plan: FanoutPlan, entry: PushEntry) -> list[tuple[str, bytes]]:
    """The entry for each gateway of the plan, with that gateway's users as its targets."""
    return [(gateway_id, replace(entry, target_ids=targets).encode()) for gateway_id, targets in plan.by_gateway.items()]
