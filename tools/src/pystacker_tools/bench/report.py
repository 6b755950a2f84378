"""Results: the JSON file, the table on the terminal, and the PNG plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from pystacker_tools.bench.histogram import Histogram

MATPLOTLIB_MISSING = ("matplotlib is not installed: no plot, JSON only "
                      "(pip install 'pystacker-tools[plot]', or -e 'tools[plot]' in a checkout, to get the plots)")


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(report: dict[str, Any]) -> str:
    """The final table: one row per step, then the workload's own figures and any problem."""
    if report["workload"] == "rawlimit":
        return "\n".join(_rawlimit_lines(report))
    head = ["step", "sends/s", "deliveries/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "lost", "dup", "order",
            "server CPU s"]
    rows = []
    for step in report["steps"]:
        latency = step.get("latency_ms") or {}
        cpu = step.get("server_cpu_s") or {}
        rows.append([step["label"], _fmt(step.get("sends_per_s")), _fmt(step.get("deliveries_per_s")),
                     _fmt(latency.get("p50"), 2), _fmt(latency.get("p90"), 2), _fmt(latency.get("p99"), 2),
                     _fmt(latency.get("max"), 2), _fmt(step.get("lost")), _fmt(step.get("duplicates")),
                     _fmt(step.get("order_violations")), _fmt(round(sum(cpu.values()), 2) if cpu else None, 2)])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"{report['workload']} (run {report['run_id']}, {report['elapsed_s']}s)"]
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    lines.extend(_details(report))
    return "\n".join(lines)


def raw_limit_summary(raw: dict[str, Any]) -> str:
    return (f"{_fmt(raw.get('frames_per_s_one_core'), 0)} frames/s on one core "
            f"({_fmt(raw.get('us_per_frame'), 2)} us of writer CPU per {raw.get('frame_bytes')}-byte frame, "
            f"{raw.get('connections', 0):,} connections; {_fmt(raw.get('frames_per_s_wall'), 0)} frames/s wall "
            f"with the writer at {_fmt(raw.get('writer_cpu_share'), 2)} of a core)")


def ratio_lines(report: dict[str, Any]) -> list[str]:
    """The line every workload's report has: its delivery rate against the raw limit of this run."""
    raw = report.get("rawlimit") or {}
    head = "ratio to the raw limit measured in this run"
    if not raw.get("measured"):
        return [f"{head}: not measured ({raw.get('reason', 'no raw-limit measurement')})"]
    parts = []
    for step in report["steps"]:
        if step.get("ratio_to_rawlimit") is None:
            continue
        part = f"{step['label']} {step['ratio_to_rawlimit']:.3g} ({_fmt(step.get('deliveries_per_s'), 0)} deliveries/s)"
        if step.get("server_cpu_to_rawlimit") is not None:
            part += (f", server CPU per delivery {_fmt(step['server_us_per_delivery'], 2)} us = "
                     f"{step['server_cpu_to_rawlimit']:.3g}x the raw frame's")
        parts.append(part)
    return [f"{head}: " + ("; ".join(parts) if parts else "- (no deliveries in this workload)"),
            f"raw limit: {raw_limit_summary(raw)}"]


def _rawlimit_lines(report: dict[str, Any]) -> list[str]:
    raw = report["rawlimit"]
    lines = [f"rawlimit (run {report['run_id']}, {report['elapsed_s']}s): one writer process, "
             f"{raw['connections']:,} WebSocket connections on 127.0.0.1, picows {raw.get('picows')}",
             f"raw limit: {raw_limit_summary(raw)}",
             f"frames: {raw['frames_sent']:,} written, {raw['frames_delivered']:,} delivered and checked, "
             f"{raw['bad_frames']:,} bad; wall {raw['wall_s']:.3f} s, writer CPU {raw['writer_cpu_s']:.2f} s, "
             f"receivers' CPU {raw['receiver_cpu_s']} s; {raw['rounds']:,} rounds, "
             f"{raw['rounds_with_paused_connections']:,} with full sockets skipped"]
    for problem in report.get("problems") or []:
        lines.append(f"PROBLEM: {problem}")
    lines.append("integrity: " + ("OK (every frame written was delivered and checked)" if report["integrity_ok"]
                                  else "FAILED"))
    return lines


def _details(report: dict[str, Any]) -> list[str]:
    lines = []
    connections = report.get("connections") or {}
    if connections:
        per = connections.get("memory_per_connection_kib")
        lines.append(f"connections: {connections.get('connected', 0):,} connected, {connections.get('failed', 0)} failed, "
                     f"connect p50 {_fmt(connections.get('connect_ms', {}).get('p50'), 2)} ms, "
                     f"server memory {_fmt(per, 2)} KiB per connection")
    for step in report["steps"]:
        sends = step.get("sends") or {}
        extra = []
        if step.get("mode") == "rate" and sends.get("late"):
            extra.append(f"{sends['late']:,} sends started >10 ms late (the generator or server could not keep up)")
        if step.get("mode") == "pairs":
            extra.append(f"{_fmt(step.get('messages_per_s'))} messages/s")
        if step.get("mode") == "catchup":
            extra.append(f"caught up in {_fmt(step.get('catchup_s'), 3)} s "
                         f"(user p50 {_fmt(step['user_completion_ms'].get('p50'), 1)} ms, "
                         f"p99 {_fmt(step['user_completion_ms'].get('p99'), 1)} ms), "
                         f"{step.get('users_incomplete', 0)} users incomplete")
        if sends.get("accepted"):
            accept = step.get("accept_latency_ms") or {}
            extra.append(f"{sends['accepted']:,} sends accepted, {sends.get('failed', 0):,} failed"
                         + (f" {sends['errors']}" if sends.get("errors") else "")
                         + (f", send answer p50 {_fmt(accept.get('p50'), 2)} ms p99 {_fmt(accept.get('p99'), 2)} ms"
                            if accept.get("count") else ""))
        if step.get("sender_order_violations"):
            extra.append(f"{step['sender_order_violations']:,} per-sender order violations")
        if step.get("unexpected"):
            extra.append(f"{step['unexpected']:,} unexpected deliveries")
        if step.get("order_checked") is False and step.get("deliveries"):
            extra.append("per-room order not checked: the server sends no seq")
        if extra:
            lines.append(f"{step['label']}: " + "; ".join(extra))
    server = report.get("server") or {}
    if server.get("log_problems") and any(server["log_problems"].values()):
        lines.append(f"server log {server.get('log')}: {server['log_problems']}")
    clients = report.get("clients") or {}
    if clients.get("server_closes"):
        lines.append(f"sockets closed by the server: {clients['server_closes']}, reconnects {clients.get('reconnects')}")
    lines.extend(ratio_lines(report))
    for note in report.get("notes") or []:
        lines.append(f"note: {note}")
    for problem in report.get("problems") or []:
        lines.append(f"PROBLEM: {problem}")
    lines.append("integrity: " + ("OK (0 lost, 0 duplicates, 0 out of order)" if report["integrity_ok"] else "FAILED"))
    return lines


def plot(report: dict[str, Any], path: Path) -> str | None:
    """Latency percentiles against offered load for several rates, else the latency CDF of the step."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print(f"bench: {MATPLOTLIB_MISSING}", file=sys.stderr)
        return None
    steps = report["steps"]
    title = f"pystacker bench {report['workload']} ({report['started_at']}, run {report['run_id']})"
    figure, axes = plt.subplots(figsize=(8, 5))
    rated = [s for s in steps if s.get("offered_rate") and (s.get("latency_ms") or {}).get("count")]
    if len(rated) > 1:
        x = [s["offered_rate"] for s in rated]
        for key, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-")):
            axes.plot(x, [s["latency_ms"][key] for s in rated], style, label=key)
        axes.plot(x, [s["latency_ms"]["max"] for s in rated], "x:", label="max")
        axes.set_xlabel("offered load (sends/s)")
        axes.set_ylabel("latency, send start to arrival (ms)")
        axes.set_yscale("log")
        for s in rated:
            axes.annotate(f"{_fmt(s.get('deliveries_per_s'), 0)} deliv/s", (s["offered_rate"], s["latency_ms"]["p50"]),
                          textcoords="offset points", xytext=(4, -12), fontsize=7)
    else:
        drawn = False
        for s in steps:
            data = s.get("latency_histogram")
            if not data or not data.get("count"):
                continue
            points = Histogram.from_json(data).cdf_ms()
            axes.step([p[0] for p in points], [p[1] for p in points], where="post", label=s["label"])
            drawn = True
        if not drawn:
            plt.close(figure)
            return None
        axes.set_xscale("log")
        axes.set_xlabel(steps[0].get("latency_is", "latency, send start to arrival") + " (ms)")
        axes.set_ylabel("fraction of deliveries at or below")
        axes.set_ylim(0, 1.01)
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2x10^1
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_formatter(plain)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    axes.set_title(title, fontsize=9)
    machine = report.get("machine") or {}
    figure.text(0.01, 0.01, f"{machine.get('cpu_count')} CPUs {machine.get('cpu_model')}, "
                            f"python {machine.get('python')}, commit {(report.get('git') or {}).get('commit', '?')[:10]}",
                fontsize=6, alpha=0.7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)
