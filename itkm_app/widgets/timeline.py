"""An identity's sightings on a time line: one row per camera, one point per sighting.

Also the time stamps' formats: times derived from frame numbers (the files carry no date) are
shown as "day 1, 00:02:15", never as a made-up calendar date.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor, QPalette

from itkm_engine.data.timestamps import DERIVED_SPAN_S, NAME_EPOCH, is_derived

from .. import theme
from .thumb_grid import SCENARIO_COLORS

__all__ = ["Timeline", "FrameTimeAxis", "NAME_EPOCH", "DERIVED_SPAN_S", "is_derived", "fmt_derived", "fmt_time"]

# Time stamps derived from frame numbers (2000-01-01 UTC + (sequence - 1) days + frame / fps) order
# sightings but carry no date: NAME_EPOCH, DERIVED_SPAN_S and is_derived are the engine's one rule
# (itkm_engine/data/timestamps.py).


def fmt_derived(ts: float) -> str:
    """A frame-number time: "day 1, 00:02:15" (the day is the recording sequence)."""
    s = int(ts - NAME_EPOCH)
    day, s = divmod(s, 86400)
    return f"day {day + 1}, {s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_time(ts: float) -> str:
    if ts is None or not math.isfinite(ts):
        return ""
    if is_derived(ts):
        return fmt_derived(ts) + " (from frame numbers)"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


class FrameTimeAxis(pg.AxisItem):
    """Axis for frame-number times: "day 1 00:02:15", never a made-up calendar date."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph API
        out = []
        for v in values:
            if v < NAME_EPOCH:
                out.append("")
                continue
            day, clock = fmt_derived(v).split(", ")
            out.append(clock if day == "day 1" else f"{day.replace('day ', 'd')} {clock}")
        return out


class Timeline(pg.PlotWidget):
    """One row per camera; one point per sighting at its time stamp.  ``pointClicked(image_id)``."""

    def __init__(self, parent=None) -> None:
        self.derived = False
        super().__init__(parent, axisItems={"bottom": pg.DateAxisItem(orientation="bottom")})
        theme.style_plot_widget(self)
        theme.style_plot(self.plotItem)
        self.plotItem.setMenuEnabled(False)
        self.plotItem.showGrid(x=True, y=True, alpha=0.15)
        self.plotItem.setMouseEnabled(y=False)
        self.scatter = pg.ScatterPlotItem(size=10, pxMode=True, hoverable=True, tip=None)
        self.addItem(self.scatter)
        self.image_ids = np.zeros(0, np.int64)
        self.clicked_cb = None
        self.scatter.sigClicked.connect(self._clicked)

    def set_sightings(self, cameras: list[str], cam_rows: np.ndarray, times: np.ndarray, image_ids: np.ndarray,
                      scenarios_of_cam: dict[str, str]) -> None:
        ok_t = times[np.isfinite(times)]
        derived = bool(len(ok_t)) and all(is_derived(t) for t in (ok_t.min(), ok_t.max()))
        if derived != self.derived:  # a fresh axis item each switch (pyqtgraph removes the old one)
            axis = FrameTimeAxis(orientation="bottom") if derived else pg.DateAxisItem(orientation="bottom")
            self.setAxisItems({"bottom": axis})
            theme.style_plot(self.plotItem)
            axis.setLabel("time from frame numbers (the files carry no date)" if derived else "")
            self.derived = derived
        ax = self.getAxis("left")
        ax.setTicks([[(i, c) for i, c in enumerate(cameras)]])
        ok = np.isfinite(times)
        self.image_ids = image_ids[ok]
        brushes = [pg.mkBrush(QColor(SCENARIO_COLORS.get(scenarios_of_cam.get(cameras[r], ""), theme.MUTED)))
                   for r in cam_rows[ok]]
        self.scatter.setData(x=times[ok], y=cam_rows[ok].astype(float), brush=brushes,
                             pen=pg.mkPen(theme.palette().color(QPalette.ColorRole.Text), width=0.5),
                             data=np.arange(int(ok.sum())))
        self.setYRange(-0.6, max(len(cameras) - 0.4, 0.6), padding=0)
        if ok.any():
            t0, t1 = float(times[ok].min()), float(times[ok].max())
            pad = max((t1 - t0) * 0.05, 5.0)
            # never before the first sighting's day (or the frame clock's zero): the axis started
            # at 23:59:45 of the day before
            floor = NAME_EPOCH if self.derived else dt.datetime.fromtimestamp(t0).replace(
                hour=0, minute=0, second=0, microsecond=0).timestamp()
            self.setXRange(max(t0 - pad, floor), t1 + pad, padding=0)

    def _clicked(self, _item, points, _ev=None) -> None:
        if len(points) and self.clicked_cb is not None:
            self.clicked_cb(int(self.image_ids[int(points[0].data())]))

    def clear_sightings(self) -> None:
        self.scatter.clear()
        self.image_ids = np.zeros(0, np.int64)
