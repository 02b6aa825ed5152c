"""The Qt-free job runner: states, results, events, cancel, captured failures."""

from __future__ import annotations

import threading
import time

import pytest

from itkm_engine.errors import ItkmError
from itkm_engine.jobs import JobCancelledError, JobRunner, JobState
from itkm_engine.progress import ProgressEvent


def _steps(n, *, reporter, delay=0.0, gate: threading.Event | None = None):
    if gate is not None:
        gate.wait(5)
    for i in range(n):
        reporter.check()
        reporter.update((i + 1) / n, stage="work", step=i + 1, steps=n, losses={"l": float(i)})
        reporter.log(f"step {i + 1}")
        if delay:
            time.sleep(delay)
    return n * 10


def test_done_result_events_and_logs():
    events: list[ProgressEvent] = []
    logs = []
    done = []
    with JobRunner() as runner:
        h = runner.submit(_steps, 4, name="count", on_event=events.append, on_log=logs.append,
                          on_done=done.append)
        assert h.result(timeout=5) == 40
    assert h.state is JobState.DONE
    assert h.exception is None and h.traceback == ""
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert all(e.job == "count" for e in events)
    assert events[-1].fraction == pytest.approx(1.0)
    assert h.progress is events[-1]
    assert [m.text for m in logs] == ["step 1", "step 2", "step 3", "step 4"]
    assert done == [h]
    # a callback added after completion runs at once
    late = []
    h.add_done_callback(late.append)
    assert late == [h]


def test_states_pending_running_done():
    gate = threading.Event()
    with JobRunner(max_workers=1) as runner:
        first = runner.submit(_steps, 1, gate=gate)
        second = runner.submit(_steps, 1)
        deadline = time.monotonic() + 5
        while first.state is not JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.005)
        assert first.state is JobState.RUNNING
        assert second.state is JobState.PENDING
        assert runner.active() == [first, second]
        gate.set()
        assert runner.wait_all(timeout=5)
    assert first.state is second.state is JobState.DONE
    assert runner.active() == []


def test_cancel_running_job_stops_at_next_check():
    started = threading.Event()
    seen = []

    def on_event(e):
        seen.append(e.step)
        started.set()

    with JobRunner() as runner:
        h = runner.submit(_steps, 10_000, delay=0.001, on_event=on_event)
        assert started.wait(5)
        assert h.cancel() is True
        assert h.wait(5)
    assert h.state is JobState.CANCELLED
    assert h.cancel_requested
    assert len(seen) < 10_000
    with pytest.raises(JobCancelledError):
        h.result()
    assert h.cancel() is False  # already finished


def test_cancel_pending_job_never_runs():
    gate = threading.Event()
    ran = []
    with JobRunner(max_workers=1) as runner:
        blocker = runner.submit(_steps, 1, gate=gate)
        pending = runner.submit(lambda reporter: ran.append(1))
        assert pending.cancel()
        assert pending.state is JobState.CANCELLED
        gate.set()
        blocker.result(timeout=5)
    assert ran == []


def test_exception_is_captured_with_traceback():
    def boom(*, reporter):
        reporter.update(0.5, stage="half")
        raise ItkmError("the folder is not a workspace")

    done = threading.Event()
    with JobRunner() as runner:
        h = runner.submit(boom, on_done=lambda _h: done.set())
        assert done.wait(5)
    assert h.state is JobState.FAILED
    assert isinstance(h.exception, ItkmError)
    assert "boom" in h.traceback and "the folder is not a workspace" in h.traceback
    assert h.progress is not None and h.progress.stage == "half"
    with pytest.raises(ItkmError, match="not a workspace"):
        h.result()


def test_broken_listener_does_not_kill_the_job():
    logs = []

    def bad(_event):
        raise ValueError("listener bug")

    with JobRunner() as runner:
        h = runner.submit(_steps, 2, on_event=bad, on_log=logs.append)
        assert h.result(timeout=5) == 20
    assert any("listener failed" in m.text and m.level == "warning" for m in logs)


def test_result_timeout_and_shutdown_cancels():
    started = threading.Event()

    def forever(*, reporter):
        started.set()
        while True:
            reporter.check()
            time.sleep(0.002)

    runner = JobRunner()
    h = runner.submit(forever)
    assert started.wait(5)
    with pytest.raises(TimeoutError):
        h.result(timeout=0.01)
    runner.shutdown(cancel=True, wait=True)
    assert h.state is JobState.CANCELLED
    with pytest.raises(RuntimeError):
        runner.submit(forever)


@pytest.mark.skipif(not hasattr(__import__("os"), "setpriority"), reason="needs os.setpriority")
def test_nice_lowers_worker_priority_only():
    import os

    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def my_nice(*, reporter):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    with JobRunner(nice=5) as runner:
        worker_nice = runner.submit(my_nice).result(timeout=5)
    with JobRunner() as runner:
        plain_nice = runner.submit(my_nice).result(timeout=5)
    assert worker_nice == min(19, main_nice + 5)
    assert plain_nice == main_nice
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
