"""Item delegates: an in-place combo box restricted to the values valid for the row."""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QAbstractItemModel, QModelIndex, Qt
from PySide6.QtWidgets import QComboBox, QStyledItemDelegate, QStyleOptionViewItem, QWidget


class ComboDelegate(QStyledItemDelegate):
    """Edit a cell with a combo box whose choices depend on the row.

    ``choices(index) -> list[str]``: the values allowed there (e.g. the groups of the row's
    scenario).  The model's ``setData`` does the real validation and writing.
    """

    def __init__(self, choices: Callable[[QModelIndex], list[str]], parent=None) -> None:
        super().__init__(parent)
        self.choices = choices

    def createEditor(self, parent: QWidget, option: QStyleOptionViewItem, index: QModelIndex) -> QWidget:  # noqa: N802
        combo = QComboBox(parent)
        combo.addItems(self.choices(index))
        combo.setFrame(False)
        # commit as soon as a value is picked (no extra Enter needed)
        combo.activated.connect(lambda _i, c=combo: (self.commitData.emit(c), self.closeEditor.emit(c)))
        return combo

    def setEditorData(self, editor: QWidget, index: QModelIndex) -> None:  # noqa: N802
        value = index.data(Qt.ItemDataRole.EditRole)
        i = editor.findText(str(value))
        editor.setCurrentIndex(max(i, 0))

    def setModelData(self, editor: QWidget, model: QAbstractItemModel, index: QModelIndex) -> None:  # noqa: N802
        model.setData(index, editor.currentText(), Qt.ItemDataRole.EditRole)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex):  # noqa: N802
        """Room for the longest choice *and* the combo box's arrow, so the editor opened in the
        cell never clips its value ("clothing-chai")."""
        hint = super().sizeHint(option, index)
        combo = QComboBox()
        combo.setFont(option.font)
        combo.addItems([str(index.data(Qt.ItemDataRole.DisplayRole) or "")] + list(self.choices(index)))
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        hint.setWidth(max(hint.width(), combo.sizeHint().width() + 4))
        return hint

    def updateEditorGeometry(self, editor: QWidget, option: QStyleOptionViewItem, index: QModelIndex) -> None:  # noqa: N802
        rect = option.rect
        rect.setWidth(max(rect.width(), editor.sizeHint().width()))
        editor.setGeometry(rect)
