"""The main window: five panels in tabs, a log dock, menus, toolbar, status bar.

Opening a workspace: the Workspace first (fast: the Cameras and Training panels fill at once),
then the Session -- which imports torch and builds the model -- in a background job, with its
state in the status bar.  The workspace is opened to read; the writer lock is taken only for each
write (ingest, camera edits, decisions, caches; training's child takes it itself), so ``itkm``
commands in a terminal work while the window sits open.  A read job every few seconds follows
what another process changed (a round finished from the terminal) and refreshes the views.  Heavy imports and UMAP's JIT are warmed up in the background at
start-up, so the window is usable within a second or two.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QStandardPaths, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (QApplication, QDockWidget, QFileDialog, QLabel, QLineEdit, QMainWindow, QMessageBox,
                               QProgressBar, QPushButton, QTabWidget, QToolButton)

from itkm_engine.progress import LogMessage

from . import errors, gui_gc, tasks, theme
from .gui_gc import GuiThreadCollector
from .context import AppContext, ModelState
from .jobs import JobManager
from .panels.cameras import CamerasPanel
from .panels.clusters import ClustersPanel
from .panels.gallery import GalleryPanel
from .panels.identities import IdentitiesPanel
from .panels.training import TrainingPanel
from .settings import Settings
from .widgets.log_view import LogView

APP_NAME = "ITKM Studio"
#: A usual window frame before the window system has told us its own: title bar and border, px.
FRAME_TITLE = 32
FRAME_BORDER = 4


def data_dir() -> Path:
    """Where the demo lives: ``ITKM_DATA_DIR``, else ``<the platform's data folder>/ITKM Studio``.

    Not Qt's AppDataLocation, which nests organisation and application (".../ITKM/ITKM Studio");
    a demo made there by an earlier version is still used."""
    env = os.environ.get("ITKM_DATA_DIR")
    if env:
        return Path(env)
    old = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    if old and (Path(old) / "demo-workspace").is_dir():
        return Path(old)
    loc = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation)
    return Path(loc) / APP_NAME if loc else Path.home() / ".itkm-studio"


def export_dir(settings) -> Path:
    """Where the export dialog opens: the last export's folder, else Documents (never the
    workspace's hidden data folders)."""
    last = settings.get("export/last_dir", "", str)
    if last and Path(last).is_dir():
        return Path(last)
    docs = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(docs) if docs and Path(docs).is_dir() else Path.home()


def show_in_folder(path: str | Path) -> bool:
    """Open the file manager at ``path``'s folder."""
    return QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(path).parent)))


class ShortcutsOverTextBoxes(QObject):
    """Window shortcuts win over a text box's own key bindings (Ctrl+E is "end of line" in a
    QLineEdit, so Export did nothing while the Identities filter had focus).

    Installed on the window's line edits: a ShortcutOverride for one of ``actions``' shortcuts
    is not delivered to the line edit, so the window's shortcut fires."""

    def __init__(self, actions: list[QAction], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.actions = actions

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802
        if ev.type() == QEvent.Type.ShortcutOverride and isinstance(obj, QLineEdit):
            seq = QKeySequence(ev.keyCombination())
            for a in self.actions:
                if a.isEnabled() and any(sc.matches(seq) == QKeySequence.SequenceMatch.ExactMatch
                                         for sc in a.shortcuts()):
                    return True
        return False


#: The quiet read job that refreshes the model state while other jobs run (its own end triggers none).
MODEL_STATE_JOB = "model state"
#: The quiet read job that looks whether another process changed the workspace (its end triggers none).
WATCH_JOB = "workspace changes"
#: How often (ms) the window looks whether another process changed the open workspace.
WATCH_INTERVAL_MS = 2000


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings | None = None, *, dev: bool = False, warm: bool = True) -> None:
        super().__init__()
        self.settings = settings or Settings()
        # cyclic garbage is collected on this (the GUI) thread only: see gui_gc.py
        self.collector = GuiThreadCollector(self)
        self.collector.start()
        self.jobs = JobManager(self)
        self.ctx = AppContext(self.settings, self.jobs, self)
        self.ctx.dev = dev
        self.setWindowTitle(APP_NAME)
        # small enough for any screen the window may open on: fit_to_screen() keeps it (and its
        # status bar) on the screen; at 1024x640 a 1024x640 minimum pushed the status bar off it
        self.setMinimumSize(800, 480)
        self.setDocumentMode(True)
        # -- panels
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.panels = [CamerasPanel(self.ctx), TrainingPanel(self.ctx), ClustersPanel(self.ctx),
                       GalleryPanel(self.ctx), IdentitiesPanel(self.ctx)]
        for p in self.panels:
            self.tabs.addTab(p, p.title)
        self.tabs.currentChanged.connect(self._tab_changed)
        self.setCentralWidget(self.tabs)
        # -- log
        self.log_view = LogView()
        self.log_dock = QDockWidget("Log", self)
        self.log_dock.setObjectName("log")
        self.log_dock.setWidget(self.log_view)
        self.log_dock.setAllowedAreas(Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.log_dock)
        self.jobs.log.connect(self.log_view.add)
        self.jobs.error.connect(self._job_error)
        errors.listeners.append(self._error_logged)
        # -- status bar
        self.ws_label = QLabel("No workspace")
        self.model_label = QLabel("")
        self.model_label.setToolTip("The model the views use: the last finished training round")
        self.device_label = QLabel("Device: …")
        self.job_label = QLabel("Idle")
        self.job_bar = QProgressBar()
        self.job_bar.setMaximumWidth(160)
        self.job_bar.setRange(0, 1000)
        self.job_bar.setTextVisible(False)
        self.job_bar.hide()
        self.job_cancel = QToolButton()
        self.job_cancel.setIcon(theme.icon("stop", self))
        self.job_cancel.setToolTip("Cancel the running jobs")
        self.job_cancel.clicked.connect(self.jobs.cancel_all)
        self.job_cancel.hide()
        sb = self.statusBar()
        sb.addWidget(self.ws_label, 1)
        sb.addPermanentWidget(self.model_label)
        self.eval_label = QLabel("")
        self.eval_label.setToolTip("Headline evaluation of the current model (Training > Evaluate)")
        sb.addPermanentWidget(self.eval_label)
        sb.addPermanentWidget(self.device_label)
        sb.addPermanentWidget(self.job_label)
        sb.addPermanentWidget(self.job_bar)
        sb.addPermanentWidget(self.job_cancel)
        self.jobs.jobStarted.connect(self._job_started)
        self.jobs.jobEnded.connect(lambda _j: self._update_job_status())
        self.ctx.showPanel.connect(self.show_panel)
        self.ctx.deviceChanged.connect(lambda d: self.device_label.setText(f"Device: {d}"))
        self.ctx.workspaceChanged.connect(self._workspace_changed)
        self.ctx.sessionChanged.connect(lambda _s: self._update_actions())
        self.ctx.sessionChanged.connect(lambda _s: self.refresh_model_state())  # text search needs its config
        self.ctx.modelStateChanged.connect(self._model_state_changed)
        self.ctx.modelChanged.connect(self.refresh_model_state)
        self.jobs.jobEnded.connect(lambda j: j.name in (MODEL_STATE_JOB, WATCH_JOB) or self.refresh_model_state())
        # another process's changes (a terminal's itkm commands): looked for every few seconds
        self._stamp: dict | None = None  # the workspace's change stamp last seen (None: take the next as is)
        self._own_writes = 0  # write jobs of the app that ended (their own signals refreshed the views)
        self._own_parts: set[str] = set()  # parts whose views the app refreshed itself since the stamp
        self._stamp_writes = 0  # the app's own writes (ws.writes_done) when the stamp was read
        self._following = False  # the views follow another process's change (not the app's own)
        self._adopt_pending = False
        self._watch_timer = QTimer(self)
        self._watch_timer.setInterval(WATCH_INTERVAL_MS)
        self._watch_timer.timeout.connect(self.watch_workspace)
        self.jobs.jobEnded.connect(lambda j: j.kind == "write" and self._own_write_ended())
        self.ctx.imagesChanged.connect(lambda: self._own_change("images"))
        self.ctx.modelChanged.connect(lambda: self._own_change("model", "rounds"))
        self.ctx.identitiesChanged.connect(lambda _t: self._own_change("decisions"))
        self.panel("training").trainingChanged.connect(lambda _on: self._own_change("model", "rounds"))
        self.panel("training").trainingChanged.connect(lambda _on: (self.refresh_model_state(),
                                                                     self._update_actions()))
        self.panel("training").evaluated.connect(self._evaluated)
        self._make_actions()
        self._shortcut_filter = ShortcutsOverTextBoxes(
            [a for a in self.findChildren(QAction) if not a.shortcut().isEmpty()], self)
        # on the window's text boxes only: a filter on the application would run Python for every event
        for edit in self.findChildren(QLineEdit):
            edit.installEventFilter(self._shortcut_filter)
        self._restore()
        self._update_actions()
        self._closing = False
        self._watching = None  # the job whose progress the status bar message follows (_watch)
        self._watched: list = []
        if warm:
            QTimer.singleShot(0, self._start_background)

    # -- actions ----------------------------------------------------------------------------------------
    def _make_actions(self) -> None:
        def act(text, slot, shortcut=None, icon=None, tip=None):
            a = QAction(text, self)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
            if icon:
                a.setIcon(theme.icon(icon, self))
            if tip:
                a.setStatusTip(tip)
                a.setToolTip(f"{tip} ({a.shortcut().toString(QKeySequence.SequenceFormat.NativeText)})"
                             if shortcut else tip)
            a.triggered.connect(slot)
            return a

        self.act_open = act("&Open workspace…", self.open_workspace_dialog, QKeySequence.StandardKey.Open, "open",
                            "Open a workspace folder")
        self.act_new = act("&New workspace…", self.new_workspace_dialog, QKeySequence.StandardKey.New, None,
                           "Create a workspace in an empty folder")
        self.act_demo = act("Open the &demo", lambda: self.open_demo(), None, None,
                            "Create (first time) and open the demo camera set")
        self.act_add = act("&Add camera folders…", lambda: self.panel("cameras").add_folders(), "Ctrl+Shift+A",
                           "add-folder", "Ingest camera folders into this workspace")
        self.act_train = act("&Train", lambda: (self.show_panel("training"), self.panel("training").start()), "F5",
                             "train", "Start (or resume) training")
        self.act_retrain = act("&Retrain", lambda: (self.show_panel("training"), self.panel("training").retrain()),
                               "Ctrl+R", "retrain", "Run one more round from the last checkpoint")
        self.act_stop = act("&Stop", self.stop_jobs, "Ctrl+.", "stop", "Stop training and other running jobs")
        self.act_export = act("&Export tracks…", self.export_tracks_dialog, "Ctrl+E", "export",
                              "Export identity tracks to CSV")
        self.act_export_onnx = act("Export &encoder (ONNX)…", self.export_onnx_dialog, "Ctrl+Shift+E", "export",
                                   "Export the fine-tuned image encoder as ONNX, for trackers")
        self.act_close = act("&Close workspace", self.close_workspace, QKeySequence.StandardKey.Close, None,
                             "Close the workspace")
        self.act_quit = act("&Quit", self.close, QKeySequence.StandardKey.Quit, "quit", "Quit ITKM Studio")
        self.act_quit.setMenuRole(QAction.MenuRole.QuitRole)

        m = self.menuBar().addMenu("&File")
        for a in (self.act_open, self.act_new, self.act_demo):
            m.addAction(a)
        self.recent_menu = m.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        m.addSeparator()
        m.addAction(self.act_add)
        m.addAction(self.act_export)
        m.addAction(self.act_export_onnx)
        m.addSeparator()
        m.addAction(self.act_close)
        m.addAction(self.act_quit)
        m = self.menuBar().addMenu("&Training")
        for a in (self.act_train, self.act_retrain, self.act_stop):
            m.addAction(a)
        m = self.menuBar().addMenu("&View")
        for i, p in enumerate(self.panels):
            a = QAction(p.title, self)
            a.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            a.triggered.connect(lambda _c=False, k=p.key: self.show_panel(k))
            m.addAction(a)
        m.addSeparator()
        log_act = self.log_dock.toggleViewAction()
        log_act.setShortcut(QKeySequence("Ctrl+L"))
        m.addAction(log_act)
        theme_menu = m.addMenu("&Appearance")
        for name, label in (("system", "Follow the system"), ("light", "Light"), ("dark", "Dark")):
            a = QAction(label, self)
            a.setCheckable(True)
            a.setChecked(self.settings.get("view/theme", "system", str) == name)
            a.triggered.connect(lambda _c=False, n=name: self.set_theme(n))
            theme_menu.addAction(a)
        m = self.menuBar().addMenu("&Help")
        m.addAction(act("&Keyboard shortcuts", self.show_shortcuts, "F1"))
        m.addAction(act("&About ITKM Studio", self.show_about))

        tb = self.addToolBar("Main")
        tb.setObjectName("main-toolbar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for a in (self.act_open, self.act_add, None, self.act_train, self.act_retrain, self.act_stop, None,
                  self.act_export, self.act_export_onnx):
            tb.addSeparator() if a is None else tb.addAction(a)

    def _update_actions(self) -> None:
        has_ws = self.ctx.ws is not None
        writable = has_ws and not self.ctx.readonly
        has_session = self.ctx.session is not None
        # a write job (training, ingest) holds the workspace: Train/Retrain wait for it
        training = self.panel("training").is_training() or self.jobs.busy("write")
        trained = self.ctx.model_state is not None and self.ctx.model_state.trained
        self.act_add.setEnabled(writable)
        self.act_train.setEnabled(writable and has_session and not training)
        self.act_retrain.setEnabled(writable and has_session and not training and trained)
        self.act_stop.setEnabled(self.jobs.busy("write") or self.jobs.busy("read"))
        self.act_export.setEnabled(has_session and trained)
        self.act_export_onnx.setEnabled(has_session and trained)
        for a, why in ((self.act_train, "training is running" if training else "open a workspace first"),
                       (self.act_retrain, "training is running" if training else "train a first round first"),
                       (self.act_export, "train a first round first"),
                       (self.act_export_onnx, "train a first round first")):
            tip = a.statusTip()
            a.setToolTip(tip if a.isEnabled() else f"{tip} — not now: {why}")
        self.act_close.setEnabled(has_ws)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_workspaces()
        if not recent:
            a = self.recent_menu.addAction("(none)")
            a.setEnabled(False)
        for p in recent:
            a = self.recent_menu.addAction(p)
            a.triggered.connect(lambda _c=False, path=p: self.open_workspace(path))

    # -- panels -------------------------------------------------------------------------------------------
    def panel(self, key: str):
        for p in self.panels:
            if p.key == key:
                return p
        raise KeyError(key)

    def show_panel(self, key: str) -> None:
        self.tabs.setCurrentWidget(self.panel(key))

    def _tab_changed(self, i: int) -> None:
        w = self.tabs.widget(i)
        if hasattr(w, "activate"):
            w.activate()

    # -- workspace ------------------------------------------------------------------------------------------
    def open_workspace_dialog(self) -> None:
        start = self.settings.last_workspace() or str(Path.home())
        d = QFileDialog.getExistingDirectory(self, "Open workspace", start)
        if d:
            self.open_workspace(d)

    def new_workspace_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "New workspace (choose or create an empty folder)",
                                             str(Path.home()))
        if d:
            self.open_workspace(d, create=True)

    def open_workspace(self, path: str | Path, *, create: bool = False, readonly: bool = False) -> None:
        """Open (or create) a workspace; then load its session in the background."""
        from itkm_engine.errors import ItkmError, WorkspaceLockedError
        from itkm_engine.workspace import Workspace

        path = Path(path).expanduser()
        if not create and not Workspace.is_workspace(path):
            errors.report(self, "Not a workspace",
                          f"{path} is not an ITKM Studio workspace. Use File > New workspace to create one "
                          "in an empty folder.")
            return
        self.close_workspace()
        try:
            # read without the writer lock; each write takes it (hold_lock=False): itkm commands in
            # a terminal run while the window sits open (ADR 0012)
            ws = Workspace.open(path, create=create, readonly=readonly, hold_lock=False, owner=tasks.APP_OWNER)
        except WorkspaceLockedError as exc:
            if self.ask_open_readonly(str(exc)):
                self.open_workspace(path, readonly=True)
            return
        except ItkmError as exc:
            errors.report(self, "Cannot open the workspace", str(exc))
            return
        self.settings.remember_workspace(ws.path)
        self.ctx.set_workspace(ws)
        self.refresh_model_state()
        self.log_view.add(LogMessage("info", f"opened workspace {ws.path}" + (" (read-only)" if ws.readonly else "")))
        self._load_session()

    def refresh_model_state(self) -> None:
        """Read which round's model the workspace serves.

        With no job writing, on the GUI thread (SQLite, milliseconds), so a relaunch shows it at
        once instead of "not trained yet" for seconds.  While a job writes (or an earlier read
        of this kind is still waiting), in a read job: the workspace's connection lock may be
        held, and the window must never wait for it.  The read job's own end triggers no other."""
        ws = self.ctx.ws
        if ws is None:
            self.ctx.set_model_state(None)
            return
        if self.jobs.busy("write") or self.jobs.find(MODEL_STATE_JOB) is not None:
            # a writer's transaction, or a model-state read stuck behind one, may hold the
            # workspace's connection lock: the window must never wait for it
            self.jobs.submit(MODEL_STATE_JOB, tasks.read_rounds, ws, quiet=True, report_errors=False,
                             on_done=lambda rounds, w=ws: self._set_model_state(w, rounds))
            return
        try:
            rounds = ws.rounds()
        except Exception:  # noqa: BLE001 - closed meanwhile; the next change reads it again
            return
        self._set_model_state(ws, rounds)

    def _set_model_state(self, ws, rounds) -> None:
        if self.ctx.ws is not ws:
            return
        from itkm_engine.text_search import workspace_reason

        state = ModelState.of(rounds)
        training = self.panel("training").is_training()
        session = self.ctx.session
        text_off = workspace_reason(rounds, session.cfg, app=True) if session is not None else None
        self.ctx.set_model_state(ModelState(state.round, state.preset, state.unfinished, training, text_off))

    def _evaluated(self, scores: dict) -> None:
        from .widgets.eval_table import headline, pct

        h = headline(scores)
        self.eval_label.setText(f"mAP {pct(h.get('mAP'))}% · R1 {pct(h.get('rank1'))}%" if h else "")
        if h:
            self.eval_label.setToolTip(f"Evaluation of the current model: {h.get('protocol', 'standard')} protocol, "
                                       f"{h.get('split', 'overall')} (Training panel: every protocol and split)")

    def _model_state_changed(self, state) -> None:
        self.model_label.setText(state.text() if state is not None else "")
        self._update_actions()

    def ask_open_readonly(self, message: str) -> bool:
        r = QMessageBox.question(self, "Workspace in use", f"{message}\n\nOpen it read-only instead?")
        return r == QMessageBox.StandardButton.Yes

    def _load_session(self) -> None:
        ws = self.ctx.ws
        device = self.settings.get("training/device", "auto", str)
        self.device_label.setText("Device: loading…")
        job = self.jobs.submit("load model", tasks.open_session, ws, device, kind="read", on_done=self._session_loaded)
        job.failed.connect(lambda msg, _tb: self.device_label.setText("Device: unavailable"))

    def _session_loaded(self, result) -> None:
        session, images, device_text = result
        if self.ctx.ws is not session.ws:  # another workspace was opened meanwhile
            return
        self.ctx.set_session(session, images)
        self.ctx.deviceChanged.emit(device_text)
        self._refresh_images_on_change()
        self.read_camera_sites()
        self.extract_features()

    def extract_features(self) -> None:
        """The current model's features, extracted by a child process before a view needs them
        (a ``write`` job: the child borrows the writer lock; ADR 0008).  Nothing when cached."""
        session = self.ctx.session
        if session is None or session.ws.readonly:
            return
        self.jobs.submit("features", tasks.extract_features, session, kind="write")

    def _refresh_images_on_change(self) -> None:
        # reload the image table when cameras/images change, so panels see new scenarios etc.
        if getattr(self, "_images_hooked", False):
            return
        self._images_hooked = True
        self.ctx.imagesChanged.connect(self._reload_images)
        self.ctx.modelChanged.connect(self._reload_images)
        self.ctx.modelChanged.connect(self.extract_features)
        self.ctx.imagesChanged.connect(self.extract_features)

    def _reload_images(self) -> None:
        session = self.ctx.session
        if session is None:
            return

        def done(images, s=session):
            if self.ctx.session is s:
                self.ctx.images = images
                self.ctx.identities = None

        self.jobs.submit("images", tasks.read_images, session, on_done=done, quiet=True)
        self.read_camera_sites()

    def read_camera_sites(self) -> None:
        """Camera -> site for the views (colour by site, the Gallery's site filter), off the GUI thread."""
        ws = self.ctx.ws
        if ws is None:
            return

        def done(sites, w=ws):
            if self.ctx.ws is w:
                self.ctx.camera_sites = dict(sites)
                self.ctx.sitesChanged.emit()

        self.jobs.submit("camera sites", tasks.read_camera_sites, ws, on_done=done, quiet=True, report_errors=False)

    def close_workspace(self) -> None:
        if self.ctx.ws is None:
            return
        if self.jobs.busy("write") or self.jobs.busy("read"):
            self.jobs.cancel_all()
            self.jobs.wait_idle(60)
        session, ws = self.ctx.session, self.ctx.ws
        self.ctx.set_workspace(None)
        if session is not None:
            session.close()
        else:
            ws.close()
        self.device_label.setText("Device: …")

    def _workspace_changed(self, ws) -> None:
        self.eval_label.setText("")
        self._stamp = None
        self._own_parts = set()
        self._adopt_pending = False
        if ws is None:
            self._watch_timer.stop()
            self.ws_label.setText("No workspace")
            self.setWindowTitle(APP_NAME)
        else:
            mode = " (read-only)" if ws.readonly else ""
            self.ws_label.setText(f"Workspace: {ws.path}{mode}")
            self.ws_label.setToolTip(str(ws.path))
            self.setWindowTitle(f"{ws.path.name}{mode} — {APP_NAME}")
            self._watch_timer.start()
            self.watch_workspace(adopt=True)
        self._update_actions()

    # -- other processes' changes --------------------------------------------------------------------------------
    def _own_change(self, *parts: str) -> None:
        """The app refreshed these parts' views after a change of its own (an edit, a decision,
        its training): the watcher does not report them as another process's."""
        if not self._following:
            self._own_parts.update(parts)

    def _own_write_ended(self) -> None:
        """The app's own write job (its training child included) ended: look at once.  The parts
        it changed were refreshed by the job's own signals (:meth:`_own_change`); any other part
        changed since the last stamp is another process's (a terminal's ``itkm train`` that ran
        while the job did, or before the job's end reached the GUI thread)."""
        self._own_writes += 1
        self.watch_workspace()

    def watch_workspace(self, adopt: bool = False) -> None:
        """Look (in a quiet read job) whether another process changed the workspace; the views
        follow (:meth:`_workspace_stamp`).  ``adopt``: take the stamp as the first baseline (a
        workspace just opened).  Not while the app itself writes: its jobs say what they change,
        and what another process changed meanwhile is reported once they ended."""
        ws = self.ctx.ws
        if ws is None:
            return
        if self.jobs.find(WATCH_JOB) is not None:
            self._adopt_pending = self._adopt_pending or adopt
            return
        if self.jobs.busy("write") and not adopt:
            return
        mark = (self._own_writes, ws.writes_done)
        self.jobs.submit(WATCH_JOB, tasks.workspace_changes, ws, self.ctx.session, None if adopt else self._stamp,
                         frozenset(self._own_parts),
                         quiet=True, report_errors=False,
                         on_done=lambda r, w=ws, m=mark, a=adopt: self._workspace_stamp(w, m, a, r))

    def _workspace_stamp(self, ws, mark: tuple, adopt: bool, result) -> None:
        stamp, changed, writer = result
        if self.ctx.ws is not ws:
            return
        self._show_writer(ws, writer)
        if adopt or self._stamp is None or self._adopt_pending:
            self._adopt_pending = False
            self._stamp, self._own_parts, self._stamp_writes = stamp, set(), mark[1]
            return
        following = any(j.name != WATCH_JOB for j in self.jobs.active())
        if (mark != (self._own_writes, ws.writes_done) or self.jobs.busy("write")
                or (ws.writes_done != self._stamp_writes and following)):
            # the app wrote while this stamp was read, or wrote (a decision) and its views are
            # still following (the identities it recomputes): keep the last stamp -- never adopt
            # one another process may have changed unseen -- and look again
            QTimer.singleShot(WATCH_INTERVAL_MS // 4, self.watch_workspace)
            return
        # compared with the last stamp, never a fresh one: what the app changed itself meanwhile
        # is in _own_parts (its views followed already), the rest is another process's
        changed = [k for k in changed if k not in self._own_parts]
        self._stamp, self._own_parts, self._stamp_writes = stamp, set(), mark[1]
        if not changed:
            return
        who = f" (pid {writer.pid}: {writer.what()})" if writer is not None else ""
        self.log_view.add(LogMessage("info", f"the workspace was changed by another process{who}: "
                                             f"{', '.join(changed)}; the views follow"))
        self._following = True
        try:
            if "images" in changed:
                self.ctx.imagesChanged.emit()
            if "model" in changed:
                self.ctx.modelChanged.emit()
            elif "rounds" in changed:
                self.panel("training").reload()
                self.refresh_model_state()
        finally:
            self._following = False
        if "decisions" in changed and self.ctx.session is not None:
            self.jobs.submit("identities", tasks.identities, self.ctx.session, quiet=True,
                             on_done=lambda t, s=self.ctx.session: self.ctx.session is s and self._follow_identities(t))

    def _follow_identities(self, table) -> None:
        self._following = True
        try:
            self.ctx.set_identities(table)
        finally:
            self._following = False

    def _show_writer(self, ws, writer) -> None:
        """The status bar names another process while it writes the workspace."""
        mode = " (read-only)" if ws.readonly and writer is None else ""
        busy = f" · being written by pid {writer.pid} ({writer.what()})" if writer is not None else ""
        self.ws_label.setText(f"Workspace: {ws.path}{mode}{busy}")

    def open_demo(self, identities: int = 60) -> None:
        """The demo: made on first use in the user's data folder, ingested, opened; reused later."""
        base = data_dir()
        demo, ws_dir = base / "demo", base / "demo-workspace"
        if self._demo_ready(demo, ws_dir):
            self.open_workspace(ws_dir)
            return
        self.log_view.add(LogMessage("info", f"creating the demo camera set in {demo}"))
        job = self.jobs.submit("demo", tasks.make_demo_workspace, demo, ws_dir, identities, kind="write",
                               on_done=lambda p: self.open_workspace(p))
        self._watch(job, "Creating the demo")
        # the centre says what is happening (it said "No workspace open" with an "Open the demo" button)
        cameras = self.panel("cameras")
        self.show_panel("cameras")
        text = (f"Drawing {identities} people on eight cameras (visible, thermal and near-infrared, "
                "low-resolution and clothes-changed) and adding them to a workspace. It opens here by itself "
                "when ready.")
        cameras.show_empty("Creating the demo camera set…", text)
        job.progress.connect(lambda e: self.ctx.ws is None and cameras.show_empty(
            f"Creating the demo camera set… {int(100 * (e.fraction or 0))}%", text))
        job.failed.connect(lambda _m, _tb: cameras._on_workspace(self.ctx.ws))
        job.cancelled.connect(lambda: cameras._on_workspace(self.ctx.ws))

    @staticmethod
    def _demo_ready(demo: Path, ws_dir: Path) -> bool:
        """The demo workspace holds the whole demo set.  Adding it commits 2,000 crops at a time,
        so a stop (or a crash) in between left a workspace with only the first batches: it is
        finished by the demo job, not opened as it is."""
        from itkm_engine.data.demo import complete_demo_size
        from itkm_engine.workspace import Workspace

        size = complete_demo_size(demo)
        if size is None or not Workspace.is_workspace(ws_dir):
            return False
        try:
            with Workspace.open(ws_dir, readonly=True) as ws:
                return ws.image_count() >= size
        except Exception:  # noqa: BLE001 - not usable: make it again
            return False

    # -- export ------------------------------------------------------------------------------------------------
    def export_tracks_dialog(self) -> None:
        if self.ctx.session is None:
            return
        default = export_dir(self.settings) / f"{self.ctx.ws.path.name}-tracks.csv"
        path, _ = QFileDialog.getSaveFileName(self, "Export identity tracks", str(default), "CSV files (*.csv)")
        if path:
            self.export_tracks(path)

    def export_tracks(self, path: str):
        if not path.lower().endswith(".csv"):
            path += ".csv"
        self.settings.set("export/last_dir", str(Path(path).parent))
        job = self.jobs.submit("export tracks", tasks.export_tracks, self.ctx.session, path, kind="read",
                               on_done=lambda n: self._exported(path, n))
        self._watch(job, "Exporting tracks")
        return job

    def export_onnx_dialog(self) -> None:
        if self.ctx.session is None:
            return
        default = export_dir(self.settings) / f"{self.ctx.ws.path.name}-encoder.onnx"
        path, _ = QFileDialog.getSaveFileName(self, "Export the image encoder (ONNX)", str(default),
                                              "ONNX files (*.onnx)")
        if path:
            self.export_onnx(path)

    def export_onnx(self, path: str):
        """The current model's image encoder to ``path`` as ONNX, written and checked with
        onnxruntime in a job (``tasks.export_onnx``), never on the GUI thread."""
        if not path.lower().endswith(".onnx"):
            path += ".onnx"
        self.settings.set("export/last_dir", str(Path(path).parent))
        job = self.jobs.submit("export encoder", tasks.export_onnx, self.ctx.session, path, kind="read",
                               on_done=lambda r: self._onnx_exported(path, r))
        self._watch(job, "Exporting the encoder")
        return job

    def _onnx_exported(self, path: str, result) -> None:
        rnd, chk = result
        which = f"the round {rnd} encoder" if rnd is not None else "the initial (untrained) encoder"
        check = f"; onnxruntime matches torch on {chk.n} crops (largest difference {chk.max_abs_diff:.1g})" \
            if chk is not None else ""
        self.log_view.add(LogMessage("info", f"exported {which} to {path}{check}"))
        self._show_export(f"Exported {which} to {path}", path)

    def _show_export(self, text: str, path: str) -> None:
        """One message for a finished export, and the "Show in folder" button beside it.  The
        export's progress messages stop first: they were drawn over this one."""
        self._watching = None
        self.statusBar().clearMessage()
        self.statusBar().showMessage(text, 15000)
        if getattr(self, "_show_btn", None) is None:
            self._show_btn = QPushButton("Show in folder")
            self._show_btn.setFlat(True)
            self._show_btn.clicked.connect(lambda: show_in_folder(self._last_export))
            self.statusBar().addPermanentWidget(self._show_btn)
        self._last_export = path
        self._show_btn.setToolTip(f"Open the folder holding {path}")
        self._show_btn.show()
        QTimer.singleShot(30000, self._show_btn.hide)

    def _exported(self, path: str, n: int) -> None:
        from .wording import plural

        self.log_view.add(LogMessage("info", f"exported {plural(n, 'sighting')} to {path}"))
        self._show_export(f"Exported {plural(n, 'sighting')} to {path}", path)

    # -- jobs in the status bar -------------------------------------------------------------------------------
    def _job_started(self, job) -> None:
        if getattr(job, "_quiet", False) or job.kind == "background":
            return
        job.progress.connect(lambda e, j=job: self._job_progress(j, e))
        self._update_job_status()

    def _job_progress(self, job, e) -> None:
        from .widgets.progress import PART_NAMES, format_eta

        if e.fraction is not None:
            self.job_bar.setValue(int(1000 * e.fraction))
        what = PART_NAMES.get(e.part, e.part) if e.part else e.stage
        label = job.name + (f": {what}" if what else "")
        # the engine's time left (itkm_engine/eta.py), the same the Training view and the CLI show
        if e.eta_s is not None and e.fraction is not None and e.fraction < 1:
            label += f" · {format_eta(e.eta_s)} left"
        self.job_label.setText(label)

    def _update_job_status(self) -> None:
        active = [j for j in self.jobs.active() if not getattr(j, "_quiet", False) and j.kind != "background"]
        if not active:
            self.job_label.setText("Idle")
            self.job_bar.hide()
            self.job_cancel.hide()
        else:
            names = ", ".join(sorted({j.name for j in active}))
            self.job_label.setText(f"Running: {names}")
            # reset before showing: QProgressBar.setValue repaints synchronously while visible,
            # and right after show() that pulled a full repaint of the charts (~50 ms) into Start
            self.job_bar.setValue(0)
            self.job_bar.show()
            self.job_cancel.show()
        self._update_actions()

    def _watch(self, job, what: str) -> None:
        """Show a job's progress in the status bar message too (until it ends: a late progress
        message must not cover the "Exported ..." that follows)."""
        self._watching = job

        def show(e, j=job):
            if self._watching is j:
                self.statusBar().showMessage(f"{what}: {int(100 * (e.fraction or 0))}% {e.message}", 3000)

        job.progress.connect(show)

    def stop_jobs(self) -> None:
        self.panel("training").stop()
        self.jobs.cancel_all()

    def _job_error(self, name: str, message: str, tb: str) -> None:
        # the window system already shows the application's name beside a dialog's title
        # one line in the dialog; a long explanation (e.g. every supported folder layout) goes
        # behind "Show Details" with the traceback instead of a wall of text
        first, _, rest = message.strip().partition("\n")
        errors.show_error(self, f"{name} failed", first, (rest.strip() + "\n\n" + tb).strip())

    def _error_logged(self, title: str, message: str, details: str) -> None:
        self.log_view.add(LogMessage("error", f"{title}: {message}"))

    # -- background ----------------------------------------------------------------------------------------------
    def _start_background(self) -> None:
        self.jobs.submit("probe devices", tasks.probe_devices, kind="background", quiet=True,
                         on_done=self._devices_probed, report_errors=False)
        self.jobs.submit("warm-up", tasks.warm_up, kind="background", quiet=True, report_errors=False,
                         on_done=self._warmed_up)

    def _warmed_up(self, _result) -> None:
        self.log_view.add(LogMessage("debug", "UMAP compiled; maps are ready"))
        gui_gc.freeze()  # torch, UMAP, scikit-learn are imported now: spare them every collection

    def _devices_probed(self, devices) -> None:
        self.ctx.devices = devices
        self.ctx.deviceChanged.emit(self.device_label.text().removeprefix("Device: ")
                                    if self.ctx.session is not None else devices[0][1])

    # -- look ---------------------------------------------------------------------------------------------------
    def set_theme(self, name: str) -> None:
        self.settings.set("view/theme", name)
        theme.apply_theme(QApplication.instance(), name)
        QMessageBox.information(self, "Appearance", "The new appearance applies fully after a restart.")

    def shortcut_rows(self) -> list[tuple[str, str, str]]:
        """(where, what, keys) of every keyboard shortcut: the window's actions, then the keys the
        views handle themselves (the Gallery's Y / N and arrows, undo / redo, the map's tools)."""
        native = QKeySequence.SequenceFormat.NativeText
        rows = set()
        for a in self.findChildren(QAction):
            if not a.shortcut().isEmpty() and a.text():
                rows.add(("Window", a.text().replace("&", ""), a.shortcut().toString(native)))
        undo = QKeySequence(QKeySequence.StandardKey.Undo).toString(native) or "Ctrl+Z"
        redo = QKeySequence("Ctrl+Shift+Z").toString(native)
        rows = sorted(rows, key=lambda r: r[1]) + [
            ("Gallery", "Same person: confirm the current (or selected) match", "Y"),
            ("Gallery", "Not this person: reject the current (or selected) match", "N"),
            ("Gallery", "Move between matches; past the last one: the next review pair", "Arrow keys"),
            ("Gallery", "Search for the current match", "Enter / double-click"),
            ("Gallery, Identities", "Undo the last decision (says what it undid)", undo),
            ("Gallery, Identities", "Redo", redo),
            ("Identities", "Select several identities (to merge) or sightings (to split)", "Ctrl+click"),
            ("Clusters", "Pan and zoom / rectangle selection / lasso selection", "P / R / L"),
            ("Help", "This list", "F1"),
        ]
        return rows

    def show_shortcuts(self) -> None:
        html = "<table>" + "".join(f"<tr><td><i>{w}</i>&nbsp;&nbsp;</td><td>{t}</td><td>&nbsp;&nbsp;<b>{k}</b></td></tr>"
                                   for w, t, k in self.shortcut_rows()) + "</table>"
        QMessageBox.information(self, "Keyboard shortcuts", html)

    def show_about(self) -> None:
        QMessageBox.about(self, f"About {APP_NAME}",
                          f"<h3>{APP_NAME}</h3><p>Finds the same person across many cameras without labels, "
                          "with the ITKM method (Image-Text Knowledge Modeling, AAAI 2026).</p>")

    # -- persistence ------------------------------------------------------------------------------------------------
    def fit_to_screen(self, available=None) -> None:
        """Keep the whole window, frame and status bar included, on the screen's free area
        (``available``: a QRect, default the window's screen's available geometry)."""
        if available is None:
            screen = self.screen() or QApplication.primaryScreen()
            if screen is None:
                return
            available = screen.availableGeometry()
        frame, inner = self.frameGeometry(), self.geometry()
        # the window system's frame (title bar, borders); before the first show assume a usual one
        dw = max(frame.width() - inner.width(), 0) or 2 * FRAME_BORDER
        dh = max(frame.height() - inner.height(), 0) or FRAME_TITLE + FRAME_BORDER
        w = min(self.width(), available.width() - dw)
        h = min(self.height(), available.height() - dh)
        if (w, h) != (self.width(), self.height()):
            self.resize(max(w, self.minimumWidth()), max(h, self.minimumHeight()))
        x = min(max(frame.x(), available.x()), available.x() + available.width() - self.width() - dw)
        y = min(max(frame.y(), available.y()), available.y() + available.height() - self.height() - dh)
        if (x, y) != (frame.x(), frame.y()):
            self.move(max(x, available.x()), max(y, available.y()))

    def _restore(self) -> None:
        g = self.settings.geometry()
        if g is not None:
            self.restoreGeometry(g)
        else:
            self.resize(1280, 800)
        s = self.settings.window_state()
        if s is not None:
            self.restoreState(s)
        else:
            # a small window keeps most of its height for the views (the log took a quarter of 640 px)
            self.resizeDocks([self.log_dock], [max(80, min(150, self.height() // 6))], Qt.Orientation.Vertical)
        self.tabs.setCurrentIndex(min(max(self.settings.tab(), 0), self.tabs.count() - 1))

    def save_settings(self) -> None:
        self.settings.save_window(self.saveGeometry(), self.saveState(), self.tabs.currentIndex())
        self.settings.sync()

    # -- closing ------------------------------------------------------------------------------------------------------
    def confirm_stop_training(self, what: str = "Training") -> bool:
        """Ask whether to stop ``what`` (the operator's running work) and quit."""
        kept = ("The round is kept after its last completed epoch; Start training resumes it next time."
                if what == "Training" else "What was done so far is kept.")
        r = QMessageBox.question(
            self, f"{what} is running", f"{what} is still running. Stop it and quit?\n\n{kept}",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return r == QMessageBox.StandardButton.Yes

    def _work_to_ask_about(self) -> str | None:
        """What the operator started and would lose by quitting (training, adding folders, making
        the demo), or None.  Background writes (feature and identity caches, camera edits) are
        cancelled without a question: they are redone on demand."""
        if self.panel("training").is_training():
            return "Training"
        names = {j.name for j in self.jobs.active("write")}
        if "ingest" in names:
            return "Adding camera folders"
        if "demo" in names:
            return "Creating the demo"
        return None

    def closeEvent(self, e: QCloseEvent) -> None:  # noqa: N802
        what = self._work_to_ask_about()
        if what is not None:
            if not self.confirm_stop_training(what):
                e.ignore()
                return
        self._closing = True
        self.statusBar().showMessage("Stopping running jobs…")
        self.jobs.cancel_all()
        t0 = time.monotonic()
        self.jobs.wait_idle(120)
        if self.jobs.busy():
            self.log_view.add(LogMessage("warning", f"jobs still running after {time.monotonic() - t0:.0f} s"))
        self.save_settings()
        self.close_workspace()
        self.ctx.thumbs.shutdown()
        self.jobs.shutdown(timeout_s=5)
        if self._error_logged in errors.listeners:
            errors.listeners.remove(self._error_logged)
        self.collector.stop()
        e.accept()
