"""A side column that scrolls vertically in a small window instead of squeezing its boxes."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QScrollArea, QWidget


def scrolling_column(content: QWidget, min_width: int, max_width: int | None = None) -> QScrollArea:
    """``content`` in a frameless, vertically scrolling area of the given width range."""
    area = QScrollArea()
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setMinimumWidth(min_width)
    if max_width is not None:
        area.setMaximumWidth(max_width)
    return area
