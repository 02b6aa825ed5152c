"""What every main panel shares: the context, an empty state, a "loading" flag, and one task slot."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QStackedWidget, QVBoxLayout, QWidget

from ..context import AppContext
from ..task_slot import TaskSlot


class EmptyState(QWidget):
    """A centred message with optional action buttons (no workspace yet, nothing trained...)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel()
        f = self.title.font()
        f.setPointSizeF(f.pointSizeF() * 1.3)
        f.setBold(True)
        self.title.setFont(f)
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.text.setMaximumWidth(560)
        self._buttons = QVBoxLayout()
        self._buttons.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        lay = QVBoxLayout(self)
        lay.addStretch(1)
        lay.addWidget(self.title)
        # Centred by stretches, not an alignment flag: a widget added with an alignment loses
        # height-for-width, and the wrapped text was clipped to one line's height.
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.text, 4)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addSpacing(12)
        lay.addLayout(self._buttons)
        lay.addStretch(2)

    def set(self, title: str, text: str = "", actions: list[tuple[str, object]] | None = None) -> None:
        self.title.setText(title)
        self.text.setText(text)
        while self._buttons.count():
            w = self._buttons.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        for label, slot in actions or []:
            b = QPushButton(label)
            b.clicked.connect(slot)
            self._buttons.addWidget(b)


class Panel(QWidget):
    """Base of the five main panels.

    ``key`` names the panel (screenshots, ``showPanel``); ``title`` is its tab label.
    :meth:`loading` is ``True`` while the panel waits for background data (screenshots wait for
    it); :meth:`activate` is called when the panel becomes visible (lazy loading).  :attr:`task`
    runs the panel's own background work, one task at a time (``itkm_app/task_slot.py``);
    :attr:`job` is its job while one runs.
    """

    key = "panel"
    title = "Panel"
    loadingChanged = Signal(bool)

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self._loading = 0
        self.task = TaskSlot(ctx.jobs, self, begin_loading=self.begin_loading, end_loading=self.end_loading)
        self.stack = QStackedWidget()
        self.empty = EmptyState()
        self.content = QWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.stack)

    # -- states ----------------------------------------------------------------------------------
    def show_empty(self, title: str, text: str = "", actions: list[tuple[str, object]] | None = None) -> None:
        self.empty.set(title, text, actions)
        self.stack.setCurrentWidget(self.empty)

    def show_content(self) -> None:
        self.stack.setCurrentWidget(self.content)

    def session_ready(self, no_workspace_text: str) -> bool:
        """Show the content when a workspace and its session are open; else say why not."""
        if self.ctx.ws is None:
            self.show_empty("No workspace open", no_workspace_text)
            return False
        if self.ctx.session is None:
            self.show_empty("Loading…", "The model library is loading in the background.")
            return False
        self.show_content()
        return True

    def showing_content(self) -> bool:
        return self.stack.currentWidget() is self.content

    # -- loading -----------------------------------------------------------------------------------
    def loading(self) -> bool:
        return self._loading > 0

    def begin_loading(self) -> None:
        self._loading += 1
        if self._loading == 1:
            self.loadingChanged.emit(True)

    def end_loading(self) -> None:
        self._loading = max(0, self._loading - 1)
        if self._loading == 0:
            self.loadingChanged.emit(False)

    @property
    def job(self):
        """The job of the panel's current task, ``None`` when it has none."""
        return self.task.job

    def run(self, name: str, fn, *args, on_done=None, kind: str = "read", **kwargs):
        """Submit a job beside the panel's task (a table read, a side computation) that counts as
        this panel loading until it ends."""
        self.begin_loading()
        job = self.ctx.jobs.submit(name, fn, *args, kind=kind, on_done=on_done, **kwargs)
        job.ended.connect(self.end_loading)
        return job

    def activate(self) -> None:
        """The panel became visible: a task it requested meanwhile starts (lazy loading)."""
        self.task.activate()

    def prepare_screenshot(self) -> None:
        """Put something representative on screen for ``--screenshot`` (default: nothing)."""
