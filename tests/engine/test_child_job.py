"""Heavy jobs in a child process (``itkm_engine.child_job`` / ``python -m itkm_engine.worker``):
the JSON-lines protocol, cancel escalation, a parent that goes away, and children that die --
out of memory, a CUDA error, kill -9 -- leaving the workspace writable and the round resumable.

The worker honours its test hooks (``ITKM_WORKER_FAULT``, the ``test-count`` job) only under
pytest, which sets ``PYTEST_CURRENT_TEST`` for the child too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from itkm_engine.child_job import ChildDiedError, ChildJobError, run_child, worker_command
from itkm_engine.records import RoundResult
from itkm_engine.errors import Cancelled
from itkm_engine.jobs import JobRunner, JobState
from itkm_engine.progress import Reporter
from itkm_engine.workspace import Workspace


def _reporter():
    events, logs = [], []
    return Reporter(events.append, logs.append, job="t"), events, logs


def test_events_logs_and_result_cross_the_pipe():
    rep, events, logs = _reporter()
    assert run_child("test-count", ".", {"n": 5}, reporter=rep) == 5
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert events[-1].stage == "count" and events[-1].fraction == pytest.approx(1.0)
    assert events[-1].losses == {"loss": pytest.approx(0.2)}
    texts = [m.text for m in logs]
    assert "counting to 5" in texts
    # a library printing to stdout lands in the log, not in the protocol
    assert "a line on stdout that must not break the protocol" in texts


def test_fraction_maps_into_a_child_reporter_span():
    rep, events, _ = _reporter()
    run_child("test-count", ".", {"n": 2}, reporter=rep.child(0.5, 1.0))
    assert events[0].fraction == pytest.approx(0.75) and events[-1].fraction == pytest.approx(1.0)


def test_cancel_message_stops_the_child_within_a_step():
    with JobRunner() as runner:
        h = runner.submit(run_child, "test-count", ".", {"n": 10_000, "sleep_s": 0.01})
        t0 = time.monotonic()
        while h.progress is None and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        assert h.progress is not None
        t1 = time.monotonic()
        h.cancel()
        assert h.wait(10)
    assert h.state is JobState.CANCELLED
    assert time.monotonic() - t1 < 2.0  # the cancel message, not the SIGTERM grace


def test_a_child_that_ignores_cancel_gets_sigterm_then_sigkill():
    with JobRunner() as runner:
        logs = []
        h = runner.submit(run_child, "test-count", ".", {"n": 10_000, "sleep_s": 0.01, "ignore_cancel": True,
                                                         "ignore_term": True},
                          cancel_grace_s=0.3, term_grace_s=0.3, on_log=logs.append)
        t0 = time.monotonic()
        while h.progress is None and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        h.cancel()
        assert h.wait(15)
    assert h.state is JobState.CANCELLED  # the user asked to stop: a kill is still a cancel
    texts = " ".join(m.text for m in logs)
    assert "terminating it" in texts and "killing it" in texts


def test_child_exits_when_the_parent_goes_away():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_root())] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    proc = subprocess.Popen(worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    proc.stdin.write(json.dumps({"kind": "test-count", "workspace": ".", "params": {"n": 100_000}}) + "\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["type"] in ("log", "event")  # it runs
    proc.stdin.close()  # what a dead parent looks like from the child
    try:
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(x) for x in proc.stdout.read().splitlines() if x.strip()]
    assert lines[-1]["type"] == "cancelled" and proc.returncode == 0


def test_user_error_in_the_child_keeps_its_message():
    rep, _, _ = _reporter()
    with pytest.raises(ChildJobError, match="unknown job kind 'nope'"):
        run_child("nope", ".", reporter=rep)


@pytest.mark.parametrize("fault, died, words", [
    ("oom", False, "ran out of memory"),
    ("cuda", False, "GPU failed"),
    ("abort", True, "SIGABRT"),
    ("kill", True, "SIGKILL"),
])
def test_a_dying_child_is_one_clear_error_with_its_last_log_lines(monkeypatch, fault, died, words):
    monkeypatch.setenv("ITKM_WORKER_FAULT", f"{fault}@count")
    rep, _, _ = _reporter()
    with pytest.raises(ChildJobError) as info:
        run_child("test-count", ".", {"n": 3}, reporter=rep)
    assert isinstance(info.value, ChildDiedError) is died
    msg = str(info.value)
    assert words in msg and "resume" in msg
    assert "test fault" in (msg + info.value.details)  # the child's last lines travel with it


# -- training in a child: the writer lock is lent and taken back; a killed round resumes -------------

#: The worker's training request (train_request.TrainRequest as JSON): the tiny preset on the CPU.
TINY = {"request": {"preset": "tiny", "device": "cpu", "rounds": 1}}


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def test_training_in_a_child_lends_the_writer_lock_and_takes_it_back(fresh_ws):

    rep, events, _ = _reporter()
    seen_readonly = []
    on_event = rep.on_event
    rep.on_event = lambda e: (seen_readonly.append(ws.readonly), on_event(e))
    with Workspace.open(fresh_ws) as ws:
        results = run_child("train", ws, TINY, reporter=rep)
        assert not ws.readonly and ws.writer_info().pid == os.getpid()
        assert [r.status for r in ws.rounds()] == ["done"]
    assert all(seen_readonly) and seen_readonly  # the parent read only while the child wrote
    assert isinstance(results[0], RoundResult) and results[0].checkpoint.exists()
    assert {"stage1", "stage2", "stage3"} <= {e.stage for e in events}


def test_a_killed_training_child_leaves_the_round_resumable(fresh_ws, monkeypatch):

    monkeypatch.setenv("ITKM_WORKER_FAULT", "kill@stage2")
    rep, _, _ = _reporter()
    with Workspace.open(fresh_ws) as ws:
        with pytest.raises(ChildDiedError, match="SIGKILL"):
            run_child("train", ws, TINY, reporter=rep)
        assert not ws.readonly and ws.writer_info().pid == os.getpid()  # took the stale lock back
        assert [r.status for r in ws.rounds()] == ["running"]  # unfinished, not failed: resumable
        monkeypatch.delenv("ITKM_WORKER_FAULT")
        results = run_child("train", ws, TINY, reporter=rep)
        assert [r.round for r in results] == [1]  # the same round, resumed
        assert [r.status for r in ws.rounds()] == ["done"]


def test_cancel_of_a_training_child_stays_resumable(fresh_ws):

    with Workspace.open(fresh_ws) as ws, JobRunner() as runner:
        h = runner.submit(run_child, "train", ws, TINY)
        t0 = time.monotonic()
        while (h.progress is None or h.progress.stage != "stage1") and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        h.cancel()
        assert h.wait(60)
        assert h.state is JobState.CANCELLED
        assert not ws.readonly
        assert ws.rounds()[-1].status in ("cancelled", "running")
    with pytest.raises(Cancelled):  # a cancel before the start never spawns anything
        rep, _, _ = _reporter()
        rep.cancel.cancel()
        run_child("test-count", ".", reporter=rep)


def test_the_job_machinery_imports_no_torch():
    """Running jobs must not pull torch into the GUI process (it is what made the window stall)."""
    code = ("import sys, itkm_engine.child_job, itkm_engine.worker, itkm_app.jobs, itkm_app.panels.training; "
            "print(sorted(m for m in ('torch', 'umap', 'faiss') if m in sys.modules))")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(_root())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_lend_writer_reads_meanwhile_and_takes_the_lock_back(fresh_ws):
    from itkm_engine.errors import ReadOnlyWorkspaceError

    with Workspace.open(fresh_ws) as ws:
        n = ws.image_count()
        with ws.lend_writer():
            assert ws.readonly and ws.image_count() == n  # still reads
            with Workspace.open(fresh_ws) as other:  # another process could take the lock now
                other.set_meta("lent", "yes")
            assert ws.get_meta("lent") == "yes"  # and this side sees its commits
            with pytest.raises(ReadOnlyWorkspaceError):
                ws.set_meta("x", 1)
        assert not ws.readonly and ws.writer_info().pid == os.getpid()
        ws.set_meta("x", 1)
    with Workspace.open(fresh_ws, readonly=True) as ro, pytest.raises(ReadOnlyWorkspaceError):
        with ro.lend_writer():
            pass
