"""The "Add camera folders" dialog: the folders to ingest, and optionally their layout and scenario."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QLabel, QListWidget, QPushButton, QVBoxLayout, QWidget)

from itkm_engine.vocabulary import SCENARIOS

__all__ = ["AddFoldersDialog"]


class AddFoldersDialog(QDialog):
    """Pick camera folders (several), and optionally their layout and scenario."""

    def __init__(self, parent: QWidget | None = None, folders: list[str] | None = None,
                 sites: list[str] | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Add camera folders")
        self.setMinimumWidth(560)
        self.list = QListWidget()
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        for f in folders or []:
            self.list.addItem(f)
        add = QPushButton("Add folder…")
        add.clicked.connect(self._browse)
        remove = QPushButton("Remove")
        remove.clicked.connect(lambda: [self.list.takeItem(self.list.row(i)) for i in self.list.selectedItems()])
        btns = QVBoxLayout()
        btns.addWidget(add)
        btns.addWidget(remove)
        btns.addStretch(1)
        top = QHBoxLayout()
        top.addWidget(self.list, 1)
        top.addLayout(btns)
        self.layout_combo = QComboBox()
        self.layout_combo.addItem("Detect automatically", None)
        try:
            from itkm_engine.data.layouts import LAYOUTS

            for name, lay in LAYOUTS.items():
                self.layout_combo.addItem(name, name)
                self.layout_combo.setItemData(self.layout_combo.count() - 1, getattr(lay, "description", ""),
                                              Qt.ItemDataRole.ToolTipRole)
        except ImportError:
            pass
        self.scenario_combo = QComboBox()
        self.scenario_combo.addItem("Guess per camera", None)
        for s in SCENARIOS:
            self.scenario_combo.addItem(s, s)
        # the site: where these folders were filmed (people are matched only within one site)
        self.site_combo = QComboBox()
        self.site_combo.setEditable(True)
        self.site_combo.addItem("")
        for site in sites or []:
            if site:
                self.site_combo.addItem(site)
        self.site_combo.lineEdit().setPlaceholderText("default (one site for everything), or type a name")
        self.site_combo.setToolTip("<qt>Where these folders were filmed. People are matched only within one "
                                   "site: give another site's folders another name. Leave empty for the default "
                                   "site (a folder added again keeps its site).</qt>")
        form = QFormLayout()
        form.addRow("Layout", self.layout_combo)
        form.addRow("Scenario", self.scenario_combo)
        form.addRow("Site", self.site_combo)
        hint = QLabel("A folder may be one camera (its crops directly inside: the camera is named after the "
                      "folder), hold one folder per camera, or follow a known dataset layout. Images are only read, "
                      "never copied or changed. Adding a folder again updates it.")
        hint.setWordWrap(True)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        box.button(QDialogButtonBox.StandardButton.Ok).setText("Ingest")
        box.accepted.connect(self.accept)
        box.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(form)
        lay.addWidget(hint)
        lay.addWidget(box)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Camera folder", str(Path.home()))
        if d and not self.list.findItems(d, Qt.MatchFlag.MatchExactly):
            self.list.addItem(d)

    def folders(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def layout_name(self) -> str | None:
        return self.layout_combo.currentData()

    def scenario(self) -> str | None:
        return self.scenario_combo.currentData()

    def site(self) -> str | None:
        """The site typed or picked, ``None`` for the default (a known folder keeps its own)."""
        return self.site_combo.currentText().strip() or None
