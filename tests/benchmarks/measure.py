"""What every benchmark here measures with: a free port, a percentile, a process's CPU time."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

_CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_seconds(pid: int) -> float:
    """A process's CPU time: the time its threads have run, in ns (the first field of each
    /proc/<pid>/task/<tid>/schedstat). /proc/<pid>/stat's utime + stime come in clock ticks (10 ms): read
    around a 50-turn round of ~8 ms a turn, that truncation alone is worth ±0.2 ms a turn per process. A thread
    that ends between two readings takes its time with it; the services' threads (Redis' background threads,
    Python's executor threads) live as long as their process. Without schedstat (a kernel built without
    it), the ticks."""
    total_ns, counted = 0, False
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
            counted = True
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended while being read
    if counted:
        return total_ns / 1e9
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * _CLOCK_TICK_S
