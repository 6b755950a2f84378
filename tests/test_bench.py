"""`pystacker bench`: the integrity checker on synthetic arrivals (it must be able to fail), its
histogram and safety rules, and a short smoke run of every workload against `pystacker up` in a
subprocess on free ports, and of the raw-limit measurement (`bench rawlimit`, picows on both ends). The
smoke runs assert integrity (0 lost, 0 duplicates, 0 out of order; every raw frame written delivered)
and the shape of the JSON, never a speed."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pystacker.cli import main
from pystacker_tools.bench.checker import IntegrityChecker
from pystacker_tools.bench.histogram import Histogram
from pystacker_tools.bench.rawlimit import RawLimitOptions, add_ratios, chat_payload
from pystacker_tools.bench.rawlimit import _result as raw_result
from pystacker_tools.bench.safety import BenchError, check_target
from pystacker_tools.bench.server import EmbeddedServer
from pystacker_tools.bench.tags import Tag, make_text, parse_text

RUN = "abc123"

# -- the checker -----------------------------------------------------------------------------------


def _tag(sender: int, n: int, sent_ns: int = 0, step: int = 0) -> Tag:
    return Tag(RUN, step, sender, n, sent_ns)


def test_checker_counts_a_duplicate_a_loss_and_a_reordering() -> None:
    checker = IntegrityChecker(RUN)
    room = 7
    # Sender 0 sent messages 101..104 (seq 1..4) into room 7, whose members are clients 0, 1 and 2.
    accepted = {101: (room, 0), 102: (room, 0), 103: (room, 0), 104: (room, 0)}
    ms = 1_000_000
    for seq, msg_id in enumerate((101, 102, 103, 104), start=1):
        checker.arrive(0, msg_id, room, seq, _tag(0, seq), seq * ms)  # the sender's own copies
    # Client 1: everything in order, but 102 twice (the second copy is not new).
    firsts = [checker.arrive(1, msg_id, room, seq, _tag(0, seq, sent_ns=0), 5 * ms)
              for msg_id, seq in ((101, 1), (102, 2), (102, 2), (103, 3), (104, 4))]
    assert firsts == [True, True, False, True, True]
    # Client 2: 104 before 103 (one per-room and one per-sender order violation), 102 never arrives.
    for msg_id, seq in ((101, 1), (104, 4), (103, 3)):
        checker.arrive(2, msg_id, room, seq, _tag(0, seq, sent_ns=0), 10 * ms)
    counts = checker.finish(accepted, {room: [0, 1, 2]})[0]
    assert counts.duplicates == 1
    assert counts.lost == 1
    assert counts.order_violations == 1
    assert counts.sender_order_violations == 1
    assert counts.expected == 12 and counts.delivered == 11
    assert counts.unexpected == 0
    # Latency counts the other members' copies only: 4 at client 1 (5 ms), 3 at client 2 (10 ms).
    assert counts.latency.count == 7
    assert counts.latency.max == pytest.approx(0.010)


def test_checker_counts_unexpected_and_ignores_foreign_messages() -> None:
    checker = IntegrityChecker(RUN)
    checker.arrive(1, 500, 3, 1, _tag(0, 1), 1)  # a send the client saw fail, stored anyway
    checker.arrive(1, 501, 3, 2, Tag("other", 0, 0, 1, 0), 2)  # an earlier run's message
    checker.arrive(1, 502, 3, 3, None, 3)  # someone else's text
    counts = checker.finish({}, {3: [1]})[0]
    assert counts.unexpected == 1 and counts.lost == 0
    assert checker.foreign == 2


def test_checker_without_seq_checks_no_room_order() -> None:
    checker = IntegrityChecker(RUN)
    checker.arrive(1, 11, 3, None, _tag(0, 1), 1)
    checker.arrive(1, 10, 3, None, _tag(0, 2), 2)
    counts = checker.finish({10: (3, 0), 11: (3, 0)}, {3: [1]})[0]
    assert counts.seq_checked == 0 and counts.order_violations == 0 and counts.lost == 0


def test_tags_round_trip_and_padding() -> None:
    tag = Tag(RUN, 2, 17, 42, 123456789)
    text = make_text(tag, size=100)
    assert len(text) == 100
    assert parse_text(text) == tag
    assert parse_text("hello") is None and parse_text("bench:x:1") is None and parse_text(None) is None


def test_histogram_percentiles_within_one_percent() -> None:
    hist = Histogram()
    for i in range(1, 1001):
        hist.add(i / 1000)  # 1 ms ... 1 s
    assert hist.percentile(50) == pytest.approx(0.5, rel=0.011)
    assert hist.percentile(99) == pytest.approx(0.99, rel=0.011)
    assert hist.percentile(100) == pytest.approx(1.0)
    other = Histogram.from_json(json.loads(json.dumps(hist.to_json())))
    merged = Histogram().merge(other).merge(hist)
    assert merged.count == 2000 and merged.percentile(50) == pytest.approx(0.5, rel=0.011)


def test_non_loopback_targets_are_refused_unless_allowed() -> None:
    for url in ("http://127.0.0.1:8082", "http://localhost:8082", "http://[::1]:8082", "ws://127.0.0.5:9000/api/ws"):
        check_target(url, allow_remote=False, what="t")
    for url in ("http://192.0.2.1:8082", "ws://10.0.0.1:8084/api/ws"):
        with pytest.raises(BenchError, match="--allow-remote"):
            check_target(url, allow_remote=False, what="t")
        check_target(url, allow_remote=True, what="t")


def test_cli_refuses_a_remote_target_before_doing_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "fanout", "--meta", "http://192.0.2.1:8082", "--quiet",
                                       "--results", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "--allow-remote" in result.output
    assert not list(tmp_path.iterdir())


# -- smoke runs against the embedded system --------------------------------------------------------

STEP_KEYS = {"label", "mode", "sends", "sends_per_s", "deliveries_per_s", "latency_ms", "lost", "duplicates",
             "order_violations", "sender_order_violations", "server_cpu_s", "deliveries", "deliveries_expected"}
REPORT_KEYS = {"schema", "workload", "run_id", "started_at", "parameters", "targets", "machine", "git", "server",
               "connections", "clients", "steps", "totals", "problems", "integrity_ok", "rawlimit"}
RAW_KEYS = {"measured", "connections", "frame_bytes", "frames_sent", "frames_delivered", "bad_frames", "wall_s",
            "writer_cpu_s", "writer_cpu_share", "frames_per_s_one_core", "frames_per_s_wall", "us_per_frame",
            "writer_pid", "receiver_pids", "receiver_cpu_s", "picows", "problems"}
# A short raw-limit measurement for the smoke runs that check the ratio line.
SHORT_RAW = ("--rawlimit-duration", "0.5", "--rawlimit-connections", "20")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """`pystacker up` in a subprocess on free ports (the bench's own --embedded machinery)."""
    embedded = EmbeddedServer(tmp_path_factory.mktemp("bench-server") / "server.log")
    try:
        asyncio.run(embedded.start())
        yield embedded
    finally:
        assert embedded.stop() == 0, embedded.log_path.read_text()[-3000:]


def _bench(server: EmbeddedServer | None, results: Path, *args: str, raw: tuple[str, ...] = ("--no-rawlimit",)
           ) -> dict[str, Any]:
    target = [] if server is None else [
        "--meta", server.targets.meta, "--send", server.targets.send, "--registry", server.targets.registry,
        "--server-pid", str(server.pid)]
    result = CliRunner().invoke(main, ["bench", *args, *target, "--results", str(results), "--quiet", "--no-plot",
                                       "--grace", "10", *raw])
    files = list(results.glob("*.json"))
    assert len(files) == 1, (result.exit_code, result.output, files)
    report = json.loads(files[0].read_text())
    assert result.exit_code == 0, (result.output, report["problems"])
    assert REPORT_KEYS <= report.keys()
    assert report["integrity_ok"] is True
    assert report["problems"] == []
    for step in report["steps"]:
        assert STEP_KEYS <= step.keys(), step.keys()
        assert step["lost"] == 0 and step["duplicates"] == 0 and step["order_violations"] == 0, step
        assert {"p50", "p90", "p99", "max"} <= step["latency_ms"].keys()
        if server is not None:
            assert str(server.pid) in step["server_cpu_s"]
    line = next(x for x in result.output.splitlines() if x.startswith("ratio to the raw limit measured in this run: "))
    if "--no-rawlimit" in raw:
        assert report["rawlimit"] == {"measured": False, "reason": "skipped with --no-rawlimit"}
        assert "not measured (skipped with --no-rawlimit)" in line
        assert all(step["ratio_to_rawlimit"] is None for step in report["steps"])
    else:
        _check_raw(report["rawlimit"])
    return report


def _check_raw(raw: dict[str, Any]) -> None:
    """Real properties of a raw-limit measurement: everything written arrived, checked, at a positive rate,
    written by another process than this one and received by others again."""
    assert RAW_KEYS <= raw.keys(), raw.keys()
    assert raw["measured"] is True and raw["problems"] == []
    assert raw["frames_sent"] > 0 and raw["frames_delivered"] == raw["frames_sent"]
    assert raw["frames_sent"] <= raw["rounds"] * raw["connections"]  # one frame per connection per round at most
    assert raw["bad_frames"] == 0
    assert raw["frame_bytes"] == 200
    assert raw["wall_s"] > 0 and raw["writer_cpu_s"] > 0
    assert raw["frames_per_s_one_core"] == pytest.approx(raw["frames_delivered"] / raw["writer_cpu_s"], rel=1e-3)
    assert raw["frames_per_s_wall"] == pytest.approx(raw["frames_delivered"] / raw["wall_s"], rel=1e-3)
    assert raw["us_per_frame"] > 0
    assert raw["writer_pid"] != os.getpid() and os.getpid() not in raw["receiver_pids"]
    assert raw["writer_pid"] not in raw["receiver_pids"]


def _check_deliveries(report: dict[str, Any]) -> None:
    for step in report["steps"]:
        assert step["sends"]["accepted"] > 0, step
        assert step["deliveries"] == step["deliveries_expected"] > 0, step
        assert step["order_checked"] is True
        assert step["latency_ms"]["count"] > 0


def test_smoke_fanout_closed_loop_two_client_processes(server: EmbeddedServer, tmp_path: Path) -> None:
    report = _bench(server, tmp_path, "fanout", "--users", "20", "--groups", "2", "--members", "10", "--senders", "4",
                    "--duration", "2", "--client-procs", "2", raw=SHORT_RAW)
    _check_deliveries(report)
    step = report["steps"][0]
    # The ratio line's figures: this step against the raw limit measured at the start of the run.
    assert report["rawlimit"]["connections"] == 20
    assert step["ratio_to_rawlimit"] == pytest.approx(
        step["deliveries_per_s"] / report["rawlimit"]["frames_per_s_one_core"], rel=1e-3)
    assert step["server_us_per_delivery"] > 0 and step["server_cpu_to_rawlimit"] > 0
    assert step["mode"] == "closed"
    assert step["sender_order_violations"] == 0
    # Every accepted send reaches its 10 members (the sender's own copy included).
    assert step["deliveries_expected"] == 10 * step["sends"]["accepted"]
    assert report["connections"]["connected"] == 20
    assert report["connections"]["memory_per_connection_kib"] is not None


def test_smoke_fanout_paced_rates_over_websocket(server: EmbeddedServer, tmp_path: Path) -> None:
    report = _bench(server, tmp_path, "fanout", "--users", "20", "--groups", "2", "--members", "10", "--senders", "4",
                    "--duration", "1.5", "--rate", "20,40", "--via", "ws")
    _check_deliveries(report)
    assert [s["offered_rate"] for s in report["steps"]] == [20, 40]
    assert report["parameters"]["via"] == "ws"


def test_smoke_pairs(server: EmbeddedServer, tmp_path: Path) -> None:
    report = _bench(server, tmp_path, "pairs", "--pairs", "5", "--duration", "2")
    _check_deliveries(report)
    assert report["steps"][0]["messages_per_s"] > 0


def test_smoke_catchup(server: EmbeddedServer, tmp_path: Path) -> None:
    report = _bench(server, tmp_path, "catchup", "--users", "20", "--groups", "2", "--messages", "10",
                    "--duration", "30", "--client-procs", "2")
    _check_deliveries(report)
    step = report["steps"][0]
    assert step["users_incomplete"] == 0 and step["users_complete"] == 20
    assert step["catchup_s"] is not None and step["catchup_s"] > 0
    assert step["deliveries"] == 20 * 10  # each user missed the 10 messages of his one room


def test_smoke_idle_with_its_own_embedded_server_reusing_users(tmp_path: Path) -> None:
    """--embedded twice on one kept data folder: the second run reuses the first run's users."""
    data, users_file = tmp_path / "server-data", tmp_path / "users.json"
    reuse = ["--embedded", "--server-data", str(data), "--users-file", str(users_file)]
    first = _bench(None, tmp_path / "first", "idle", "--connections", "30", "--duration", "1", *reuse)
    assert first["server"]["embedded"] is True and first["server"]["exit_code"] == 0
    assert first["connections"]["connected"] == 30 and first["connections"]["open_after_hold"] == 30
    assert first["connections"]["memory_per_connection_kib"] is not None
    assert len(first["server"]["pids"]) == 1
    assert Path(first["server"]["log"]).exists()
    made = json.loads(users_file.read_text())["users"]
    assert len(made) == 30

    second = _bench(None, tmp_path / "second", "idle", "--connections", "35", "--duration", "0.5", *reuse)
    assert second["connections"]["connected"] == 35
    kept = json.loads(users_file.read_text())["users"]
    assert [u["user_id"] for u in kept[:30]] == [u["user_id"] for u in made]  # the same users, not new ones
    assert len(kept) == 35


def test_plot_draws_real_runs_against_what_varied_and_refuses_mixed_kinds(server: EmbeddedServer, tmp_path: Path) -> None:
    """`bench plot`: one point per run's JSON (here two fanout runs with rooms of 5 and 10 members)."""
    runs = []
    for members in (10, 5):  # out of order on purpose: the points go in x order
        report = _bench(server, tmp_path / f"m{members}", "fanout", "--users", "20", "--groups", "2", "--members",
                        str(members), "--senders", "2", "--duration", "1", "--rate", "20")
        runs.append((members, report))
    png = tmp_path / "scale.png"
    result = CliRunner().invoke(main, ["bench", "plot", *(r["json_path"] for _, r in runs), "--x", "members",
                                       "--output", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = [line.split() for line in result.output.splitlines()[1:3]]
    assert [row[0] for row in rows] == ["5", "10"]
    by_members = dict(runs)
    for row in rows:
        assert float(row[1].replace(",", "")) == pytest.approx(by_members[int(row[0])]["steps"][0]["deliveries_per_s"], abs=0.01)
    # An embedded server is one gateway.
    gateways = CliRunner().invoke(main, ["bench", "plot", runs[0][1]["json_path"], "--x", "gateways",
                                         "--output", str(tmp_path / "gw.png")])
    assert gateways.exit_code == 0 and gateways.output.splitlines()[1].split()[0] == "1", gateways.output
    # Idle runs and delivery runs measure different things: no shared plot.
    idle = _bench(server, tmp_path / "idle", "idle", "--connections", "5", "--duration", "0.5")
    mixed = CliRunner().invoke(main, ["bench", "plot", runs[0][1]["json_path"], idle["json_path"], "--x", "connections",
                                      "--output", str(tmp_path / "mixed.png")])
    assert mixed.exit_code == 2 and "do not share a plot" in mixed.output
    assert not (tmp_path / "mixed.png").exists()


# -- the raw limit ---------------------------------------------------------------------------------


def test_rawlimit_smoke_two_receiver_processes(tmp_path: Path) -> None:
    """`bench rawlimit` for real, small: 50 connections over two receiver processes, one second."""
    result = CliRunner().invoke(main, ["bench", "rawlimit", "--connections", "50", "--duration", "1",
                                       "--receiver-procs", "2", "--results", str(tmp_path), "--quiet"])
    files = list(tmp_path.glob("*-rawlimit.json"))
    assert len(files) == 1, (result.exit_code, result.output)
    report = json.loads(files[0].read_text())
    assert result.exit_code == 0, (result.output, report["problems"])
    assert report["workload"] == "rawlimit" and report["integrity_ok"] is True and report["problems"] == []
    assert {"schema", "run_id", "started_at", "parameters", "machine", "git", "rawlimit"} <= report.keys()
    raw = report["rawlimit"]
    _check_raw(raw)
    assert raw["connections"] == 50 and len(raw["receiver_pids"]) == 2
    assert len(set(raw["receiver_pids"])) == 2
    assert report["parameters"]["duration"] == 1.0
    assert "frames/s on one core" in result.output
    assert f"{raw['frames_delivered']:,} delivered and checked, 0 bad" in result.output


def test_rawlimit_refuses_what_it_cannot_measure(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "rawlimit", "--connections", "2", "--receiver-procs", "3",
                                       "--results", str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "--receiver-procs" in result.output
    assert not list(tmp_path.iterdir())


def test_rawlimit_result_reports_a_shortfall_and_ratios() -> None:
    """The accounting, on given counts: a frame short, or a bad one, is a problem; ratios follow."""
    options = RawLimitOptions(connections=2)
    frame = b"x" * 200
    written = {"sent": 10, "wall_s": 0.5, "cpu_s": 0.25, "answered": 2, "gone": 0, "rounds": 5, "slow_rounds": 0,
               "transport": "t", "picows": "v"}
    checked = [{"pid": 1, "frames": 5, "bad": 0, "mismatched": 0, "ended": 1, "cpu_s": 0.1},
               {"pid": 2, "frames": 4, "bad": 1, "mismatched": 1, "ended": 1, "cpu_s": 0.1}]
    raw = raw_result(options, frame, {"pid": 3}, written, checked, 1.0)
    assert raw["frames_delivered"] == 9 and raw["bad_frames"] == 1
    assert any("10 frames written, 9 delivered" in p for p in raw["problems"])
    assert any("1 frames not the one written" in p for p in raw["problems"])
    assert any("1 connections received another count" in p for p in raw["problems"])
    assert raw["frames_per_s_one_core"] == 36.0 and raw["frames_per_s_wall"] == 18.0
    steps = [{"deliveries_per_s": 9.0, "deliveries": 90, "server_cpu_s": {"1": 0.0009}}, {"deliveries_per_s": None}]
    add_ratios(raw, steps)
    assert steps[0]["ratio_to_rawlimit"] == 0.25 and steps[0]["server_us_per_delivery"] == 10.0
    assert steps[0]["server_cpu_to_rawlimit"] == pytest.approx(10.0 / raw["us_per_frame"], rel=1e-3)
    assert steps[1]["ratio_to_rawlimit"] is None and steps[1]["server_cpu_to_rawlimit"] is None


def test_rawlimit_frame_is_a_chat_frame_of_the_asked_size() -> None:
    for size in (130, 200, 1000):
        payload = chat_payload(size)
        assert len(payload) == size - 4
        frame = json.loads(payload)
        assert frame["type"] == "chat" and frame["payload"]["text"]
