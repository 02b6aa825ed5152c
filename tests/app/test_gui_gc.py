"""Cyclic garbage is collected on the GUI thread only while a window exists (``itkm_app.gui_gc``)."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QObject  # noqa: E402

from itkm_app.gui_gc import GuiThreadCollector  # noqa: E402


class Cycle:
    def __init__(self) -> None:
        self.me = self
        self.qt = QObject()  # a Qt object inside a reference cycle: only the GUI thread may free it


def test_worker_threads_never_collect_and_the_gui_thread_does(qapp, qtbot):
    assert gc.isenabled()
    collector = GuiThreadCollector()
    collector.start()
    try:
        assert not gc.isenabled()
        freed_on = []
        kept = []

        def make_garbage() -> None:  # a job thread allocating a lot: automatic GC would run here
            for _ in range(5):
                c = Cycle()
                weakref.finalize(c, lambda: freed_on.append(threading.current_thread().name))
                del c
            kept.append([[i] for i in range(5_000)])  # alive: far past the gen-0 threshold

        t = threading.Thread(target=make_garbage, name="worker")
        t.start()
        t.join()
        assert freed_on == []  # nothing collected on the worker thread
        qtbot.waitUntil(lambda: len(freed_on) == 5, timeout=5_000)  # the timer collected them ...
        assert set(freed_on) == {threading.main_thread().name}  # ... on the GUI thread
    finally:
        collector.stop()
    assert gc.isenabled()


def test_collectors_nest_and_stop_all_restores_automatic_collection(qapp):
    a, b = GuiThreadCollector(), GuiThreadCollector()
    a.start()
    b.start()
    a.stop()
    assert not gc.isenabled()  # b's window is still open
    GuiThreadCollector.stop_all()
    assert gc.isenabled()
    b.stop()  # a late stop of a reset collector changes nothing
    assert gc.isenabled()
