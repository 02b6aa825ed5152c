"""One task at a time per panel, in the manner of Orange3's ``ConcurrentWidgetMixin``.

A panel's own background work -- the Gallery's query, the Clusters view's map, the Identities
table, a training run, an ingest -- goes through its :class:`TaskSlot` (``Panel.task``):

- :meth:`TaskSlot.start` submits a job to the window's :class:`~itkm_app.jobs.JobManager` (the one
  Qt bridge, so the status bar, the log, the error dialog and the progress coalescing work as for
  any job) and makes it the slot's task.  A task still running is *superseded*: cancelled and
  forgotten -- none of its callbacks run any more, so a stale result never reaches the panel.
- ``on_done(result)``, ``on_error(message, traceback)``, ``on_cancel()``, ``on_end()`` (after any
  of those three), ``on_progress(event)`` and ``on_events(events)`` are called on the GUI thread,
  for the current task only.  The panel's state follows :meth:`busy` / :attr:`job`.
- :meth:`cancel` asks the current task to stop; it stays the slot's task until it has stopped,
  and its ``on_cancel`` / ``on_end`` run then (Training's Stop says "Stopped").
  :meth:`discard` cancels and forgets it at once (its data is stale: another workspace, a new
  model).
- :meth:`request` is lazy loading: start now when the panel is visible, else the next time it is
  shown (:meth:`activate`, called by ``Panel.activate``).

The work itself is a plain function of ``itkm_app.tasks``, run on a job thread; it never touches
a widget.  Differences from Orange3: the job manager, not the slot, owns the threads (a panel's
task shares the ``read`` / ``write`` runners with every other job), and a cancelled task's end is
still reported unless it was superseded.
"""

from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import QObject

from .jobs import JobManager, QtJob

__all__ = ["TaskSlot"]


class TaskSlot(QObject):
    """The one task of ``owner`` (a panel).

    ``begin_loading`` / ``end_loading`` are called around each job started with
    ``loading=True``, superseded or not (a panel is "loading" while one runs; screenshots wait
    for it)."""

    def __init__(self, jobs: JobManager, owner: QObject, *, begin_loading: Callable[[], None] | None = None,
                 end_loading: Callable[[], None] | None = None) -> None:
        super().__init__(owner)
        self._jobs = jobs
        self._owner = owner
        self._begin_loading = begin_loading
        self._end_loading = end_loading
        self._job: QtJob | None = None
        self._pending: Callable[[], Any] | None = None

    # -- state -------------------------------------------------------------------------------------
    @property
    def job(self) -> QtJob | None:
        """The current task's job (``None`` when idle)."""
        return self._job

    def busy(self) -> bool:
        return self._job is not None

    # -- starting and stopping ----------------------------------------------------------------------
    def start(self, name: str, fn: Callable[..., Any], *args: Any, kind: str = "read", loading: bool = True,
              on_done: Callable[[Any], None] | None = None,
              on_error: Callable[[str, str], None] | None = None,
              on_cancel: Callable[[], None] | None = None,
              on_end: Callable[[], None] | None = None,
              on_progress: Callable[[Any], None] | None = None,
              on_events: Callable[[list], None] | None = None,
              **kwargs: Any) -> QtJob:
        """Run ``fn(*args, reporter=..., **kwargs)`` as job ``name`` on the ``kind`` runner, as this
        slot's task, superseding the one running.  Other keywords (``report_errors``, ``quiet``)
        go to :meth:`JobManager.submit`."""
        self.discard()
        job = self._jobs.submit(name, fn, *args, kind=kind, **kwargs)
        self._job = job
        if loading and self._begin_loading is not None:
            self._begin_loading()
            if self._end_loading is not None:
                job.ended.connect(self._end_loading)
        # connected after the job manager's own handlers, as a panel's were: its error dialog and
        # its end (the status bar, the window's model state) come first
        if on_progress is not None:
            job.progress.connect(lambda e: self._job is job and on_progress(e))
        if on_events is not None:
            job.events.connect(lambda ev: self._job is job and on_events(ev))
        if on_done is not None:
            job.finished.connect(lambda r: self._job is job and on_done(r))
        if on_error is not None:
            job.failed.connect(lambda msg, tb: self._job is job and on_error(msg, tb))
        if on_cancel is not None:
            job.cancelled.connect(lambda: self._job is job and on_cancel())
        job.ended.connect(lambda: self._ended(job, on_end))
        return job

    def _ended(self, job: QtJob, on_end: Callable[[], None] | None) -> None:
        if self._job is not job:  # superseded or discarded: its end is nobody's business
            return
        self._job = None
        if on_end is not None:
            on_end()

    def cancel(self) -> None:
        """Ask the current task to stop (within a batch); its ``on_cancel`` and ``on_end`` run when
        it has."""
        if self._job is not None:
            self._job.cancel()

    def discard(self) -> None:
        """Cancel the current task and forget it now (no callback of it runs any more); drop a
        pending :meth:`request` too."""
        self._pending = None
        job, self._job = self._job, None
        if job is not None:
            job.cancel()

    # -- lazy loading ------------------------------------------------------------------------------
    def request(self, start: Callable[[], Any]) -> None:
        """Call ``start`` (which starts this slot's task) now when the owner is visible, else at
        the next :meth:`activate`.  A task running meanwhile computes stale data: discarded."""
        self.discard()
        if self._owner.isVisible():
            start()
        else:
            self._pending = start

    def activate(self) -> None:
        """The owner became visible: run a pending :meth:`request`."""
        start, self._pending = self._pending, None
        if start is not None:
            start()
