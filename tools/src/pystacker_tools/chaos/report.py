"""The fault run's report: one table line per scenario, its own figures below, and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from pystacker_tools.chaos.traffic import Verdict

COLUMNS = ("scenario", "sent", "acked", "delivered", "lost", "dup shown", "order", "acked, gone", "recovery s",
           "in SQL s", "result")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def rows(verdicts: list[Verdict]) -> list[list[str]]:
    table = []
    for v in verdicts:
        table.append([v.scenario, _cell(v.sent), _cell(v.acked), f"{v.delivered}/{v.expected}", _cell(v.lost),
                      _cell(v.duplicates_shown), _cell(v.order_violations),
                      _cell(v.acked_not_stored) if not v.acked_not_stored_allowed
                      else f"{v.acked_not_stored} ({v.acked_not_stored_allowed} allowed)",
                      _cell(v.recovery_s), _cell(v.flushed_s), "ok" if v.ok else "FAIL"])
    return table


def print_report(verdicts: list[Verdict], out: TextIO) -> None:
    table = [list(COLUMNS), *rows(verdicts)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for number, row in enumerate(table):
        out.write("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                            for i, cell in enumerate(row)).rstrip() + "\n")
        if number == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    out.write("\n")
    for v in verdicts:
        extras = {"retried sends": v.retried, "redelivered (hidden by dedup)": v.redelivered_hidden,
                  "stored without an answer": v.unacked_stored, **v.figures}
        out.write(f"{v.scenario}: " + "; ".join(f"{k}: {_flat(val)}" for k, val in extras.items()) + "\n")
        for problem in v.problems:
            out.write(f"  PROBLEM: {problem}\n")
    out.flush()


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_flat(v)}" for k, v in value.items()) + "}"
    return _cell(value)


def write_json(path: Path, verdicts: list[Verdict], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "scenarios": [v.to_json() for v in verdicts], "ok": all(v.ok for v in verdicts)}
    path.write_text(json.dumps(data, indent=2, default=str))
