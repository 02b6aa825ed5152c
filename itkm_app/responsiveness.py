"""Measuring how responsive the window stays: the event loop's gaps, beside busy processes.

Used by the stall test (``tests/test_app.py``) and ``benchmarks/bench_responsiveness.py``.  A
:class:`StallMeter` is a 10 ms ``QTimer``; every gap between two of its ticks longer than 10 ms is
time the event loop could not answer input or repaint.  :func:`busy_processes` starts processes
that each keep a core busy: another user's work on the machine, the condition that matters
(an idle machine hides every stall).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
from PySide6.QtCore import QTimer

__all__ = ["StallMeter", "busy_processes"]

#: A busy loop, bounded in time (stopped earlier by :func:`busy_processes`).
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


class StallMeter:
    """Records the gaps between the ticks of a 10 ms timer while started."""

    INTERVAL_MS = 10

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(self.INTERVAL_MS)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.last_cpu = 0.0
        self.max_gap_ms = 0.0
        self.ticks = 0
        self.worst_at = None
        self.worst_cpu_ms = 0.0  # the GUI thread's own CPU time in the worst gap (work vs. waiting)
        self.gaps: list[float] = []

    def start(self) -> None:
        self.last = time.perf_counter()
        self.last_cpu = time.thread_time()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        gap = (now - self.last) * 1000
        self.gaps.append(gap)
        if gap > self.max_gap_ms:
            self.max_gap_ms = gap
            self.worst_at = self.ticks
            self.worst_cpu_ms = (cpu - self.last_cpu) * 1000
        self.last, self.last_cpu = now, cpu
        self.ticks += 1

    def summary(self) -> dict:
        """Tick count, median / 99th percentile / worst gap (ms), gaps over 100 ms, and the GUI
        thread's own CPU time in the worst gap."""
        g = np.asarray(self.gaps or [0.0])
        return {"ticks": self.ticks, "p50_ms": round(float(np.median(g)), 1),
                "p99_ms": round(float(np.percentile(g, 99)), 1), "worst_ms": round(self.max_gap_ms, 1),
                "gaps_over_100ms": int((g > 100).sum()), "worst_gui_cpu_ms": round(self.worst_cpu_ms, 1)}

    def describe(self) -> str:
        s = self.summary()
        return (f"worst {s['worst_ms']:.0f} ms at tick {self.worst_at} of {self.ticks} (the GUI thread ran "
                f"{s['worst_gui_cpu_ms']:.0f} ms of it), p99 {s['p99_ms']:.0f} ms")


@contextlib.contextmanager
def busy_processes(n: int = 2, bound_s: float = 900.0) -> Iterator[list]:
    """``n`` processes that each keep a core busy, stopped on leaving (``bound_s`` at the latest)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(bound_s)]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
