"""Identities: the people the model found across all cameras; one identity's sightings on a
time line per camera, with its crops in time order.

``Session.identities`` / ``identity_summary`` run in a ``read`` job (computed once per checkpoint
and stored in the workspace).  Selecting an identity is pure numpy on the GUI thread.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
                               QSplitter, QTableView, QVBoxLayout, QWidget)

from .. import tasks
from ..widgets.identity_model import IdentityFilter, IdentityModel
from ..widgets.model_banner import ModelBanner
from ..widgets.thumb_grid import ThumbGrid, ThumbItem
from ..widgets.timeline import Timeline, fmt_derived, fmt_time, is_derived
from ..widgets.undo_keys import undo_redo_buttons
from ..wording import plural
from .base import Panel


class IdentitiesPanel(Panel):
    key = "identities"
    title = "Identities"

    def __init__(self, ctx, parent=None) -> None:
        super().__init__(ctx, parent)
        self.summary: list = []
        self.model = IdentityModel(self)
        self.proxy = IdentityFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
        self.table.verticalHeader().hide()
        self.table.setAlternatingRowColors(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)  # two to merge
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        h = self.table.horizontalHeader()
        # Columns sized to their contents once per load (``_loaded``), on the first 100 rows, then
        # the operator's to resize.  Sized by the header itself (ResizeToContents), every row was
        # measured again at each switch to this view, sort and filter letter: ~60 ms of the GUI
        # thread per switch with 121 identities (benchmarks/bench_responsiveness.py).
        h.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        h.setResizeContentsPrecision(100)
        h.setSectionResizeMode(IdentityModel.CAMERAS, QHeaderView.ResizeMode.Stretch)  # the rest: never "Seen"
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setWordWrap(False)
        self.table.selectionModel().currentRowChanged.connect(lambda cur, _p: self._current_changed(cur))
        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter by identity, camera or scenario")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._filter_text)
        self.hide_single = QCheckBox("Hide single sightings")
        self.hide_single.setChecked(True)
        self.hide_single.toggled.connect(self._filter_single)
        # the filter takes focus only when clicked: with focus it swallowed window shortcuts (Ctrl+E)
        self.search.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.count = QLabel("")
        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        top.addWidget(self.hide_single)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addLayout(top)
        ll.addWidget(self.table, 1)
        ll.addWidget(self.count)
        self.time_note = QLabel("")
        self.time_note.setWordWrap(True)
        self.time_note.setEnabled(False)
        ll.addWidget(self.time_note)
        self.title_label = QLabel("Select an identity to see where and when it was seen.")
        self.title_label.setWordWrap(True)
        self.timeline = Timeline()
        self.timeline.clicked_cb = self._open_in_gallery
        self.timeline.setToolTip("Each point is a sighting; click one to search for it in the gallery")
        self.strip = ThumbGrid(ctx.thumbs)
        self.strip.itemActivated.connect(lambda it: self._open_in_gallery(it.image_id))
        self.strip.setToolTip("Sightings in time order; double-click one to search for it")
        right_split = QSplitter(Qt.Orientation.Vertical)
        right_split.addWidget(self.timeline)
        right_split.addWidget(self.strip)
        right_split.setSizes([220, 440])  # the strip keeps a whole row of crops in a small window
        right_split.setStretchFactor(1, 1)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        self.banner = ModelBanner(ctx, "Identities")
        rl.addWidget(self.banner)
        rl.addWidget(self.title_label)
        rl.addWidget(self._decision_bar())
        rl.addWidget(right_split, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([620, 980])
        lay = QVBoxLayout(self.content)
        lay.addWidget(split)
        ctx.workspaceChanged.connect(lambda _w: (self._forget_selection(), self._reset()))
        ctx.sessionChanged.connect(lambda _s: self._reset())
        ctx.modelChanged.connect(self._reset)
        ctx.imagesChanged.connect(self._reset)
        ctx.identitiesChanged.connect(self._identities_arrived)
        self._reset()

    # -- loading -------------------------------------------------------------------------------------------
    def _forget_selection(self) -> None:
        """Another workspace: its image ids and identity ids mean other people."""
        self._table = None
        self._follow = None
        self.shown_identity = None

    def _reset(self) -> None:
        self.task.discard()  # identities of the earlier workspace, session, model or images
        self.summary = []
        self.model.set_rows([])
        self.timeline.clear_sightings()
        self.strip.set_items([])
        if not self.session_ready("Open a workspace to see the identities found in it."):
            return
        self.task.request(self.load)  # now if this view shows, else when it is next shown

    def load(self) -> None:
        """Read (or compute) the identities in the background (a running read is superseded)."""
        session = self.ctx.session
        if session is None:
            return
        self.title_label.setText("Finding identities…")
        self.task.start("identities", tasks.identity_overview, session, on_done=self._loaded)

    def _loaded(self, result) -> None:
        table, summary, names, history = result
        before = getattr(self, "_table", None)
        shown = getattr(self, "shown_identity", None)
        if getattr(self, "_follow", None) is None and before is not None and shown is not None:
            hit = before.image_id[before.identity == shown]  # a sighting of what was shown, to find it again
            self._follow = int(hit[0]) if len(hit) else None
        self.summary = summary
        self._table = table
        self.model.names = names
        self.model.history = history
        self.model.set_rows(summary)
        self.table.resizeColumnsToContents()
        n_multi = sum(1 for s in summary if s.size > 1)
        multi_cam = sum(1 for s in summary if len(s.cameras) > 1)
        self.count.setText(f"{plural(len(summary), 'identity')} · {n_multi:,} seen more than once · "
                           f"{multi_cam:,} across several cameras")
        derived = any(is_derived(x.t_first) for x in summary)
        self.time_note.setText("* Times come from the frame numbers in the file names: they order the sightings "
                               "of a recording but carry no real date." if derived else "")
        self.title_label.setText("Select an identity to see where and when it was seen.")
        if self.ctx.identities is not table or self.ctx.identity_names != names:
            self.ctx.set_identities(table, names)  # the other views show the names too
        # Keep the identity the operator acted on (or was looking at) selected: ids are stable, so
        # it is found by its sighting -- after a merge the kept id, after a split the part that
        # kept the id, after an undo the id back again.  Row 0 only when there is nothing to keep.
        follow, self._follow = getattr(self, "_follow", None), None
        wanted = None
        if follow is not None:
            hit = table.image_id == follow
            wanted = int(table.identity[hit][0]) if hit.any() else None
        if wanted is None:
            wanted = getattr(self, "shown_identity", None)
        if wanted is not None and self._select_row_of(wanted):
            return
        if self.proxy.rowCount():
            self.table.selectRow(0)

    def _select_row_of(self, identity: int) -> bool:
        for r in range(self.proxy.rowCount()):
            src = self.proxy.mapToSource(self.proxy.index(r, 0))
            if self.model.rows[src.row()].identity == identity:
                self.table.selectRow(r)
                self.table.scrollTo(self.proxy.index(r, 0))
                self.show_identity(identity)
                return True
        return False

    def _identities_arrived(self, table) -> None:
        if self.summary and table is not None and table is not getattr(self, "_table", table) and not self.task.busy():
            self.summary = []  # a decision elsewhere (the gallery) changed them: reload
        if not self.summary and self.ctx.session is not None and not self.task.busy() and self.showing_content():
            self.task.request(self.load)

    # -- filter ---------------------------------------------------------------------------------------------
    def _filter_text(self, t: str) -> None:
        self.proxy.text = t.strip()
        self.proxy.invalidateFilter()

    def _filter_single(self, on: bool) -> None:
        self.proxy.min_size = 2 if on else 1
        self.proxy.invalidateFilter()

    # -- selection ---------------------------------------------------------------------------------------------
    def _current_changed(self, index: QModelIndex) -> None:
        if not index.isValid():
            return
        s = self.model.rows[self.proxy.mapToSource(index).row()]
        self.show_identity(s.identity)

    def select_identity(self, identity: int) -> None:
        if not self._select_row_of(identity):
            self.show_identity(identity)

    def show_identity(self, identity: int) -> None:
        """Time line and crops of one identity."""
        t, imgs = self.ctx.identities, self.ctx.images
        if t is None or imgs is None:
            return
        ids = t.image_id[t.identity == identity]
        rows = imgs.index_of(ids)
        keep = rows >= 0
        ids, rows = ids[keep], rows[keep]
        times = np.asarray(imgs.timestamp, float)[rows]
        order = np.argsort(np.where(np.isfinite(times), times, np.inf), kind="stable")
        ids, rows, times = ids[order], rows[order], times[order]
        # the rows: this identity's cameras only (all 14 of a workspace overlapped in a small window)
        cameras = sorted({str(c) for c in np.asarray(imgs.camera)[rows]}, key=_natural)
        cam_index = {c: i for i, c in enumerate(cameras)}
        cam_rows = np.array([cam_index[str(c)] for c in np.asarray(imgs.camera)[rows]], np.int64)
        scen_of_cam = {}
        for c, s in zip(np.asarray(imgs.camera)[rows], np.asarray(imgs.scenario)[rows]):
            scen_of_cam[str(c)] = str(s)
        for c in cameras:
            if c not in scen_of_cam:
                m = np.flatnonzero(np.asarray(imgs.camera) == c)
                scen_of_cam[c] = str(imgs.scenario[m[0]]) if len(m) else ""
        self.timeline.set_sightings(cameras, cam_rows, times, ids, scen_of_cam)
        items = [ThumbItem(int(i), imgs.path[r], str(imgs.camera[r]), str(imgs.scenario[r]), str(imgs.group[r]),
                           None, identity, int(imgs.person_id[r]), caption=f"{imgs.camera[r]} {_short_time(tt)}",
                           name=self.model.names.get(identity, ("", ""))[0])
                 for i, r, tt in zip(ids, rows, times)]
        self.strip.set_items(items)
        cams = sorted({str(c) for c in np.asarray(imgs.camera)[rows]}, key=_natural)
        span = ""
        if np.isfinite(times).any():
            t0, t1 = float(np.nanmin(times)), float(np.nanmax(times))
            if is_derived(t0):
                span = f" · {fmt_derived(t0)} → {fmt_derived(t1)} (times from frame numbers, no real date)"
            else:
                span = f" · {fmt_time(t0)} → {fmt_time(t1)}"
        name, note = self.model.names.get(identity, ("", ""))
        was = self.model.history.get(identity, "")
        self.name_edit.setText(name)
        self.note_edit.setText(note)
        self.title_label.setText(f"<b>Identity #{identity}</b>{f' ({was})' if was else ''}{' ' + name if name else ''} · "
                                 f"{plural(len(ids), 'sighting')} in "
                                 f"{plural(len(cams), 'camera')} ({', '.join(cams)}){span}")
        self.shown_identity = identity

    # -- the operator's decisions: merge, split, name (itkm_engine/constraints.py) --------------------------
    def _decision_bar(self) -> QWidget:
        bar = QWidget()
        lay = QHBoxLayout(bar)
        lay.setContentsMargins(0, 0, 0, 0)
        self.merge_btn = QPushButton("Merge selected")
        self.merge_btn.setToolTip("The identities selected in the table (Ctrl+click two or more) are one person")
        self.split_btn = QPushButton("Split off selected")
        self.split_btn.setToolTip("The sightings selected below become a new identity")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("Name")
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("Note")
        self.name_btn = QPushButton("Save name")
        self.undo_btn, self.redo_btn = undo_redo_buttons(self, self.undo_redo)
        self.decision_info = QLabel("")
        self.merge_btn.clicked.connect(self.merge_selected)
        self.split_btn.clicked.connect(self.split_selected)
        self.name_btn.clicked.connect(self.save_name)
        self.name_edit.returnPressed.connect(self.save_name)
        # two rows: the name and note get room to be typed in (on one row with the buttons they were
        # a few letters wide at 1024x640)
        self.name_edit.setMinimumWidth(120)
        self.note_edit.setMinimumWidth(120)
        rows = QVBoxLayout()
        rows.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        for w in (self.merge_btn, self.split_btn, self.undo_btn, self.redo_btn):
            top.addWidget(w)
        top.addWidget(self.decision_info, 1)
        self.decision_info.setWordWrap(True)
        second = QHBoxLayout()
        second.addWidget(QLabel("Name"))
        second.addWidget(self.name_edit, 2)
        second.addWidget(QLabel("Note"))
        second.addWidget(self.note_edit, 3)
        second.addWidget(self.name_btn)
        rows.addLayout(top)
        rows.addLayout(second)
        lay.addLayout(rows, 1)
        return bar

    def _act(self, fn, done: str, follow: int | None = None) -> None:
        """Run one decision on the GUI thread (a small SQLite write), then reload the identities,
        keeping the identity that holds the sighting ``follow`` selected."""
        from itkm_engine.errors import ItkmError

        session = self.ctx.session
        if session is None or self.ctx.readonly:
            self.decision_info.setText("The workspace is open read-only: decisions cannot be stored.")
            return
        try:
            step = fn(session)
        except ItkmError as exc:
            self.decision_info.setText(str(exc))
            return
        if callable(done):
            done = done(session, step)
        self.decision_info.setText(done if step is not None else "Nothing to undo or redo.")
        self._follow = follow
        self.summary = []
        self.load()

    def _a_sighting_of(self, identity: int | None) -> int | None:
        t = self.ctx.identities
        if t is None or identity is None:
            return None
        hit = t.image_id[t.identity == identity]
        return int(hit[0]) if len(hit) else None

    def selected_identities(self) -> list[int]:
        rows = {self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()}
        return [self.model.rows[r].identity for r in sorted(rows)]

    def merge_selected(self) -> None:
        ids = self.selected_identities()
        if len(ids) < 2:
            self.decision_info.setText("Select two or more identities in the table (Ctrl+click) to merge them.")
            return

        self._act(lambda s: s.merge_identities(*ids),
                  f"Merged {len(ids)} identities; the named, else the oldest id stays; the next round obeys it "
                  "(Ctrl+Z undoes).", follow=self._a_sighting_of(ids[0]))

    def split_selected(self) -> None:
        items = self.strip.selected_items()
        if not items:
            self.decision_info.setText("Select the sightings to split off in the strip below first.")
            return
        together = False
        if len(items) > 1:
            together = self.ask_split_together(len(items))
            if together is None:
                return
        moved = {it.image_id for it in items}
        stay = next((it.image_id for it in self.strip.items() if it.image_id not in moved), None)
        what = "into a new identity" if together or len(items) == 1 else "each into an identity of its own"
        self._act(lambda s: s.split_identity([it.image_id for it in items], together=together),
                  f"Split {plural(len(items), 'sighting')} off {what} (Ctrl+Z undoes).", follow=stay)

    def ask_split_together(self, n: int) -> bool | None:
        """Whether the ``n`` sightings being split off are one person: True, False, or None (cancel).
        Nobody may be made one person with someone they were not said to be."""
        from PySide6.QtWidgets import QMessageBox

        box = QMessageBox(QMessageBox.Icon.Question, "Split off sightings",
                          f"Are the {n} selected sightings one person?", parent=self)
        box.setInformativeText("Yes: they become one new identity, confirmed as one person.\n"
                               "No / not sure: each becomes an identity of its own.")
        yes = box.addButton("Yes, one person", QMessageBox.ButtonRole.YesRole)
        no = box.addButton("No / not sure", QMessageBox.ButtonRole.NoRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(no)
        box.exec()
        clicked = box.clickedButton()
        return True if clicked is yes else False if clicked is no else None

    def save_name(self) -> None:
        ident = getattr(self, "shown_identity", None)
        if ident is None:
            return
        name, note = self.name_edit.text(), self.note_edit.text()
        self._act(lambda s: s.name_identity(ident, name, note), f"Identity #{ident} named {name!r}.",
                  follow=self._a_sighting_of(ident))

    def undo_redo(self, redo: bool) -> None:
        word = "Redone" if redo else "Undone"
        self._act(lambda s: s.redo() if redo else s.undo(), lambda s, step: f"{word}: {s.describe_step(step)}.",
                  follow=self._a_sighting_of(getattr(self, "shown_identity", None)))

    def prepare_screenshot(self) -> None:
        """Show the largest identity seen by several cameras (the interesting case)."""
        multi = [s for s in self.summary if len(s.cameras) > 1]
        if multi:
            self.select_identity(max(multi, key=lambda s: s.size).identity)

    def _open_in_gallery(self, image_id: int) -> None:
        self.ctx.queryImage.emit(int(image_id))
        self.ctx.showPanel.emit("gallery")


def _short_time(ts: float) -> str:
    if ts is None or not math.isfinite(ts):
        return ""
    if is_derived(ts):
        return fmt_derived(ts).split(", ")[1]
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _natural(s: str):
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]
