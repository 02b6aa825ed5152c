"""A Qt-free job runner: long engine work on worker threads, with state, progress and cancel.

Why this exists (see ``docs/adr/0002-jobs-and-threads.md``): every long engine function already
takes a :class:`~itkm_engine.progress.Reporter`.  This module is the one piece that turns "call
``fn(..., reporter=...)``" into a *job* someone else can watch and stop: it owns the worker
threads, the cancel token, the last progress event, the result or the exception with its
traceback, and the done callbacks.  It knows nothing about Qt, so the CLI, scripts and tests use
exactly the same machinery as the desktop app; the app adds one small bridge
(``itkm_app/jobs.py``) that marshals the callbacks below onto the GUI thread as signals.

Modelled on Orange3's ``Orange/widgets/utils/concurrent.py`` (a plain executor plus a task state
object), minus the Qt parts.

Threading contract:
    * ``on_event`` / ``on_log`` subscribers and done callbacks are called **on the worker
      thread** (done callbacks registered after completion run immediately on the caller's
      thread).  They must be quick and must not touch GUI objects; a GUI bridge queues them.
    * A subscriber that raises is logged through the job's own log channel and otherwise
      ignored: a broken listener must never kill a training run.
    * :class:`~itkm_engine.errors.Cancelled` raised by the job (normally by
      ``reporter.check()``) ends the job in :attr:`JobState.CANCELLED`, not ``FAILED``.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import threading
import traceback as _traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from .errors import Cancelled
from .progress import CancelToken, EventCallback, LogCallback, LogMessage, ProgressEvent, Reporter

__all__ = ["JobState", "JobHandle", "JobRunner", "JobCancelledError", "Cancelled"]

_log = logging.getLogger(__name__)
_ids = itertools.count(1)


class JobState(str, enum.Enum):
    """Life cycle of a job: pending -> running -> done | failed | cancelled."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class JobCancelledError(RuntimeError):
    """Raised by :meth:`JobHandle.result` when the job was cancelled (there is no result)."""


DoneCallback = Callable[["JobHandle"], None]


class JobHandle:
    """What a caller keeps of a submitted job.  Thread-safe.

    ``progress`` is the last :class:`ProgressEvent`; ``exception`` / ``traceback`` are set when
    the job failed; :meth:`result` blocks (optionally with a timeout) and re-raises the job's
    exception, or raises :class:`JobCancelledError` for a cancelled job.
    """

    def __init__(self, name: str, cancel_token: CancelToken | None = None) -> None:
        self.id: int = next(_ids)
        self.name = name
        self.token = cancel_token or CancelToken()
        self._lock = threading.RLock()
        self._state = JobState.PENDING
        self._progress: ProgressEvent | None = None
        self._result: Any = None
        self._exception: BaseException | None = None
        self._traceback: str = ""
        self._done = threading.Event()
        self._callbacks: list[DoneCallback] = []
        self._event_subs: list[EventCallback] = []
        self._log_subs: list[LogCallback] = []
        self._future: Future | None = None

    # -- public state ----------------------------------------------------------------------
    @property
    def state(self) -> JobState:
        return self._state

    @property
    def progress(self) -> ProgressEvent | None:
        """The last progress event the job reported (``None`` before the first)."""
        return self._progress

    @property
    def exception(self) -> BaseException | None:
        return self._exception

    @property
    def traceback(self) -> str:
        """Formatted traceback of the failure ("" unless ``state`` is failed)."""
        return self._traceback

    @property
    def cancel_requested(self) -> bool:
        return self.token.cancelled

    def done(self) -> bool:
        return self._done.is_set()

    def __repr__(self) -> str:
        return f"<JobHandle #{self.id} {self.name!r} {self._state.value}>"

    # -- control ---------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Ask the job to stop.

        A pending job is dropped at once (state cancelled).  A running job gets its cancel token
        set and stops at its next ``reporter.check()``; it then ends cancelled.  Returns ``False``
        only when the job had already finished.
        """
        with self._lock:
            if self._state.finished:
                return False
            self.token.cancel()
            fut = self._future
            dropped = self._state is JobState.PENDING and fut is not None and fut.cancel()
        if dropped:
            self._finish(JobState.CANCELLED)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished; ``True`` if it did within ``timeout``."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The job's return value; re-raises its exception, or :class:`JobCancelledError`."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.name!r} still {self._state.value} after {timeout} s")
        if self._state is JobState.CANCELLED:
            raise JobCancelledError(f"job {self.name!r} was cancelled")
        if self._exception is not None:
            raise self._exception
        return self._result

    def add_done_callback(self, fn: DoneCallback) -> None:
        """Call ``fn(handle)`` once the job has finished (at once if it already has)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        self._call(fn)

    def subscribe(self, on_event: EventCallback | None = None, on_log: LogCallback | None = None) -> None:
        """Receive the job's progress events / log messages from now on (on the worker thread)."""
        with self._lock:
            if on_event is not None:
                self._event_subs.append(on_event)
            if on_log is not None:
                self._log_subs.append(on_log)

    # -- worker side -------------------------------------------------------------------------
    def _emit_event(self, event: ProgressEvent) -> None:
        self._progress = event
        for cb in list(self._event_subs):
            try:
                cb(event)
            except Exception as exc:  # noqa: BLE001 - a broken listener must not kill the job
                self._listener_failed(cb, exc)

    def _emit_log(self, message: LogMessage) -> None:
        for cb in list(self._log_subs):
            try:
                cb(message)
            except Exception as exc:  # noqa: BLE001
                _log.exception("log subscriber %r of job %r failed: %s", cb, self.name, exc)

    def _listener_failed(self, cb: Callable, exc: Exception) -> None:
        _log.exception("progress subscriber %r of job %r failed", cb, self.name)
        self._emit_log(LogMessage("warning", f"progress listener failed in job {self.name!r}: {exc!r}"))

    def _reporter(self) -> Reporter:
        return Reporter(self._emit_event, self._emit_log, self.token, job=self.name)

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        with self._lock:
            if self._state is not JobState.PENDING:  # cancelled before it started
                return
            start = not self.token.cancelled
            if start:
                self._state = JobState.RUNNING
        if not start:
            self._finish(JobState.CANCELLED)
            return
        try:
            result = fn(*args, reporter=self._reporter(), **kwargs)
        except Cancelled:
            self._finish(JobState.CANCELLED)
        except BaseException as exc:  # noqa: BLE001 - captured for the caller, never swallowed
            self._exception = exc
            self._traceback = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
            self._finish(JobState.FAILED)
        else:
            self._result = result
            self._finish(JobState.DONE)

    def _finish(self, state: JobState) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._state = state
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            self._call(cb)

    def _call(self, fn: DoneCallback) -> None:
        try:
            fn(self)
        except Exception:  # noqa: BLE001 - a broken callback must not hide the job's own outcome
            _log.exception("done callback %r of job %r failed", fn, self.name)


def _lower_priority(nice: int) -> None:
    """Worker-thread initializer: raise this thread's nice value (best effort, Linux only)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except OSError:  # not permitted / not supported: run at normal priority
        pass


class JobRunner:
    """Runs ``fn(*args, reporter=Reporter(...), **kwargs)`` on a small pool of worker threads.

    ``max_workers=1`` (the default) serialises jobs: right for anything that writes the
    workspace (ingest, training, export), which must not overlap.  A second runner with more
    workers suits read-only work (projection, queries).

    ``nice`` lowers the scheduling priority of the worker threads (Linux: per thread; threads
    and processes they start -- torch's OpenMP pool, data-loader workers -- inherit it): right
    for batch work that must yield to other processes.  Beware in a process whose other threads
    run Python (a GUI): a niced worker that is preempted while holding the GIL waits longer for
    a core, and the other threads wait for the GIL meanwhile.
    """

    def __init__(self, max_workers: int = 1, name: str = "itkm-job", *, nice: int = 0) -> None:
        self.nice = int(nice)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name,
                                        initializer=_lower_priority, initargs=(self.nice,))
        self._lock = threading.Lock()
        self._jobs: list[JobHandle] = []
        self._closed = False

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        on_event: EventCallback | None = None,
        on_log: LogCallback | None = None,
        on_done: DoneCallback | None = None,
        cancel_token: CancelToken | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Queue a job.  Subscribers given here see every event, including the first one."""
        with self._lock:
            if self._closed:
                raise RuntimeError("JobRunner is shut down")
            handle = JobHandle(name or getattr(fn, "__name__", "job"), cancel_token)
            handle.subscribe(on_event, on_log)
            if on_done is not None:
                handle.add_done_callback(on_done)
            self._jobs.append(handle)
            handle.add_done_callback(self._forget)
            handle._future = self._pool.submit(handle._run, fn, args, kwargs)
        return handle

    def _forget(self, handle: JobHandle) -> None:
        with self._lock:
            if handle in self._jobs:
                self._jobs.remove(handle)

    def active(self) -> list[JobHandle]:
        """Jobs submitted and not yet finished (pending or running), oldest first."""
        with self._lock:
            return list(self._jobs)

    def cancel_all(self) -> None:
        for h in self.active():
            h.cancel()

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait for every active job; ``True`` if all finished within ``timeout``."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        for h in self.active():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not h.wait(left):
                return False
        return True

    def shutdown(self, *, cancel: bool = True, wait: bool = True) -> None:
        """Stop accepting jobs; optionally cancel the active ones; optionally wait for them."""
        with self._lock:
            self._closed = True
        if cancel:
            self.cancel_all()
        self._pool.shutdown(wait=wait, cancel_futures=cancel)

    def __enter__(self) -> "JobRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
