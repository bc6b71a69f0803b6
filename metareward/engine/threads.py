"""How many intra-op threads a CPU engine should use: as many as there are cores nobody else is using.

Every torch op of a step is a parallel region whose threads wait for each other at its end. When another
process keeps one of two cores busy, the thread that shares that core runs only in its time slices, and each
of the ~1,500 regions of a SmolLM2 decode step waits for it: measured on the 2-core VM under load, a
[64, 576] x [576, 1536] matmul took 31 ms with two threads and 5 ms with one, an elementwise multiply 236 us
against 41 us. One thread per free core avoids that wait.

Free cores = the cores this process may run on (affinity, cgroup quota) minus the CPU time other processes
used over the last interval (/proc/stat's busy time of those cores minus this process's own CPU time),
rounded. Measured every `interval` seconds while the engine runs, so the count follows the load."""
from __future__ import annotations

import math
import os
import time

import torch


def usable_cores() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # cgroup v2 quota: "max 100000" or "<quota> <period>"
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _busy_seconds() -> float | None:
    # CPU time (s) spent busy by every process on the cores this process may use, since boot
    try:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *ticks = line.split()
                if cpus is not None and int(name[3:]) not in cpus:
                    continue
                t = [int(x) for x in ticks]
                busy += sum(t[:8]) - t[3] - t[4]  # user nice system [idle iowait] irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class ThreadCount:
    """Sets torch's intra-op thread count while the engine runs (`with counter:`), and restores the caller's
    count after. fixed: that many threads always; None: one per free core, re-measured while running."""

    def __init__(self, fixed: int | None = None, interval: float = 1.0):
        self.fixed, self.interval = fixed, interval
        self.cores = usable_cores()
        self._last: tuple[float, float, float] | None = None  # (wall, busy, own CPU) at the last measurement
        self._saved: int | None = None

    def _snapshot(self) -> tuple[float, float, float] | None:
        busy = _busy_seconds()
        if busy is None:
            return None
        t = os.times()
        return time.monotonic(), busy, t.user + t.system

    def free_cores(self) -> float | None:
        """Cores other processes left idle since the last call (the first call looks over 50 ms)."""
        if self._last is None:
            self._last = self._snapshot()
            if self._last is None:
                return None
            time.sleep(0.05)
        now = self._snapshot()
        if now is None:
            return None
        (w0, b0, o0), (w1, b1, o1) = self._last, now
        if w1 - w0 < 0.02:
            return None
        self._last = now
        others = max(0.0, (b1 - b0) - (o1 - o0)) / (w1 - w0)
        return max(0.0, self.cores - others)

    def update(self) -> None:
        """Re-measure when the interval has passed (cheap to call every step)."""
        if self.fixed is not None or self._last is None or time.monotonic() - self._last[0] < self.interval:
            return
        self._apply()

    def _apply(self) -> None:
        n = self.fixed
        if n is None:
            free = self.free_cores()
            if free is None:
                return
            n = min(self.cores, max(1, math.floor(free + 0.5)))
        if n != torch.get_num_threads():
            torch.set_num_threads(n)

    def __enter__(self):
        self._saved = torch.get_num_threads()
        self._apply()
        return self

    def __exit__(self, *exc):
        if self._saved is not None and torch.get_num_threads() != self._saved:
            torch.set_num_threads(self._saved)
        self._saved = None
