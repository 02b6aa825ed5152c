"""Python's cyclic garbage collector, run on the GUI thread only.

Automatic collection runs on whichever thread happens to allocate.  When a job thread collects a
reference cycle that holds a Qt object, the object's C++ destructor runs on that thread:
``QObject::disconnect`` takes Qt's connection lock and calls back into Python for the
interpreter lock, while the GUI thread, holding the interpreter lock, waits for the same Qt lock
in ``QObject::connect``.  Both wait forever (seen in the app tests: a read job's allocation
collected an earlier window's widgets while a new window was being built).

So while a window exists, automatic collection is off and a GUI-thread timer collects,
generation by generation, with Python's own thresholds.  :func:`freeze` moves everything alive
into the permanent generation (after the start-up imports): a full collection over torch, UMAP
and scikit-learn's ~600,000 objects otherwise takes ~320 ms, a visible freeze of the window.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

__all__ = ["GuiThreadCollector", "freeze"]


def freeze() -> None:
    """Exempt every object alive now from later collections (imports, caches: they stay)."""
    gc.freeze()


class GuiThreadCollector(QObject):
    """Collects garbage on the GUI thread every ``INTERVAL_MS``; automatic collection is off
    while at least one collector is started (windows in tests come and go)."""

    INTERVAL_MS = 250
    _running: set[int] = set()  # ids of the started collectors
    _was_enabled = True

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.threshold = gc.get_threshold()
        self.timer = QTimer(self)
        self.timer.setInterval(self.INTERVAL_MS)
        self.timer.timeout.connect(self.check)

    @property
    def running(self) -> bool:
        return id(self) in GuiThreadCollector._running

    def start(self) -> None:
        if self.running:
            return
        if not GuiThreadCollector._running:
            GuiThreadCollector._was_enabled = gc.isenabled()
            gc.disable()
            freeze()
        GuiThreadCollector._running.add(id(self))
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        if not self.running:
            return
        GuiThreadCollector._running.discard(id(self))
        if not GuiThreadCollector._running and GuiThreadCollector._was_enabled:
            gc.enable()

    @classmethod
    def stop_all(cls) -> None:
        """Automatic collection back on, whatever windows were left open (tests)."""
        if cls._running:
            cls._running.clear()
            if cls._was_enabled:
                gc.enable()

    def check(self) -> int:
        """One collection step, as the automatic collector would have done it; returns the
        oldest generation collected (-1: none)."""
        c0, c1, c2 = gc.get_count()
        t0, t1, t2 = self.threshold
        if t0 <= 0 or c0 <= t0:
            return -1
        generation = 2 if (c1 > t1 and c2 > t2) else 1 if c1 > t1 else 0
        gc.collect(generation)
        return generation
