"""OpenCV, imported without its side effects on Qt.

``opencv-python`` (the wheel ``deep-sort-realtime`` requires, and the product card's choice) ships
its own Qt plugins, and importing ``cv2`` points ``QT_QPA_PLATFORM_PLUGIN_PATH`` and
``QT_QPA_FONTDIR`` at its own folders.  A PySide6 application created after that would look for
its platform plugin in cv2's folder.  Every module of the engine imports cv2 from here, which puts
both variables back as they were right after the import (docs/adr/0006).
"""

from __future__ import annotations

import os

_QT_VARS = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")
_before = {name: os.environ.get(name) for name in _QT_VARS}

import cv2  # noqa: E402

for _name, _value in _before.items():
    if _value is None:
        os.environ.pop(_name, None)
    else:
        os.environ[_name] = _value

__all__ = ["cv2"]
