"""Which gateway a connecting user should use. Pure logic, no I/O.

1. The reconnect lease: a user whose route (connected or disconnected) names a live gateway with room
   goes back to it, so his messages in flight there reach him.
2. Otherwise one of the least loaded live gateways (connections / capacity), at random among those
   within LOAD_SLACK of the lowest load: loads are only as fresh as the last heartbeat, so always
   taking the single lowest would send every user of a reconnect storm to the same gateway.
Only live gateways are candidates: a dead one never blocks the choice (GoStacker: compatibility.md #8).
Gateways the client says it could not reach (`avoid`) are chosen only when no other one has room,
and then the lease too may name one: a client is never refused because it avoided the only gateway.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from pystacker.engine.base import GatewayInfo, UserRoute


def has_room(gateway: GatewayInfo) -> bool:
    return gateway.connected_users < gateway.capacity


def load_of(gateway: GatewayInfo) -> float:
    return gateway.connected_users / gateway.capacity if gateway.capacity > 0 else 1.0


LOAD_SLACK = 0.05


def choose_gateway(live: Sequence[GatewayInfo], lease: UserRoute | None = None,
                   rng: random.Random | None = None, avoid: Collection[str] = ()) -> GatewayInfo | None:
    if avoid:
        preferred = [g for g in live if g.gateway_id not in avoid]
        chosen = _choose(preferred, lease, rng)
        if chosen is not None:
            return chosen
    return _choose(live, lease, rng)


def _choose(live: Sequence[GatewayInfo], lease: UserRoute | None, rng: random.Random | None) -> GatewayInfo | None:
    if lease is not None:
        for gateway in live:
            if gateway.gateway_id == lease.gateway_id and has_room(gateway):
                return gateway
    candidates = [g for g in live if has_room(g)]
    if not candidates:
        return None
    lowest = min(load_of(g) for g in candidates)
    near = sorted((g for g in candidates if load_of(g) <= lowest + LOAD_SLACK), key=lambda g: g.gateway_id)
    return (rng or random).choice(near)
