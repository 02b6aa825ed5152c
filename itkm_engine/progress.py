"""Progress events, cancellation and log messages for long engine jobs.

The engine never prints as an API.  A long function takes a :class:`Reporter`; it calls
``reporter.update(...)`` as it goes, ``reporter.log(...)`` for messages, and
``reporter.check()`` at least once per batch, which raises :class:`Cancelled` once cancel was
requested.  The CLI subscribes with a printing callback, the app with a Qt signal bridge, tests
with a list.

``Reporter.child(lo, hi)`` maps a sub-job's own 0..1 fraction into ``lo..hi`` of the parent's,
so nested steps (round -> stage -> epoch) report one overall fraction and one ETA.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from .errors import Cancelled

__all__ = ["ProgressEvent", "CancelToken", "Reporter", "Cancelled", "LogMessage"]


@dataclass(frozen=True)
class ProgressEvent:
    """One progress update.  All fields but ``job`` are optional."""

    job: str
    stage: str = ""
    message: str = ""
    round: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    fraction: float | None = None  # overall 0..1 for the whole job
    eta_s: float | None = None
    losses: Mapping[str, float] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class LogMessage:
    level: str  # "debug" | "info" | "warning" | "error"
    text: str
    time: float = field(default_factory=time.time)


class CancelToken:
    """Thread-safe cancel flag shared between a job and whoever may cancel it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled on request")


EventCallback = Callable[[ProgressEvent], None]
LogCallback = Callable[[LogMessage], None]


class Reporter:
    """What a long job talks to.  Cheap to call; never raises from callbacks except Cancelled."""

    def __init__(
        self,
        on_event: EventCallback | None = None,
        on_log: LogCallback | None = None,
        cancel: CancelToken | None = None,
        job: str = "job",
        *,
        _lo: float = 0.0,
        _hi: float = 1.0,
        _t0: float | None = None,
    ) -> None:
        self.on_event = on_event
        self.on_log = on_log
        self.cancel = cancel or CancelToken()
        self.job = job
        self._lo, self._hi = _lo, _hi
        self._t0 = time.monotonic() if _t0 is None else _t0

    # -- structure -------------------------------------------------------------------------
    def child(self, lo: float, hi: float, job: str | None = None) -> "Reporter":
        """A reporter whose fraction 0..1 maps to ``lo..hi`` of this one's."""
        span = self._hi - self._lo
        return Reporter(
            self.on_event,
            self.on_log,
            self.cancel,
            job or self.job,
            _lo=self._lo + span * lo,
            _hi=self._lo + span * hi,
            _t0=self._t0,
        )

    # -- reporting -------------------------------------------------------------------------
    def update(self, fraction: float | None = None, **fields) -> None:
        """Emit a :class:`ProgressEvent`; ``fraction`` is local (0..1 of this reporter's span)."""
        overall = None
        eta = None
        if fraction is not None:
            fraction = min(max(float(fraction), 0.0), 1.0)
            overall = self._lo + (self._hi - self._lo) * fraction
            elapsed = time.monotonic() - self._t0
            if overall > 1e-3:
                eta = max(elapsed / overall - elapsed, 0.0)
        if self.on_event is not None:
            self.on_event(ProgressEvent(job=self.job, fraction=overall, eta_s=eta, **fields))

    def forward(self, event: ProgressEvent) -> None:
        """Pass on an event of a job that runs elsewhere on this reporter's behalf (a child
        process): its ``fraction`` (0..1 of that job) is mapped into this reporter's span, the
        rest is passed on as it came."""
        if self.on_event is None:
            return
        if event.fraction is not None and (self._lo, self._hi) != (0.0, 1.0):
            event = replace(event, fraction=self._lo + (self._hi - self._lo) * event.fraction)
        self.on_event(event)

    def log(self, text: str, level: str = "info") -> None:
        if self.on_log is not None:
            self.on_log(LogMessage(level, text))

    def warning(self, text: str) -> None:
        self.log(text, "warning")

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancel was requested.  Call once per batch."""
        self.cancel.raise_if_cancelled()

    @property
    def cancelled(self) -> bool:
        return self.cancel.cancelled


def null_reporter() -> Reporter:
    return Reporter()
