"""A grid of crops with badges (similarity, camera, scenario, group): model, delegate, view.

``QListView`` in icon mode over :class:`ThumbModel`; the delegate paints each cell (thumbnail
from :class:`ThumbnailCache`, a placeholder while it decodes, then the badges), so a grid of
thousands costs one model and no per-item widgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import QAbstractListModel, QModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPen
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate, QStyleOptionViewItem

from .. import theme
from .thumbnails import ThumbnailCache

SCENARIO_SHORT = {
    "visible-infrared": "VI",
    "cross-resolution": "RES",
    "clothing-change": "CC",
    "cross-camera": "CAM",
}
GROUP_SHORT = {"visible": "vis", "infrared": "ir", "high-res": "hi", "low-res": "lo", "all": ""}
SCENARIO_COLORS = {s: theme.CATEGORICAL[i] for i, s in enumerate(SCENARIO_SHORT)}
#: Frame of a tile showing the query's person by the labels (person ids from the file names).
SAME_PERSON_COLOR = "#2ca02c"


def badge_legend() -> str:
    """What the tiles' marks mean, for a line under a grid (rich text)."""
    scen = " · ".join(f"<b>{short}</b> {name}" for name, short in SCENARIO_SHORT.items())
    groups = ", ".join(f"<b>{short}</b> {name}" for name, short in GROUP_SHORT.items() if short)
    must, cannot = DECISION_MARKS["must"], DECISION_MARKS["cannot"]
    return (f"{scen}; groups {groups} · <b>#N</b> identity (and its name) · "
            f"<span style='color:{SAME_PERSON_COLOR}'><b>green frame ✓</b></span> the query's person by the labels · "
            f"<span style='background:{must[1]};color:white'>&nbsp;<b>{must[0]} {must[2]}</b>&nbsp;</span> "
            f"<span style='background:{cannot[1]};color:white'>&nbsp;<b>{cannot[0]} {cannot[2]}</b>&nbsp;</span> "
            "your decisions (a band across the crop)")


@dataclass
class ThumbItem:
    image_id: int
    path: str
    camera: str = ""
    scenario: str = ""
    group: str = ""
    similarity: float | None = None
    identity: int | None = None
    person_id: int = -1
    caption: str = ""  # extra line (e.g. a time stamp)
    extra: dict = field(default_factory=dict)
    decision: str | None = None  # the operator's: "must" (same person as the query) or "cannot"
    name: str = ""  # the operator's name of the identity

    def tooltip(self) -> str:
        lines = [f"<b>image {self.image_id}</b>", self.path]
        if self.similarity is not None:
            lines.append(f"similarity {self.similarity:.3f}")
        lines.append(f"camera {self.camera} &middot; {self.scenario} / {self.group}")
        if self.identity is not None and self.identity >= 0:
            lines.append(f"identity {self.identity}" + (f" <b>{self.name}</b>" if self.name else ""))
        if self.person_id >= 0:
            lines.append(f"person id (labels) {self.person_id}")
        if self.caption:
            lines.append(self.caption)
        if self.extra.get("same_person"):
            lines.append("<b>same person as the query</b> (labels)")
        if self.decision:
            lines.append("you confirmed: same person" if self.decision == "must" else "you rejected: not this person")
        return "<br>".join(lines)


ItemRole = Qt.ItemDataRole.UserRole + 1


class ThumbModel(QAbstractListModel):
    def __init__(self, cache: ThumbnailCache, parent=None) -> None:
        super().__init__(parent)
        self.cache = cache
        self.items: list[ThumbItem] = []
        self._row_of_path: dict[str, list[int]] = {}
        cache.ready.connect(self._on_ready)

    def set_items(self, items: list[ThumbItem]) -> None:
        self.beginResetModel()
        self.items = list(items)
        self._row_of_path = {}
        for i, it in enumerate(self.items):
            self._row_of_path.setdefault(it.path, []).append(i)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self.items)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        it = self.items[index.row()]
        if role == ItemRole:
            return it
        if role == Qt.ItemDataRole.ToolTipRole:
            return it.tooltip()
        if role == Qt.ItemDataRole.DisplayRole:
            return f"{it.camera} {it.similarity:.2f}" if it.similarity is not None else it.camera
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return f"image {it.image_id} from camera {it.camera}"
        return None

    def _on_ready(self, path: str) -> None:
        for r in self._row_of_path.get(path, ()):
            idx = self.index(r)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])


class ThumbDelegate(QStyledItemDelegate):
    """Thumbnail on top, similarity + camera on one line, scenario/group badge on the next."""

    PAD = 4
    TEXT_LINES = 2
    #: A cell never grows wider than this for its text (a long camera name is then elided).
    MAX_TEXT_W = 210

    def __init__(self, cache: ThumbnailCache, parent=None) -> None:
        super().__init__(parent)
        self.cache = cache
        self.sample = "0.000  cam-00"  # the longest first line of the grid's items (set_items)

    def cell_size(self, option_font: QFont) -> QSize:
        from PySide6.QtGui import QFontMetrics

        fm = QFontMetrics(option_font)
        text_w = min(fm.horizontalAdvance(self.sample) + 6, self.MAX_TEXT_W)
        w = max(self.cache.box.width(), fm.horizontalAdvance("0.000  cam-00"), text_w) + 2 * self.PAD
        h = self.cache.box.height() + self.TEXT_LINES * (fm.height() + 2) + 3 * self.PAD
        return QSize(w, h)

    @staticmethod
    def first_line(it: "ThumbItem") -> str:
        return f"{it.similarity:.3f}  {it.camera}" if it.similarity is not None else (it.caption or it.camera)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802
        return self.cell_size(option.font)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        it: ThumbItem = index.data(ItemRole)
        if it is None:
            return
        pal: QPalette = option.palette
        painter.save()
        r = option.rect
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        hovered = bool(option.state & QStyle.StateFlag.State_MouseOver)
        if selected:
            painter.fillRect(r, pal.color(QPalette.ColorRole.Highlight))
        elif hovered:
            painter.fillRect(r, pal.color(QPalette.ColorRole.AlternateBase))
        box = self.cache.box
        img_rect = QRect(r.x() + (r.width() - box.width()) // 2, r.y() + self.PAD, box.width(), box.height())
        pm = self.cache.get(it.path)
        if pm is not None:
            x = img_rect.x() + (img_rect.width() - pm.width()) // 2
            y = img_rect.y() + (img_rect.height() - pm.height()) // 2
            painter.drawPixmap(x, y, pm)
        else:
            painter.fillRect(img_rect, pal.color(QPalette.ColorRole.Mid if not self.cache.failed(it.path)
                                                 else QPalette.ColorRole.Dark))
            if self.cache.failed(it.path):
                painter.setPen(pal.color(QPalette.ColorRole.Text))
                painter.drawText(img_rect, Qt.AlignmentFlag.AlignCenter, "unreadable")
        text_col = pal.color(QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text)
        fm = option.fontMetrics
        line_h = fm.height() + 2
        y = img_rect.bottom() + self.PAD
        line1 = QRect(r.x() + self.PAD, y, r.width() - 2 * self.PAD, line_h)
        painter.setPen(text_col)
        f = QFont(option.font)
        if it.similarity is not None:
            f.setBold(True)
            painter.setFont(f)
            sim = f"{it.similarity:.3f}"
            painter.drawText(line1, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, sim)
            f.setBold(False)
            painter.setFont(f)
            cam = fm.elidedText(it.camera, Qt.TextElideMode.ElideRight, line1.width() - fm.horizontalAdvance(sim) - 6)
            painter.drawText(line1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, cam)
        else:
            label = it.caption or it.camera
            painter.drawText(line1, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter,
                             fm.elidedText(label, Qt.TextElideMode.ElideRight, line1.width()))
        # scenario / group badge, coloured by scenario (a data colour)
        line2 = QRect(line1.x(), line1.bottom() + 1, line1.width(), line_h)
        badge = SCENARIO_SHORT.get(it.scenario, it.scenario[:4])
        g = GROUP_SHORT.get(it.group, it.group)
        text = f"{badge} {g}".strip() if badge else g
        if text:
            bw = min(line2.width(), fm.horizontalAdvance(text) + 10)
            brect = QRect(line2.x(), line2.y() + 1, bw, line_h - 2)
            col = QColor(SCENARIO_COLORS.get(it.scenario, theme.MUTED))
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(col)
            painter.drawRoundedRect(brect, 4, 4)
            painter.setPen(QPen(QColor("#ffffff") if col.lightness() < 150 else QColor("#000000")))
            painter.drawText(brect, Qt.AlignmentFlag.AlignCenter, text)
        if it.identity is not None and it.identity >= 0:
            painter.setPen(text_col)
            label = f"#{it.identity}" + (f" {it.name}" if it.name else "")
            room = line2.width() - (bw + 6 if text else 0)
            painter.drawText(line2, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             fm.elidedText(label, Qt.TextElideMode.ElideRight, max(room, 0)))
        if it.extra.get("same_person"):
            green = QColor(SAME_PERSON_COLOR)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(QPen(green, 3))
            painter.drawRect(img_rect.adjusted(1, 1, -1, -1))
            tick = QRect(img_rect.right() - 17, img_rect.y() + 2, 16, 16)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(green)
            painter.drawEllipse(tick)
            painter.setPen(QPen(QColor("#ffffff")))
            painter.drawText(tick, Qt.AlignmentFlag.AlignCenter, "✓")
        if it.decision:  # last: the operator's own mark is never under another one
            paint_decision(painter, img_rect, it.decision, fm)
        painter.restore()


#: The operator's decisions: (mark, colour, words).  Drawn as a solid band across the crop's foot,
#: unlike the labels' small round tick in the top-right corner (the two were the same mark there).
DECISION_MARKS = {"must": ("\u2713", "#2e7d32", "same"), "cannot": ("\u2717", "#c62828", "not")}


def decision_rect(img_rect: QRect, fm) -> QRect:
    """Where the decision band is drawn: the full width of the crop, at its foot."""
    h = fm.height() + 4
    return QRect(img_rect.x(), img_rect.bottom() - h + 1, img_rect.width(), h)


def paint_decision(painter: QPainter, img_rect: QRect, decision: str, fm=None) -> None:
    """The operator's decision as a solid band with a mark and words across the crop's foot."""
    from PySide6.QtGui import QFontMetrics

    mark, colour, words = DECISION_MARKS.get(decision, ("?", theme.MUTED, "?"))
    f = QFont(painter.font())
    f.setBold(True)
    if f.pointSizeF() > 0:
        f.setPointSizeF(f.pointSizeF() * 0.9)
    painter.setFont(f)
    fm = QFontMetrics(f)
    rect = decision_rect(img_rect, fm)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(colour))
    painter.drawRect(rect)
    painter.setPen(QPen(QColor("#ffffff")))
    text = f"{mark} {words}"
    if fm.horizontalAdvance(text) > rect.width() - 2:
        text = mark
    painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)


class ThumbGrid(QListView):
    """Icon-mode list of :class:`ThumbItem`.  ``itemActivated(ThumbItem)`` on double-click/Enter.

    Decision keys: ``Y`` / ``N`` emit ``decisionKey("must" | "cannot")`` (the panel decides what
    the selection is paired with); an arrow key that cannot move further (first/last tile) emits
    ``stepped(-1 | +1)`` so a panel can page (the review queue's next pair)."""

    itemActivated = Signal(object)
    currentItemChanged = Signal(object)
    decisionKey = Signal(str)
    stepped = Signal(int)

    def __init__(self, cache: ThumbnailCache, parent=None) -> None:
        super().__init__(parent)
        self.cache = cache
        self.thumb_model = ThumbModel(cache, self)
        self.setModel(self.thumb_model)
        self.delegate = ThumbDelegate(cache, self)
        self.setItemDelegate(self.delegate)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setSpacing(4)
        self.setWrapping(True)
        self.setMouseTracking(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setGridSize(self.delegate.cell_size(self.font()) + QSize(6, 6))
        self.activated.connect(self._on_activated)
        self.selectionModel().currentChanged.connect(
            lambda cur, _prev: self.currentItemChanged.emit(cur.data(ItemRole) if cur.isValid() else None))

    def set_items(self, items: list[ThumbItem]) -> None:
        # cells wide enough for the items' own first lines ("0.892 demoB:vis-b", "demoB:ir-a 00:00:03"
        # were cut to "0.892 demo…"), up to the delegate's limit
        sample = max((ThumbDelegate.first_line(it) for it in items), key=len, default="0.000  cam-00")
        if sample != self.delegate.sample:
            self.delegate.sample = sample
            self.setGridSize(self.delegate.cell_size(self.font()) + QSize(6, 6))
        self.thumb_model.set_items(items)
        self.scrollToTop()

    def items(self) -> list[ThumbItem]:
        return self.thumb_model.items

    def selected_items(self) -> list[ThumbItem]:
        return [i.data(ItemRole) for i in self.selectionModel().selectedIndexes()]

    def keyPressEvent(self, e) -> None:  # noqa: N802 - Qt API
        key, mods = e.key(), e.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        if mods == Qt.KeyboardModifier.NoModifier and key in (Qt.Key.Key_Y, Qt.Key.Key_N):
            self.decisionKey.emit("must" if key == Qt.Key.Key_Y else "cannot")
            e.accept()
            return
        before = self.currentIndex().row()
        super().keyPressEvent(e)
        step = {Qt.Key.Key_Right: 1, Qt.Key.Key_Down: 1, Qt.Key.Key_Left: -1, Qt.Key.Key_Up: -1}.get(key)
        if step is not None and self.currentIndex().row() == before and (
                before == (len(self.items()) - 1 if step > 0 else 0) or before < 0):
            self.stepped.emit(step)

    def current_item(self) -> ThumbItem | None:
        idx = self.currentIndex()
        return idx.data(ItemRole) if idx.isValid() else None

    def advance(self) -> None:
        """Make the next tile current (after a decision), keeping the view on it."""
        r = self.currentIndex().row() + 1
        if 0 <= r < len(self.items()):
            idx = self.thumb_model.index(r)
            self.setCurrentIndex(idx)
            self.scrollTo(idx)

    def refresh_items(self) -> None:
        """Repaint after items' fields (decision, identity) changed in place."""
        self.viewport().update()

    def _on_activated(self, index: QModelIndex) -> None:
        it = index.data(ItemRole)
        if it is not None:
            self.itemActivated.emit(it)

    def changeEvent(self, e) -> None:  # noqa: N802
        super().changeEvent(e)
        from PySide6.QtCore import QEvent

        if e.type() == QEvent.Type.FontChange:
            self.setGridSize(self.delegate.cell_size(self.font()) + QSize(6, 6))
