"""Undo / Redo on a panel: Ctrl+Z / Ctrl+Shift+Z (and the platform's other undo/redo keys), each
key once, and the two buttons.

Two QShortcuts on one key sequence are ambiguous and neither fires, so the platform's Redo
bindings (Ctrl+Shift+Z and/or Ctrl+Y) and the explicit Ctrl+Shift+Z are de-duplicated here.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QPushButton, QWidget


def install_undo_redo(widget: QWidget, callback) -> list[QShortcut]:
    """``callback(redo: bool)`` on the undo / redo keys while focus is inside ``widget``."""
    seen: set[str] = set()
    out = []
    undo = QKeySequence.keyBindings(QKeySequence.StandardKey.Undo)
    redo = QKeySequence.keyBindings(QKeySequence.StandardKey.Redo) + [QKeySequence("Ctrl+Shift+Z")]
    for seqs, is_redo in ((undo, False), (redo, True)):
        for seq in seqs:
            key = seq.toString()
            if not key or key in seen:
                continue
            seen.add(key)
            sc = QShortcut(seq, widget)
            sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            sc.activated.connect(lambda r=is_redo: callback(r))
            out.append(sc)
    return out


def undo_redo_buttons(widget: QWidget, callback) -> tuple[QPushButton, QPushButton]:
    """An Undo and a Redo button calling ``callback(redo: bool)``, and the keys on ``widget``."""
    undo = QPushButton("Undo")
    undo.setToolTip("Undo the last decision (Ctrl+Z); a selection, merge or split is one step")
    redo = QPushButton("Redo")
    redo.setToolTip("Redo (Ctrl+Shift+Z)")
    undo.clicked.connect(lambda: callback(False))
    redo.clicked.connect(lambda: callback(True))
    install_undo_redo(widget, callback)
    return undo, redo
