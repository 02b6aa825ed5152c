"""Progress events, cancellation and log messages for long engine jobs.

The engine never prints as an API.  A long function takes a :class:`Reporter`; it calls
``reporter.update(...)`` as it goes, ``reporter.log(...)`` for messages, and
``reporter.check()`` at least once per batch, which raises :class:`Cancelled` once cancel was
requested.  The CLI subscribes with a printing callback, the app with a Qt signal bridge, tests
with a list.

``Reporter.child(lo, hi)`` maps a sub-job's own 0..1 fraction into ``lo..hi`` of the parent's,
so nested steps (round -> stage -> epoch) report one overall fraction and one time left: every
reporter of a job shares the job's :class:`~itkm_engine.eta.Eta` (``Reporter.plan`` gives it the
job's parts and their measured costs).  ``child(..., part=NAME)`` opens a *part* (a stage of a
round, an extraction): events from inside it carry ``part`` and ``part_fraction`` (0..1 of that
part, never going back), so a stage bar follows its own part and not the sub-steps' own counts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from .errors import Cancelled
from .eta import Eta, Part

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
    eta_s: float | None = None  # seconds left of the whole job (itkm_engine/eta.py); None: no basis yet
    part: str = ""  # the part of the job this event is inside ("stage1", "extract", ...; Reporter.child)
    part_fraction: float | None = None  # 0..1 of that part
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
        _eta: Eta | None = None,
        _part: tuple[str, float, float] | None = None,
    ) -> None:
        self.on_event = on_event
        self.on_log = on_log
        self.cancel = cancel or CancelToken()
        self.job = job
        self._lo, self._hi = _lo, _hi
        self.eta = _eta if _eta is not None else Eta()
        self._part = _part

    # -- structure -------------------------------------------------------------------------
    def child(self, lo: float, hi: float, job: str | None = None, *, part: str | None = None) -> "Reporter":
        """A reporter whose fraction 0..1 maps to ``lo..hi`` of this one's; with ``part``, the
        span is a part of the job of that name (events inside it say so)."""
        span = self._hi - self._lo
        a, b = self._lo + span * lo, self._lo + span * hi
        return Reporter(
            self.on_event,
            self.on_log,
            self.cancel,
            job or self.job,
            _lo=a,
            _hi=b,
            _eta=self.eta,
            _part=(part, a, b) if part else self._part,
        )

    def plan(self, parts: list[Part]) -> None:
        """Give the job's time-left estimator its parts, spans in this reporter's own 0..1."""
        span = self._hi - self._lo
        self.eta.set_plan([Part(p.name, self._lo + span * p.lo, self._lo + span * p.hi, p.units, p.expected_s,
                                p.like, p.ratio) for p in parts])

    # -- reporting -------------------------------------------------------------------------
    def update(self, fraction: float | None = None, **fields) -> None:
        """Emit a :class:`ProgressEvent`; ``fraction`` is local (0..1 of this reporter's span)."""
        overall = None
        eta = None
        part = self._part
        if fraction is not None:
            fraction = min(max(float(fraction), 0.0), 1.0)
            overall = self._lo + (self._hi - self._lo) * fraction
            eta = self.eta.update(overall, part[0] if part else None)
        if self.on_event is not None:
            if part is not None and overall is not None:
                fields.setdefault("part", part[0])
                fields.setdefault("part_fraction", min(max((overall - part[1]) / max(part[2] - part[1], 1e-12), 0.0), 1.0))
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
