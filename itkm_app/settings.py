"""Persistent preferences (QSettings): window layout, last workspace, panel choices.

One typed wrapper so keys and defaults live in one place.  ``ITKM_SETTINGS`` (an ``.ini`` path)
or the ``path`` argument redirects everything to a file -- tests and screenshots use it so they
never touch the user's real settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

ORGANIZATION = "ITKM"
APPLICATION = "ITKM Studio"
MAX_RECENT = 8


class Settings:
    def __init__(self, path: str | Path | None = None) -> None:
        path = path or os.environ.get("ITKM_SETTINGS")
        if path:
            self.q = QSettings(str(path), QSettings.Format.IniFormat)
        else:
            self.q = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)

    # -- generic -------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None, type_: type | None = None) -> Any:
        value = self.q.value(key, default)
        if value is None:
            return default
        if type_ is bool:
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if type_ is not None:
            try:
                return type_(value)
            except (TypeError, ValueError):
                return default
        return value

    def set(self, key: str, value: Any) -> None:
        self.q.setValue(key, value)

    def sync(self) -> None:
        self.q.sync()

    # -- window ----------------------------------------------------------------------------------
    def geometry(self) -> QByteArray | None:
        v = self.q.value("window/geometry")
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    def window_state(self) -> QByteArray | None:
        v = self.q.value("window/state")
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    def save_window(self, geometry: QByteArray, state: QByteArray, tab: int) -> None:
        self.q.setValue("window/geometry", geometry)
        self.q.setValue("window/state", state)
        self.q.setValue("window/tab", tab)

    def tab(self) -> int:
        return self.get("window/tab", 0, int)

    # -- workspaces -----------------------------------------------------------------------------
    def last_workspace(self) -> str | None:
        v = self.get("workspace/last", "", str)
        return v or None

    def recent_workspaces(self) -> list[str]:
        v = self.q.value("workspace/recent", [])
        if isinstance(v, str):
            v = [v] if v else []
        return [str(x) for x in (v or []) if x]

    def remember_workspace(self, path: str | Path) -> None:
        p = str(Path(path))
        recent = [r for r in self.recent_workspaces() if r != p]
        recent.insert(0, p)
        self.q.setValue("workspace/recent", recent[:MAX_RECENT])
        self.q.setValue("workspace/last", p)
