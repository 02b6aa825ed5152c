"""Training: preset, device and rounds; start / stop / retrain; progress; live curves; history.

The panel starts with the workspace's saved settings (its ``config.toml``: preset and device), and
Start / Retrain send a :class:`~itkm_engine.train_request.TrainRequest` of what the user changed
-- a preset only when they chose another one, a device only when they picked one -- to the one
training entry point (``train_request.run_training``, in a child process), so settings saved with
``itkm train --set`` survive a Retrain.  Another preset whose model cannot continue a trained
workspace is refused here, before anything is written, with the CLI's explanation.

Training runs as one ``write`` job.  Its progress events drive the stage and
overall bars (with ETA) and the live curves: loss terms per step, and per epoch the cluster
count and -- when the images carry person ids -- pseudo-label precision and ARI.  Finished epochs
are also read back from the workspace (``epoch_log``), so the curves show the whole history of
the workspace, not only the current run, and survive a restart.

Stop cancels within one batch through the job's cancel token; the round stays resumable and the
Start button then offers to resume it.
"""

from __future__ import annotations

import os
import time

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView,
                               QLabel, QPushButton, QSpinBox, QSplitter, QTableView, QVBoxLayout, QWidget)

from itkm_engine.vocabulary import CONFIG_FILE

from .. import tasks, theme
from ..widgets import eval_table
from ..widgets.eval_table import EvalTable
from ..widgets.progress import JobProgress, format_duration
from ..widgets.training_curves import Curves
from .base import Panel


def dev_mode() -> bool:
    """Developer options (the tiny test preset) when ``ITKM_DEV`` is set."""
    return os.environ.get("ITKM_DEV", "").lower() not in ("", "0", "false", "no")


def active_seconds(started: float, finished: float | None, epochs: list[dict], *, slack_s: float = 600.0) -> float | None:
    """Time a round actually ran: from start to finish, minus the time nothing ran.

    A round stopped (or killed by quitting) and resumed days later has ``finished - started``
    of days.  Each epoch row carries its own duration (``values["seconds"]``) and when it
    ended; a gap before an epoch's end longer than that epoch's duration plus ``slack_s``
    (clustering, extraction, start-up: generous, so a big workspace's clustering is not cut)
    held an interruption, and only the epoch's duration plus the slack counts.  After the last
    epoch (the new checkpoint's features) everything counts: a round ends there.
    """
    if finished is None:
        return None
    total, t = 0.0, started
    for e in sorted(epochs, key=lambda e: e.get("finished") or 0.0):
        end = e.get("finished")
        if not end or end < t:
            continue
        secs = float(e.get("values", {}).get("seconds") or 0.0)
        total += min(end - t, secs + slack_s)
        t = end
    return total + max(finished - t, 0.0)


class TrainingPanel(Panel):
    """Signals: ``trainingChanged(bool)`` when a training job starts / ends (the toolbar's
    Train and Retrain follow it); ``evaluated(dict)`` with the evaluation record shown."""

    key = "training"
    title = "Training"
    trainingChanged = Signal(bool)
    evaluated = Signal(object)

    def __init__(self, ctx, parent=None) -> None:
        super().__init__(ctx, parent)
        self._live_complete = False  # set when a run finished: its live curves need no rebuild
        # -- controls
        self.preset = QComboBox()
        self.preset.addItem("Quick (CPU: ImageNet MobileNetV2)", "quick")
        self.preset.addItem("Full (ViT-B/16, GPU)", "full")
        if dev_mode() or ctx.dev:
            self.preset.addItem("Tiny (tests and development)", "tiny")
        self.preset.setToolTip("Quick trains a small model in minutes on a CPU; Full is the paper's setup for a GPU")
        self.device = QComboBox()
        self.rounds = QSpinBox()
        self.rounds.setRange(1, 50)
        self.rounds.setValue(ctx.settings.get("training/rounds", 1, int))
        self.rounds.setToolTip("Rounds of Stage I -> II -> III to run")
        self.start_btn = QPushButton(theme.icon("train"), "Start training")
        self.start_btn.clicked.connect(self.start)
        self.retrain_btn = QPushButton(theme.icon("retrain"), "Retrain")
        self.retrain_btn.setToolTip("Run one more round from the last checkpoint, including cameras added since")
        self.retrain_btn.clicked.connect(self.retrain)
        self.stop_btn = QPushButton(theme.icon("stop"), "Stop")
        self.stop_btn.setToolTip("Stop within one batch; the round can be resumed later")
        self.stop_btn.clicked.connect(self.stop)
        self.eval_btn = QPushButton("Evaluate")
        self.eval_btn.setToolTip("mAP and Rank-k of the current model (needs person ids in the file names)")
        self.eval_btn.clicked.connect(self.evaluate)
        form = QFormLayout()
        form.addRow("Preset", self.preset)
        form.addRow("Device", self.device)
        form.addRow("Rounds", self.rounds)
        buttons = QHBoxLayout()
        for b in (self.start_btn, self.retrain_btn, self.stop_btn, self.eval_btn):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.state_label = QLabel("")
        self.state_label.setWordWrap(True)
        self.progress = JobProgress()
        ctl_box = QGroupBox("Run")
        ctl = QVBoxLayout(ctl_box)
        ctl.addLayout(form)
        ctl.addLayout(buttons)
        ctl.addWidget(self.state_label)
        ctl.addWidget(self.progress)
        # -- history
        self.history_model = QStandardItemModel(0, 0, self)
        self.history = QTableView()
        self.history.setModel(self.history_model)
        self.history.verticalHeader().hide()
        self.history.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.history.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.history.setAlternatingRowColors(True)
        self.history.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.history.horizontalHeader().setStretchLastSection(False)
        hist_box = QGroupBox("Rounds")
        hl = QVBoxLayout(hist_box)
        hl.addWidget(self.history)
        self.eval_headline = QLabel("Not evaluated yet: Evaluate scores the current model when the file names "
                                    "carry person ids.")
        self.eval_headline.setWordWrap(True)
        self.eval_table = EvalTable()
        eval_box = QGroupBox("Evaluation of the current model")
        el = QVBoxLayout(eval_box)
        el.addWidget(self.eval_headline)
        el.addWidget(self.eval_table, 1)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(ctl_box)
        ll.addWidget(hist_box, 1)
        ll.addWidget(eval_box, 2)
        hist_box.setMinimumHeight(130)
        eval_box.setMinimumHeight(170)
        # a small window scrolls the left column instead of squeezing its rows into each other
        from ..widgets.side_column import scrolling_column

        left_scroll = scrolling_column(left, 420)
        self.curves = Curves()
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left_scroll)
        split.addWidget(self.curves)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([560, 1040])
        lay = QVBoxLayout(self.content)
        lay.addWidget(split)
        self._rounds: list | None = None  # None until the workspace's history has been read
        self._saved_preset: str | None = None  # the preset of the workspace's config.toml (None: no file)
        self._device_chosen = False  # the user picked a device (else the saved one is kept)
        self._choice_problem: str | None = None  # why the chosen preset cannot train this workspace
        self.device.activated.connect(self._device_picked)
        self._fill_devices()
        ctx.workspaceChanged.connect(self._on_workspace)
        ctx.sessionChanged.connect(lambda _s: self._update_buttons())
        ctx.modelChanged.connect(self.reload)
        ctx.imagesChanged.connect(self._update_buttons)
        ctx.deviceChanged.connect(lambda _d: self._fill_devices())
        self.preset.currentIndexChanged.connect(lambda _i: ctx.settings.set("training/preset", self.preset.currentData()))
        self.preset.currentIndexChanged.connect(lambda _i: self._check_choice())
        self.rounds.valueChanged.connect(lambda v: ctx.settings.set("training/rounds", v))
        self.preset.currentIndexChanged.connect(lambda _i: self.plan_chart())
        self.rounds.valueChanged.connect(lambda _v: self.plan_chart())
        self._on_workspace(ctx.ws)

    # -- devices -------------------------------------------------------------------------------------
    def _fill_devices(self) -> None:
        current = self.device.currentData() or self.ctx.settings.get("training/device", "auto", str)
        self.device.blockSignals(True)
        self.device.clear()
        for value, label in self.ctx.devices:
            self.device.addItem(label, value)
        i = self.device.findData(current)
        self.device.setCurrentIndex(max(i, 0))
        self.device.blockSignals(False)
        self.device.currentIndexChanged.connect(
            lambda _i: self.ctx.settings.set("training/device", self.device.currentData()))

    # -- state ---------------------------------------------------------------------------------------
    def _on_workspace(self, ws) -> None:
        self._live_complete = False
        self.curves.clear_all()
        self.progress.reset()
        if ws is None:
            self.show_empty("No workspace open", "Open a workspace to train its model.",
                            [("Open workspace…", lambda: self.window().open_workspace_dialog())])
            return
        self.show_content()
        self._rounds = None
        self.eval_table.set_scores({})
        self._show_saved_settings(ws)
        self._update_buttons()
        self.reload()

    def _show_saved_settings(self, ws) -> None:
        """Preset and device of the workspace's saved settings (config.toml), else the app's last
        choice.  Start and Retrain keep the saved settings unless the user changes them here."""
        name = self.ctx.settings.get("training/preset", "quick", str)
        device = None
        self._saved_preset = None
        self._device_chosen = False
        if (ws.path / CONFIG_FILE).exists():
            try:
                import tomllib

                saved = tomllib.loads((ws.path / CONFIG_FILE).read_text(encoding="utf-8"))
                name = self._saved_preset = str(saved.get("preset", "full"))
                device = saved.get("device")
            except (OSError, ValueError):
                pass  # a damaged file: the training refuses it with its own message
        if self.preset.findData(name) < 0 and name == "tiny":
            self.preset.addItem("Tiny (tests and development)", "tiny")
        i = self.preset.findData(name)
        self.preset.setCurrentIndex(max(i, 0))
        if isinstance(device, str):
            j = self.device.findData(device)
            if j >= 0:  # a device this computer lacks stays the saved preference ("auto" shown)
                self.device.setCurrentIndex(j)
        self._check_choice()

    def _device_picked(self, _index: int) -> None:
        self._device_chosen = True

    def request(self, rounds: int | None = None):
        """The :class:`TrainRequest` of the panel's choices: the saved settings, with a preset
        only when the user chose another (or nothing is saved) and a device only when they picked
        one."""
        from itkm_engine.train_request import TrainRequest

        chosen = self.preset.currentData() or "quick"
        keep = self._saved_preset is not None and chosen == self._saved_preset
        device = self.device.currentData() or "auto"
        pick_device = self._device_chosen or self._saved_preset is None
        return TrainRequest(preset=None if keep else chosen, device=device if pick_device else None,
                            rounds=int(rounds or self.rounds.value()))

    def _check_choice(self) -> str | None:
        """Why the panel's choices cannot train this workspace (the CLI's words), or None.  Reads
        config.toml and the rounds already read: nothing on the GUI thread waits for the database."""
        ws = self.ctx.ws
        problem = None
        if ws is not None:
            from itkm_engine.config_check import lineage_problem
            from itkm_engine.errors import ItkmError
            from itkm_engine.train_request import resolve_config

            try:
                problem = lineage_problem(self._rounds or [], resolve_config(ws.path, self.request()))
            except ItkmError as exc:
                problem = str(exc)
        if problem != self._choice_problem:
            self._choice_problem = problem
            self._update_buttons()
        return problem

    def reload(self) -> None:
        ws = self.ctx.ws
        if ws is None:
            return
        self.run("training history", tasks.read_training_history, ws, on_done=self._show_history)

    def _show_history(self, data) -> None:
        rounds, epoch_log, evals, n_images, keys = data
        self._rounds = rounds
        self._check_choice()
        self._n_images = n_images
        if not self.task.busy():
            # after a finished run the charts already show this history, in more detail
            if not (self._live_complete and self.curves.base_epoch == len(epoch_log)):
                self.curves.clear_all()
                self.curves.add_history(epoch_log)
            self.plan_chart()
        last_values: dict[int, dict] = {}
        for row in epoch_log:
            last_values.setdefault(row["round"], {}).update(row.get("values", {}))
        eval_by_ckpt = {}
        for m in evals:
            eval_by_ckpt[str(m.get("checkpoint"))] = m.get("values", {})
        epochs_of: dict[int, list] = {}
        for row in epoch_log:
            epochs_of.setdefault(row["round"], []).append(row)
        m = self.history_model
        m.clear()
        # the scores first: they are what the table is read for (they hid behind a scrollbar)
        cols = ["Round", "Status", "mAP %", "R1 %", "Took", "Clusters", "Precision", "ARI"]
        m.setHorizontalHeaderLabels(cols)
        m.horizontalHeaderItem(2).setToolTip("Headline evaluation: cross-camera protocol, all queries")
        m.horizontalHeaderItem(4).setToolTip("Time the round ran (time the app was closed is not counted)")
        latest_eval = {}
        for r in rounds:
            v = last_values.get(r.number, {})
            secs = active_seconds(r.started, r.finished, epochs_of.get(r.number, []))
            took = format_duration(secs)
            ckpt_name = os.path.basename(r.checkpoint) if r.checkpoint else ""
            rec = eval_by_ckpt.get(keys.get(r.number, "-"), {})
            if r.status == "done":  # the current model is the last finished round's
                latest_eval = rec
            ev = eval_table.headline(rec)
            cells = [
                str(r.number),
                r.status + (f" ({r.stage} {r.epoch})" if r.status != "done" and r.stage else ""),
                _num(ev.get("mAP"), 1, pct=True),
                _num(ev.get("rank1"), 1, pct=True),
                took,
                _num(v.get("n_clusters"), 0),
                _num(v.get("precision"), 3),
                _num(v.get("ari"), 3),
            ]
            items = [QStandardItem(c) for c in cells]
            tip = (f"started {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.started))}"
                   f"\noutliers {_num(v.get('n_outliers'), 0)}\ncheckpoint {ckpt_name or '-'}")
            if ev:
                tip += f"\nevaluation: {eval_table.headline_text(rec)}"
            for i, it in enumerate(items):
                it.setToolTip(tip)
                if i >= 2:
                    it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            m.appendRow(items)
        self._show_eval(latest_eval)
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.task.busy()
        has_ws = self.ctx.ws is not None and not self.ctx.readonly
        has_session = self.ctx.session is not None
        done = [r for r in self._rounds or [] if r.status == "done"]
        unfinished = [r for r in self._rounds or [] if r.status in ("running", "cancelled")]
        self.start_btn.setEnabled(has_ws and has_session and not running)
        self.start_btn.setText(f"Resume round {unfinished[-1].number}" if unfinished else "Start training")
        if self._rounds is None and has_ws:
            self.start_btn.setText("Start training")
            self.retrain_btn.setEnabled(False)
        self.retrain_btn.setEnabled(has_ws and has_session and not running and bool(done))
        self.stop_btn.setEnabled(running)
        self.eval_btn.setEnabled(has_session and not running)
        for w in (self.preset, self.device, self.rounds):
            w.setEnabled(not running)
        if running:
            return
        if not has_session and has_ws:
            self.state_label.setText("Loading the model library…")
        elif self.ctx.readonly:
            self.state_label.setText("This workspace is open read-only: training is disabled.")
        elif self._rounds is None:
            self.state_label.setText("Reading the workspace's training history…")
        elif self._choice_problem:
            self.state_label.setText(f"Cannot train with these settings: {self._choice_problem}")
        elif not self._rounds:
            self.state_label.setText("Not trained yet. Start the first round; each round runs Stage I (homogeneous "
                                     "learning), Stage II (text knowledge) and Stage III (heterogeneous matching).")
        else:
            last = self._rounds[-1]
            from ..wording import plural

            self.state_label.setText(f"{plural(len(done), 'round')} done. Last: round {last.number}, {last.status}.")

    # -- actions ---------------------------------------------------------------------------------------
    def plan_chart(self, rounds: int | None = None, cfg=None) -> None:
        """Give the charts the x extent the chosen run will reach.  Done when the preset or the
        rounds change (and when the history loads), so Start itself repaints no axes: a repaint
        of the three linked axes costs ~50 ms of CPU, and on a busy machine that froze the window
        for 130-220 ms right after Start."""
        if self.task.busy():
            return
        cfg = cfg or self.config()
        n = int(rounds or self.rounds.value())
        planned = self.curves.base_epoch + n * (cfg.stage1.epochs + cfg.stage2.epochs + cfg.stage3.epochs)
        if planned != self.curves.planned_epochs:
            self.curves.planned_epochs = planned
            self.curves.redraw()

    def config(self):
        """The settings Start would train with (the saved ones, changed as the panel shows)."""
        from itkm_engine.config import preset
        from itkm_engine.errors import ItkmError
        from itkm_engine.train_request import resolve_config

        if self.ctx.ws is not None:
            try:
                return resolve_config(self.ctx.ws.path, self.request())
            except ItkmError:
                pass  # a damaged config.toml: the training says so when it starts
        return preset(self.preset.currentData() or "quick")

    def start(self, rounds: int | None = None) -> None:
        """Start (or resume) training ``rounds`` rounds (default: the spin box)."""
        if self.task.busy() or self.ctx.session is None:
            return
        n = int(rounds or self.rounds.value())
        problem = self._check_choice()
        if problem:  # refused before anything is written, in the CLI's words
            self.state_label.setText(f"Not started: {problem}")
            return
        request = self.request(n)
        cfg = self.config()
        self.progress.reset("Starting…")
        self._live_complete = False
        from ..wording import plural

        self.state_label.setText(f"Training {plural(n, 'round')} with the {cfg.preset} preset on "
                                 f"{self.device.currentText()}…")
        self.plan_chart(n, cfg)
        self.task.start("train", tasks.run_training, self.ctx.session, request, kind="write", loading=False,
                        on_done=self._trained, on_progress=self.progress.show_event,
                        on_events=self.curves.add_events, on_end=self._ended, on_cancel=self._cancelled,
                        on_error=lambda msg, _tb: self.state_label.setText(f"Training failed: {msg}"))
        self._update_buttons()
        self.trainingChanged.emit(True)

    def _cancelled(self) -> None:
        self.progress.stopped("Stopped")
        self.state_label.setText("Stopped. The round is saved after its last completed epoch: Resume continues "
                                 "from there.")

    def retrain(self) -> None:
        """One more round, from the last checkpoint (incremental: new cameras join in)."""
        self.start(rounds=1)

    def stop(self) -> None:
        if self.task.busy():
            self.task.cancel()
            self.stop_btn.setEnabled(False)
            self.progress.stopped("Stopping after the current batch…")
            self.state_label.setText("Stopping after the current batch…")

    def prepare_screenshot(self) -> None:
        self.curves.flush()

    def is_training(self) -> bool:
        return self.task.busy()

    def _trained(self, results) -> None:
        # the live curves hold the history and every finished epoch of this run (finer than the
        # epoch log): the reload after the run keeps them instead of rebuilding every curve
        self._live_complete = True
        self.progress.finish("Done")
        from ..wording import plural

        secs = sum(r.seconds for r in results)
        self.state_label.setText(f"Trained {plural(len(results), 'round')} in {format_duration(secs)}.")
        self.ctx.modelChanged.emit()

    def _ended(self) -> None:
        if self.ctx.ws is not None:
            self._show_saved_settings(self.ctx.ws)  # the settings the run saved (config.toml)
        self.reload()
        self._update_buttons()
        self.trainingChanged.emit(False)

    def evaluate(self) -> None:
        session = self.ctx.session
        if session is None:
            return
        job = self.run("evaluate", tasks.evaluate, session, kind="read", on_done=self._evaluated)
        job.progress.connect(self.progress.show_event)

    def _evaluated(self, scores: dict) -> None:
        from itkm_engine.progress import LogMessage

        if not scores:
            self.state_label.setText("Nothing to evaluate: the images carry no person ids.")
            return
        self._show_eval(scores)
        self.state_label.setText(f"Evaluation: {eval_table.headline_text(scores)}.")
        for p, s, v in eval_table.rows(scores):
            self.ctx.jobs.log.emit(LogMessage(
                "info", f"evaluation {p} / {s}: mAP {eval_table.pct(v.get('mAP'))}%, "
                        f"R1 {eval_table.pct(v.get('rank1'))}%, R5 {eval_table.pct(v.get('rank5'))}%, "
                        f"R10 {eval_table.pct(v.get('rank10'))}%"))
        self.progress.finish("Evaluated")
        self.reload()

    def _show_eval(self, scores: dict) -> None:
        self.eval_table.set_scores(scores)
        self.eval_headline.setText(f"<b>{eval_table.headline_text(scores)}</b> — every protocol and split below; "
                                   "the headline row is bold." if scores else
                                   "Not evaluated yet: Evaluate scores the current model when the file names carry "
                                   "person ids.")
        self.evaluated.emit(scores)


def _num(v, digits: int, pct: bool = False) -> str:
    if v is None or not isinstance(v, (int, float)) or not np.isfinite(v):
        return ""
    if pct and v <= 1.0:
        v = 100 * v
    return f"{v:.{digits}f}"
