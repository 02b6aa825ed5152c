"""Per-stage and overall progress of a job, with an ETA, fed by ProgressEvents."""

from __future__ import annotations

import time
from collections import deque

from PySide6.QtWidgets import QGridLayout, QLabel, QProgressBar, QWidget

from itkm_engine.progress import ProgressEvent
from itkm_engine.vocabulary import STAGE_LABELS

STAGE_NAMES = {
    "extract": "Extracting features",
    "knn": "Neighbour search",
    "encoding": "k-reciprocal encoding",
    "jaccard": "Jaccard distances",
    "dbscan": "DBSCAN",
    **{s.name: s.label for s in STAGE_LABELS.values()},
    "reduce": "Reducing dimensions",
    "neighbors": "Neighbour graph",
    "layout": "UMAP layout",
    "scan": "Scanning folders",
    "headers": "Reading image headers",
    "guess": "Guessing scenarios",
    "demo": "Drawing demo crops",
    "export": "Writing CSV",
    "identities": "Identities",
    "done": "Done",
}


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def format_eta(seconds: float | None) -> str:
    """A time left as a person would say it: rounded, never falsely precise."""
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    if seconds < 10:
        return "a few seconds"
    if seconds < 60:
        return f"about {int(round(seconds / 10.0)) * 10} s"
    if seconds < 3600:
        return f"about {max(1, int(round(seconds / 60.0)))} min"
    return f"about {format_duration(round(seconds / 300.0) * 300)}"


class EtaEstimator:
    """Time left for a whole job from its overall fraction, measured over a recent window.

    The engine's own ``eta_s`` extrapolates from the job's start, which misleads when parts of
    a job take longer than their share of the bar (clustering early in a round, UMAP's layout
    after its quick neighbour search): the first estimate was 7 min for a 3-minute round.  Here
    the rate is the progress of the last :attr:`WINDOW_S` seconds; nothing is shown until the
    job has run :attr:`MIN_ELAPSED_S` seconds and moved :attr:`MIN_FRACTION`, or while the
    fraction has not moved for a while (a phase without progress events).
    """

    WINDOW_S = 30.0
    MIN_ELAPSED_S = 5.0
    MIN_FRACTION = 0.03
    STALE_S = 8.0

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.t0: float | None = None
        self.f0 = 0.0
        self.samples: deque[tuple[float, float]] = deque()
        self.last_move: float | None = None

    def update(self, fraction: float | None) -> float | None:
        """Feed the job's overall fraction; returns seconds left, or ``None`` (not known yet)."""
        now = self.clock()
        if self.t0 is None:
            self.t0, self.f0 = now, fraction or 0.0
        if fraction is None:
            return None
        if not self.samples or fraction > self.samples[-1][1]:
            self.last_move = now
        self.samples.append((now, fraction))
        while len(self.samples) > 2 and self.samples[1][0] < now - self.WINDOW_S:
            self.samples.popleft()
        return self.estimate(now)

    def estimate(self, now: float | None = None) -> float | None:
        now = self.clock() if now is None else now
        if self.t0 is None or not self.samples:
            return None
        f = self.samples[-1][1]
        if f >= 1.0:
            return 0.0
        if now - self.t0 < self.MIN_ELAPSED_S or f - self.f0 < self.MIN_FRACTION:
            return None
        if self.last_move is not None and now - self.last_move > self.STALE_S:
            return None
        t_a, f_a = self.samples[0]
        if now - t_a < 1.0 or f <= f_a:
            return None
        rate = (f - f_a) / (now - t_a)
        return (1.0 - f) / rate


def stage_fraction(e: ProgressEvent) -> float | None:
    """Progress inside the current stage: epochs and steps when the event has them."""
    if e.epochs and e.epoch is not None:
        inner = (e.step / e.steps) if (e.step is not None and e.steps) else 0.0
        return min(1.0, (e.epoch + inner) / e.epochs) if e.step is not None else min(1.0, (e.epoch + 1) / e.epochs)
    if e.step is not None and e.steps:
        return min(1.0, e.step / e.steps)
    return None


class JobProgress(QWidget):
    """Stage label + stage bar, overall bar + ETA.  :meth:`show_event` per ProgressEvent."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stage_label = QLabel("Idle")
        self.stage_bar = QProgressBar()
        self.overall_label = QLabel("Overall")
        self.overall_bar = QProgressBar()
        self.eta_label = QLabel("")
        self.detail_label = QLabel("")
        self.detail_label.setWordWrap(False)
        self.eta = EtaEstimator()
        for bar in (self.stage_bar, self.overall_bar):
            bar.setRange(0, 1000)
            bar.setValue(0)
            bar.setTextVisible(True)
            bar.setFormat("%p%")
        lay = QGridLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.stage_label, 0, 0)
        lay.addWidget(self.stage_bar, 0, 1)
        lay.addWidget(self.overall_label, 1, 0)
        lay.addWidget(self.overall_bar, 1, 1)
        lay.addWidget(self.eta_label, 1, 2)
        lay.addWidget(self.detail_label, 2, 0, 1, 3)
        lay.setColumnStretch(1, 1)
        self.reset()

    def reset(self, text: str = "Idle") -> None:
        self.eta.reset()
        self.stage_label.setText(text)
        for bar in (self.stage_bar, self.overall_bar):
            bar.setRange(0, 1000)
            bar.setValue(0)
            bar.setTextVisible(False)  # "0%" next to "Idle" reads like a stuck job
        self.eta_label.setText("")
        self.detail_label.setText("")

    def show_event(self, e: ProgressEvent) -> None:
        self.stage_bar.setTextVisible(True)
        self.overall_bar.setTextVisible(True)
        name = STAGE_NAMES.get(e.stage, e.stage.capitalize() if e.stage else "Working")
        if e.round is not None:
            name = f"Round {e.round}: {name}"
        self.stage_label.setText(name)
        sf = stage_fraction(e)
        if sf is None:
            self.stage_bar.setRange(0, 0) if e.fraction is None else self.stage_bar.setRange(0, 1000)
            if e.fraction is not None:
                self.stage_bar.setValue(int(1000 * e.fraction))
        else:
            self.stage_bar.setRange(0, 1000)
            self.stage_bar.setValue(int(1000 * sf))
        if e.fraction is not None:
            self.overall_bar.setRange(0, 1000)
            self.overall_bar.setValue(int(1000 * e.fraction))
        # one ETA, for the whole job, next to the overall bar (never a stage's as the job's)
        left = self.eta.update(e.fraction)
        if e.fraction is not None and e.fraction >= 1:
            self.eta_label.setText("")
        else:
            self.eta_label.setText(f"{format_eta(left)} left" if left is not None else "estimating time left…")
        parts = []
        if e.epochs and e.epoch is not None:
            parts.append(f"epoch {min(e.epoch + 1, e.epochs)}/{e.epochs}")
        if e.step is not None and e.steps:
            parts.append(f"step {e.step}/{e.steps}")
        if e.message:
            parts.append(e.message)
        self.detail_label.setText("  ·  ".join(parts))

    def stopped(self, text: str = "Stopped") -> None:
        """The job ended early: say so, and show no progress or time left that no longer runs."""
        self.reset(text)

    def finish(self, text: str = "Done") -> None:
        self.stage_label.setText(text)
        for bar in (self.stage_bar, self.overall_bar):
            bar.setTextVisible(True)
            bar.setRange(0, 1000)
            bar.setValue(1000)
        self.eta_label.setText("")
