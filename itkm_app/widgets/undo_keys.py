"""Ctrl+Z / Ctrl+Shift+Z (and the platform's other undo/redo keys) on a panel, each key once.

Two QShortcuts on one key sequence are ambiguous and neither fires, so the platform's Redo
bindings (Ctrl+Shift+Z and/or Ctrl+Y) and the explicit Ctrl+Shift+Z are de-duplicated here.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QWidget


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
