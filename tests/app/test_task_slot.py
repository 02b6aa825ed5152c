"""A panel's task slot (``itkm_app.task_slot``): one task at a time, a new one supersedes the
running one without any of its callbacks landing, a cancel reports its own end, lazy requests
wait until the panel is shown.  Plain job functions, no torch: quick."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QWidget  # noqa: E402

from itkm_app.jobs import JobManager  # noqa: E402
from itkm_app.task_slot import TaskSlot  # noqa: E402


def _wait_for(gate: threading.Event, value, *, reporter):
    """Runs until ``gate`` is set (checking for a cancel), then returns ``value``."""
    while not gate.wait(0.01):
        reporter.check()
    return value


def _fail(*, reporter):
    raise ValueError("broken on purpose")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def cb(self, name: str):
        return lambda *a: self.calls.append((name, *a))

    def callbacks(self, tag: str) -> dict:
        return {k: self.cb(f"{tag}:{k}") for k in ("on_done", "on_error", "on_cancel", "on_end")}


@pytest.fixture
def setup(qapp, qtbot):
    jobs = JobManager()
    owner = QWidget()
    qtbot.addWidget(owner)
    loading = []
    slot = TaskSlot(jobs, owner, begin_loading=lambda: loading.append(+1), end_loading=lambda: loading.append(-1))
    yield jobs, owner, slot, loading
    jobs.cancel_all()
    jobs.wait_idle(10)
    jobs.shutdown(5)


def test_a_task_reports_its_result_and_its_end(setup, qtbot):
    jobs, _owner, slot, loading = setup
    rec = Recorder()
    gate = threading.Event()
    job = slot.start("a", _wait_for, gate, 42, **rec.callbacks("a"))
    assert slot.busy() and slot.job is job
    gate.set()
    qtbot.waitUntil(lambda: not slot.busy(), timeout=10_000)
    assert rec.calls == [("a:on_done", 42), ("a:on_end",)]
    assert slot.job is None
    qtbot.waitUntil(lambda: not jobs.busy(), timeout=10_000)
    assert loading == [+1, -1]


def test_a_new_task_supersedes_the_running_one_and_its_callbacks_never_run(setup, qtbot):
    jobs, _owner, slot, loading = setup
    rec = Recorder()
    gate_a, gate_b = threading.Event(), threading.Event()
    a = slot.start("a", _wait_for, gate_a, "old", **rec.callbacks("a"))
    b = slot.start("b", _wait_for, gate_b, "new", **rec.callbacks("b"))
    assert slot.job is b
    qtbot.waitUntil(lambda: a.state.value == "cancelled", timeout=10_000)
    gate_b.set()
    qtbot.waitUntil(lambda: not jobs.busy(), timeout=10_000)
    assert rec.calls == [("b:on_done", "new"), ("b:on_end",)]
    assert sorted(loading) == [-1, -1, +1, +1]  # the superseded job counted until it ended


def test_cancel_reports_the_tasks_own_end(setup, qtbot):
    _jobs, _owner, slot, _loading = setup
    rec = Recorder()
    slot.start("a", _wait_for, threading.Event(), None, loading=False, **rec.callbacks("a"))
    slot.cancel()
    assert slot.busy()  # until it has stopped
    qtbot.waitUntil(lambda: not slot.busy(), timeout=10_000)
    assert rec.calls == [("a:on_cancel",), ("a:on_end",)]


def test_discard_forgets_the_task_at_once(setup, qtbot):
    jobs, _owner, slot, _loading = setup
    rec = Recorder()
    slot.start("a", _wait_for, threading.Event(), None, **rec.callbacks("a"))
    slot.discard()
    assert not slot.busy()
    qtbot.waitUntil(lambda: not jobs.busy(), timeout=10_000)
    assert rec.calls == []


def test_errors_reach_the_current_task_and_the_job_manager(setup, qtbot):
    jobs, _owner, slot, _loading = setup
    rec = Recorder()
    reported = []
    jobs.error.connect(lambda name, msg, _tb: reported.append((name, msg)))
    slot.start("a", _fail, **rec.callbacks("a"))
    qtbot.waitUntil(lambda: not slot.busy(), timeout=10_000)
    assert [c[0] for c in rec.calls] == ["a:on_error", "a:on_end"]
    assert "broken on purpose" in rec.calls[0][1]
    assert reported and reported[0][0] == "a"  # the window's error dialog still hears of it


def test_a_request_waits_until_the_panel_is_shown(setup, qtbot):
    _jobs, owner, slot, _loading = setup
    started = []
    slot.request(lambda: started.append(1))
    assert started == []  # hidden: pending
    owner.show()
    slot.activate()
    assert started == [1]
    slot.activate()
    assert started == [1]  # once
    slot.request(lambda: started.append(2))  # shown: at once
    assert started == [1, 2]
