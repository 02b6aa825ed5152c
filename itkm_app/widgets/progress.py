"""Per-stage and overall progress of a job, with an ETA, fed by ProgressEvents."""

from __future__ import annotations

from PySide6.QtWidgets import QGridLayout, QLabel, QProgressBar, QWidget

from itkm_engine.progress import ProgressEvent

STAGE_NAMES = {
    "extract": "Extracting features",
    "cluster": "Clustering",
    "knn": "Neighbour search",
    "encoding": "k-reciprocal encoding",
    "jaccard": "Jaccard distances",
    "dbscan": "DBSCAN",
    "stage1": "Stage I - homogeneous learning",
    "stage2": "Stage II - text knowledge",
    "stage3": "Stage III - heterogeneous matching",
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
        eta = format_duration(e.eta_s)
        self.eta_label.setText(f"ETA {eta}" if eta and (e.fraction or 0) < 1 else "")
        parts = []
        if e.epochs and e.epoch is not None:
            parts.append(f"epoch {min(e.epoch + 1, e.epochs)}/{e.epochs}")
        if e.step is not None and e.steps:
            parts.append(f"step {e.step}/{e.steps}")
        if e.message:
            parts.append(e.message)
        self.detail_label.setText("  ·  ".join(parts))

    def finish(self, text: str = "Done") -> None:
        self.stage_label.setText(text)
        for bar in (self.stage_bar, self.overall_bar):
            bar.setTextVisible(True)
            bar.setRange(0, 1000)
            bar.setValue(1000)
        self.eta_label.setText("")
