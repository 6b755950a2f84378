"""Registry rules shared by its HTTP routes and by PyStacker's own gateways (which call them in-process
or through the shared engine instead of over HTTP)."""

from __future__ import annotations

import random
import time
from collections.abc import Collection
from dataclasses import replace

from pystacker.engine.base import GatewayInfo, Registry, SendInfo, UserRoute
from pystacker.messaging.model import DEFAULT_DEVICE
from pystacker.registry.choice import choose_gateway
from pystacker.registry.liveness import GatewayLiveness

CONNECTED_ROUTE_TTL = 24 * 3600
ROUTE_RENEW_SECONDS = 3600


class RegistryService:
    def __init__(self, registry: Registry, *, user_route_ttl: int, liveness: GatewayLiveness | None = None) -> None:
        self.registry = registry
        self.user_route_ttl = user_route_ttl
        self.liveness = liveness

    async def available_gateway(self, user_id: int | None, avoid: Collection[str] = (),
                                device_id: str = DEFAULT_DEVICE) -> GatewayInfo | None:
        """The gateway a connecting device of a user should use (its reconnect lease, else the least
        loaded). `avoid`: gateways the client could not reach; they are probed (see liveness.py) and
        chosen only when no other one can take him."""
        listed = await self.registry.list_gateways()
        live = listed
        if self.liveness is not None:
            # Every listed gateway failing its probe is more likely the registry's own trouble (its
            # network, a stalled loop) than every gateway dead: then the listed ones are offered.
            live = await self.liveness.answering(listed, avoid) or listed
        lease = None
        if user_id is not None:
            record = (await self.registry.get_routes([user_id])).get(user_id)
            lease = record.device(device_id) if record is not None else None
        return choose_gateway(live, lease, avoid=avoid)

    async def connect_user(self, user_id: int, gateway: GatewayInfo, device_id: str = DEFAULT_DEVICE, *,
                           since: float | None = None) -> UserRoute:
        """The user's device is on `gateway` now; returns the user's record (every device). `since`:
        when this connection's route was first written (a renewal keeps it: it names the connection).
        Whether the route is live is judged by its gateway (alive, same epoch), not by its TTL, so a
        connected user never looks offline (compatibility.md #11); the long TTL only clears routes that a
        dead gateway left behind, and the gateway renews it while connected."""
        route = UserRoute(user_id, gateway.gateway_id, f"{gateway.address}:{gateway.port}",
                          time.time() if since is None else since, "connected", gateway.epoch, device_id)
        record = await self.registry.set_route(route, CONNECTED_ROUTE_TTL)
        assert record is not None  # written without a condition: the record holds this route
        return record

    async def disconnect_user(self, user_id: int, gateway_id: str, device_id: str = DEFAULT_DEVICE, *,
                              connected_at: float | None = None) -> UserRoute | None:
        """Turn the device's route into the reconnect lease, if it is still the route of the
        connection that ended: it names this gateway and, when given, was written at `connected_at`
        (a device that reconnected meanwhile, here or on another gateway, keeps its new route). One
        compare-and-set in the engine. Returns the user's record now (None: no route at all), which
        says whether another device of his is still online."""

        def still_this_connection(route: UserRoute | None) -> bool:
            return (route is not None and route.gateway_id == gateway_id
                    and (connected_at is None or route.connected_at == connected_at))

        record = (await self.registry.get_routes([user_id])).get(user_id)
        route = record.device(device_id) if record is not None else None
        if route is None or not still_this_connection(route):
            return record
        return await self.registry.set_route(replace(route, status="disconnected", others=()), self.user_route_ttl,
                                             only_if=still_this_connection)

    async def available_send(self) -> SendInfo | None:
        instances = await self.registry.list_send()
        if not instances:
            return None
        return random.choice(instances)  # spreads callers, as GoStacker's SRANDMEMBER
