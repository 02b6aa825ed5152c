"""Clusters: the 2-D UMAP of the current features, coloured by identity / scenario / group /
camera, with hover preview, click-to-query and rectangle / lasso selection into the gallery.

The projection is computed by ``Session.projection`` in a ``read`` job (cached on disk per
checkpoint, so reopening is instant); identities for the identity colouring come from
``Session.identities`` in another job.  Colouring is pure numpy on the GUI thread (category codes
per point) and the scatter draws all points in one item.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QHBoxLayout, QLabel, QListWidget, QListWidgetItem,
                               QPushButton, QSplitter, QToolButton, QVBoxLayout, QWidget)

from .. import tasks, theme
from ..widgets.progress import JobProgress
from ..widgets.scatter import ScatterView
from .base import Panel

PREVIEW = QSize(96, 192)
COLOR_BY = (("identity", "Identity"), ("scenario", "Scenario"), ("group", "Group"), ("camera", "Camera"),
            ("site", "Site"), ("person", "Person id (labels)"))
#: Categories that get their own colour; the rest share "other" (grey).  Identities and person
#: ids are not capped: every one gets its own colour (golden-ratio hues).
MAX_COLORS = 20
#: Legend rows listed for an uncapped colouring (the rest are summed up in one row).
LEGEND_ROWS = 30


def category_codes(values: np.ndarray, *, max_colors: int = MAX_COLORS, skip: set | None = None
                   ) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Codes 0..K-1 for the K most frequent values (by count, then name), -1 for the rest.

    Returns ``(codes, legend)`` with legend entries ``(name, count)`` in code order; the last
    entry is ``("other", n)`` when some values did not get a colour.
    """
    vals = np.asarray(values)
    if not len(vals):
        return np.zeros(0, np.int64), []
    uniq, inv, counts = np.unique(vals.astype(str), return_inverse=True, return_counts=True)
    skip = skip or set()
    order = sorted(range(len(uniq)), key=lambda i: (uniq[i] in skip, -counts[i], uniq[i]))
    keep = [i for i in order if uniq[i] not in skip][:max_colors]
    code_of = np.full(len(uniq), -1, np.int64)
    code_of[keep] = np.arange(len(keep))
    codes = code_of[inv.reshape(-1)]
    legend = [(str(uniq[i]), int(counts[i])) for i in keep]
    rest = int((codes < 0).sum())
    if rest:
        legend.append(("other", rest))
    return codes, legend


class ClustersPanel(Panel):
    key = "clusters"
    title = "Clusters (UMAP)"

    def __init__(self, ctx, parent=None) -> None:
        super().__init__(ctx, parent)
        self.ids = np.zeros(0, np.int64)  # image id per point
        self.xy = np.zeros((0, 2), np.float32)
        self.rows = np.zeros(0, np.int64)  # row in ctx.images per point
        self.selected_rows = np.zeros(0, np.int64)
        # -- toolbar
        self.color_by = QComboBox()
        for key, label in COLOR_BY:
            self.color_by.addItem(label, key)
        self.color_by.setCurrentIndex(max(0, self.color_by.findData(ctx.settings.get("clusters/color", "identity",
                                                                                      str))))
        self.color_by.currentIndexChanged.connect(self._recolor)
        self.mode_group = QButtonGroup(self)
        self.mode_buttons = {}
        for i, (mode, label, tip) in enumerate((
                ("pan", "Pan", "Drag to move, wheel to zoom (P)"),
                ("rect", "Rectangle", "Drag a rectangle to select points (R)"),
                ("lasso", "Lasso", "Draw around points to select them (L)"))):
            b = QToolButton()
            b.setText(label)
            b.setToolTip(tip)
            b.setCheckable(True)
            b.setShortcut(label[0])
            self.mode_group.addButton(b, i)
            self.mode_buttons[mode] = b
            b.toggled.connect(lambda on, m=mode: on and self.scatter.set_mode(m))
        self.open_sel = QPushButton("Open selection in gallery")
        self.open_sel.setEnabled(False)
        self.open_sel.clicked.connect(self.open_selection)
        self.clear_sel = QPushButton("Clear selection")
        self.clear_sel.setEnabled(False)
        self.clear_sel.clicked.connect(self.clear_selection)
        self.fit_btn = QToolButton()
        self.fit_btn.setText("Fit")
        self.fit_btn.setToolTip("Show all points")
        self.fit_btn.clicked.connect(lambda: self.scatter.vb.autoRange(padding=0.04))
        self.info = QLabel("")
        self.compute_now = QPushButton("Compute the map now")
        self.compute_now.setToolTip("Computing the 2-D map takes CPU time that training is using: it slows training down")
        self.compute_now.clicked.connect(lambda: self.load(force=True))
        self.compute_now.hide()
        self._deferred = False
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Colour by"))
        bar.addWidget(self.color_by)
        bar.addSpacing(12)
        for b in self.mode_buttons.values():
            bar.addWidget(b)
        bar.addWidget(self.fit_btn)
        bar.addSpacing(12)
        bar.addWidget(self.open_sel)
        bar.addWidget(self.clear_sel)
        bar.addStretch(1)
        self.info.setWordWrap(True)
        # -- plot and side bar
        self.scatter = ScatterView()
        self.scatter.pointHovered.connect(self._hovered)
        self.scatter.pointClicked.connect(self.select_point)
        self.scatter.selectionMade.connect(self._selected)
        self.mode_buttons["pan"].setChecked(True)
        self.legend = QListWidget()
        self.legend.setIconSize(QSize(12, 12))
        self.legend.setToolTip("Colours of the categories; grey points have none (see the last row)")
        self.preview = QLabel()
        self.preview.setFixedSize(PREVIEW + QSize(8, 8))
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setFrameShape(QLabel.Shape.StyledPanel)
        self.preview_text = QLabel("Hover a point to see its crop; click it to find its matches.")
        self.preview_text.setWordWrap(True)
        self.preview_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(QLabel("<b>Legend</b>"))
        sl.addWidget(self.legend, 1)
        sl.addWidget(QLabel("<b>Preview</b>"))
        sl.addWidget(self.preview, 0, Qt.AlignmentFlag.AlignHCenter)
        sl.addWidget(self.preview_text)
        side.setMinimumWidth(220)
        side.setMaximumWidth(320)
        self.legend.setMinimumHeight(140)
        self.legend.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        from ..widgets.side_column import scrolling_column

        side_scroll = scrolling_column(side, 240, 340)  # a small window scrolls the preview, the legend keeps its rows
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.scatter)
        split.addWidget(side_scroll)
        split.setStretchFactor(0, 1)
        split.setSizes([1000, 260])
        self.progress = JobProgress()
        self.progress.hide()
        lay = QVBoxLayout(self.content)
        lay.addLayout(bar)
        info_row = QHBoxLayout()
        info_row.addWidget(self.info, 1)
        info_row.addWidget(self.compute_now)
        lay.addLayout(info_row)  # its own line: beside the buttons it was cut off in a small window
        lay.addWidget(split, 1)
        lay.addWidget(self.progress)
        self._hover_path = None
        ctx.thumbs.ready.connect(self._thumb_ready)
        ctx.workspaceChanged.connect(lambda _w: self._reset())
        ctx.sessionChanged.connect(lambda _s: self._reset())
        ctx.modelChanged.connect(self._model_changed)
        ctx.imagesChanged.connect(self._reset)
        ctx.identitiesChanged.connect(lambda _t: self._recolor())
        ctx.sitesChanged.connect(lambda: self.color_by.currentData() == "site" and self._recolor())
        ctx.modelStateChanged.connect(self._model_state_changed)
        self._reset()

    def _model_state_changed(self, state) -> None:
        """Training ended (or was stopped): a map put off meanwhile is computed now, if shown."""
        if self._deferred and (state is None or not state.training):
            self._deferred = False
            self.compute_now.hide()
            self.task.request(self.load)

    def _training(self) -> bool:
        state = self.ctx.model_state
        return bool(state is not None and state.training)

    # -- loading ---------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.task.discard()  # a map of the earlier workspace, session or images
        self.progress.hide()
        self.ids = np.zeros(0, np.int64)
        self.xy = np.zeros((0, 2), np.float32)
        self.scatter.clear_points()
        self.legend.clear()
        self.info.setText("")
        self.clear_selection()
        if not self.session_ready("Open a workspace to see its clusters."):
            return
        self.task.request(self.load)  # now if this view shows, else when it is next shown

    def _model_changed(self) -> None:
        """A new checkpoint: keep showing the old map (labelled as such) until the new one is
        ready, instead of a blank plot for the length of a UMAP."""
        self.task.discard()  # the old model's map
        self.progress.hide()
        self.clear_selection()
        if not self.session_ready("Open a workspace to see its clusters."):
            return
        if len(self.ids):
            self.info.setText(f"{self._map_text()} · the model changed: the new map is computed when you "
                              "look at this view")
        self.task.request(self.load)

    def load(self, force: bool = False) -> None:
        """Compute (or read from the cache) the projection in the background (a running one is
        superseded).  While training runs only a cached map is shown: a new one is put off until
        training ends (it would take CPU time from training), unless ``force``."""
        session = self.ctx.session
        if session is None:
            return
        if self._training() and not force:
            self.task.start("projection", tasks.cached_projection, session, on_done=self._cached_or_deferred)
            if self.ctx.identities is None:
                self.load_identities()
            return
        self._deferred = False
        self.compute_now.hide()
        self.progress.reset("Computing the 2-D map…")
        self.progress.show()
        if len(self.ids):
            self.info.setText(f"{self._map_text()} · computing the new model's map…")
        # the child writes the cache as the workspace's writer: in turn with the other writes
        self.task.start("projection", tasks.projection, session, kind="read" if session.ws.readonly else "write",
                        on_done=self._loaded, on_progress=self.progress.show_event, on_end=self.progress.hide)
        if self.ctx.identities is None:
            self.load_identities()

    def _cached_or_deferred(self, result) -> None:
        if result is not None:
            self._loaded(result)
            return
        self._deferred = True
        self.compute_now.show()
        state = self.ctx.model_state
        model = state.short() if state is not None else "current model"
        self.info.setText(f"The 2-D map of the {model} is computed when training ends: computing it now would "
                          "slow training down.")

    def load_identities(self) -> None:
        session = self.ctx.session
        if session is None:
            return
        self.run("identities", tasks.named_identities, session, on_done=lambda r: self.ctx.set_identities(*r))

    def _loaded(self, result) -> None:
        ids, xy, images = result
        if self.ctx.session is not None:
            self.ctx.images = images
        self.ids, self.xy = ids, xy
        # bigger markers when there are few points, small ones for 100k
        n = len(ids)
        self.scatter.set_point_size(9 if n < 2_000 else 7 if n < 20_000 else 5)
        self.rows = self.ctx.image_rows(ids)
        self.map_of = self.ctx.model_state
        self.info.setText(self._map_text())
        self._recolor(keep_view=False)

    def _map_text(self) -> str:
        """Which model's map this is, and its size."""
        state = getattr(self, "map_of", None)
        model = state.short() if state is not None else "current model"
        return f"Map of the {model} · {len(self.ids):,} points"

    # -- colouring ----------------------------------------------------------------------------------------
    def identity_codes(self) -> tuple[np.ndarray, list[tuple[str, int]], int]:
        """Codes for colouring by identity: every identity seen more than once gets its own code,
        in identity-number order (so neighbouring ids get far-apart golden-ratio hues); single
        sightings and points without an identity get -1 (grey).  Returns the codes, the legend
        (name, count) in code order, and the number of grey points."""
        ident = self.ctx.identity_of(self.ids)
        uniq, inv, counts = np.unique(ident, return_inverse=True, return_counts=True)
        coloured = (uniq >= 0) & (counts > 1)
        code_of = np.full(len(uniq), -1, np.int64)
        code_of[coloured] = np.arange(int(coloured.sum()))
        codes = code_of[inv.reshape(-1)]
        legend = [(self.ctx.identity_label(int(u)), int(c)) for u, c in zip(uniq[coloured], counts[coloured])]
        return codes, legend, int((codes < 0).sum())

    def values_for(self, key: str) -> tuple[np.ndarray, set]:
        """Per-point category values for a colouring, and the values that mean "none"."""
        imgs = self.ctx.images
        n = len(self.ids)
        if imgs is None or not n:
            return np.full(n, "", object), set()
        rows = np.where(self.rows >= 0, self.rows, 0)
        if key == "scenario":
            return np.asarray(imgs.scenario)[rows], set()
        if key == "group":
            return np.asarray(imgs.scenario)[rows].astype(str) + " / " + np.asarray(imgs.group)[rows].astype(str), set()
        if key == "camera":
            return np.asarray(imgs.camera)[rows], set()
        if key == "site":
            from itkm_engine.vocabulary import DEFAULT_SITE

            sites = self.ctx.camera_sites
            cams = np.asarray(imgs.camera)[rows].astype(str)
            return np.array([sites.get(c, DEFAULT_SITE) for c in cams], dtype=object), set()
        if key == "person":
            pid = np.asarray(imgs.person_id)[rows]
            return np.where(pid >= 0, pid.astype(str), "unknown"), {"unknown"}
        ident = self.ctx.identity_of(self.ids)
        if self.ctx.identities is not None and len(self.ctx.identities):
            # single-sighting identities are grey: they are what the clustering could not group
            uniq, counts = np.unique(ident, return_counts=True)
            single = np.isin(ident, uniq[counts <= 1])
            vals = np.where((ident < 0) | single, "none", np.char.add("#", ident.astype(str)))
            return vals, {"none"}
        return np.full(n, "none", object), {"none"}

    def _recolor(self, *_a, keep_view: bool = True) -> None:
        key = self.color_by.currentData()
        self.ctx.settings.set("clusters/color", key)
        if not len(self.ids):
            return
        values, skip = self.values_for(key)
        if key == "identity" and self.ctx.identities is not None and len(self.ctx.identities):
            codes, legend, n_none = self.identity_codes()
            colors = theme.golden_colors(len(legend))
        elif key == "person":
            codes, legend = category_codes(values, skip=skip, max_colors=len(values))
            colors = theme.golden_colors(len(legend))
            n_none = int(np.isin(values, list(skip)).sum())
        else:
            codes, legend = category_codes(values, skip=skip)
            colors = theme.categorical_colors(min(MAX_COLORS, max(1, len(legend))))
            n_none = int(np.isin(values, list(skip)).sum()) if skip else 0
        self.colors = colors
        self.codes = codes
        self.scatter.set_points(self.xy, codes, colors, keep_view=keep_view and self.scatter.cloud.drawn > 0)
        self.legend.clear()
        uncapped = key in ("identity", "person")
        shown = legend
        if uncapped and len(legend) > LEGEND_ROWS:  # the biggest ones by name; the rest in one row
            order = sorted(range(len(legend)), key=lambda i: -legend[i][1])[:LEGEND_ROWS]
            shown = [legend[i] for i in sorted(order)]
            idx = sorted(order)
        else:
            idx = list(range(len(legend)))
        for i, (name, count) in zip(idx, shown):
            col = colors[i] if name != "other" and i < len(colors) else QColor(theme.MUTED)
            it = QListWidgetItem(theme.swatch(col), f"{name}  ({count:,})")
            self.legend.addItem(it)
        if len(shown) < len(legend):
            what = "identities" if key == "identity" else "person ids"
            self.legend.addItem(QListWidgetItem(f"… and {len(legend) - len(shown):,} more {what}, "
                                                "each in its own colour"))
        if n_none:
            label = {"identity": "single sightings / not grouped", "person": "no person id"}.get(key, "none")
            self.legend.addItem(QListWidgetItem(theme.swatch(QColor(theme.MUTED)), f"{label}  ({n_none:,})"))
        if key == "identity" and self.ctx.identities is None:
            self.legend.addItem("identities are being computed…")
        if len(self.selected_rows):
            self.scatter.mark_selection(self.selected_rows)

    # -- interaction -----------------------------------------------------------------------------------------
    def _point_text(self, row: int) -> str:
        imgs = self.ctx.images
        r = int(self.rows[row]) if row < len(self.rows) else -1
        if imgs is None or r < 0:
            return f"image {int(self.ids[row])}"
        ident = int(self.ctx.identity_of(self.ids[row : row + 1])[0])
        pid = int(imgs.person_id[r])
        parts = [f"<b>image {int(self.ids[row])}</b>", f"camera {imgs.camera[r]}",
                 f"{imgs.scenario[r]} / {imgs.group[r]}"]
        if ident >= 0:
            parts.append(f"identity {self.ctx.identity_label(ident)}")
        if pid >= 0:
            parts.append(f"person id {pid} (labels)")
        return "<br>".join(parts)

    def _hovered(self, row: int) -> None:
        if row < 0 or self.ctx.images is None:
            return
        r = int(self.rows[row])
        if r < 0:
            return
        path = self.ctx.images.path[r]
        self._hover_path = path
        pm = self.ctx.thumbs.get(path, PREVIEW)
        if pm is not None:
            self.preview.setPixmap(pm)
        self.preview_text.setText(self._point_text(row))

    def _thumb_ready(self, path: str) -> None:
        if path == self._hover_path:
            pm = self.ctx.thumbs.get(path, PREVIEW)
            if pm is not None:
                self.preview.setPixmap(pm)

    def select_point(self, row: int) -> None:
        """Select point ``row`` and open it as the query in the gallery."""
        if not 0 <= row < len(self.ids):
            return
        self.scatter.select_row(row)
        self._hovered(row)
        self.ctx.queryImage.emit(int(self.ids[row]))
        self.ctx.showPanel.emit("gallery")

    def _selected(self, rows: np.ndarray) -> None:
        self.selected_rows = np.asarray(rows, np.int64)
        n = len(self.selected_rows)
        self.open_sel.setEnabled(n > 0)
        self.clear_sel.setEnabled(n > 0)
        self.open_sel.setText(f"Open {n:,} in gallery" if n else "Open selection in gallery")
        # stay here: a selection can be redrawn until it is right, then opened with the button
        self.info.setText(f"{n:,} of {len(self.ids):,} points selected" if n else self._map_text())

    def select_rows(self, rows: np.ndarray) -> None:
        """Select these points as if drawn with the lasso (tests, scripting)."""
        self.scatter.mark_selection(np.asarray(rows, np.int64))
        self._selected(rows)

    def open_selection(self) -> None:
        if not len(self.selected_rows):
            return
        ids = self.ids[self.selected_rows]
        self.ctx.openSet.emit(ids, f"{len(ids):,} points selected in the 2-D map")
        self.ctx.showPanel.emit("gallery")

    def clear_selection(self) -> None:
        self.selected_rows = np.zeros(0, np.int64)
        self.scatter.mark_selection(self.selected_rows)
        self.scatter.vb.clear_selection()
        self.open_sel.setEnabled(False)
        self.clear_sel.setEnabled(False)
        self.open_sel.setText("Open selection in gallery")

    def prepare_screenshot(self) -> None:
        if len(self.ids):
            # show a hovered point in the preview, as an analyst would see it
            self._hovered(0)
            self.scatter.hover_mark.setData(x=[self.xy[0, 0]], y=[self.xy[0, 1]])
