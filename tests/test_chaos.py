"""Fault runs (issue "Nothing lost, no one let in", part 1): `pystacker chaos` in the test suite.

One distributed deployment (every service its own process, a redis-server of its own without
persistence, a scratch MariaDB database behind the harness's SQL fault proxy) serves every scenario
of this module, in order; each test runs one scenario with its steady group-chat load and asserts
what the clients showed after dedup: nothing lost, nothing shown twice, every room in seq order,
plus the figure its fault is about. The deployment and the checker are pystacker_tools.chaos's, exactly
as the command runs them; these are the short versions (about 3-4 minutes together on 2 cores).
PYSTACKER_CHAOS_LONG=1 runs the long ones (1,000 clients in the storm, a 30 s SQL outage, ...).

Everything waits by polling with a deadline; the only sleeps pace the load.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pystacker_tools.chaos.report import print_report
from pystacker_tools.chaos.runner import ChaosOptions, ChaosRun
from pystacker_tools.chaos.traffic import Verdict
from tests import databases

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parent.parent
LONG = os.environ.get("PYSTACKER_CHAOS_LONG", "") not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
async def chaos(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChaosRun]:
    options = ChaosOptions([], long=LONG, database_server=databases.MARIADB_ADMIN, config_dir=ROOT / "config",
                           quiet=True)
    run = ChaosRun(options, tmp_path_factory.mktemp("chaos-logs"))
    await run.start()
    run.verdicts = []  # type: ignore[attr-defined]
    yield run
    await run.stop()
    table = io.StringIO()
    print_report(run.verdicts, table)  # type: ignore[attr-defined]
    print("\n" + table.getvalue())  # shown with -s, and in the log of a failed run


async def scenario(chaos: ChaosRun, name: str) -> Verdict:
    verdict = await chaos.run(name)
    chaos.verdicts.append(verdict)  # type: ignore[attr-defined]
    table = io.StringIO()
    print_report([verdict], table)
    summary = table.getvalue()
    assert verdict.acked > 0, summary
    assert verdict.lost == 0, summary
    assert verdict.duplicates_shown == 0, summary
    assert verdict.order_violations == 0, summary
    assert verdict.acked_not_stored == verdict.acked_not_stored_allowed, summary
    assert verdict.ok, summary
    return verdict


async def test_gateway_killed_its_clients_reconnect_elsewhere_and_catch_up(chaos: ChaosRun) -> None:
    verdict = await scenario(chaos, "gateway-kill")
    assert verdict.figures["clients moved"] > 0
    assert verdict.figures["reconnect"]["reconnected"] == verdict.figures["clients moved"]
    assert verdict.recovery_s is not None


async def test_send_instance_killed_mid_fan_out_retries_neither_duplicate_nor_lose(chaos: ChaosRun) -> None:
    verdict = await scenario(chaos, "send-kill")
    # the kill really landed in the middle of requests, and their senders sent them again elsewhere
    assert verdict.figures["in flight at the kill"] > 0
    assert verdict.figures["burst sends retried elsewhere"] > 0


async def test_flusher_killed_mid_batch_its_batch_is_flushed_again(chaos: ChaosRun) -> None:
    verdict = await scenario(chaos, "flusher-kill")
    assert verdict.figures["killed mid-batch (rows committed, batch unconfirmed)"] is True
    assert verdict.figures["batch handed out again and confirmed after s"] is not None


async def test_msgflusher_killed_a_dead_gateways_inbox_is_handed_on_after_its_restart(chaos: ChaosRun) -> None:
    verdict = await scenario(chaos, "msgflusher-kill")
    assert verdict.figures["inbox entries left by the gateway"] > 0


async def test_redis_restarted_empty_loses_only_what_sql_did_not_have(chaos: ChaosRun) -> None:
    verdict = await scenario(chaos, "redis-restart")
    # whatever SQL held is delivered (scenario() asserted it); what was lost is only what was
    # acknowledged before the crash and not yet flushed, and it is counted, not hidden
    assert verdict.figures["acked before the crash, not yet in SQL (lost with Redis)"] == verdict.acked_not_stored
    assert verdict.figures["client closes"].get("1012", 0) > 0  # the gateways sent everyone to catch up


async def test_sql_down_sends_go_on_and_the_flush_resumes(chaos: ChaosRun) -> None:
    verdict = await scenario(chaos, "sql-outage")
    assert verdict.figures["acknowledged promptly"] == verdict.figures["sends started during the outage"] > 0
    assert verdict.figures["flush caught up after restore s"] is not None


async def test_reconnect_storm_is_caught_up_with_coalesced_sql_reads(chaos: ChaosRun) -> None:
    verdict = await scenario(chaos, "reconnect-storm")
    reads, uncoalesced = verdict.figures["SQL reads of messages"], verdict.figures["SQL reads without coalescing"]
    assert uncoalesced > 0 and reads is not None
    assert reads < uncoalesced / 2, (reads, uncoalesced)  # identical concurrent reads share one query
    assert verdict.figures["all caught up after s"] is not None


async def test_slow_consumers_are_cut_off_memory_stays_flat_others_unaffected(chaos: ChaosRun) -> None:
    verdict = await scenario(chaos, "slow-consumers")
    assert verdict.figures["closed with 4008 after s"] is not None
