"""The Identities table's model: one row per identity (sightings, cameras, scenarios, when
seen, confidence, the operator's name), and the filter in front of it."""

from __future__ import annotations

import datetime as dt
import math

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt

from .table_model import RowsTableModel
from .thumb_grid import SCENARIO_SHORT
from .timeline import NAME_EPOCH, fmt_derived, fmt_time, is_derived

__all__ = ["IdentityModel", "IdentityFilter"]


class IdentityModel(RowsTableModel):
    # Cameras last: it takes what width is left (elided, the full list on hover), so "Seen" is never cut
    COLUMNS = ("Identity", "Sightings", "Seen", "Scenarios", "Conf.", "Cameras")
    CAMERAS = 5

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rows: list = []
        self.names: dict[int, tuple[str, str]] = {}  # the operator's {identity: (name, note)}
        self.history: dict[int, str] = {}  # lineage notes {identity: "merged #40"}
        self.time_format = "%Y-%m-%d %H:%M"

    def set_rows(self, rows: list) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        # times of day only when every sighting falls on one day (short columns stay readable)
        t = [x for s in rows for x in (s.t_first, s.t_last) if x is not None and math.isfinite(x)]
        same_day = bool(t) and dt.datetime.fromtimestamp(min(t)).date() == dt.datetime.fromtimestamp(max(t)).date()
        if t and is_derived(min(t)) and is_derived(max(t)):  # frame-number days, not the local calendar's
            same_day = (min(t) - NAME_EPOCH) // 86400 == (max(t) - NAME_EPOCH) // 86400
        self.time_format = "%H:%M:%S" if same_day else "%Y-%m-%d %H:%M"
        self.endResetModel()

    def _span(self, s) -> str:
        if s.t_first is None or not math.isfinite(s.t_first):
            return ""
        if is_derived(s.t_first):
            a, b = fmt_derived(s.t_first), fmt_derived(s.t_last)
            if self.time_format == "%H:%M:%S":  # every sighting on one day: the times say enough
                a, b = a.split(", ")[1], b.split(", ")[1]
            elif a[:6] == b[:6]:
                b = b.split(", ")[1]
            return (a if a == b else f"{a} – {b}") + " *"
        a = dt.datetime.fromtimestamp(s.t_first).strftime(self.time_format)
        b = dt.datetime.fromtimestamp(s.t_last).strftime(self.time_format)
        return a if a == b else f"{a} – {b}"

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        s = self.rows[index.row()]
        c = index.column()
        if role == Qt.ItemDataRole.DisplayRole:  # only the cell asked for (the view asks cell by cell)
            if c == 0:
                name = self.names.get(s.identity, ("", ""))[0]
                was = self.history.get(s.identity, "")
                return f"#{s.identity}{f' ({was})' if was else ''} {name}".rstrip()
            if c == 1:
                return s.size
            if c == 2:
                return self._span(s)
            if c == 3:
                return ", ".join(SCENARIO_SHORT.get(x, x) for x in s.scenarios)
            if c == 4:
                return f"{s.mean_confidence:.2f}"
            return ", ".join(s.cameras)
        if role == Qt.ItemDataRole.UserRole:
            return (s.identity, s.size, s.t_first, len(s.scenarios), s.mean_confidence, len(s.cameras))[c]
        if role == Qt.ItemDataRole.TextAlignmentRole and c in (1, 4):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            was = self.history.get(s.identity, "")
            return (f"identity #{s.identity}{f' ({was})' if was else ''}: {s.size} sightings\n"
                    f"cameras: {', '.join(s.cameras)}\n"
                    f"scenarios: {', '.join(s.scenarios)}\nfirst seen {fmt_time(s.t_first)}\n"
                    f"last seen {fmt_time(s.t_last)}\nmean confidence {s.mean_confidence:.3f}")
        return None


class IdentityFilter(QSortFilterProxyModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.min_size = 2
        self.text = ""
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:  # noqa: N802
        s = self.sourceModel().rows[row]
        if s.size < self.min_size:
            return False
        if self.text:
            t = self.text.lower()
            name = self.sourceModel().names.get(s.identity, ("", ""))[0].lower()
            was = self.sourceModel().history.get(s.identity, "").lower()
            return t in f"#{s.identity}" or t in name or t in was or any(t in c.lower() for c in s.cameras) or any(t in x for x in s.scenarios)
        return True
