"""Whether a gateway in the registry still answers, judged in seconds rather than a TTL later.

A gateway's entry lives `gateway_heartbeat_timeout` seconds (30 by default, GoStacker's value) after
its last beat. Were the registry to hand out every listed gateway, a user of a gateway killed just
after its beat would be sent back to it for half a minute. Gateways beat often (every
`gateway_heartbeat_interval`, 1 s by default: one small write), so a gateway whose last beat is older
than a few intervals is *suspect*, and so is one a client reports it could not reach (`exclude=` on
`/registry/gateway/available`). A suspect gateway is asked for its `/health` before it is handed out;
one that does not answer is skipped, for every client, until it beats again: one report from a
client that can name the dead gateway spares the clients that cannot (GoStacker's).

The entry itself is left alone: removing it would make a gateway that is alive but slow to beat
(a starved event loop) close every socket it holds (see GatewayPresence.on_vanished). A probe only
decides who gets *new* connections.

The verdicts are this registry process's own observations: several registry instances each probe
for themselves, at most once per gateway per PROBE_EVERY seconds. `Verdicts` is the pure part (no
I/O, clock injected); `GatewayLiveness` runs the probes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import aiohttp

from pystacker.engine.base import GatewayInfo

PROBE_TIMEOUT = 1.0  # a gateway that takes longer to answer /health is not one to send users to
PROBE_EVERY = 1.0  # a good verdict is reused this long: one probe per gateway per second at most
MISSED_BEATS = 2  # beats a gateway may miss before it is suspect (plus SLACK)
SLACK = 0.5  # seconds: scheduling delays of a busy gateway, clock differences between hosts


@dataclass(frozen=True, slots=True)
class Verdict:
    answered: bool
    probed_at: float  # monotonic, this process's
    heartbeat: float  # the gateway's last_heartbeat (its wall clock) when it was probed


class Verdicts:
    """The probes' results and when a gateway must be probed again. Pure: the clocks are injected."""

    def __init__(self, heartbeat_interval: float, *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.stale_after = MISSED_BEATS * heartbeat_interval + SLACK
        self._monotonic = monotonic
        self._wall = wall
        self._verdicts: dict[str, Verdict] = {}

    def suspect(self, gateway: GatewayInfo, reported: bool) -> bool:
        """Whether the gateway must pass a probe before it gets new users."""
        return reported or self._wall() - gateway.last_heartbeat > self.stale_after

    def known(self, gateway: GatewayInfo) -> Verdict | None:
        """A verdict still good for this gateway. Any verdict ends when the gateway beats again (a
        sign of life newer than the probe, e.g. a gateway restarted under the same id); a good one
        also after PROBE_EVERY, since a gateway that answered may die the next moment."""
        verdict = self._verdicts.get(gateway.gateway_id)
        if verdict is None or gateway.last_heartbeat > verdict.heartbeat:
            return None
        if verdict.answered and self._monotonic() - verdict.probed_at > PROBE_EVERY:
            return None
        return verdict

    def record(self, gateway: GatewayInfo, answered: bool) -> Verdict:
        verdict = Verdict(answered, self._monotonic(), gateway.last_heartbeat)
        self._verdicts[gateway.gateway_id] = verdict
        return verdict

    def forget_except(self, gateway_ids: Iterable[str]) -> None:
        """Drop the verdicts of gateways no longer listed, so the table stays as small as the registry."""
        keep = set(gateway_ids)
        for gateway_id in [g for g in self._verdicts if g not in keep]:
            del self._verdicts[gateway_id]


Probe = Callable[[GatewayInfo], Awaitable[bool]]


class GatewayLiveness:
    def __init__(self, heartbeat_interval: float, *, probe: Probe | None = None) -> None:
        self.verdicts = Verdicts(heartbeat_interval)
        self._probe = probe or self._health_answers
        self._session: aiohttp.ClientSession | None = None
        # One probe in flight per gateway, shared by the requests that need it meanwhile.
        self._in_flight: dict[str, asyncio.Future[bool]] = {}

    async def answering(self, gateways: Sequence[GatewayInfo], reported: Iterable[str] = ()) -> list[GatewayInfo]:
        """The gateways that may get new users: the unsuspected ones, and the suspects that answer."""
        reported = set(reported)
        self.verdicts.forget_except(g.gateway_id for g in gateways)
        checks = await asyncio.gather(*(self._passes(g, g.gateway_id in reported) for g in gateways))
        return [g for g, passed in zip(gateways, checks, strict=True) if passed]

    async def _passes(self, gateway: GatewayInfo, reported: bool) -> bool:
        verdict = self.verdicts.known(gateway)
        if verdict is not None and not verdict.answered:
            return False  # it failed a probe and has not beaten since, suspect or not
        if not self.verdicts.suspect(gateway, reported):
            return True
        if verdict is not None:
            return True
        flight = self._in_flight.get(gateway.gateway_id)
        if flight is None:
            flight = asyncio.ensure_future(self._probe_and_record(gateway))
            self._in_flight[gateway.gateway_id] = flight
            flight.add_done_callback(lambda _: self._in_flight.pop(gateway.gateway_id, None))
        return await asyncio.shield(flight)  # a caller that gives up does not cancel the others' probe

    async def _probe_and_record(self, gateway: GatewayInfo) -> bool:
        answered = await self._probe(gateway)
        self.verdicts.record(gateway, answered)
        return answered

    async def _health_answers(self, gateway: GatewayInfo) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT))
        try:
            async with self._session.get(f"http://{gateway.address}:{gateway.port}/health") as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return False

    async def close(self) -> None:
        for flight in list(self._in_flight.values()):
            flight.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
