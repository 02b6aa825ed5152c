"""The workbench says what things are worth (issue 18, sections 1-3 in the app): text search off
with the reason, the untrained model's evaluation, a changed scored set, the ONNX export, the
engine's time left and part bars, marks that cannot be confused, names everywhere, sites, layout
at 1024x640, and the Clusters view leaving the CPU to training.

One module-scoped window over a copy of the trained demo workspace (its 2-D map faked into the
cache); a fresh untrained window where an item needs one."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QRect, QSize, Qt  # noqa: E402
from PySide6.QtGui import QColor, QFontMetrics, QImage, QPainter  # noqa: E402
from PySide6.QtWidgets import QStyleOptionViewItem  # noqa: E402

from itkm_app import tasks, theme  # noqa: E402
from itkm_app.context import ModelState  # noqa: E402

from helpers.app import close_window, fake_cached_map, open_window, recording_errors, wait_idle  # noqa: E402
from helpers.workspaces import copy_ws  # noqa: E402


@pytest.fixture(scope="module")
def recorded(qapp):
    with recording_errors() as rec:
        yield rec


@pytest.fixture(scope="module")
def app(qapp, recorded, trained_ws_template, tmp_path_factory):
    from pytestqt.qtbot import QtBot

    base = tmp_path_factory.mktemp("clarity")
    ws_path = copy_ws(trained_ws_template, base / "ws")
    fake_cached_map(ws_path)
    qtbot = QtBot(None)
    window = open_window(qtbot, ws_path, base / "settings.ini")
    yield {"window": window, "qtbot": qtbot, "ws": ws_path, "base": base}
    close_window(window)


@pytest.fixture
def fresh_app(qapp, recorded, fresh_embedded_ws, tmp_path):
    from pytestqt.qtbot import QtBot

    qtbot = QtBot(None)
    window = open_window(qtbot, fresh_embedded_ws, tmp_path / "settings.ini")
    yield window, qtbot
    close_window(window)


# -- 1. honesty -------------------------------------------------------------------------------------

def test_text_search_is_off_in_the_gallery_with_the_reason(app):
    w, qtbot = app["window"], app["qtbot"]
    g = w.panel("gallery")
    qtbot.waitUntil(lambda: w.ctx.model_state is not None and w.ctx.model_state.text_off is not None, timeout=30_000)
    assert not g.text.isEnabled() and not g.search_btn.isEnabled()
    assert not g.text_off.isHidden() and "Text search is off" in g.text_off.text()
    assert "Full preset" in g.text_off.text()
    before = g.query
    g.query_text("a person in a red jacket")
    assert g.query == before and g.task.job is None  # nothing was searched


def test_evaluate_on_the_untrained_model_fills_the_table(fresh_app):
    w, qtbot = fresh_app
    t = w.panel("training")
    t.evaluate()
    qtbot.waitUntil(lambda: t.eval_table.model().rowCount() > 0, timeout=120_000)
    wait_idle(qtbot, w)  # the history reload after it (it cleared the table before)
    qtbot.wait(300)
    assert t.eval_table.model().rowCount() > 0
    assert "Not evaluated yet" not in t.eval_headline.text()


def test_rounds_table_says_when_the_scored_set_changed(app):
    from itkm_engine.records import RoundInfo

    t = app["window"].panel("training")
    rounds = [RoundInfo(number=n, status="done", started=0.0, finished=60.0, checkpoint=None, stage=None,
                        epoch=None, config_json="{}", base_checkpoint=None) for n in (1, 2)]
    ev = lambda m, g: {"headline": {"protocol": "cross-camera", "split": "overall", "mAP": m, "rank1": m,  # noqa: E731
                                    "rank5": m, "rank10": m, "queries": g, "gallery": g}}
    evals = [{"checkpoint": "k1", "values": ev(0.22, 1971)}, {"checkpoint": "k2", "values": ev(0.168, 2624)}]
    t._show_history((rounds, [], evals, 2624, {1: "k1", 2: "k2"}, {1: 61.0, 2: 62.0}, "k2"))
    m = t.history_model
    assert m.item(0, 2).text() == "22.0" and m.item(1, 2).text() == "16.8 †"
    assert not t.scored_note.isHidden()
    assert "1,971" in t.scored_note.text() and "2,624" in t.scored_note.text()
    assert m.item(0, 4).text() == "1 min 01 s"  # the round's recorded duration (the log says the same)


def test_export_encoder_action_sits_by_export_tracks_and_runs_as_a_job(app, tmp_path):
    w, qtbot = app["window"], app["qtbot"]
    acts = w.menuBar().actions()[0].menu().actions()
    i = acts.index(w.act_export)
    assert acts[i + 1] is w.act_export_onnx and w.act_export_onnx.isEnabled()
    out = tmp_path / "enc.onnx"
    job = w.export_onnx(str(out))
    assert job is not None and job.kind == "read"  # off the GUI thread
    qtbot.waitUntil(lambda: out.exists() and not w.jobs.busy("read"), timeout=240_000)
    qtbot.wait(400)  # late progress deliveries of the job
    msg = w.statusBar().currentMessage()
    assert msg.startswith("Exported the round 1 encoder to") and not w._show_btn.isHidden()


# -- 2. time left and progress ---------------------------------------------------------------------------

def test_part_bar_follows_its_part_with_its_own_label_and_fixed_widths(qapp):
    from itkm_engine.progress import ProgressEvent

    from itkm_app.widgets.progress import JobProgress

    p = JobProgress()
    p.resize(500, 80)
    p.show()
    widths = (p.stage_label.width(), p.eta_label.width())
    # embedding inside Stage I, then its training steps: one bar, never back (it read 90 -> 25)
    p.show_event(ProgressEvent(job="train", fraction=0.10, round=1, part="stage1", part_fraction=0.30,
                               stage="extract", step=900, steps=1000))
    v1 = p.stage_bar.value()
    p.show_event(ProgressEvent(job="train", fraction=0.12, round=1, part="stage1", part_fraction=0.35,
                               stage="stage1", epoch=1, epochs=4, step=2, steps=25, eta_s=None))
    assert p.stage_bar.value() >= v1 == 300
    assert p.stage_label.text() == "Round 1 · Stage I"
    assert "homogeneous learning" in p.detail_label.text() and "epoch 2/4" in p.detail_label.text()
    assert p.eta_label.text() == "estimating time left"
    p.show_event(ProgressEvent(job="train", fraction=0.5, round=2, part="final", part_fraction=0.5,
                               stage="extract", step=10, steps=20, eta_s=420.0))
    assert p.eta_label.text() == "about 7 min left"  # the engine's estimate, as the CLI says it
    assert (p.stage_label.width(), p.eta_label.width()) == widths


def test_status_bar_shows_the_engines_time_left(app):
    from itkm_engine.progress import ProgressEvent

    w = app["window"]

    class Job:
        name = "train"

    w._job_progress(Job(), ProgressEvent(job="train", fraction=0.3, part="stage2", eta_s=660.0))
    assert w.job_label.text() == "train: Stage II · about 11 min left"
    w._job_progress(Job(), ProgressEvent(job="train", fraction=0.31, part="stage2", eta_s=None))
    assert w.job_label.text() == "train: Stage II"
    w._update_job_status()


def test_stage_marks_take_turns_in_height(qapp):
    from itkm_app.widgets.training_curves import MARK_HEIGHTS, Curves

    c = Curves()
    for i, (r, st) in enumerate([(1, "stage1"), (1, "stage2"), (1, "stage3"), (2, "stage1")]):
        c.mark_stage(r, st, float(i))
    heights = [m.label.orthoPos for m in c.loss_plot._markers]
    assert heights == [MARK_HEIGHTS[i % 2] for i in range(4)]  # "III" and "R2 I" never share a line
    # the round is named where it starts only: short labels that fit a narrow chart
    assert [m.label.toPlainText() for m in c.loss_plot._markers] == ["R1 I", "II", "III", "R2 I"]


# -- 3. marks, names, words -----------------------------------------------------------------------------------

def _paint(item) -> QImage:
    from itkm_app.widgets.thumb_grid import ItemRole, ThumbDelegate

    class Cache:
        box = QSize(64, 128)

        def get(self, path, box=None):
            return None

        def failed(self, path, box=None):
            return False

    from PySide6.QtWidgets import QApplication

    d = ThumbDelegate(Cache())
    opt = QStyleOptionViewItem()
    opt.font = QApplication.font()
    opt.fontMetrics = QFontMetrics(opt.font)
    opt.palette = QApplication.palette()
    size = d.cell_size(opt.font)
    img = QImage(size, QImage.Format.Format_RGB32)
    img.fill(QColor("white"))
    opt.rect = QRect(0, 0, size.width(), size.height())

    class Index:
        def data(self, role):
            return item if role == ItemRole else None

    painter = QPainter(img)
    d.paint(painter, opt, Index())
    painter.end()
    return img


def test_the_operators_decision_has_its_own_mark_beside_the_labels_tick(qapp):
    from itkm_app.widgets.thumb_grid import DECISION_MARKS, SAME_PERSON_COLOR, ThumbItem

    item = ThumbItem(1, "/nowhere.jpg", "cam1", "visible-infrared", "visible", 0.8, 3, 7,
                     extra={"same_person": True}, decision="cannot")
    img = _paint(item)
    red, green = QColor(DECISION_MARKS["cannot"][1]), QColor(SAME_PERSON_COLOR)
    x0 = (img.width() - 64) // 2
    foot = [QColor(img.pixel(x0 + x, 4 + 128 - 3)) for x in (2, 20, 44, 61)]
    assert all(c == red for c in foot), "the decision band spans the crop's foot"
    corner = QColor(img.pixel(x0 + 64 - 9, 4 + 3 + 8))
    assert corner == green, "the labels' tick stays in its corner, not covered"


def test_undo_and_review_say_what_happened(app):
    w, qtbot = app["window"], app["qtbot"]
    g = w.panel("gallery")
    imgs = w.ctx.images
    g.query_image_id(int(imgs.id[0]))
    qtbot.waitUntil(lambda: len(g.grid.items()) > 0, timeout=60_000)
    g.grid.setCurrentIndex(g.grid.model().index(0, 0))
    other = g.grid.items()[0].image_id
    g.decide("must")
    g.undo_redo(False)
    assert g.decision_info.text() == f"Undone: confirming images {min(int(imgs.id[0]), other)} and " \
                                     f"{max(int(imgs.id[0]), other)} as the same person."
    g.start_review()
    qtbot.waitUntil(lambda: g.query is not None and g.query[0] == "review", timeout=60_000)
    assert g.decision_info.text().startswith("Review queue: ") and "Finding" not in g.decision_info.text()
    assert "the boundary" in g.header.text()
    wait_idle(qtbot, w)


def test_names_show_in_the_gallery_and_the_clusters_legend(app):
    w, qtbot = app["window"], app["qtbot"]
    session = w.ctx.session
    table = session.identities()
    ident = int(np.bincount(table.identity).argmax())
    session.name_identity(ident, "Visitor 7")
    job = w.jobs.submit("named", tasks.named_identities, session, on_done=lambda r: w.ctx.set_identities(*r))
    qtbot.waitUntil(lambda: w.ctx.identity_names.get(ident, ("",))[0] == "Visitor 7", timeout=60_000)
    assert job is not None
    assert w.ctx.identity_label(ident) == f"#{ident} Visitor 7"
    cl = w.panel("clusters")
    w.show_panel("clusters")
    qtbot.waitUntil(lambda: len(cl.ids) > 0, timeout=60_000)
    cl.color_by.setCurrentIndex(cl.color_by.findData("identity"))
    cl._recolor()
    legend = [cl.legend.item(i).text() for i in range(cl.legend.count())]
    assert any(t.startswith(f"#{ident} Visitor 7") for t in legend), legend[:5]
    g = w.panel("gallery")
    g.show_set(table.image_id[table.identity == ident], "one identity")
    named = [it for it in g.grid.items() if it.identity == ident]
    assert named and all(it.name == "Visitor 7" for it in named)
    session.undo()
    wait_idle(qtbot, w)


def test_shortcut_list_names_decisions_and_undo(app):
    rows = app["window"].shortcut_rows()
    keys = {(what.split(":")[0], k) for _w, what, k in rows}
    text = " ".join(f"{a} {b} {c}" for a, b, c in rows)
    assert ("Same person", "Y") in keys and ("Not this person", "N") in keys
    assert "Undo the last decision" in text and "Redo" in text and "Ctrl+Shift+Z" in text


# -- 3. sites ----------------------------------------------------------------------------------------------------

def test_sites_in_add_folders_colour_by_site_and_gallery_filter(app):
    from itkm_app.dialogs.add_folders import AddFoldersDialog

    w, qtbot = app["window"], app["qtbot"]
    dlg = AddFoldersDialog(w, ["/x"], ["default", "depot"])
    assert dlg.site() is None
    dlg.site_combo.setEditText("gate")
    assert dlg.site() == "gate"
    qtbot.waitUntil(lambda: bool(w.ctx.camera_sites), timeout=30_000)
    cams = sorted(w.ctx.camera_sites)
    w.ctx.camera_sites = {c: ("north" if i % 2 else "south") for i, c in enumerate(cams)}
    w.ctx.sitesChanged.emit()
    cl = w.panel("clusters")
    vals, _ = cl.values_for("site")
    assert set(vals) == {"north", "south"}
    assert cl.color_by.findData("site") >= 0
    g = w.panel("gallery")
    assert set(g.f_site._actions) == {"north", "south"}
    g.f_site.set_checked({"north"})
    assert g.filters()["cameras"] == frozenset(c for i, c in enumerate(cams) if i % 2)
    g.f_site.clear()


def test_site_tooltip_wraps_and_editing_while_a_job_writes_is_explained(app):
    w, qtbot = app["window"], app["qtbot"]
    cams = w.panel("cameras")
    m = cams.model
    tip = m.headerData(m.SITE, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith("<qt>") and len(tip) < 220  # rich text wraps; it was one 1,200-px line
    gate = threading.Event()
    job = w.jobs.submit("train", lambda *, reporter: gate.wait(30), kind="write", quiet=True)
    try:
        qtbot.waitUntil(lambda: w.jobs.busy("write"), timeout=10_000)
        idx = m.index(0, m.SITE)
        assert not (m.flags(idx) & Qt.ItemFlag.ItemIsEditable)
        assert "can be changed when train has finished" in cams.hint.text()
        assert "can be changed when" in m.data(idx, Qt.ItemDataRole.ToolTipRole)
    finally:
        gate.set()
    qtbot.waitUntil(lambda: not w.jobs.busy("write"), timeout=10_000)
    assert job is not None and m.flags(m.index(0, m.SITE)) & Qt.ItemFlag.ItemIsEditable
    assert cams.hint.text() == cams.HINT


def test_many_cameras_get_distinct_colours():
    def lab(c: QColor):
        def lin(v):
            return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

        r, g, b = lin(c.redF()), lin(c.greenF()), lin(c.blueF())
        x, y, z = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047, 0.2126 * r + 0.7152 * g + 0.0722 * b, \
            (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
        f = lambda t: t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116  # noqa: E731
        return np.array([116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))])

    cols = [lab(c) for c in theme.categorical_colors(20)] + [lab(QColor(theme.MUTED))]
    worst = min(np.linalg.norm(a - b) for a, b in itertools.combinations(cols, 2))
    assert worst >= 20, worst  # 14 cameras showed two orange and two green (Delta E 10-15)


# -- 3. the Clusters view leaves the CPU to training ---------------------------------------------------------------

def test_clusters_view_puts_off_a_new_map_while_training(fresh_app, monkeypatch):
    w, qtbot = fresh_app
    started = []
    monkeypatch.setattr(tasks, "compute_in_child", lambda *a, **k: started.append(a) or False)
    monkeypatch.setattr(tasks, "projection", lambda *a, **k: started.append(a) or (
        np.zeros(0, np.int64), np.zeros((0, 2), np.float32), w.ctx.images))
    cl = w.panel("clusters")
    training = [True]
    monkeypatch.setattr(cl, "_training", lambda: training[0])  # as ModelState.training says while it trains
    w.show_panel("clusters")
    cl.load()
    qtbot.waitUntil(lambda: not cl.compute_now.isHidden(), timeout=60_000)
    assert "computed when training ends" in cl.info.text() and not started
    training[0] = False
    cl._model_state_changed(ModelState(None, None, None, False))
    qtbot.waitUntil(lambda: bool(started), timeout=60_000)  # training ended: now it is computed
    wait_idle(qtbot, w)


# -- 3. layout at 1024x640 ---------------------------------------------------------------------------------------------

def test_small_window_keeps_fields_columns_and_labels_readable(app):
    w, qtbot = app["window"], app["qtbot"]
    w.resize(1024, 640)
    ident = w.panel("identities")
    w.show_panel("identities")
    qtbot.waitUntil(lambda: ident.proxy.rowCount() > 0, timeout=60_000)
    ident.prepare_screenshot()
    qtbot.wait(200)
    assert ident.name_edit.width() >= 100 and ident.note_edit.width() >= 100  # were a few letters
    t = ident.table
    seen = 2
    assert t.columnWidth(seen) >= t.sizeHintForColumn(seen) - 2  # "Seen" not cut
    assert t.columnViewportPosition(seen) + t.columnWidth(seen) <= t.viewport().width()
    shown_cams = {str(c) for c in np.asarray(w.ctx.images.camera)[w.ctx.images.index_of(
        w.ctx.identities.image_id[w.ctx.identities.identity == ident.shown_identity])]}
    ticks = ident.timeline.getAxis("left")._tickLevels[0]
    assert {name for _pos, name in ticks} == shown_cams  # the identity's cameras only
    grid = ident.strip
    fm = QFontMetrics(grid.font())
    longest = max((it.caption for it in grid.items()), key=fm.horizontalAdvance)
    assert grid.gridSize().width() >= min(fm.horizontalAdvance(longest), grid.delegate.MAX_TEXT_W)
    curves = w.panel("training").curves
    for legend in curves.legends.values():
        assert legend.width() >= QFontMetrics(curves.font()).horizontalAdvance("instance_centroid")
    w.resize(1600, 1000)


def test_window_fits_a_small_screen_status_bar_included(app):
    w = app["window"]
    w.resize(1280, 800)
    screen = QRect(0, 0, 1024, 640)
    w.fit_to_screen(screen)
    frame = w.frameGeometry()
    assert w.height() <= 640 and frame.bottom() <= screen.bottom() + 1 and frame.right() <= screen.right() + 1
    assert w.minimumHeight() <= 600 and w.minimumWidth() <= 1000
    w.resize(1600, 1000)
