"""The Training view's live charts: loss terms, cluster count and pseudo-label quality per epoch.

The layout never changes during a run (fixed value-axis width, legends out of the size
negotiation) and changed curves reach pyqtgraph a slice per event-loop turn: on a busy machine
the GUI thread gets a third of a core, and a re-layout or a whole set of curves at once froze the
window (``docs/adr/0011-live-charts-fixed-layout-sliced-updates.md``).
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QSizePolicy

from itkm_engine.progress import ProgressEvent
from itkm_engine.vocabulary import STAGE_LABELS

from .. import theme

__all__ = ["Curves", "AXIS_WIDTH", "LEGEND_LINE", "LOSS_SKIP"]

LOSS_SKIP = {"loss", "steps", "seconds"}


#: Width of the charts' value axes in pixels (fixed: see Curves.__init__).
AXIS_WIDTH = 46
#: Height of one legend line in pixels.
LEGEND_LINE = 19
#: Size of the charts' titles.
TITLE_SIZE = "9pt"
#: The longest name a legend shows (a Stage III loss term): legends are this wide ("homog", "instance_centr" were cut).
LEGEND_SAMPLE = "instance_centroid"
#: Heights (fraction of the plot, from the bottom) of the stage marks' labels, taken in turn so
#: neighbouring marks ("R1 III" and "R2 I" two epochs apart) never share a line.
MARK_HEIGHTS = (0.93, 0.78)


class Curves(pg.GraphicsLayoutWidget):
    """Three stacked plots: loss terms, cluster count, pseudo-label quality (when ids are known).

    The x axis counts epochs across all stages and rounds ("training epochs"); live step events
    land between the integers, the end of an epoch on the next integer.
    """

    #: Curves are redrawn at most this often while a job runs (three plots with axes and
    #: legends cost tens of ms to paint; the event loop must stay responsive meanwhile).
    REDRAW_MS = 400
    #: Live points per epoch and loss term, however many steps an epoch has.
    STEP_POINTS = 25

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        from PySide6.QtCore import QTimer

        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(self.REDRAW_MS)
        self._redraw_timer.timeout.connect(self.redraw)
        # redraw() hands the series to the plots a few at a time, one slice per event-loop turn
        self._slice_timer = QTimer(self)
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(0)
        self._slice_timer.timeout.connect(self._redraw_slice)
        self._queue: list[tuple[str, str]] = []
        self._dirty: set[tuple[str, str]] = set()
        self.items: dict[tuple[str, str], pg.PlotDataItem] = {}
        theme.style_plot_widget(self)
        from PySide6.QtGui import QFontMetrics

        legend_w = QFontMetrics(self.font()).horizontalAdvance(LEGEND_SAMPLE) + 44  # sample line + gaps
        # short titles in a small type: a long one set the charts' minimum width (the legends were cut
        # off at the window's edge) and three large ones took a fifth of a 640-pixel-high window
        self.loss_plot = self.addPlot(row=0, col=0)
        self.cluster_plot = self.addPlot(row=1, col=0)
        self.quality_plot = self.addPlot(row=2, col=0)
        for plot, title in ((self.loss_plot, "Loss terms"), (self.cluster_plot, "Clusters"),
                            (self.quality_plot, "Pseudo-label quality")):
            plot.setTitle(title, size=TITLE_SIZE)
        self.quality_plot.titleLabel.setToolTip("Precision, recall and ARI of the pseudo-labels: only when the "
                                                "file names carry person ids")
        self.plots = {"loss": self.loss_plot, "clusters": self.cluster_plot, "quality": self.quality_plot}
        # legends beside the plots, in their own column: inside they covered the curves
        self.legends = {}
        for row, p in enumerate((self.loss_plot, self.cluster_plot, self.quality_plot)):
            p.showGrid(x=True, y=True, alpha=0.15)
            p.setMenuEnabled(False)
            legend = pg.LegendItem(labelTextColor=theme.palette().color(QPalette.ColorRole.Text),
                                   verSpacing=-4)
            self.addItem(legend, row=row, col=1)
            legend.setFixedWidth(legend_w)
            # Neither a legend's entries nor the tick labels may resize the plots during a run: a
            # resize regenerates all six axes with their grids (~15 ms of CPU, ~50 ms of a busy
            # machine's time) and it came with every new curve and every new order of magnitude.
            legend.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Ignored)
            legend.setMinimumHeight(0)
            legend.setPreferredHeight(0)
            p.getAxis("left").setWidth(AXIS_WIDTH)
            # tick labels that would touch are left out (a short plot drew 300/200/100 over each other)
            p.getAxis("left").setStyle(hideOverlappingLabels=True, maxTextLevel=0,
                                       textFillLimits=[(0, 0.7), (2, 0.5), (4, 0.3)])
            if p is not self.quality_plot:  # the x axes are linked: only the lowest one says the numbers
                p.getAxis("bottom").setStyle(showValues=False)
            p.legend = legend
            self.legends[row] = legend
            theme.style_plot(p)
            # Ranges are set by redraw(), growing in steps, so axes rarely change; with the text
            # items cached as pixmaps a live update repaints in ~10 ms instead of ~50 ms.
            p.disableAutoRange()
            theme.cache_plot_text(p)
        # the loss plot holds most curves (and the longest legend): 3/7 of the height
        # the lowest plot also holds the x axis' numbers and name
        for row, (plot, stretch) in enumerate(((self.loss_plot, 3), (self.cluster_plot, 2), (self.quality_plot, 3))):
            plot.setPreferredHeight(40)  # below any real size: the stretch shares the rest
            self.ci.layout.setRowStretchFactor(row, stretch)
        self.cluster_plot.setXLink(self.loss_plot)
        self.quality_plot.setXLink(self.loss_plot)
        self.quality_plot.setYRange(-0.02, 1.05, padding=0)
        self.planned_epochs = 0.0  # x extent the live run will reach (set by the panel)
        self.quality_plot.setLabel("bottom", "epochs (all stages and rounds)")
        self.hover_text = ""
        self._hover_proxy = pg.SignalProxy(self.scene().sigMouseMoved, rateLimit=30, slot=self._on_move)
        self.clear_all()

    def clear_all(self) -> None:
        """Forget the data.  The curve items stay (emptied or reused by the next redraw): creating
        a curve with its legend entry costs 5-10 ms, and the history reloads after every round."""
        for p in (self.loss_plot, self.cluster_plot, self.quality_plot):
            for item in list(getattr(p, "_markers", [])):
                p.removeItem(item)
            p._markers = []
        self.series: dict[tuple[str, str], tuple[list, list]] = {}
        self._dirty = set(self.items)
        self._last_bucket = None
        self.base_epoch = 0.0
        self.planned_epochs = 0.0
        self._stage_marks: set[tuple[int, str]] = set()

    def _add(self, plot_name: str, key: str, x: float, y: float) -> None:
        if y is None or not np.isfinite(y):
            return
        k = (plot_name, key)
        xs, ys = self.series.setdefault(k, ([], []))
        xs.append(x)
        ys.append(y)
        self._dirty.add(k)

    def mark_stage(self, round_no: int | None, stage: str, x: float) -> None:
        key = (round_no or 0, stage)
        if key in self._stage_marks or stage not in STAGE_LABELS:
            return
        self._stage_marks.add(key)
        # a stage's loss terms are not comparable with the next stage's: break the lines there
        for (plot_name, k), (xs, ys) in self.series.items():
            if plot_name == "loss" and xs and np.isfinite(ys[-1]):
                xs.append(x)
                ys.append(float("nan"))
                self._dirty.add((plot_name, k))
        numeral = STAGE_LABELS[stage].numeral
        # the round only where it starts: "R2 I", then "II", "III" (full labels overlapped at 1024 px)
        label = f"R{round_no} {numeral}" if round_no and stage == "stage1" else numeral
        pen = pg.mkPen(theme.secondary_text_color(), width=1, style=Qt.PenStyle.DotLine)
        height = MARK_HEIGHTS[(len(self._stage_marks) - 1) % len(MARK_HEIGHTS)]
        line = pg.InfiniteLine(pos=x, angle=90, pen=pen, label=label,
                               labelOpts={"position": height, "color": theme.secondary_text_color(),
                                          "anchors": [(0, 0.5), (0, 0.5)]})
        self.loss_plot.addItem(line)
        self.loss_plot._markers.append(line)

    def add_history(self, epoch_log: list[dict]) -> None:
        """Finished epochs from the workspace (one point per epoch and value)."""
        x = 0.0
        for row in epoch_log:
            v = row.get("values", {})
            self.mark_stage(row.get("round"), row.get("stage", ""), x)
            x += 1.0
            self._add_epoch_values(x, v)
        self.base_epoch = x
        self.redraw()

    def _add_epoch_values(self, x: float, v: dict) -> None:
        for k, val in v.items():
            if k in LOSS_SKIP or not isinstance(val, (int, float)):
                continue
            if k.startswith("loss") or k.endswith("loss") or k in ("i2t", "t2i", "sep", "separation", "mem",
                                                                   "cross", "instance", "homogeneous"):
                self._add("loss", k, x, float(val))
        for k in ("n_clusters",):
            if k in v:
                self._add("clusters", "clusters", x, float(v[k]))
        if "n_outliers" in v:
            self._add("clusters", "outliers", x, float(v["n_outliers"]))
        for k in ("precision", "recall", "ari"):
            if k in v:
                self._add("quality", k, x, float(v[k]))

    def add_events(self, events: list[ProgressEvent]) -> None:
        """Live events of the running job."""
        for e in events:
            if e.stage not in ("stage1", "stage2", "stage3") or e.epoch is None:
                continue
            self.mark_stage(e.round, e.stage, self.base_epoch)
            if e.step is not None and e.steps:
                # at most STEP_POINTS per epoch: the values are the epoch's running means, the
                # ones left out lie between their neighbours (a long epoch reports every 10 steps)
                bucket = (e.round, e.stage, e.epoch, int(e.step * self.STEP_POINTS / e.steps))
                if bucket == self._last_bucket and e.step < e.steps:
                    continue
                self._last_bucket = bucket
                x = self.base_epoch + e.step / e.steps
                for k, val in e.losses.items():
                    self._add("loss", k, x, float(val))
            elif e.step is None and e.metrics:  # end of an epoch: its averaged values
                self.base_epoch += 1.0
                self._add_epoch_values(self.base_epoch, {**dict(e.losses), **dict(e.metrics)})
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    #: Work done per event-loop turn while the curves catch up with their data.
    SLICE_MS = 4.0

    def redraw(self) -> None:
        """Show the data: ranges at once, then the changed curves a slice at a time.

        Each curve's update (and a new curve's creation with its legend entry) takes its own
        event-loop turn or a few, never one long block: on a busy machine the GUI thread gets a
        third of a core, and the whole set at once (up to 15 curves when the history reloads)
        had frozen the window for 100-150 ms.  :meth:`flush` finishes at once."""
        self._fit_ranges()
        for k in sorted(self._dirty):
            if k not in self._queue:
                self._queue.append(k)
        self._dirty.clear()
        self._redraw_slice()

    def flush(self) -> None:
        """Finish a pending redraw now (tests, screenshots)."""
        if self._dirty:
            self.redraw()
        while self._queue:
            self._update_curve(self._queue.pop(0))
        self._slice_timer.stop()

    def _redraw_slice(self) -> None:
        t0 = time.perf_counter()
        while self._queue:
            self._update_curve(self._queue.pop(0))
            if (time.perf_counter() - t0) * 1000 >= self.SLICE_MS:
                break
        if self._queue:
            self._slice_timer.start()

    def _update_curve(self, k: tuple[str, str]) -> None:
        plot_name, key = k
        plot = self.plots[plot_name]
        item = self.items.get(k)
        xs, ys = self.series.get(k, ([], []))
        if not xs:  # a series of an earlier run or workspace: off the plot and the legend
            if item is not None:
                plot.removeItem(item)  # PlotItem.removeItem also drops its legend entry
                del self.items[k]
            return
        if item is None:
            color = theme.curve_color(f"{plot_name}:{key}")
            item = plot.plot(pen=pg.mkPen(color, width=2), name=key, symbol="o",
                             symbolSize=4 if plot_name == "loss" else 6, connect="finite",
                             symbolBrush=color, symbolPen=None)
            self.items[k] = item
            lay = plot.legend.layout  # entries at the top, one line each, not spread over the row
            for r in range(lay.rowCount()):
                lay.setRowMaximumHeight(r, LEGEND_LINE)
        item.setData(np.asarray(xs, float), np.asarray(ys, float))

    def _fit_ranges(self) -> None:
        """Grow the view ranges to the data (with headroom); never shrink them during a run."""
        xmax = max([self.planned_epochs, 1.0] + [max(xs) for xs, _ in self.series.values() if xs])
        vb = self.loss_plot.getViewBox()
        (x0, x1), _ = vb.viewRange()
        pad = 0.03 * xmax + 0.1  # end points (an epoch's summary) must not sit on the border
        if xmax + pad > x1 or x1 > 1.5 * xmax + 1 or x0 != -pad:
            self.loss_plot.setXRange(-pad, xmax + pad, padding=0)
        for plot_name, plot in (("loss", self.loss_plot), ("clusters", self.cluster_plot)):
            ys = [y for (pn, _k), (_xs, yv) in self.series.items() if pn == plot_name for y in yv if np.isfinite(y)]
            if not ys:
                continue
            lo, hi = min(0.0, min(ys)), max(ys)
            (_, _), (y0, y1) = plot.getViewBox().viewRange()
            if hi > y1 or lo < y0 or y1 > 3 * max(hi, 1e-9):
                plot.setYRange(lo, hi * 1.25 if hi > 0 else 1.0, padding=0)

    def value_at(self, plot, x: float, y: float, x_tol: float, y_tol: float) -> str:
        """The text for the point of ``plot`` nearest to (x, y) within the tolerances, else ""."""
        best, text = None, ""
        for (plot_name, key), (xs, ys) in self.series.items():
            if self.plots[plot_name] is not plot or not xs:
                continue
            xa, ya = np.asarray(xs, float), np.asarray(ys, float)
            d = np.hypot((xa - x) / max(x_tol, 1e-12), (ya - y) / max(y_tol, 1e-12))
            d[~np.isfinite(d)] = np.inf
            i = int(np.argmin(d))
            if d[i] <= 1.0 and (best is None or d[i] < best):
                best = d[i]
                text = f"{key}: {ya[i]:.4g}  (epoch {xa[i]:.2f})"
        return text

    def _on_move(self, args) -> None:
        pos = args[0]
        text = ""
        for plot in (self.loss_plot, self.cluster_plot, self.quality_plot):
            vb = plot.getViewBox()
            if vb.sceneBoundingRect().contains(pos):
                p = vb.mapSceneToView(pos)
                px = vb.viewPixelSize()
                text = self.value_at(plot, p.x(), p.y(), 8 * px[0], 8 * px[1])
                break
        if text != self.hover_text:
            self.hover_text = text
            from PySide6.QtGui import QCursor
            from PySide6.QtWidgets import QToolTip

            if text:
                QToolTip.showText(QCursor.pos(), text, self)
            else:
                QToolTip.hideText()

    def has_data(self) -> bool:
        return any(len(xs) for xs, _ in self.series.values())
