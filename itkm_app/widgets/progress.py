"""Per-part and overall progress of a job, with the time left, fed by ProgressEvents.

The time left is the engine's (``ProgressEvent.eta_s``, ``itkm_engine/eta.py``): the app has no
estimator of its own, so the Training view, the status bar and ``itkm train`` say the same.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QProgressBar, QSizePolicy, QWidget

from itkm_engine.eta import format_duration, format_eta  # noqa: F401 - the app's formatting, re-exported
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
#: A job's parts (``ProgressEvent.part``): the label of the bar that follows the part.
PART_NAMES = {"extract": "Features", "final": "New model's features",
              **{s.name: f"Stage {s.numeral}" for s in STAGE_LABELS.values()}}
#: Sub-steps inside a part, for the detail line.
STEP_NAMES = {"extract": "embedding images", "knn": "clustering: neighbour search",
              "encoding": "clustering: k-reciprocal encoding", "jaccard": "clustering: Jaccard distances",
              "dbscan": "clustering: DBSCAN"}
#: The label widths are fixed (the bars never move sideways): sized for these texts.
LABEL_SAMPLE = "Round 88 · New model's features"
ETA_SAMPLE = "about 2 h 55 min left"
NO_ETA = "estimating time left"


def stage_fraction(e: ProgressEvent) -> float | None:
    """Progress inside the current stage: epochs and steps when the event has them."""
    if e.epochs and e.epoch is not None:
        inner = (e.step / e.steps) if (e.step is not None and e.steps) else 0.0
        return min(1.0, (e.epoch + inner) / e.epochs) if e.step is not None else min(1.0, (e.epoch + 1) / e.epochs)
    if e.step is not None and e.steps:
        return min(1.0, e.step / e.steps)
    return None


class JobProgress(QWidget):
    """Part label + part bar, overall bar + time left, a detail line.  :meth:`show_event` per
    ProgressEvent.  The part bar follows the event's part (a stage of a round, an extraction) from
    0 to 100% and is labelled with it; sub-steps (embedding, clustering, training steps) are named
    on the detail line, so the bar never jumps back when one sub-step ends and the next begins."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stage_label = QLabel("Idle")
        self.stage_bar = QProgressBar()
        self.overall_label = QLabel("Overall")
        self.overall_bar = QProgressBar()
        self.eta_label = QLabel("")
        self.detail_label = QLabel("")
        self.detail_label.setWordWrap(False)
        self.detail_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        fm = self.fontMetrics()
        self._label_w = fm.horizontalAdvance(LABEL_SAMPLE) + 8
        for label in (self.stage_label, self.overall_label):
            label.setFixedWidth(self._label_w)
        self.eta_label.setFixedWidth(max(fm.horizontalAdvance(ETA_SAMPLE), fm.horizontalAdvance(NO_ETA)) + 8)
        self.eta_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        for bar in (self.stage_bar, self.overall_bar):
            bar.setRange(0, 1000)
            bar.setValue(0)
            bar.setTextVisible(True)
            bar.setFormat("%p%")
        lay = QGridLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.stage_label, 0, 0)
        lay.addWidget(self.stage_bar, 0, 1, 1, 2)
        lay.addWidget(self.overall_label, 1, 0)
        lay.addWidget(self.overall_bar, 1, 1)
        lay.addWidget(self.eta_label, 1, 2)
        lay.addWidget(self.detail_label, 2, 0, 1, 3)
        lay.setColumnStretch(1, 1)
        self.reset()

    def _set_label(self, text: str) -> None:
        fm = self.stage_label.fontMetrics()
        self.stage_label.setText(fm.elidedText(text, Qt.TextElideMode.ElideRight, self._label_w - 4))
        self.stage_label.setToolTip(text)

    def reset(self, text: str = "Idle") -> None:
        self._set_label(text)
        for bar in (self.stage_bar, self.overall_bar):
            bar.setRange(0, 1000)
            bar.setValue(0)
            bar.setTextVisible(False)  # "0%" next to "Idle" reads like a stuck job
        self.eta_label.setText("")
        self.detail_label.setText("")

    def show_event(self, e: ProgressEvent) -> None:
        self.stage_bar.setTextVisible(True)
        self.overall_bar.setTextVisible(True)
        if e.part:
            name = PART_NAMES.get(e.part, e.part.capitalize())
            full = STAGE_LABELS[e.part].label if e.part in STAGE_LABELS else name
        else:
            name = full = STAGE_NAMES.get(e.stage, e.stage.capitalize() if e.stage else "Working")
        if e.round is not None:
            name = f"Round {e.round} · {name}"
        self._set_label(name)
        sf = e.part_fraction if e.part else stage_fraction(e)
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
        # one time left, for the whole job, next to the overall bar: the engine's estimate
        if e.fraction is not None and e.fraction >= 1:
            self.eta_label.setText("")
        else:
            self.eta_label.setText(f"{format_eta(e.eta_s)} left" if e.eta_s is not None else NO_ETA)
            self.eta_label.setToolTip("" if e.eta_s is not None else
                                      "Shown once it can be measured: after the first epoch of a first round, "
                                      "from the previous round's times after that")
        parts = [full] if e.part and full != name.split(" · ")[-1] else []
        if e.epochs and e.epoch is not None:
            parts.append(f"epoch {min(e.epoch + 1, e.epochs)}/{e.epochs}")
        step = STEP_NAMES.get(e.stage, "") if e.part else ""
        if step:
            parts.append(step + (f" {e.step:,}/{e.steps:,}" if e.step is not None and e.steps else ""))
        elif e.step is not None and e.steps:
            parts.append(f"step {e.step}/{e.steps}")
        if e.message:
            parts.append(e.message)
        self.detail_label.setText("  ·  ".join(parts))

    def stopped(self, text: str = "Stopped") -> None:
        """The job ended early: say so, and show no progress or time left that no longer runs."""
        self.reset(text)

    def finish(self, text: str = "Done") -> None:
        self._set_label(text)
        for bar in (self.stage_bar, self.overall_bar):
            bar.setTextVisible(True)
            bar.setRange(0, 1000)
            bar.setValue(1000)
        self.eta_label.setText("")
