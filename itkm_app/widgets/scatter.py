"""A 2-D scatter view for 100k+ points: categories, hover, click, rectangle and lasso selection.

Built for size: one ``ScatterPlotItem`` per colour (not per point), each drawn in pixel mode
with a cached, pen-less symbol, so a frame is a handful of ``drawPixmapFragments`` calls; hover
and click use a KD-tree over the 2-D coordinates (no per-point Python objects anywhere);
selection tests points against the rectangle or lasso polygon with vectorised numpy.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtGui
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import QGraphicsPathItem

from .. import theme

MODES = ("pan", "rect", "lasso")


def points_in_polygon(xy: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``xy`` inside polygon ``poly`` (even-odd rule), vectorised."""
    x, y = xy[:, 0], xy[:, 1]
    inside = np.zeros(len(xy), dtype=bool)
    if len(poly) < 3:
        return inside
    # bounding box first: most points of a big plot are far outside a lasso
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    cand = np.flatnonzero((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]))
    if not len(cand):
        return inside
    cx, cy = x[cand], y[cand]
    res = np.zeros(len(cand), dtype=bool)
    xj, yj = poly[-1]
    for xi, yi in poly:
        cond = (yi > cy) != (yj > cy)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = (xj - xi) * (cy - yi) / (yj - yi) + xi
        res ^= cond & (cx < xcross)
        xj, yj = xi, yi
    inside[cand] = res
    return inside


#: Points drawn per frame while the view is moving (pan/zoom); all of them once it settles.
LOD_BUDGET = 25_000
#: Milliseconds without a range change after which the full-detail frame is drawn.
SETTLE_MS = 180


class PointCloudItem(pg.GraphicsObject):
    """All points of a scatter in one item: one ``drawPixmapFragments`` call per frame.

    Each colour's marker is pre-rendered once into an atlas pixmap; a frame maps the points to
    device pixels with numpy, culls those outside the viewport, and hands one fragment per
    point to Qt.  While the view is moving (``set_lod(True)``), at most :data:`LOD_BUDGET`
    visible points are drawn -- a fixed random subset, so density is preserved and nothing
    flickers -- and the full set is drawn once the view settles.
    """

    def __init__(self, size: int = 5) -> None:
        super().__init__()
        from pyqtgraph.Qt import internals

        self.size = int(size)
        self.lod = False
        self._x = np.zeros(0)
        self._y = np.zeros(0)
        self._src = np.zeros(0, np.float64)
        self._rank = np.zeros(0, np.int64)
        self._atlas = None
        self._atlas_dpr = 0.0
        self._colors: list[QColor] = []
        self._bounds = QRectF()
        self._frags = internals.PrimitiveArray(QtGui.QPainter.PixmapFragment, 10)
        self.drawn = 0  # points drawn in the last frame (tests, benchmark)
        self.setFlag(self.GraphicsItemFlag.ItemUsesExtendedStyleOption, False)

    def set_points(self, x: np.ndarray, y: np.ndarray, slot: np.ndarray, colors: list[QColor]) -> None:
        """``slot[i]`` indexes ``colors``; points are drawn in slot order (slot 0 at the bottom)."""
        self.prepareGeometryChange()
        order = np.argsort(slot, kind="stable")
        self._x = np.asarray(x, np.float64)[order]
        self._y = np.asarray(y, np.float64)[order]
        self._slot = np.asarray(slot, np.int64)[order]
        self._colors = list(colors)
        rng = np.random.default_rng(12345)
        self._rank = rng.permutation(len(self._x)).astype(np.int64)
        self._atlas = None
        if len(self._x):
            self._bounds = QRectF(float(self._x.min()), float(self._y.min()),
                                  float(np.ptp(self._x)) or 1e-6, float(np.ptp(self._y)) or 1e-6)
        else:
            self._bounds = QRectF()
        self.update()

    def set_lod(self, on: bool) -> None:
        if on != self.lod:
            self.lod = on
            if not on:
                self.update()

    def _build_atlas(self, dpr: float) -> None:
        from PySide6.QtGui import QPainter, QPixmap

        cell = self.size + 2
        pm = QPixmap(int(np.ceil(cell * dpr)) * max(1, len(self._colors)), int(np.ceil(cell * dpr)))
        pm.setDevicePixelRatio(dpr)
        pm.fill(Qt.GlobalColor.transparent)
        p = QPainter(pm)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(Qt.PenStyle.NoPen)
        for i, c in enumerate(self._colors):
            p.setBrush(c)
            p.drawEllipse(QRectF(i * cell + 1, 1, self.size, self.size))
        p.end()
        self._atlas, self._atlas_dpr = pm, dpr
        self._cell_px = cell * dpr
        self._src = self._slot.astype(np.float64) * self._cell_px

    # pyqtgraph's ViewBox asks items for their data range (auto-range) and pixel padding
    def dataBounds(self, ax: int, frac: float = 1.0, orthoRange=None):  # noqa: N802
        if not len(self._x):
            return None, None
        v = self._x if ax == 0 else self._y
        return float(v.min()), float(v.max())

    def pixelPadding(self) -> float:  # noqa: N802
        return self.size / 2 + 1

    def boundingRect(self) -> QRectF:  # noqa: N802
        if self._bounds.isNull():
            return QRectF()
        px, py = self.pixelVectors()
        pad_x = (px.length() if px is not None else 0) * (self.size + 2)
        pad_y = (py.length() if py is not None else 0) * (self.size + 2)
        return self._bounds.adjusted(-pad_x, -pad_y, pad_x, pad_y)

    def paint(self, p, option, widget=None) -> None:
        self.drawn = 0
        if not len(self._x):
            return
        dpr = widget.devicePixelRatioF() if widget is not None else 1.0
        if self._atlas is None or dpr != self._atlas_dpr:
            self._build_atlas(dpr)
        tr = p.transform()
        px = tr.m11() * self._x + tr.m21() * self._y + tr.dx()
        py = tr.m12() * self._x + tr.m22() * self._y + tr.dy()
        vp = p.viewport()
        m = self.size
        vis = (px > vp.left() - m) & (px < vp.right() + m) & (py > vp.top() - m) & (py < vp.bottom() + m)
        n_vis = int(np.count_nonzero(vis))
        if self.lod and n_vis > LOD_BUDGET:
            vis &= self._rank < int(len(self._rank) * LOD_BUDGET / n_vis)
        idx = np.flatnonzero(vis)
        if not len(idx):
            return
        self._frags.resize(len(idx))
        f = self._frags.ndarray()
        half = self.size / 2 + 1
        f[:, 0] = px[idx]
        f[:, 1] = py[idx]
        f[:, 2] = self._src[idx]
        f[:, 3] = 0.0
        f[:, 4] = self._cell_px
        f[:, 5] = self._cell_px
        f[:, 6] = 1.0 / dpr
        f[:, 7] = 1.0 / dpr
        f[:, 8] = 0.0
        f[:, 9] = 1.0
        del half
        p.resetTransform()
        p.drawPixmapFragments(*self._frags.drawargs(), self._atlas)
        self.drawn = len(idx)


class SelectViewBox(pg.ViewBox):
    """A ViewBox whose left drag pans, or draws a selection rectangle / lasso (by mode).

    ``sigSelected(ndarray[M, 2])``: the selection polygon in data coordinates.
    """

    sigSelected = Signal(object)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mode = "pan"
        self._path: list[QPointF] = []
        self._shape = QGraphicsPathItem()
        pen = QPen(theme.palette().color(QPalette.ColorRole.Highlight))
        pen.setCosmetic(True)
        pen.setWidth(2)
        pen.setStyle(Qt.PenStyle.DashLine)
        self._shape.setPen(pen)
        self._fill = QColor(theme.palette().color(QPalette.ColorRole.Highlight))
        self._fill.setAlpha(40)
        self._shape.setBrush(self._fill)
        self._shape.setZValue(1e9)
        self._shape.hide()
        self.addItem(self._shape, ignoreBounds=True)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode

    def mouseDragEvent(self, ev, axis=None):  # noqa: N802 - pyqtgraph API
        if self.mode == "pan" or ev.button() != Qt.MouseButton.LeftButton or axis is not None:
            return super().mouseDragEvent(ev, axis)
        ev.accept()
        p = self.mapSceneToView(ev.scenePos())
        if ev.isStart():
            start = self.mapSceneToView(ev.buttonDownScenePos())
            self._path = [start]
            self._shape.setBrush(self._fill)
        self._path.append(p)
        poly = self._polygon()
        path = QPainterPath()
        if len(poly):
            path.moveTo(QPointF(*poly[0]))
            for q in poly[1:]:
                path.lineTo(QPointF(*q))
            path.closeSubpath()
        self._shape.setPath(path)
        self._shape.show()
        if ev.isFinish():  # the outline stays until the next selection or clear_selection()
            # ... without its tint: the selected points keep their own colours
            self._shape.setBrush(Qt.BrushStyle.NoBrush)
            self.sigSelected.emit(poly)
            self._path = []

    def clear_selection(self) -> None:
        self._shape.hide()
        self._path = []

    def _polygon(self) -> np.ndarray:
        if not self._path:
            return np.zeros((0, 2))
        if self.mode == "rect":
            a, b = self._path[0], self._path[-1]
            return np.array([[a.x(), a.y()], [b.x(), a.y()], [b.x(), b.y()], [a.x(), b.y()]])
        return np.array([[q.x(), q.y()] for q in self._path])


class ScatterView(pg.PlotWidget):
    """Categorised scatter plot.

    Signals: ``pointHovered(int)`` (row, or -1 when the mouse leaves the points),
    ``pointClicked(int)`` (row), ``selectionMade(ndarray)`` (rows inside a rectangle / lasso).
    """

    pointHovered = Signal(int)
    pointClicked = Signal(int)
    selectionMade = Signal(object)

    def __init__(self, parent=None, point_size: int = 5) -> None:
        self.vb = SelectViewBox()
        super().__init__(parent, viewBox=self.vb)
        self.point_size = point_size
        self.xy = np.zeros((0, 2), np.float32)
        self.codes = np.zeros(0, np.int64)
        self.cloud = PointCloudItem(point_size)
        self.addItem(self.cloud)
        self._tree = None
        self._hover = -1
        self.plotItem.hideAxis("left")
        self.plotItem.hideAxis("bottom")
        self.plotItem.setMenuEnabled(False)
        self.plotItem.hideButtons()
        text = theme.palette().color(QPalette.ColorRole.Text)
        hl = theme.palette().color(QPalette.ColorRole.Highlight)
        self.selected_mark = pg.ScatterPlotItem(size=point_size + 2, pen=pg.mkPen(text, width=1), brush=None,
                                                pxMode=True, hoverable=False)
        self.selected_mark.setZValue(10)
        self.highlight = pg.ScatterPlotItem(size=point_size + 10, pen=pg.mkPen(text, width=2.5), brush=None,
                                            pxMode=True, hoverable=False)
        self.highlight.setZValue(11)
        self.hover_mark = pg.ScatterPlotItem(size=point_size + 6, pen=pg.mkPen(hl, width=2), brush=None,
                                             pxMode=True, hoverable=False)
        self.hover_mark.setZValue(12)
        for it in (self.selected_mark, self.highlight, self.hover_mark):
            self.addItem(it, ignoreBounds=True)
        # level of detail: cheap frames while the view moves, full detail once it settles
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(lambda: self.cloud.set_lod(False))
        self.vb.sigRangeChanged.connect(self._on_range_changed)
        self._proxy = pg.SignalProxy(self.scene().sigMouseMoved, rateLimit=60, slot=self._on_move)
        self.scene().sigMouseClicked.connect(self._on_click)
        self.vb.sigSelected.connect(self._on_polygon)
        theme.style_plot_widget(self)

    def set_point_size(self, size: int) -> None:
        self.point_size = int(size)
        self.cloud.size = int(size)
        self.cloud._atlas = None
        self.highlight.setSize(size + 10)
        self.hover_mark.setSize(size + 6)
        self.selected_mark.setSize(size + 2)
        self.cloud.update()

    def _on_range_changed(self, *_args) -> None:
        self.cloud.set_lod(True)
        self._settle.start()

    # -- data ----------------------------------------------------------------------------------
    def set_points(self, xy: np.ndarray, codes: np.ndarray, colors: list[QColor], *, keep_view: bool = False) -> None:
        """Show ``xy`` (N x 2); ``codes[i]`` indexes ``colors``; ``-1`` = no category (grey, at the bottom)."""
        self.xy = np.ascontiguousarray(xy, dtype=np.float32)
        self._tree = None  # built on the first hover / click (not needed to draw)
        self.highlight.clear()
        self.hover_mark.clear()
        self.selected_mark.clear()
        self.set_codes(codes, colors)
        if not keep_view and len(self.xy):
            self.vb.autoRange(padding=0.04)

    def set_codes(self, codes: np.ndarray, colors: list[QColor]) -> None:
        """Recolour without touching the layout."""
        self.codes = np.asarray(codes, dtype=np.int64)
        muted = QColor(theme.MUTED)
        muted.setAlpha(140)
        cols = [muted]
        for c in colors:
            c = QColor(c)
            c.setAlpha(230)
            cols.append(c)
        slot = np.where(self.codes >= 0, self.codes + 1, 0) if len(self.codes) else np.zeros(0, np.int64)
        self.cloud.set_points(self.xy[:, 0], self.xy[:, 1], slot, cols)

    def clear_points(self) -> None:
        self.set_points(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), [])

    # -- interaction ----------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        self.vb.set_mode(mode)
        self.setCursor(Qt.CursorShape.CrossCursor if mode != "pan" else Qt.CursorShape.ArrowCursor)

    def nearest(self, scene_pos, radius_px: float = 8.0) -> int:
        """Row of the point nearest to ``scene_pos`` within ``radius_px`` pixels, else -1."""
        if not len(self.xy) or not self.vb.sceneBoundingRect().contains(scene_pos):
            return -1
        tree = self.kdtree()
        p = self.vb.mapSceneToView(scene_pos)
        # pixel radius -> data units, per axis (the view need not be isotropic)
        px = self.vb.viewPixelSize()
        sx, sy = max(px[0], 1e-12), max(px[1], 1e-12)
        q = np.array([p.x() / sx, p.y() / sy])
        # query in pixel-scaled space: find candidates with a generous data radius first
        r_data = radius_px * max(sx, sy)
        cand = tree.query_ball_point([p.x(), p.y()], r_data)
        if not cand:
            return -1
        cand = np.asarray(cand)
        d = np.hypot(self.xy[cand, 0] / sx - q[0], self.xy[cand, 1] / sy - q[1])
        i = int(np.argmin(d))
        return int(cand[i]) if d[i] <= radius_px else -1

    def kdtree(self):
        """KD-tree over the 2-D points for hover and click (built once per layout)."""
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.xy)
        return self._tree

    def _on_move(self, args) -> None:
        row = self.nearest(args[0])
        if row != self._hover:
            self._hover = row
            if row >= 0:
                self.hover_mark.setData(x=[self.xy[row, 0]], y=[self.xy[row, 1]])
            else:
                self.hover_mark.clear()
            self.pointHovered.emit(row)

    def _on_click(self, ev) -> None:
        if ev.button() != Qt.MouseButton.LeftButton or ev.double():
            return
        row = self.nearest(ev.scenePos())
        if row >= 0:
            ev.accept()
            self.select_row(row)
            self.pointClicked.emit(row)

    def select_row(self, row: int) -> None:
        if 0 <= row < len(self.xy):
            self.highlight.setData(x=[self.xy[row, 0]], y=[self.xy[row, 1]])
        else:
            self.highlight.clear()

    def _on_polygon(self, poly: np.ndarray) -> None:
        rows = np.flatnonzero(points_in_polygon(self.xy, poly)) if len(self.xy) else np.zeros(0, np.int64)
        self.mark_selection(rows)
        self.selectionMade.emit(rows)

    def mark_selection(self, rows: np.ndarray) -> None:
        """Ring the selected points (up to a few thousand; a bigger set keeps only its outline)."""
        if 0 < len(rows) <= 3000:
            self.selected_mark.setData(x=self.xy[rows, 0], y=self.xy[rows, 1])
        else:
            self.selected_mark.clear()

    def visible_range(self) -> QRectF:
        return self.vb.viewRect()

    def restyle(self) -> None:
        """Re-read palette colours (after a light/dark switch)."""
        theme.style_plot_widget(self)
        text = theme.palette().color(QPalette.ColorRole.Text)
        self.highlight.setPen(pg.mkPen(text, width=2.5))
        self.hover_mark.setPen(pg.mkPen(theme.palette().color(QPalette.ColorRole.Highlight), width=2))
        self.selected_mark.setPen(pg.mkPen(text, width=1))
