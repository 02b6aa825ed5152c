"""Cameras: what was ingested, per camera; scenario/group editable in place; add folders.

The table reads ``Workspace.cameras()`` in a job.  Scenario and group are edited with combo
boxes restricted to valid values (a group must belong to its scenario,
``itkm_engine.vocabulary``); an edit is written with ``Workspace.set_camera`` in a job, and
the scenario change brings the group along (to the scenario's default when the old one does
not fit).  Folders come in through the "Add camera folders" dialog or by dropping them on the
panel; ingestion runs in the background with a progress bar and can be cancelled.
"""

from __future__ import annotations

import html
import os

from PySide6.QtCore import QAbstractTableModel, QItemSelectionModel, QModelIndex, QSize, QSortFilterProxyModel, Qt
from PySide6.QtGui import QPainter, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableView,
                               QVBoxLayout)

from itkm_engine.vocabulary import SCENARIOS, allowed_groups, default_group

from .. import tasks
from ..dialogs import AddFoldersDialog, RejectsDialog
from ..widgets.delegates import ComboDelegate
from ..widgets.model_banner import ModelBanner
from ..widgets.progress import JobProgress
from ..wording import plural
from .base import Panel

THUMB = QSize(28, 56)
#: Sample crops per camera in the Sample column (spread over the camera's images).
SAMPLES = 4
#: Height of the crops in the Sample column's hover preview.
PREVIEW_HEIGHT = 160


def _fmt_height(h) -> str:
    return f"{h:.0f} px" if h is not None else ""


class CamerasModel(QAbstractTableModel):
    COLUMNS = ("Samples", "Camera", "Images", "Missing", "Rejected", "Scenario", "Group", "Site", "Median height",
               "Flag", "Set by")
    SCENARIO, GROUP, SITE, HEIGHT, FLAG, SET_BY = 5, 6, 7, 8, 9, 10

    def __init__(self, panel: "CamerasPanel") -> None:
        super().__init__(panel)
        self.panel = panel
        self.cameras: list = []
        self.sites: dict[int, str] = {}
        self.samples: dict[str, list[str]] = {}
        self._strips: dict[str, QPixmap] = {}
        panel.ctx.thumbs.ready.connect(self._thumb_ready)

    def set_cameras(self, cams: list, sites: dict | None = None, samples: dict | None = None) -> None:
        self.beginResetModel()
        self.cameras = list(cams)
        self.sites = dict(sites or {})
        self.samples = dict(samples or {})
        self._strips = {}
        self.endResetModel()

    def site(self, c) -> str:
        return self.sites.get(c.source_id) or ""

    def sample_paths(self, c) -> list[str]:
        return self.samples.get(c.name) or ([c.sample_path] if c.sample_path else [])

    def strip(self, c) -> QPixmap | None:
        """The camera's sample crops side by side (built once all of them are decoded)."""
        if c.name in self._strips:
            return self._strips[c.name]
        paths = self.sample_paths(c)
        pms = [self.panel.ctx.thumbs.get(p, THUMB) for p in paths]
        if not pms or any(pm is None and not self.panel.ctx.thumbs.failed(p, THUMB) for p, pm in zip(paths, pms)):
            return None
        pms = [pm for pm in pms if pm is not None]
        strip = QPixmap(SAMPLES * (THUMB.width() + 2), THUMB.height())
        strip.fill(Qt.GlobalColor.transparent)
        painter = QPainter(strip)
        for i, pm in enumerate(pms):
            painter.drawPixmap(i * (THUMB.width() + 2) + (THUMB.width() - pm.width()) // 2,
                               (THUMB.height() - pm.height()) // 2, pm)
        painter.end()
        self._strips[c.name] = strip
        return strip

    def preview_html(self, c) -> str:
        """A larger look at the camera's samples, for the hover (the path alone said little)."""
        imgs = "".join(f'<img src="{html.escape(p)}" height="{PREVIEW_HEIGHT}"> ' for p in self.sample_paths(c))
        return (f"<b>{html.escape(c.name)}</b>: {plural(c.n_images, 'image')}<br>{imgs}"
                if imgs else "no sample")

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.cameras)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return len(self.COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal:
            if role == Qt.ItemDataRole.DisplayRole:
                return self.COLUMNS[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                return {
                    0: "Sample crops spread over the camera's images; hover for a larger view",
                    5: "Scenario of the camera (double-click to change)",
                    6: "Group inside the scenario (double-click to change)",
                    7: "<qt>Where the camera's folder was filmed. People are matched only within one site. "
                       "Double-click to change it: every camera of the same folder changes with it.</qt>",
                    8: "Median crop height: low-resolution cameras stand out here",
                    9: "Warnings from ingestion, e.g. 'mixed' when both infrared and colour images were seen",
                    10: "'guess' when ingestion guessed scenario/group, 'you' once you changed them",
                }.get(section)
        return None

    def flags(self, index: QModelIndex):
        f = super().flags(index)
        if index.column() in (self.SCENARIO, self.GROUP, self.SITE) and not self.panel.edit_block():
            f |= Qt.ItemFlag.ItemIsEditable
        return f

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        c = self.cameras[index.row()]
        col = index.column()
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return [
                None,
                c.name,
                c.n_images,
                c.n_missing + getattr(c, "n_unreadable", 0),
                c.n_rejected,
                c.scenario,
                c.group,
                self.site(c),
                _fmt_height(c.median_height),
                c.flag or "",
                "you" if c.user_set else "guess",
            ][col]
        if role == Qt.ItemDataRole.DecorationRole and col == 0:
            return self.strip(c)
        if role == Qt.ItemDataRole.SizeHintRole and col == 0:
            return QSize(SAMPLES * (THUMB.width() + 2) + 8, THUMB.height() + 6)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (2, 3, 4, self.HEIGHT):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == 0:
                return self.preview_html(c)
            if col in (self.SCENARIO, self.GROUP, self.SITE) and self.panel.edit_block():
                return f"<qt>{self.panel.edit_block()}</qt>"
            if col == self.SITE:
                src = next((s for s in getattr(self.panel, "sources", []) if s.id == c.source_id), None)
                return (f"<qt>Site of the folder {html.escape(str(src.root))}. Double-click to change it (for every "
                        "camera of that folder).</qt>" if src is not None else "double-click to change")
            if col == self.SCENARIO and c.guessed_scenario and c.guessed_scenario != c.scenario:
                return f"guessed: {c.guessed_scenario}"
            if col == self.GROUP and c.guessed_group and c.guessed_group != c.group:
                return f"guessed: {c.guessed_group}"
            if col == 3 and (c.n_missing or getattr(c, "n_unreadable", 0)):
                return f"{c.n_missing} not found at the last scan, {getattr(c, 'n_unreadable', 0)} unreadable"
        if role == Qt.ItemDataRole.UserRole:  # sort key
            return [0, c.name, c.n_images, c.n_missing, c.n_rejected, c.scenario, c.group, self.site(c),
                    c.median_height or 0.0, c.flag or "", int(c.user_set)][col]
        return None

    def setData(self, index: QModelIndex, value, role=Qt.ItemDataRole.EditRole) -> bool:  # noqa: N802
        if role != Qt.ItemDataRole.EditRole or not index.isValid():
            return False
        c = self.cameras[index.row()]
        if index.column() == self.SCENARIO:
            if value == c.scenario or value not in SCENARIOS:
                return False
            group = c.group if c.group in allowed_groups(value) else default_group(value)
            self.panel.set_camera(c.name, value, group)
            return True
        if index.column() == self.GROUP:
            if value == c.group or value not in allowed_groups(c.scenario):
                return False
            self.panel.set_camera(c.name, c.scenario, value)
            return True
        if index.column() == self.SITE:
            value = str(value).strip()
            if not value or value == self.site(c):
                return False
            self.panel.set_site(c.source_id, value)
            return True
        return False

    def _thumb_ready(self, path: str) -> None:
        for r, c in enumerate(self.cameras):
            if path in self.sample_paths(c):
                self._strips.pop(c.name, None)
                i = self.index(r, 0)
                self.dataChanged.emit(i, i, [Qt.ItemDataRole.DecorationRole])


class CamerasPanel(Panel):
    key = "cameras"
    title = "Cameras"
    HINT = ("Double-click a scenario, group or site to correct it. Drop camera folders here to add them; "
            "a folder of loose crops becomes one camera named after the folder.")

    # -- why a cell cannot be edited now ----------------------------------------------------------
    def edit_block(self) -> str:
        """Why scenario, group and site cannot be edited now ("" when they can)."""
        ctx = self.ctx
        if ctx.ws is None:
            return ""
        if ctx.jobs.busy("write"):
            names = sorted({j.name for j in ctx.jobs.active() if j.kind == "write"})
            # the running job holds the workspace's writer lock (a child process for training and
            # features) and uses these settings: the cells are editable again when it ends
            return (f"Scenario, group and site can be changed when {', '.join(names) or 'the running job'} has "
                    "finished: it holds the workspace and uses them.")
        if ctx.readonly:
            return "The workspace is open read-only: scenario, group and site cannot be changed."
        return ""

    def _update_hint(self) -> None:
        block = self.edit_block()
        self.hint.setText(block or self.HINT)
        self.hint.setEnabled(bool(block))  # a reason reads in full colour, the usual hint greyed

    def _double_clicked(self, index) -> None:
        col = self.proxy.mapToSource(index).column()
        if col in (CamerasModel.SCENARIO, CamerasModel.GROUP, CamerasModel.SITE):
            self._update_hint()

    def __init__(self, ctx, parent=None) -> None:
        super().__init__(ctx, parent)
        self.setAcceptDrops(True)
        self.model = CamerasModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.SelectedClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(THUMB.height() + 6)
        self.table.setIconSize(THUMB)
        h = self.table.horizontalHeader()
        h.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        # no stretched column: an empty Flag column took 40% of the table
        h.setStretchLastSection(False)
        h.setMinimumSectionSize(60)
        self.table.setItemDelegateForColumn(CamerasModel.SCENARIO, ComboDelegate(lambda _i: list(SCENARIOS), self))
        self.table.setItemDelegateForColumn(CamerasModel.GROUP, ComboDelegate(self._groups_for, self))

        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.banner = ModelBanner(ctx)
        self.sources: list = []
        self.add_btn = QPushButton("Add camera folders…")
        self.add_btn.clicked.connect(lambda: self.add_folders())
        self.rejects_btn = QPushButton("Rejected files…")
        self.rejects_btn.clicked.connect(self.show_rejects)
        self.reset_btn = QPushButton("Use guess")
        self.reset_btn.setToolTip("Go back to the scenario and group ingestion guessed for the selected cameras")
        self.reset_btn.clicked.connect(self._reset_selected)
        self.progress = JobProgress()
        self.progress.hide()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.hide()
        self.cancel_btn.clicked.connect(self.cancel_ingest)
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        top.addWidget(self.reset_btn)
        top.addWidget(self.rejects_btn)
        top.addWidget(self.add_btn)
        prog = QHBoxLayout()
        prog.addWidget(self.progress, 1)
        prog.addWidget(self.cancel_btn)
        hint = QLabel(self.HINT)
        hint.setWordWrap(True)
        hint.setEnabled(False)
        self.hint = hint
        lay = QVBoxLayout(self.content)
        lay.addWidget(self.banner)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)
        lay.addLayout(prog)
        lay.addWidget(hint)
        self._highlight: list[str] = []
        ctx.jobs.jobStarted.connect(lambda _j: self._update_hint())
        ctx.jobs.jobEnded.connect(lambda _j: self._update_hint())
        self.table.doubleClicked.connect(self._double_clicked)
        ctx.workspaceChanged.connect(self._on_workspace)
        ctx.imagesChanged.connect(self.reload)
        self._on_workspace(ctx.ws)

    # -- states ------------------------------------------------------------------------------------
    def _on_workspace(self, ws) -> None:
        self._highlight = []
        if ws is None:
            self.model.set_cameras([])
            self.show_empty("No workspace open",
                            "A workspace holds the cameras you analyse, the trained models and the results. "
                            "Open one, create a new one, or try the demo camera set.",
                            [("Open workspace…", lambda: self.window().open_workspace_dialog()),
                             ("New workspace…", lambda: self.window().new_workspace_dialog()),
                             ("Open the demo", lambda: self.window().open_demo())])
            return
        self.reload()

    def reload(self) -> None:
        ws = self.ctx.ws
        if ws is None:
            return
        self.run("cameras", tasks.read_cameras, ws, SAMPLES, on_done=self._show_cameras)

    def _show_cameras(self, data) -> None:
        cams, sites, samples, self.sources = data
        self.model.set_cameras(cams, sites, samples)
        if not cams:
            self.show_empty("No cameras yet",
                            "Add the folders that hold your camera crops (one folder per camera, or a known "
                            "dataset layout such as Market-1501, SYSU-MM01 or RegDB). You can also drop folders "
                            "here.",
                            [("Add camera folders…", lambda: self.add_folders())])
            return
        self.show_content()
        n_img = sum(c.n_images for c in cams)
        n_rej = sum(c.n_rejected for c in cams)
        n_miss = sum(c.n_missing for c in cams)
        scen = sorted({c.scenario for c in cams})
        self.summary.setText(f"<b>{plural(len(cams), 'camera')}</b> · <b>{plural(n_img, 'image')}</b> · "
                             f"{n_miss:,} missing · {n_rej:,} rejected · scenarios: {', '.join(scen)}")
        if self._highlight:  # kept over reloads (the model reset clears the selection)
            self.highlight_cameras(self._highlight)
        self.rejects_btn.setEnabled(n_rej > 0)
        editable = not self.ctx.readonly
        self.add_btn.setEnabled(editable)
        self.reset_btn.setEnabled(editable)

    def highlight_cameras(self, names) -> None:
        """Select the rows of ``names`` (just added) and scroll to the first."""
        names = set(names)
        sel = self.table.selectionModel()
        sel.clearSelection()
        first = None
        for r, c in enumerate(self.model.cameras):
            if c.name in names:
                idx = self.proxy.mapFromSource(self.model.index(r, 0))
                sel.select(idx, QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows)
                first = first or idx
        if first is not None:
            self.table.scrollTo(first)

    def selected_cameras(self) -> list[str]:
        rows = {self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()}
        return [self.model.cameras[r].name for r in sorted(rows)]

    def set_site(self, source_id: int, site: str) -> None:
        self.ctx.jobs.submit("set site", tasks.set_site, self.ctx.ws, self.ctx.session, source_id, site, kind="write",
                             quiet=True, on_done=lambda _r: self.ctx.imagesChanged.emit())

    def _groups_for(self, index: QModelIndex) -> list[str]:
        src = self.proxy.mapToSource(index)
        return list(allowed_groups(self.model.cameras[src.row()].scenario))

    # -- edits ---------------------------------------------------------------------------------------
    def set_camera(self, name: str, scenario: str, group: str) -> None:
        self.ctx.jobs.submit(f"set camera {name}", tasks.set_camera, self.ctx.ws, self.ctx.session, name, scenario,
                             group, kind="write", quiet=True, on_done=lambda _n: self.ctx.imagesChanged.emit())

    def _reset_selected(self) -> None:
        rows = {self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()}
        names = [self.model.cameras[r].name for r in sorted(rows)]
        if not names:
            return
        self.ctx.jobs.submit("reset cameras", tasks.reset_cameras, self.ctx.ws, self.ctx.session, names, kind="write",
                             quiet=True, on_done=lambda _r: self.ctx.imagesChanged.emit())

    # -- ingest ---------------------------------------------------------------------------------------
    def add_folders(self, folders: list[str] | None = None) -> None:
        if self.task.busy():  # one ingest at a time (the button beside the table is disabled meanwhile)
            return
        if self.ctx.ws is None:
            self.window().new_workspace_dialog()
            if self.ctx.ws is None:
                return
        dlg = AddFoldersDialog(self, folders, sorted(set(self.model.sites.values())))
        if not folders:
            dlg._browse()
        if not dlg.folders() or dlg.exec() != QDialog.DialogCode.Accepted or not dlg.folders():
            return
        self.ingest(dlg.folders(), layout=dlg.layout_name(), scenario=dlg.scenario(), site=dlg.site())

    def ingest(self, folders: list[str], *, layout: str | None = None, scenario: str | None = None,
               site: str | None = None):
        """Ingest ``folders`` into the open workspace in the background (one ingest at a time)."""
        if self.task.busy():
            return None
        self.progress.reset("Ingesting…")
        self.progress.show()
        self.cancel_btn.show()
        self.cancel_btn.setEnabled(True)
        self.add_btn.setEnabled(False)
        return self.task.start("ingest", tasks.ingest_folders, self.ctx.ws, self.ctx.session, folders, layout, scenario,
                               site, kind="write", loading=False, on_done=self._ingested,
                               on_progress=self.progress.show_event, on_end=self._ingest_ended)

    def _ingested(self, summary) -> None:
        from itkm_engine.progress import LogMessage

        self.ctx.jobs.log.emit(LogMessage(
            "info", f"ingest: {plural(summary.images, 'image')} in {plural(len(summary.cameras), 'camera')} "
                    f"({summary.added:,} new, {summary.rejected:,} rejected)"))
        self._highlight = [r.camera for r in summary.cameras]
        self.ctx.imagesChanged.emit()

    def _ingest_ended(self) -> None:
        self.progress.hide()
        self.cancel_btn.hide()
        self.add_btn.setEnabled(not self.ctx.readonly)
        self.reload()

    def cancel_ingest(self) -> None:
        if self.task.busy():
            self.task.cancel()
            self.cancel_btn.setEnabled(False)

    def show_rejects(self) -> None:
        ws = self.ctx.ws
        if ws is None:
            return
        self.run("rejects", tasks.read_rejects, ws, on_done=lambda r: RejectsDialog(r, self).exec())

    # -- drag and drop ---------------------------------------------------------------------------------
    @staticmethod
    def _dropped_folders(mime) -> list[str]:
        if not mime.hasUrls():
            return []
        return [u.toLocalFile() for u in mime.urls() if u.isLocalFile() and os.path.isdir(u.toLocalFile())]

    def dragEnterEvent(self, e) -> None:  # noqa: N802
        if self._dropped_folders(e.mimeData()) and not self.ctx.readonly and not self.task.busy():
            e.acceptProposedAction()
        else:
            e.ignore()

    def dropEvent(self, e) -> None:  # noqa: N802
        folders = self._dropped_folders(e.mimeData())
        if folders:
            e.acceptProposedAction()
            self.add_folders(folders)
