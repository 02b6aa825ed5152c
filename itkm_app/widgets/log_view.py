"""The log panel: engine messages and job errors, newest at the bottom, filterable by level."""

from __future__ import annotations

import time
from collections import deque

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QStyle, QTableView, QToolButton, QVBoxLayout, QWidget)

from itkm_engine.progress import LogMessage

from .. import theme
from .table_model import RowsTableModel

LEVELS = ("debug", "info", "warning", "error")
_RANK = {name: i for i, name in enumerate(LEVELS)}
MAX_ROWS = 20_000


class LogModel(RowsTableModel):
    COLUMNS = ("Time", "Level", "Message")

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rows: deque[LogMessage] = deque()
        self._icons = {}

    def add(self, m: LogMessage) -> None:
        if len(self.rows) >= MAX_ROWS:
            self.beginRemoveRows(QModelIndex(), 0, 0)
            self.rows.popleft()
            self.endRemoveRows()
        n = len(self.rows)
        self.beginInsertRows(QModelIndex(), n, n)
        self.rows.append(m)
        self.endInsertRows()

    def clear(self) -> None:
        self.beginResetModel()
        self.rows.clear()
        self.endResetModel()

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        m = self.rows[index.row()]
        c = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if c == 0:
                return time.strftime("%H:%M:%S", time.localtime(m.time))
            if c == 1:
                return m.level
            return m.text
        if role == Qt.ItemDataRole.DecorationRole and c == 1:
            name = {"warning": "warning", "error": "error"}.get(m.level, "info")
            if name not in self._icons:
                self._icons[name] = theme.icon(name)
            return self._icons[name] if m.level != "debug" else None
        if role == Qt.ItemDataRole.ToolTipRole and c == 2:
            return m.text
        if role == Qt.ItemDataRole.UserRole:
            return _RANK.get(m.level, 1)
        return None


class _LevelFilter(QSortFilterProxyModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.min_rank = 1
        self.text = ""

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:  # noqa: N802
        m: LogMessage = self.sourceModel().rows[row]
        if _RANK.get(m.level, 1) < self.min_rank:
            return False
        return not self.text or self.text.lower() in m.text.lower()


class LogView(QWidget):
    """Table of log messages with a level filter, a text filter, copy and clear."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = LogModel(self)
        self.proxy = _LevelFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 4)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.setAlternatingRowColors(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        h = self.table.horizontalHeader()
        # Fixed widths: the time column holds "HH:MM:SS" only.  Sized to its contents, it was
        # measured again over up to 1,000 rows at each message a training round logs.  The level
        # column fits its longest word and icon at any time ("error" was shown as "e…" when the
        # column had been sized for the rows seen so far).
        fm = self.table.fontMetrics()
        h.setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
        h.resizeSection(0, max(fm.horizontalAdvance("00:00:00"), fm.horizontalAdvance("Time")) + 16)
        h.setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        h.resizeSection(1, max(fm.horizontalAdvance(w) for w in ("warning", "error", "debug", "info", "Level"))
                        + self.table.style().pixelMetric(QStyle.PixelMetric.PM_SmallIconSize) + 32)
        h.setStretchLastSection(True)
        self.level = QComboBox()
        self.level.addItems(["Debug and up", "Info and up", "Warnings and errors", "Errors only"])
        self.level.setCurrentIndex(1)
        self.level.currentIndexChanged.connect(self._set_level)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter messages")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._set_text)
        copy = QToolButton()
        copy.setText("Copy")
        copy.setToolTip("Copy the shown messages to the clipboard")
        copy.clicked.connect(self.copy_all)
        clear = QToolButton()
        clear.setText("Clear")
        clear.clicked.connect(self.model.clear)
        self.counts = QLabel("")
        top = QHBoxLayout()
        top.addWidget(self.level)
        top.addWidget(self.search, 1)
        top.addWidget(self.counts)
        top.addWidget(copy)
        top.addWidget(clear)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 4)
        lay.addLayout(top)
        lay.addWidget(self.table)
        self._warnings = 0
        self._errors = 0

    def add(self, m: LogMessage) -> None:
        at_bottom = self.table.verticalScrollBar().value() >= self.table.verticalScrollBar().maximum() - 2
        self.model.add(m)
        if m.level == "warning":
            self._warnings += 1
        elif m.level == "error":
            self._errors += 1
        if self._warnings or self._errors:
            from ..wording import plural

            self.counts.setText(f"{plural(self._errors, 'error')}, {plural(self._warnings, 'warning')}")
        if at_bottom:
            self.table.scrollToBottom()

    def messages(self) -> list[LogMessage]:
        return list(self.model.rows)

    def _set_level(self, i: int) -> None:
        self.proxy.min_rank = i
        self.proxy.invalidateFilter()

    def _set_text(self, t: str) -> None:
        self.proxy.text = t
        self.proxy.invalidateFilter()

    def copy_all(self) -> None:
        lines = []
        for r in range(self.proxy.rowCount()):
            lines.append("\t".join(str(self.proxy.index(r, c).data() or "") for c in range(3)))
        QGuiApplication.clipboard().setText("\n".join(lines))
