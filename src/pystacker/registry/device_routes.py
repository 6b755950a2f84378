"""A user's routes, one per device, in one record. Pure logic, no I/O: both engines store the result.

The record is the route of the user's most recent device (connected ones before leased ones, then
the latest connect), so whoever reads it as GoStacker's one route per user (`/registry/user/routes/
batch`, a GoStacker component) gets the most recent gateway; his other devices ride along in
`others`. Each device's route carries its own expiry: a lease ends on its own while the user's other
devices stay. A user with one device has exactly GoStacker's record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import replace

from pystacker.engine.base import UserRoute


def expiry(ttl: int | None, now: float) -> float:
    """The `expires_at` of a route written now for `ttl` seconds (0: never)."""
    return 0.0 if ttl is None else now + max(int(ttl), 1)


def compose(routes: Iterable[UserRoute], now: float | None = None) -> UserRoute | None:
    """One record from device routes: those expired are left out, the most recent leads."""
    now = time.time() if now is None else now
    kept = [replace(r, others=()) if r.others else r for r in routes if not r.expires_at or r.expires_at > now]
    if not kept:
        return None
    kept.sort(key=lambda r: (r.status == "connected", r.connected_at), reverse=True)
    return replace(kept[0], others=tuple(kept[1:])) if len(kept) > 1 else kept[0]


def with_device(current: UserRoute | None, route: UserRoute, now: float) -> UserRoute:
    """The user's record with `route` as its device's route (replacing that device's earlier one)."""
    others = [r for r in current.devices() if r.device_id != route.device_id] if current is not None else []
    composed = compose([route, *others], now)
    assert composed is not None  # `route` itself has not expired: it was just written
    return composed


def record_ttl(record: UserRoute, now: float) -> int | None:
    """How long the stored record must live: until its last device's route expires (None: for ever)."""
    expiries = [r.expires_at for r in record.devices()]
    if not all(expiries):
        return None
    return max(math.ceil(max(expiries) - now), 1)


def connected_devices(record: UserRoute | None) -> list[UserRoute]:
    """The devices of a record that are connected (not leased), oldest connect first."""
    if record is None:
        return []
    return sorted((r for r in record.devices() if r.status == "connected"), key=lambda r: r.connected_at)
