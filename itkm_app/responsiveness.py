"""Measuring how responsive the window stays: the event loop's gaps, beside busy processes.

Used by the stall test (``tests/app/test_app.py``) and ``benchmarks/bench_responsiveness.py``.  A
:class:`StallMeter` is a 10 ms ``QTimer``; every gap between two of its ticks longer than 10 ms is
time the event loop could not answer input or repaint.  :func:`busy_processes` starts processes
that each keep a core busy: another user's work on the machine, the condition that matters
(an idle machine hides every stall).

A gap is the sum of what the app did on the GUI thread (its CPU time), what it waited for (the
interpreter lock, I/O) and the time the thread was ready but had no CPU (Linux schedstat's
run-queue wait).  On a busy machine the last part measures the scheduler, not the app, so the
meter keeps, per gap, the GUI thread's CPU time and the gap less its run-queue wait beside the
wall-clock gap: the worst of each is in :meth:`StallMeter.summary`.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator

import numpy as np
from PySide6.QtCore import QTimer

__all__ = ["StallMeter", "GapSampler", "busy_processes"]

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
        self.worst_runqueue_ms = None  # ... and its time ready to run but without a CPU (Linux)
        self.last_wait = None
        self.gaps: list[float] = []
        #: per gap: the GUI thread's own CPU time (ms), and the gap less its run-queue wait (ms;
        #: empty where the kernel does not report that wait)
        self.gap_cpu: list[float] = []
        self.gap_less_wait: list[float] = []

    def start(self) -> None:
        self.last = time.perf_counter()
        self.last_cpu = time.thread_time()
        self.last_wait = _runqueue_wait_s()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def _tick(self) -> None:
        now, cpu, wait = time.perf_counter(), time.thread_time(), _runqueue_wait_s()
        gap = (now - self.last) * 1000
        gap_cpu = (cpu - self.last_cpu) * 1000
        waited = (wait - self.last_wait) * 1000 if wait is not None and self.last_wait is not None else None
        self.gaps.append(gap)
        self.gap_cpu.append(gap_cpu)
        if waited is not None:
            self.gap_less_wait.append(gap - waited)
        if gap > self.max_gap_ms:
            self.max_gap_ms = gap
            self.worst_at = self.ticks
            self.worst_cpu_ms = gap_cpu
            self.worst_runqueue_ms = waited
        self.last, self.last_cpu, self.last_wait = now, cpu, wait
        self.ticks += 1

    @property
    def max_gui_cpu_ms(self) -> float:
        """The most CPU time the GUI thread spent between two ticks: the app's own work in one
        event-loop turn, whatever else the machine runs."""
        return max(self.gap_cpu, default=0.0)

    @property
    def max_gap_less_wait_ms(self) -> float | None:
        """The longest gap less the time the GUI thread waited for a CPU in it (its own work plus
        what it was blocked on: the interpreter lock, I/O); None where the kernel does not say."""
        return max(self.gap_less_wait) if self.gap_less_wait else None

    def summary(self) -> dict:
        """Tick count, median / 99th percentile / worst gap (ms), gaps over 100 ms, in the worst
        gap the GUI thread's own CPU time and its time waiting for a CPU (the rest of the gap it
        was blocked: the interpreter lock, I/O); then over all gaps the most GUI-thread CPU time
        in one and the longest gap less its run-queue wait (what the app controls)."""
        g = np.asarray(self.gaps or [0.0])
        less_wait = self.max_gap_less_wait_ms
        return {"ticks": self.ticks, "p50_ms": round(float(np.median(g)), 1),
                "p99_ms": round(float(np.percentile(g, 99)), 1), "worst_ms": round(self.max_gap_ms, 1),
                "gaps_over_100ms": int((g > 100).sum()), "worst_gui_cpu_ms": round(self.worst_cpu_ms, 1),
                "worst_no_cpu_ms": None if self.worst_runqueue_ms is None else round(self.worst_runqueue_ms, 1),
                "max_gui_cpu_ms": round(self.max_gui_cpu_ms, 1),
                "max_gap_less_wait_ms": None if less_wait is None else round(less_wait, 1)}

    def describe(self) -> str:
        s = self.summary()
        waited = "" if s["worst_no_cpu_ms"] is None else f" and waited {s['worst_no_cpu_ms']:.0f} ms for a CPU"
        less_wait = "" if s["max_gap_less_wait_ms"] is None else \
            f", longest gap less its wait for a CPU {s['max_gap_less_wait_ms']:.0f} ms"
        return (f"worst {s['worst_ms']:.0f} ms at tick {self.worst_at} of {self.ticks} (the GUI thread ran "
                f"{s['worst_gui_cpu_ms']:.0f} ms of it{waited}), p99 {s['p99_ms']:.0f} ms; "
                f"most GUI-thread CPU in one gap {s['max_gui_cpu_ms']:.0f} ms{less_wait}")


class GapSampler(threading.Thread):
    """While ``meter`` is late by more than ``late_ms``, samples the GUI thread's Python stack
    every few milliseconds: what the window was doing in its long gaps (a diagnostic; C++ work
    such as painting shows as the Python frame that called into Qt)."""

    def __init__(self, meter: StallMeter, late_ms: float = 30.0, every_s: float = 0.004) -> None:
        super().__init__(daemon=True, name="gap-sampler")
        self.meter, self.late_s, self.every_s = meter, late_ms / 1000, every_s
        self.main = threading.main_thread().ident
        self.samples: collections.Counter = collections.Counter()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            last = self.meter.last
            if last is None or time.perf_counter() - last < self.late_s:
                continue
            frame = sys._current_frames().get(self.main)
            if frame is not None:
                stack = traceback.extract_stack(frame)[-8:]
                self.samples[" < ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})"
                                        for f in reversed(stack))] += 1

    def stop(self) -> None:
        self._done.set()
        self.join(1.0)

    def top(self, n: int = 8) -> list[tuple[int, str]]:
        return [(count, stack) for stack, count in self.samples.most_common(n)]


def _runqueue_wait_s() -> float | None:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux schedstat)."""
    try:
        with open("/proc/thread-self/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


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
