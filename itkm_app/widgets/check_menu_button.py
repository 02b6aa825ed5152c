"""A drop-down of checkable values (the Gallery's scenario, group and camera filters)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QToolButton, QWidget

__all__ = ["CheckMenuButton"]


class CheckMenuButton(QToolButton):
    """A drop-down of checkable values; nothing checked = no filter ("All")."""

    def __init__(self, label: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = label
        self.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        # the menu arrow gets its own room (it was drawn over the text's end)
        self.setStyleSheet("QToolButton { padding-right: 18px; text-align: left; }")
        from PySide6.QtWidgets import QSizePolicy

        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.menu_ = QMenu(self)
        self.setMenu(self.menu_)
        self._actions: dict[str, QAction] = {}
        self.on_change = None
        self._refresh_text()

    def set_values(self, values: list[str]) -> None:
        checked = self.checked()
        self.menu_.clear()
        self._actions = {}
        # "any", not "All": a group is literally named "all" (a camera that is its scenario's only group)
        clear = self.menu_.addAction(f"Any {self.label.lower().rstrip('s')} (clear the filter)")
        clear.triggered.connect(self.clear)
        self.menu_.addSeparator()
        for v in values:
            a = self.menu_.addAction(v)
            a.setCheckable(True)
            a.setChecked(v in checked)
            a.toggled.connect(self._changed)
            self._actions[v] = a
        self._refresh_text()

    def checked(self) -> set[str]:
        return {v for v, a in self._actions.items() if a.isChecked()}

    def set_checked(self, values: set[str]) -> None:
        for v, a in self._actions.items():
            a.blockSignals(True)
            a.setChecked(v in values)
            a.blockSignals(False)
        self._changed()

    def clear(self) -> None:
        self.set_checked(set())

    def _changed(self, *_a) -> None:
        self._refresh_text()
        if self.on_change is not None:
            self.on_change()

    def _refresh_text(self) -> None:
        c = self.checked()
        self.setText(f"{self.label}: any" if not c else f"{self.label}: {len(c)}" if len(c) > 1 else
                     f"{self.label}: {next(iter(c))}")
