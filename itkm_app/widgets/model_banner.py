"""A one-line banner above a view: which model it shows, and the next step when there is one.

Reads :attr:`AppContext.model_state`; before the first round it says the views show the
initial weights and offers Train (the first-time user saw no hint to train at all).
"""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget


class ModelBanner(QWidget):
    def __init__(self, ctx, what: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.what = what  # e.g. "Matches": "Matches use the round 2 model"
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.train_btn = QPushButton("Train now")
        self.train_btn.setToolTip("Start the first training round (F5)")
        self.train_btn.clicked.connect(self._train)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.label, 1)
        lay.addWidget(self.train_btn)
        ctx.modelStateChanged.connect(self.refresh)
        self.refresh(ctx.model_state)

    def refresh(self, state=None) -> None:
        state = self.ctx.model_state if state is None else state
        self.setVisible(state is not None)
        if state is None:
            return
        lead = f"{self.what} use" if self.what else "Using"
        if not state.trained:
            text = (f"<b>Not trained yet.</b> {lead} the initial weights, which know nothing about these "
                    "cameras: train a first round for useful results.")
        else:
            text = f"{lead} the <b>{state.short()}</b>."
        if state.training:
            text += " Training is running; the views switch to the new model when the round ends."
        elif state.unfinished is not None:
            text += f" Round {state.unfinished} was stopped: Train resumes it."
        self.label.setText(text)
        self.train_btn.setVisible(not state.trained and not state.training and not self.ctx.readonly)

    def _train(self) -> None:
        w = self.window()
        act = getattr(w, "act_train", None)
        if act is not None and act.isEnabled():
            act.trigger()
