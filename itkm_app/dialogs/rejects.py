"""The files ingestion refused, with the reason for each, in a filterable table."""

from __future__ import annotations

from PySide6.QtCore import QSortFilterProxyModel, Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QHeaderView, QTableView, QVBoxLayout, QWidget

__all__ = ["RejectsDialog"]


class RejectsDialog(QDialog):
    """Files that ingestion refused, with the reason for each."""

    def __init__(self, rejects: list, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Rejected files ({len(rejects)})")
        self.resize(860, 480)
        from PySide6.QtGui import QStandardItem, QStandardItemModel

        model = QStandardItemModel(0, 3, self)
        model.setHorizontalHeaderLabels(["Camera", "File", "Reason"])
        for r in rejects:
            items = [QStandardItem(r.camera or ""), QStandardItem(r.path or r.relpath), QStandardItem(r.reason)]
            for it in items:
                it.setEditable(False)
                it.setToolTip(it.text())
            model.appendRow(items)
        proxy = QSortFilterProxyModel(self)
        proxy.setSourceModel(model)
        proxy.setFilterKeyColumn(-1)
        proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        from PySide6.QtWidgets import QLineEdit

        search = QLineEdit()
        search.setPlaceholderText("Filter by camera, file or reason")
        search.setClearButtonEnabled(True)
        search.textChanged.connect(proxy.setFilterFixedString)
        self.table = QTableView()
        self.table.setModel(proxy)
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        box.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(search)
        lay.addWidget(self.table)
        lay.addWidget(box)
