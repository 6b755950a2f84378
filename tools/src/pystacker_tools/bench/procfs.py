"""What the bench knows about the machine and the server processes, read from /proc (Linux)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pystacker_tools.bench.safety import BenchError

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float  # user + system CPU seconds so far (all threads)
    rss_kib: int  # resident memory now


def sample(pid: int) -> ProcSample:
    """CPU time (utime+stime of /proc/<pid>/stat) and VmRSS of /proc/<pid>/status."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}: {exc.strerror or exc} (is the server still running?)") from None
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
            break
    return ProcSample((utime + stime) / _TICKS, rss)


def sample_all(pids: list[int]) -> dict[int, ProcSample]:
    return {pid: sample(pid) for pid in pids}


def cpu_delta(before: dict[int, ProcSample], after: dict[int, ProcSample]) -> dict[str, float]:
    return {str(pid): round(after[pid].cpu_s - before[pid].cpu_s, 3) for pid in before if pid in after}


def rss_delta_kib(before: dict[int, ProcSample], after: dict[int, ProcSample]) -> int:
    return sum(after[pid].rss_kib - before[pid].rss_kib for pid in before if pid in after)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def machine() -> dict[str, object]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "cpu_model": model,
            "memory_kib": memory_kib, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def git_commit(where: Path | None = None) -> dict[str, object] | None:
    """The commit of the checkout the bench runs from, if any (read-only git commands)."""
    cwd = where or Path(__file__).resolve().parent
    # GIT_OPTIONAL_LOCKS=0: `git status` must not even refresh the index of someone's checkout.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
