"""The registry's liveness verdicts (registry/liveness.py): who must be probed, and how long a probe's
answer holds. Clocks are injected, so nothing here waits."""

from __future__ import annotations

import asyncio
import time

from pystacker.engine.base import GatewayInfo
from pystacker.registry.liveness import MISSED_BEATS, PROBE_EVERY, SLACK, GatewayLiveness, Verdicts


class Clocks:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


def beat_at(gateway_id: str, when: float) -> GatewayInfo:
    return GatewayInfo(gateway_id, "127.0.0.1", 9, 100, last_heartbeat=when)


def test_a_gateway_is_suspect_after_missed_beats_or_when_a_client_reports_it() -> None:
    clocks = Clocks()
    verdicts = Verdicts(1.0, monotonic=clocks.monotonic, wall=clocks.wall)
    fresh = beat_at("a", clocks.now - MISSED_BEATS * 1.0)
    assert not verdicts.suspect(fresh, reported=False)
    assert verdicts.suspect(fresh, reported=True)
    assert verdicts.suspect(beat_at("b", clocks.now - MISSED_BEATS - SLACK - 0.01), reported=False)


def test_a_failed_probe_holds_until_the_gateway_beats_again_a_good_one_for_a_second() -> None:
    clocks = Clocks()
    verdicts = Verdicts(1.0, monotonic=clocks.monotonic, wall=clocks.wall)
    dead = beat_at("a", clocks.now - 10)
    verdicts.record(dead, answered=False)
    clocks.now += 60
    verdict = verdicts.known(dead)
    assert verdict is not None and not verdict.answered
    restarted = beat_at("a", clocks.now)  # the same id beating again: alive, whatever the probe said
    assert verdicts.known(restarted) is None
    verdicts.record(restarted, answered=True)
    assert verdicts.known(restarted) is not None
    clocks.now += PROBE_EVERY + 0.01
    assert verdicts.known(restarted) is None  # probed again from now on


async def test_suspects_are_probed_once_at_a_time_and_those_that_do_not_answer_are_left_out() -> None:
    probes: list[str] = []

    async def probe(gateway: GatewayInfo) -> bool:
        probes.append(gateway.gateway_id)
        return gateway.gateway_id == "slow-but-alive"

    liveness = GatewayLiveness(1.0, probe=probe)
    now = time.time()
    gateways = [beat_at("fresh", now), beat_at("dead", now - 60), beat_at("slow-but-alive", now - 60),
                beat_at("reported", now)]
    # two requests at once: the second finds the first one's probes in flight and waits for them
    answers = await asyncio.gather(liveness.answering(gateways, reported=["reported"]),
                                   liveness.answering(gateways, reported=["reported"]))
    for answer in answers:
        assert [g.gateway_id for g in answer] == ["fresh", "slow-but-alive"]
    assert sorted(probes) == ["dead", "reported", "slow-but-alive"]  # one probe each for both requests
    # the verdicts are reused, and a gateway one client reported is left out for the others too
    assert [g.gateway_id for g in await liveness.answering(gateways)] == ["fresh", "slow-but-alive"]
    assert len(probes) == 3
    await liveness.close()
