"""Evaluation results as a table: protocol x split, with mAP / Rank-1 / 5 / 10 in percent.

``Session.evaluate()`` returns ``{"headline": {protocol, split, mAP, rank1, ...},
"protocols": {protocol: {split: scores}}}``; older workspaces stored a flat
``{split: scores}`` (one protocol, the standard one).  Both are read here, so the app shows
every stored record.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

COLUMNS = ("Protocol", "Split", "mAP %", "R1 %", "R5 %", "R10 %", "Queries", "Gallery")
#: Shown first, in this order; other protocols follow by name.
PROTOCOL_ORDER = ("cross-camera", "standard", "sysu-all-search", "sysu-indoor-search")


def _is_scores(v) -> bool:
    return isinstance(v, dict) and "mAP" in v


def protocols(scores: dict) -> dict[str, dict[str, dict]]:
    """``{protocol: {split: scores}}`` from either record shape."""
    if not isinstance(scores, dict) or not scores:
        return {}
    if isinstance(scores.get("protocols"), dict):
        return {p: {s: v for s, v in splits.items() if _is_scores(v)}
                for p, splits in scores["protocols"].items() if isinstance(splits, dict)}
    flat = {s: v for s, v in scores.items() if _is_scores(v)}
    return {"standard": flat} if flat else {}


def headline(scores: dict) -> dict:
    """The operator's headline scores (cross-camera, overall), with ``protocol`` and ``split``."""
    if not isinstance(scores, dict) or not scores:
        return {}
    h = scores.get("headline")
    if _is_scores(h):
        return dict(h)
    if _is_scores(scores):
        return dict(scores)
    prot = protocols(scores)
    for p in PROTOCOL_ORDER + tuple(sorted(prot)):
        splits = prot.get(p, {})
        for s in ("overall", "all", *sorted(splits)):
            if s in splits:
                return {"protocol": p, "split": s, **splits[s]}
    return {}


def pct(v) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return ""
    return f"{100 * v if v <= 1.0 else v:.1f}"


def rows(scores: dict) -> list[tuple[str, str, dict]]:
    """(protocol, split, scores) in display order: protocols as PROTOCOL_ORDER, "overall" first."""
    prot = protocols(scores)
    out = []
    for p in [p for p in PROTOCOL_ORDER if p in prot] + sorted(set(prot) - set(PROTOCOL_ORDER)):
        splits = prot[p]
        for s in sorted(splits, key=lambda x: (x not in ("overall", "all"), x)):
            out.append((p, s, splits[s]))
    return out


def headline_text(scores: dict) -> str:
    h = headline(scores)
    if not h:
        return ""
    where = f"{h.get('protocol', 'standard')}, {h.get('split', 'overall')}"
    return f"mAP {pct(h.get('mAP'))}% · Rank-1 {pct(h.get('rank1'))}% ({where})"


class EvalTable(QTableWidget):
    """Every protocol and split of one evaluation record; the headline row in bold."""

    def __init__(self, parent=None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.verticalHeader().hide()
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setAlternatingRowColors(True)
        h = self.horizontalHeader()
        h.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        h.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # "cross-resolution: hi…-> low-res" keeps both ends
        self.horizontalHeaderItem(0).setToolTip(
            "cross-camera: the query's whole camera is left out of the gallery (the operator's question); "
            "standard: only same-camera images of the same person are ignored (the papers' protocol)")

    def set_scores(self, scores: dict) -> None:
        data = rows(scores)
        h = headline(scores)
        self.setRowCount(len(data))
        for i, (p, s, v) in enumerate(data):
            cells = [p, s, pct(v.get("mAP")), pct(v.get("rank1")), pct(v.get("rank5")), pct(v.get("rank10")),
                     f"{v['queries']:,}" if isinstance(v.get("queries"), int) else "",
                     f"{v['gallery']:,}" if isinstance(v.get("gallery"), int) else ""]
            bold = h.get("protocol", "standard") == p and h.get("split") == s
            for c, text in enumerate(cells):
                it = QTableWidgetItem(text)
                it.setToolTip(text)
                if c >= 2:
                    it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if bold:
                    f = it.font()
                    f.setBold(True)
                    it.setFont(f)
                    it.setToolTip("the headline score")
                self.setItem(i, c, it)
