"""CPU used by each part of the local stack over a stretch of time, from /proc (Linux).

The benchmark's latency phase runs the broker, Redis, the scorer and the load generator on
the same cores; what each one used there is the profile that says what bounds the latency.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a scorer and its workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (not idle, not waiting on I/O)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICKS


def find_pid(marker: str) -> int | None:
    """The first process whose command line contains `marker` (the local broker's main class)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    return None


class CpuMeter:
    """`start()`, then `cores()`: the average cores each named process used since the start,
    and `machine` for all cores together. A process that is gone or unknown is left out."""

    def __init__(self, pids: dict[str, int | list[int] | None]) -> None:
        self.pids = {name: [pid] if isinstance(pid, int) else pid for name, pid in pids.items() if pid is not None}
        self._start: dict[str, float | None] = {}
        self._started = 0.0

    def _sample(self) -> dict[str, float | None]:
        sample: dict[str, float | None] = {name: _together(pids) for name, pids in self.pids.items()}
        sample["machine"] = machine_busy_seconds()
        return sample

    def start(self) -> CpuMeter:
        self._started = time.monotonic()
        self._start = self._sample()
        return self

    def cores(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        end = self._sample()
        out = {}
        for name, before in self._start.items():
            after = end.get(name)
            if before is not None and after is not None:
                out[name] = round((after - before) / elapsed, 2)
        return out


def _together(pids: list[int]) -> float | None:
    """CPU seconds of the processes together; None when any is gone."""
    seconds = [process_cpu_seconds(pid) for pid in pids]
    return None if any(s is None for s in seconds) else sum(s for s in seconds if s is not None)
