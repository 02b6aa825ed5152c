"""The one place where the app runs engine work off the GUI thread.

Engine jobs run on :class:`itkm_engine.jobs.JobRunner` worker threads (Qt-free).  This module
bridges each job to Qt: a :class:`QtJob` receives the job's callbacks *on the worker thread*,
queues them, and re-emits them as signals *on the GUI thread*.  Widgets only ever see signals;
workers never touch a widget.

Progress is coalesced: however fast a job reports (a training step loop can report hundreds of
times a second), the GUI thread gets at most ~30 deliveries a second, each carrying the latest
event (``progress``) and every event since the previous delivery (``events``, for curves that
must not lose points).  So a chatty job can never flood the event loop.

Three runners: ``write`` (one worker: ingest, training -- anything that writes the workspace
must not overlap), ``read`` (two workers: projection, queries, identities, table reads, export)
and ``background`` (one worker: start-up warm-ups such as importing torch and compiling UMAP).
See ``docs/adr/0002-jobs-and-threads.md``.

The functions jobs run are in ``itkm_app/tasks.py``; a panel runs its own work one task at a
time through ``itkm_app/task_slot.py``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot

from itkm_engine.errors import ItkmError
from itkm_engine.jobs import JobHandle, JobRunner, JobState
from itkm_engine.progress import LogMessage, ProgressEvent

__all__ = ["QtJob", "JobManager", "describe_exception", "failure_details", "MIN_INTERVAL_S"]

#: Minimum time between two deliveries of a job's progress to the GUI thread (~30 per second).
MIN_INTERVAL_S = 1.0 / 30.0
#: GIL switch interval while the app runs (see JobManager.__init__).
SWITCH_INTERVAL_S = 0.002
#: Scheduling priority of job threads relative to the GUI thread (Linux nice increment).  0 on
#: purpose: measured under a saturated CPU, nicer workers made the GUI stall *longer* -- a
#: preempted worker holding the GIL then waits longer for a core, and the GUI thread waits for
#: the GIL (priority inversion).  See docs/adr/0002-jobs-and-threads.md.
WORKER_NICE = 0
#: Events kept between deliveries (a job that outruns the GUI by more than this loses the oldest).
MAX_PENDING_EVENTS = 5000


def describe_exception(exc: BaseException | None) -> str:
    """A message for the user: an :class:`ItkmError` speaks for itself; anything else is a bug."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, ItkmError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: close other programs or use a smaller preset / batch size"
    text = str(exc) or type(exc).__name__
    return f"unexpected error ({type(exc).__name__}): {text}"


def failure_details(handle: JobHandle) -> str:
    """What "Show Details" shows: a child process's own traceback and last log lines when the job
    ran in one (``itkm_engine.child_job.ChildJobError.details``), else this process's traceback."""
    details = getattr(handle.exception, "details", "")
    return f"{details}\n\n{handle.traceback}" if details else handle.traceback


class _Wake(QObject):
    """Emitted from a worker thread; the connection to the GUI-side slot is queued."""

    wake = Signal()


class QtJob(QObject):
    """One engine job as seen from the GUI thread.

    Signals (all emitted on the GUI thread):
        progress(ProgressEvent): the latest event, at most ~30 times a second
        events(list): every ProgressEvent since the previous delivery, oldest first
        log(LogMessage): each message the job logged
        finished(object): the result, once, when the job completed
        failed(str, str): user message and traceback, once, when the job raised
        cancelled(): once, when the job stopped on request
        ended(): once, after finished/failed/cancelled
    """

    progress = Signal(object)
    events = Signal(list)
    log = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str)
    cancelled = Signal()
    ended = Signal()

    def __init__(self, name: str, kind: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.kind = kind
        self.handle: JobHandle | None = None
        self.started_at = time.monotonic()
        self._lock = threading.Lock()
        self._events: deque[ProgressEvent] = deque(maxlen=MAX_PENDING_EVENTS)
        self._logs: deque[LogMessage] = deque(maxlen=MAX_PENDING_EVENTS)
        self._done = False
        self._scheduled = False
        self._delivered_end = False
        self._last_flush = 0.0
        self._waker = _Wake()
        self._waker.wake.connect(self._on_wake, Qt.ConnectionType.QueuedConnection)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._flush)

    # -- state -------------------------------------------------------------------------------
    @property
    def state(self) -> JobState:
        return self.handle.state if self.handle is not None else JobState.PENDING

    @property
    def last_progress(self) -> ProgressEvent | None:
        return self.handle.progress if self.handle is not None else None

    def is_running(self) -> bool:
        return not self._delivered_end

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def __repr__(self) -> str:
        return f"<QtJob {self.name!r} {self.state.value}>"

    # -- worker side (any thread) -------------------------------------------------------------
    def _on_event(self, event: ProgressEvent) -> None:
        with self._lock:
            self._events.append(event)
        self._poke()

    def _on_log(self, message: LogMessage) -> None:
        with self._lock:
            self._logs.append(message)
        self._poke()

    def _on_done(self, _handle: JobHandle) -> None:
        with self._lock:
            self._done = True
        self._poke(force=True)

    def _poke(self, force: bool = False) -> None:
        with self._lock:
            if self._scheduled and not force:
                return
            self._scheduled = True
        try:
            self._waker.wake.emit()
        except RuntimeError:  # the QObject is gone (app shutting down): nothing left to tell
            pass

    # -- GUI side -------------------------------------------------------------------------------
    @Slot()
    def _on_wake(self) -> None:
        with self._lock:
            done = self._done
        wait = MIN_INTERVAL_S - (time.monotonic() - self._last_flush)
        if done or wait <= 0:
            self._timer.stop()
            self._flush()
        elif not self._timer.isActive():
            self._timer.start(max(1, int(wait * 1000)))

    @Slot()
    def _flush(self) -> None:
        with self._lock:
            events = list(self._events)
            logs = list(self._logs)
            self._events.clear()
            self._logs.clear()
            self._scheduled = False
            done = self._done
        self._last_flush = time.monotonic()
        for m in logs:
            self.log.emit(m)
        if events:
            self.events.emit(events)
            self.progress.emit(events[-1])
        if done and not self._delivered_end:
            self._delivered_end = True
            self._emit_outcome()

    def _emit_outcome(self) -> None:
        h = self.handle
        assert h is not None
        if h.state is JobState.DONE:
            self.finished.emit(h._result)
        elif h.state is JobState.CANCELLED:
            self.cancelled.emit()
        else:
            self.failed.emit(describe_exception(h.exception), failure_details(h))
        self.ended.emit()


class JobManager(QObject):
    """Owns the runners; submits jobs; tells the window what is running.

    Signals:
        jobStarted(QtJob), jobEnded(QtJob), busyChanged(bool),
        log(LogMessage) for every message of every job (plus job lifecycle lines),
        error(str, str, str): job name, user message, traceback -- for jobs submitted with
        ``report_errors=True`` (the default); the window shows a dialog.
    """

    jobStarted = Signal(object)
    jobEnded = Signal(object)
    busyChanged = Signal(bool)
    log = Signal(object)
    error = Signal(str, str, str)

    def __init__(self, parent: QObject | None = None, *, read_workers: int = 2) -> None:
        super().__init__(parent)
        # A worker running Python code hands the GIL to a waiting GUI thread after at most this
        # long (CPython's default is 5 ms): the window reacts sooner, jobs lose ~nothing.
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._runners = {
            "write": JobRunner(max_workers=1, name="itkm-write", nice=WORKER_NICE),
            "read": JobRunner(max_workers=read_workers, name="itkm-read", nice=WORKER_NICE),
            # start-up warm-ups (imports, numba JIT): never in the way of the user's own jobs
            "background": JobRunner(max_workers=1, name="itkm-background", nice=WORKER_NICE),
        }
        self._active: list[QtJob] = []

    # -- submit ----------------------------------------------------------------------------------
    def submit(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        kind: str = "read",
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[str, str], None] | None = None,
        on_cancel: Callable[[], None] | None = None,
        report_errors: bool = True,
        quiet: bool = False,
        **kwargs: Any,
    ) -> QtJob:
        """Run ``fn(*args, reporter=..., **kwargs)`` as job ``name`` on the ``kind`` runner.

        ``on_done(result)`` / ``on_error(message, traceback)`` / ``on_cancel()`` are called on
        the GUI thread.  Errors also go to :attr:`error` unless ``report_errors=False`` (for a
        caller that shows its own message).  ``quiet`` keeps routine jobs out of the log.
        """
        runner = self._runners[kind]
        job = QtJob(name, kind, self)
        if on_done is not None:
            job.finished.connect(on_done)
        if on_error is not None:
            job.failed.connect(on_error)
        if on_cancel is not None:
            job.cancelled.connect(on_cancel)
        job.log.connect(self.log)
        job.failed.connect(lambda msg, tb, j=job, rep=report_errors: self._job_failed(j, msg, tb, rep))
        job.cancelled.connect(lambda j=job: self.log.emit(LogMessage("info", f"{j.name}: cancelled")))
        job.ended.connect(lambda j=job: self._job_ended(j))
        was_busy = self.busy()
        self._active.append(job)
        if not quiet:
            self.log.emit(LogMessage("debug", f"{name}: started"))
        job.handle = runner.submit(fn, *args, name=name, on_event=job._on_event, on_log=job._on_log,
                                   on_done=job._on_done, **kwargs)
        job._quiet = quiet
        self.jobStarted.emit(job)
        if not was_busy:
            self.busyChanged.emit(True)
        return job

    def call(self, name: str, fn: Callable[..., Any], *args: Any, on_done=None, kind: str = "read",
             **kwargs: Any) -> QtJob:
        """Run a plain function that takes no reporter (a quick read) as a quiet job."""

        def run(*a, reporter, **kw):
            reporter.check()
            return fn(*a, **kw)

        return self.submit(name, run, *args, kind=kind, on_done=on_done, quiet=True, **kwargs)

    def _job_failed(self, job: QtJob, message: str, tb: str, report: bool) -> None:
        self.log.emit(LogMessage("error", f"{job.name}: {message}"))
        if report:
            self.error.emit(job.name, message, tb)

    def _job_ended(self, job: QtJob) -> None:
        if job in self._active:
            self._active.remove(job)
        if not getattr(job, "_quiet", False) and job.state is JobState.DONE:
            self.log.emit(LogMessage("debug", f"{job.name}: done in {time.monotonic() - job.started_at:.1f} s"))
        self.jobEnded.emit(job)
        if not self.busy():
            self.busyChanged.emit(False)
        job.deleteLater()

    # -- state -----------------------------------------------------------------------------------
    def active(self, kind: str | None = None) -> list[QtJob]:
        return [j for j in self._active if kind is None or j.kind == kind]

    def busy(self, kind: str | None = None) -> bool:
        return bool(self.active(kind))

    def find(self, name: str) -> QtJob | None:
        for j in self._active:
            if j.name == name:
                return j
        return None

    def cancel_all(self) -> None:
        for j in list(self._active):
            j.cancel()

    def wait_idle(self, timeout_s: float, process_events: Callable[[], None] | None = None) -> bool:
        """Wait (pumping the GUI's events) until no job is active; ``True`` if that happened."""
        from PySide6.QtCore import QCoreApplication, QEventLoop

        deadline = time.monotonic() + timeout_s
        pump = process_events or (lambda: QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50))
        while self._active and time.monotonic() < deadline:
            pump()
            time.sleep(0.005)
        return not self._active

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Cancel everything and wait for the workers to stop (closing the window)."""
        self.cancel_all()
        ok = all(r.wait_all(timeout_s) for r in self._runners.values())
        for r in self._runners.values():
            r.shutdown(cancel=True, wait=ok)
        return ok
