"""Look and feel: follow the system palette; data colours; icons; plot styling.

The app never hard-codes interface colours: widgets use the current ``QPalette`` (light or dark,
from the system), and pyqtgraph plots take their background and pen colours from it.  The only
fixed colours are *data* colours (categories in scatter plots and curves), chosen to stay
distinguishable on both light and dark backgrounds.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication, QStyle, QWidget

#: Categorical data colours (Tableau 10 + a second, lighter ten): readable on light and dark.
#: Tableau 10 without its grey (it read as "none"), then ten colours picked greedily for the
#: largest CIELAB distance to those before them, to white and to MUTED: every pair of the 20 differs
#: by at least 30 (Delta E 1976).  Tableau 10 + Category 10 had repeated hues (two oranges, two
#: greens, two blues 10 apart): 14 cameras showed two orange and two green.
CATEGORICAL = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#651fff", "#76ff03", "#000000", "#4a148c", "#e040fb", "#880e4f", "#2962ff",
    "#004d40", "#d50000", "#827717", "#18ffff",
]
#: Colour of "no category" points (outliers, unknown).
MUTED = "#8a8a8a"

#: Curve colours fixed per loss / metric name, so a term keeps its colour across sessions (the
#: order series first appear in depends on the run; a first-come palette swapped them).
CURVE_COLORS = {
    "loss:homogeneous": "#4e79a7", "loss:i2t": "#f28e2b", "loss:t2i": "#e15759", "loss:separation": "#76b7b2",
    "loss:sep": "#76b7b2", "loss:cross": "#59a14f", "loss:instance": "#b07aa1", "loss:mem": "#9c755f",
    "loss:loss": "#7f7f7f", "clusters:clusters": "#4e79a7", "clusters:outliers": "#e15759",
    "quality:precision": "#4e79a7", "quality:recall": "#f28e2b", "quality:ari": "#59a14f",
}


def categorical_colors(n: int) -> list[QColor]:
    """``n`` distinct colours: the fixed palette first, then golden-angle hues."""
    out = [QColor(c) for c in CATEGORICAL[:n]]
    i = 0
    while len(out) < n:
        h = (i * 0.618033988749895) % 1.0
        s = 0.55 + 0.35 * ((i // 7) % 2)
        v = 0.85 - 0.2 * ((i // 3) % 2)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        out.append(QColor.fromRgbF(r, g, b))
        i += 1
    return out


def categorical_rgba(n: int, alpha: int = 220) -> np.ndarray:
    """The same colours as an ``(n, 4)`` uint8 array (for vectorised brushes)."""
    cols = categorical_colors(n)
    arr = np.array([[c.red(), c.green(), c.blue(), alpha] for c in cols], dtype=np.uint8)
    return arr.reshape(-1, 4)


def curve_color(name: str) -> QColor:
    """The colour of a curve ``"plot:series"``: fixed for known names, else from a stable hash."""
    import zlib

    if name in CURVE_COLORS:
        return QColor(CURVE_COLORS[name])
    return QColor(CATEGORICAL[zlib.crc32(name.encode()) % len(CATEGORICAL)])


def golden_colors(n: int) -> list[QColor]:
    """``n`` colours for many categories (identities): golden-ratio hue steps, so neighbouring
    codes get far-apart hues and no colour repeats; saturation and value alternate in three
    levels so hues that come round again still differ."""
    out = []
    for i in range(n):
        h = (0.08 + i * 0.618033988749895) % 1.0
        s = (0.80, 0.55, 0.95)[i % 3]
        v = (0.90, 0.75, 0.60)[(i // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        out.append(QColor.fromRgbF(r, g, b))
    return out


# -- palette --------------------------------------------------------------------------------------

def palette() -> QPalette:
    app = QApplication.instance()
    return app.palette() if app is not None else QPalette()


def is_dark(pal: QPalette | None = None) -> bool:
    pal = pal or palette()
    return pal.color(QPalette.ColorRole.Window).lightness() < 128


def dark_palette() -> QPalette:
    """A neutral dark palette (used when the user picks "dark", and for the dark screenshot)."""
    p = QPalette()
    R, G = QPalette.ColorRole, QPalette.ColorGroup
    window, base, alt, text = QColor(45, 45, 48), QColor(30, 30, 32), QColor(38, 38, 41), QColor(222, 222, 222)
    highlight = QColor(42, 130, 218)
    p.setColor(R.Window, window)
    p.setColor(R.WindowText, text)
    p.setColor(R.Base, base)
    p.setColor(R.AlternateBase, alt)
    p.setColor(R.ToolTipBase, QColor(60, 60, 64))
    p.setColor(R.ToolTipText, text)
    p.setColor(R.PlaceholderText, QColor(140, 140, 140))
    p.setColor(R.Text, text)
    p.setColor(R.Button, window)
    p.setColor(R.ButtonText, text)
    p.setColor(R.BrightText, QColor(255, 80, 80))
    p.setColor(R.Light, QColor(70, 70, 74))
    p.setColor(R.Midlight, QColor(58, 58, 62))
    p.setColor(R.Mid, QColor(50, 50, 54))
    p.setColor(R.Dark, QColor(25, 25, 27))
    p.setColor(R.Shadow, QColor(10, 10, 10))
    p.setColor(R.Link, QColor(90, 160, 240))
    p.setColor(R.LinkVisited, QColor(160, 120, 220))
    p.setColor(R.Highlight, highlight)
    p.setColor(R.HighlightedText, QColor(255, 255, 255))
    for role in (R.WindowText, R.Text, R.ButtonText):
        p.setColor(G.Disabled, role, QColor(120, 120, 120))
    p.setColor(G.Disabled, R.Highlight, QColor(80, 80, 80))
    return p


class _HeaderArrowStyle:
    """Header sort arrows that point the way the rows go: down for descending (largest first).

    Qt hands styles SortDown for *ascending* (an old macOS convention) and Fusion draws that as a
    down arrow, so a table sorted largest-first showed an up arrow.  The proxy style is made
    lazily (it needs an application)."""

    cls = None

    @classmethod
    def make(cls, base: str):
        from PySide6.QtWidgets import QProxyStyle, QStyleOptionHeader

        if cls.cls is None:
            class HeaderArrowStyle(QProxyStyle):
                def drawPrimitive(self, element, option, painter, widget=None):  # noqa: N802
                    if element == QStyle.PrimitiveElement.PE_IndicatorHeaderArrow and \
                            isinstance(option, QStyleOptionHeader):
                        up, down = QStyleOptionHeader.SortIndicator.SortUp, QStyleOptionHeader.SortIndicator.SortDown
                        if option.sortIndicator in (up, down):
                            option = QStyleOptionHeader(option)
                            option.sortIndicator = down if option.sortIndicator == up else up
                    super().drawPrimitive(element, option, painter, widget)

            cls.cls = HeaderArrowStyle
        return cls.cls(base)


def apply_theme(app: QApplication, name: str = "system") -> None:
    """``system`` keeps the platform's palette (light or dark); ``dark``/``light`` force one."""
    app.setStyle(_HeaderArrowStyle.make("Fusion"))
    if name == "dark":
        app.setPalette(dark_palette())
    elif name == "light":
        app.setPalette(app.style().standardPalette())
    configure_pyqtgraph()


def configure_pyqtgraph() -> None:
    import pyqtgraph as pg

    pal = palette()
    pg.setConfigOptions(
        antialias=False,  # antialiasing 100k markers costs frames; markers are small anyway
        background=pal.color(QPalette.ColorRole.Base),
        foreground=pal.color(QPalette.ColorRole.Text),
        imageAxisOrder="row-major",
    )


def style_plot(plot_item, pal: QPalette | None = None) -> None:
    """Axis and label colours of one pyqtgraph PlotItem from the palette."""
    import pyqtgraph as pg

    pal = pal or palette()
    fg = pal.color(QPalette.ColorRole.Text)
    for name in ("left", "bottom", "right", "top"):
        ax = plot_item.getAxis(name)
        if ax is None:
            continue
        ax.setPen(pg.mkPen(fg))
        ax.setTextPen(pg.mkPen(fg))
    if plot_item.titleLabel is not None:
        plot_item.titleLabel.setAttr("color", fg)
        plot_item.titleLabel.setText(plot_item.titleLabel.text)


def cache_plot_text(plot_item) -> None:
    """Cache a PlotItem's axes, title and legend as pixmaps (DeviceCoordinateCache).

    Text is the expensive part of painting a plot; cached, a repaint after new data is a few
    pixmap copies unless the axis range itself changed."""
    from PySide6.QtWidgets import QGraphicsItem

    mode = QGraphicsItem.CacheMode.DeviceCoordinateCache
    for name in ("left", "bottom", "right", "top"):
        ax = plot_item.getAxis(name)
        if ax is not None:
            ax.setCacheMode(mode)
    if plot_item.titleLabel is not None:
        plot_item.titleLabel.setCacheMode(mode)
    if plot_item.legend is not None:
        plot_item.legend.setCacheMode(mode)


def style_plot_widget(widget) -> None:
    """Background of a pyqtgraph widget (PlotWidget / GraphicsLayoutWidget) from the palette."""
    widget.setBackground(palette().color(QPalette.ColorRole.Base))


def secondary_text_color(pal: QPalette | None = None) -> QColor:
    """A muted text colour for captions: between Text and Base."""
    pal = pal or palette()
    a, b = pal.color(QPalette.ColorRole.Text), pal.color(QPalette.ColorRole.Base)
    return QColor((a.red() * 2 + b.red()) // 3, (a.green() * 2 + b.green()) // 3, (a.blue() * 2 + b.blue()) // 3)


# -- icons ------------------------------------------------------------------------------------------

_STANDARD = {
    "open": QStyle.StandardPixmap.SP_DirOpenIcon,
    "add-folder": QStyle.StandardPixmap.SP_FileDialogNewFolder,
    "train": QStyle.StandardPixmap.SP_MediaPlay,
    "retrain": QStyle.StandardPixmap.SP_BrowserReload,
    "stop": QStyle.StandardPixmap.SP_MediaStop,
    "export": QStyle.StandardPixmap.SP_DialogSaveButton,
    "quit": QStyle.StandardPixmap.SP_DialogCloseButton,
    "file": QStyle.StandardPixmap.SP_FileIcon,
    "info": QStyle.StandardPixmap.SP_MessageBoxInformation,
    "warning": QStyle.StandardPixmap.SP_MessageBoxWarning,
    "error": QStyle.StandardPixmap.SP_MessageBoxCritical,
    "computer": QStyle.StandardPixmap.SP_ComputerIcon,
    "details": QStyle.StandardPixmap.SP_FileDialogDetailedView,
    "list": QStyle.StandardPixmap.SP_FileDialogListView,
    "refresh": QStyle.StandardPixmap.SP_BrowserReload,
    "clear": QStyle.StandardPixmap.SP_DialogResetButton,
}


def icon(name: str, widget: QWidget | None = None) -> QIcon:
    """An icon from Qt's standard set (themable, matches the platform)."""
    style = widget.style() if widget is not None else QApplication.style()
    return style.standardIcon(_STANDARD.get(name, QStyle.StandardPixmap.SP_FileIcon))


def swatch(color: QColor, size: int = 12) -> QIcon:
    """A small filled square icon (legend entries, combo items)."""
    from PySide6.QtGui import QPainter, QPixmap

    pm = QPixmap(QSize(size, size))
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setPen(palette().color(QPalette.ColorRole.Text))
    p.setBrush(color)
    p.drawRect(0, 0, size - 1, size - 1)
    p.end()
    return QIcon(pm)
