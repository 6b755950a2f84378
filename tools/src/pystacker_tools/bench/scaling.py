"""How cost grows: one point per bench run, against what varied between the runs (`pystacker bench plot`).

Each run's JSON is one point. What varies is read from the run itself: `members` and `connections`
from its parameters, `gateways` from the server processes it measured (`--server-pid`; the embedded
system is one gateway). A delivery run (fanout, pairs) gives deliveries/s, p99 latency and the server's CPU per
delivery; an idle run gives memory per connection, the time to connect them all and the server's CPU
while they were held.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

X_AXES = ("members", "connections", "gateways", "senders")
# A measured process that runs a gateway: `pystacker gateway`, or the embedded system (`pystacker up`).
_GATEWAY_PROCESS = re.compile(r"\bpystacker (gateway|up)\b")


class PlotError(ValueError):
    """A run that cannot be a point of this plot (its workload, or a value it lacks)."""


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    values: dict[str, float | None]  # metric -> value (None: the run did not measure it)
    source: str  # the JSON file


# metric -> (label, log scale)
DELIVERY_METRICS = {
    "deliveries_per_s": ("deliveries/s", False),
    "p99_ms": ("p99 latency, send to arrival (ms)", True),
    "server_us_per_delivery": ("server CPU per delivery (us)", False),
}
IDLE_METRICS = {
    "memory_per_connection_kib": ("server memory per connection (KiB)", False),
    "connect_all_s": ("time to connect them all (s)", False),
    "server_cpu_s": ("server CPU during the run (s)", False),
}


def x_value(report: dict[str, Any], axis: str) -> float:
    parameters = report.get("parameters") or {}
    if axis == "gateways":
        if parameters.get("embedded"):
            return 1
        commands = ((report.get("server") or {}).get("pids") or {}).values()
        gateways = sum(1 for command in commands if _GATEWAY_PROCESS.search(str(command)))
        if not gateways:
            raise PlotError("the run measured no gateway process (give the bench the gateways' --server-pid)")
        return gateways
    value = parameters.get(axis)
    if not isinstance(value, int | float):
        raise PlotError(f"the run has no {axis!r} parameter")
    return value


def point(report: dict[str, Any], axis: str, source: str) -> Point:
    """The run's point; its first step is the one measured (a paced run: give it one rate)."""
    steps = report.get("steps") or []
    if not steps:
        raise PlotError("the run has no step")
    step = steps[0]
    if report.get("workload") == "idle":
        connections = report.get("connections") or {}
        values: dict[str, float | None] = {
            "memory_per_connection_kib": step.get("memory_per_connection_kib"),
            "connect_all_s": connections.get("elapsed_s"),
            "server_cpu_s": sum((step.get("server_cpu_s") or {}).values()) or None,
        }
    else:
        values = {
            "deliveries_per_s": step.get("deliveries_per_s"),
            "p99_ms": (step.get("latency_ms") or {}).get("p99"),
            "server_us_per_delivery": step.get("server_us_per_delivery"),
        }
    return Point(x=x_value(report, axis), values=values, source=source)


def points(reports: list[tuple[str, dict[str, Any]]], axis: str) -> tuple[list[Point], dict[str, tuple[str, bool]]]:
    """Points in x order, and the metrics they have (every run of one plot has the same kind)."""
    kinds = {"idle" if report.get("workload") == "idle" else "delivery" for _, report in reports}
    if len(kinds) != 1:
        raise PlotError("idle runs and delivery runs do not share a plot")
    metrics = IDLE_METRICS if kinds == {"idle"} else DELIVERY_METRICS
    found = sorted((point(report, axis, source) for source, report in reports), key=lambda p: p.x)
    return found, metrics


def table(found: list[Point], metrics: dict[str, tuple[str, bool]], axis: str) -> str:
    header = [axis, *metrics]
    rows = [header] + [[f"{p.x:g}", *("-" if p.values[m] is None else f"{p.values[m]:,.2f}" for m in metrics)]
                       for p in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)


def _number(value: float) -> str:
    """12,345 or 3.21: whole numbers from 100 up, three significant digits below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def plot(found: list[Point], metrics: dict[str, tuple[str, bool]], axis: str, path: Path, title: str) -> None:
    """One panel per metric against the x axis (log scale where the x values span 10x or more)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    figure, panels = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4))
    xs = [p.x for p in found]
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for panel, (metric, (label, log_y)) in zip(panels, metrics.items(), strict=True):
        shown = [(p.x, y) for p in found if (y := p.values[metric]) is not None]
        panel.plot([x for x, _ in shown], [y for _, y in shown], "o-")
        for x, y in shown:
            panel.annotate(_number(y), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            panel.set_xscale("log")
        if log_y and all(y > 0 for _, y in shown):
            panel.set_yscale("log")
        else:
            panel.set_ylim(bottom=0)  # from zero: a difference looks as large as it is
        panel.set_xticks(sorted(set(xs)))
        panel.xaxis.set_major_formatter(plain)
        panel.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        numbers = FuncFormatter(lambda value, _: _number(value))
        panel.yaxis.set_major_formatter(numbers)
        panel.yaxis.set_minor_formatter(numbers if log_y else FuncFormatter(lambda value, _: ""))
        panel.set_xlabel(axis)
        panel.set_title(label, fontsize=9)
        panel.grid(True, which="both", alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
